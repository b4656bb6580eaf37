"""RewardModel: its job is not built yet. Such a resource stays
Pending with a condition that says so (never silently), so that an operator version that can run
it picks it up where it is, rather than finding it Failed."""

from __future__ import annotations

import datetime
from typing import Any

import kopf

from ..api import conditions as c
from ..api import conditions as r
from ..api.base import GROUP, VERSION
from ..render.status import condition, set_condition, status_patch
from .reconcile import PLURALS, kube


def held(kind: str, previous: dict[str, Any], generation: int, now: datetime.datetime) -> dict:
    status = {**previous, "phase": "Pending", "observedGeneration": generation}
    message = f"this version of the operator cannot run a {kind} yet"
    set_condition(status, c.RUNNING, False, r.NOT_SUPPORTED, message, now)
    return status


def hold(kind: str, namespace: str, name: str) -> None:
    api = kube()
    obj = api.get(PLURALS[kind], namespace, name)
    if obj is None:
        return
    previous = obj.get("status") or {}
    now = datetime.datetime.now(datetime.UTC)
    status = held(kind, previous, obj["metadata"].get("generation", 1), now)
    patch = status_patch(previous, status)
    if patch:
        api.patch_status(PLURALS[kind], namespace, name, patch)
        message = (condition(status, c.RUNNING) or {}).get("message", "")
        kopf.event(obj, type="Warning", reason=r.NOT_SUPPORTED, message=message)


@kopf.on.create(GROUP, VERSION, "rewardmodels")
@kopf.on.resume(GROUP, VERSION, "rewardmodels")
def hold_rewardmodel(namespace: str, name: str, **_: Any) -> None:
    hold("RewardModel", namespace, name)
