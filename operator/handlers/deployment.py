"""Deployment: `lmforge serve` as an apps/v1 Deployment behind a Service, rolled out when its model
(or config) changes, never while its Evaluation gate has failed."""

from __future__ import annotations

import datetime
from typing import Any

import kopf

from lmforge.operator.api import conditions
from lmforge.operator.handlers.reconcile import (
    dependencies,
    parse,
    patch_status,
    record_invalid,
    status_of,
)
from lmforge.operator.handlers.settings import SETTINGS
from lmforge.operator.kube import Kube
from lmforge.operator.render import deployment as render
from lmforge.operator.render.names import Owner
from lmforge.operator.render.pods import Rendering
from lmforge.operator.stages import STAGES
from lmforge.operator.stages.base import SpecError, storage
from lmforge.operator.stages.deployment import model_digest, served


def server_pass(api: Kube, kind: str, obj: dict[str, Any], traceparent: str | None) -> None:
    stage = STAGES[kind]
    owner, previous = Owner.of(obj), status_of(obj)
    try:
        deployment = parse(obj)
        store = storage(deployment.spec.storage, SETTINGS.defaults.store)
        deps = dependencies(api, deployment, owner.namespace, previous)
        # The model is all the server needs; the gate decides whether it rolls out.
        ready = "spec.modelRef" in deps.outputs
        description = stage.describe(deployment, deps.outputs, store) if ready else None
    except SpecError as error:
        record_invalid(api, obj, error)
        return
    digest = model_digest(description) if description else None
    live = api.read("Deployment", owner.namespace, render.server_name(owner.name))
    now = datetime.datetime.now(datetime.UTC)
    generation = obj["metadata"].get("generation", 1)
    status, roll = render.decide(previous, generation, deps, live, digest, owner, now)
    children = []
    if description is not None and roll:
        r = Rendering(owner, deployment, stage.role, description, SETTINGS.defaults, store)
        children = render.children(r, digest)
        image = children[1]["spec"]["template"]["spec"]["containers"][0]["image"]
        status.lineage = served(description, status.endpoint).model_copy(update={"image": image})
    patch_status(api, obj, status)
    if status.phase != previous.phase:
        waiting = status.condition(conditions.WAITING)
        gated = waiting is not None and waiting.status == "True"
        message = waiting.message if gated else (status.endpoint or "")
        warn = gated and waiting.reason == conditions.GATE_FAILED
        kind_ = "Warning" if warn else "Normal"
        kopf.event(obj, type=kind_, reason=status.phase, message=message or status.phase)
    for child in children:
        api.apply(child)
