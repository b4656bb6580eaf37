"""Deployment: `lmforge serve` as an apps/v1 Deployment behind a Service, rolled out when its model
(or config) changes, never while its Evaluation gate has failed."""

from __future__ import annotations

import datetime
from typing import Any

import kopf

from ..api import conditions as c
from ..kube import Kube
from ..render import deployment as render
from ..render.names import Owner, RenderError
from ..render.pods import storage
from ..render.status import condition, status_patch
from .reconcile import Kind, dependencies, parse, record_invalid, register
from .settings import SETTINGS


def reconcile(api: Kube, kind: Kind, obj: dict[str, Any], traceparent: str | None) -> None:
    try:
        deployment = parse(obj)
        store = storage(deployment.spec.storage, SETTINGS.defaults)
    except RenderError as error:
        record_invalid(api, kind, obj, error)
        return
    owner, previous = Owner.of(obj), obj.get("status") or {}
    deps = dependencies(api, deployment, owner.namespace, store, previous)
    served = api.read("Deployment", owner.namespace, render.server_name(owner.name))
    children, digest = [], None
    model = deps.outputs.get("spec.modelRef")
    if model is not None:
        try:
            config = render.serve_config(deployment, model["uri"], store)
        except RenderError as error:
            record_invalid(api, kind, obj, error)
            return
        digest = render.model_digest(model, config)
        children = render.children(owner, deployment, config, digest, SETTINGS.defaults, store)
    now = datetime.datetime.now(datetime.UTC)
    generation = obj["metadata"].get("generation", 1)
    status, roll = render.decide(previous, generation, deps, served, digest, owner, now)
    if model is not None and roll:
        image = children[1]["spec"]["template"]["spec"]["containers"][0]["image"]
        inputs = [
            {
                "uri": model["uri"],
                "kind": deployment.spec.model_ref.kind,
                "name": deployment.spec.model_ref.name,
                **_digest(model),
            }
        ]
        status["lineage"] = {
            "inputs": inputs,
            "outputs": render.outputs(status["endpoint"], config),
            "image": image,
        }
    patch = status_patch(previous, status)
    if patch:
        api.patch_status(kind.plural, owner.namespace, owner.name, patch)
    if status.get("phase") != previous.get("phase"):
        waiting = condition(status, c.WAITING) or {}
        gated = waiting.get("status") == "True"
        message = waiting.get("message", "") if gated else status.get("endpoint", "")
        kind_ = "Warning" if waiting.get("reason") == c.GATE_FAILED and gated else "Normal"
        kopf.event(obj, type=kind_, reason=status["phase"], message=message or status["phase"])
    if roll:
        for child in children:
            api.apply(child)


def _digest(model: dict[str, Any]) -> dict[str, str]:
    return {"digest": model["digest"]} if model.get("digest") else {}


KIND = Kind("Deployment", reconcile=reconcile)


register(KIND)
