"""The decision for a job with one main pod per attempt (Dataset, Evaluation), plus helper pods
that live only while the main one does (Ray workers).

Each attempt's main pod has its own name, and a failed one is kept with its logs, as a batch
Job keeps them; the attempt number is the highest one among the main pods.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from ..api import conditions as c
from ..api import conditions as r
from .observe import Failure, PodState, failure, lost
from .status import Observed, Plan, begin, fail, preamble, retry_or_fail, run_state, succeed

Finish = Callable[[dict[str, Any], list[dict[str, Any]]], Failure | None]
"""Called when the main pod succeeded: records its results in the status (from its `done`
event, when it could be read) and returns a Failure if they fail the resource (a gate)."""


def _lost_or_none(status: dict[str, Any], main: PodState | None, name: str) -> Failure | None:
    if main is None and status.get("phase") == "Running":
        return lost(name)
    return None


def decide_job(
    o: Observed,
    main_role: str,
    pod_names: Callable[[int], list[str]],
    finish: Finish,
) -> Plan:
    """`pod_names(k)`: every pod of attempt k, main pod first."""
    status = begin(o)
    mains = {p.attempt: p for p in o.pods if p.role == main_role}
    attempt = max(mains, default=0)
    early = preamble(status, o, attempt)
    if early:
        return early
    main, names = mains.get(attempt), pod_names(attempt)
    helpers = [p for p in o.pods if p.role != main_role]
    stale = tuple(p.name for p in helpers if p.attempt != attempt and p.active)
    fault = failure(main) if main else _lost_or_none(status, main, names[0])
    if fault:
        ours = tuple(p.name for p in helpers if p.active) + (
            (main.name,) if main and main.active else ()
        )
        if retry_or_fail(status, o, attempt, fault, "the job"):
            return Plan(status, attempt + 1, create=tuple(pod_names(attempt + 1)), delete=ours)
        return Plan(status, attempt, delete=ours)
    if main is not None and main.phase == "Succeeded":
        gate = finish(status, list(o.events))
        if gate:
            fail(status, gate.reason, gate.message, o.now)
        else:
            succeed(status, f"{main.name} finished", o.now)
        return Plan(status, attempt, delete=tuple(p.name for p in helpers if p.active))
    if main is not None and main.phase == "Running":
        run_state(status, True, c.STARTED, f"{main.name} running", o.now)
    else:
        waiting = main.waiting if main and main.waiting else "creating"
        run_state(status, False, r.CREATED, f"{names[0]}: {waiting}", o.now)
    present = {p.name for p in o.pods}
    busy = main is not None and main.terminating
    create = () if busy else tuple(n for n in names if n not in present)
    return Plan(status, attempt, create=create, delete=stale)
