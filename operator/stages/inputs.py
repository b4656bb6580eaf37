"""What a resource's references resolve to: ready outputs, or what it waits for, or what failed.
Both backends read the referenced resources as API objects (the operator from the API server,
`lmforge run` from its state folder) and decide the same way."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any, NamedTuple

from lmforge.operator.api import KINDS
from lmforge.operator.api.base import Reference
from lmforge.operator.api.common import Artifact
from lmforge.operator.api.conditions import FAILED
from lmforge.operator.api.resource import Resource


class Dependencies(NamedTuple):
    waiting: list[str]
    """One message per reference that is not ready yet, naming the field."""
    failed: list[str]
    """One message per reference that failed (or whose output is unusable)."""
    outputs: dict[str, Artifact]
    """field (spec.datasetRef, spec.tasks[0].datasetRef, ...) -> the referenced output."""

    @property
    def ready(self) -> bool:
        return not self.waiting and not self.failed


def _failure_message(status: dict[str, Any]) -> str:
    for condition in status.get("conditions", []):
        if condition.get("type") == FAILED and condition.get("status") == "True":
            return condition.get("message") or condition.get("reason", "")
    return ""


def _check(ref: Reference, obj: dict[str, Any] | None) -> tuple[str, str | Artifact]:
    """("wait" | "fail", message) or ("ready", output)."""
    what = f"{ref.field}: {ref.kind}/{ref.name}"
    if obj is None:
        return "wait", f"{what} does not exist yet"
    status = obj.get("status") or {}
    phase = status.get("phase")
    if phase == "Failed":
        reason = _failure_message(status)
        return "fail", f"{what} failed" + (f": {reason}" if reason else "")
    if phase != KINDS[ref.kind].ready_phase:
        return "wait", f"{what} is {phase or 'not started'}"
    outputs = (status.get("lineage") or {}).get("outputs") or []
    outputs = [o for o in outputs if ref.output in (None, o.get("kind"))]
    if not outputs:
        wanted = f"no {ref.output} output" if ref.output else "no output"
        return "fail", f"{what} is {phase} but records {wanted} in status.lineage.outputs"
    return "ready", Artifact.model_validate(outputs[0])


def resolve(
    resource: Resource, found: Mapping[tuple[str, str], dict[str, Any] | None]
) -> Dependencies:
    """`found` maps (kind, name) of every reference to the object as read (or None)."""
    deps = Dependencies([], [], {})
    for ref in resource.references():
        state, value = _check(ref, found.get((ref.kind, ref.name)))
        if state == "wait":
            deps.waiting.append(value)
        elif state == "fail":
            deps.failed.append(value)
        else:
            deps.outputs[ref.field] = value
    return deps
