"""A job with one main pod per attempt (Dataset, Evaluation), plus helper pods that live only
while the main one does (a Dataset's Ray workers, render/dataset.py); and the decision for it.

Each attempt's main pod has its own name (`<name>-<role>-<attempt>`), and a failed one is kept
with its logs, as a batch Job keeps them; the attempt is status.restarts (or a newer main pod's,
for a status written before restarts were recorded).
"""

from __future__ import annotations

from typing import Any

from lmforge.operator.api import conditions
from lmforge.operator.api.common import Status
from lmforge.operator.render.names import Owner, metadata
from lmforge.operator.render.observe import Failure, PodState, failure, lost
from lmforge.operator.render.pods import CONFIG_FILE, Children, Rendering, pod
from lmforge.operator.render.status import (
    Decision,
    Observed,
    begin,
    preamble,
    queued,
    retry_or_fail,
    run_state,
)
from lmforge.operator.stages.base import Stage, command


def main_pod_name(name: str, role: str, attempt: int) -> str:
    return f"{name}-{role}-{attempt}"


def config_name(name: str, role: str) -> str:
    return f"{name}-{role}-config"


class Job:
    """How the operator runs a stage whose job is one process."""

    def check(self, owner: Owner, resource: Any) -> None:
        """SpecError when a child's name would be invalid: any resource name will do here (the
        pods have no Service or hostname)."""

    def pod_names(self, owner: Owner, resource: Any, role: str, attempt: int) -> list[str]:
        """Every pod of attempt `attempt`, main pod first."""
        return [main_pod_name(owner.name, role, attempt)]

    def children(self, r: Rendering, attempt: int) -> Children:
        """(the ConfigMap, [the main pod of attempt `attempt`])."""
        return [r.config_map(config_name(r.owner.name, r.role))], [self.main_pod(r, attempt)]

    def main_pod(self, r: Rendering, attempt: int) -> dict[str, Any]:
        name = main_pod_name(r.owner.name, r.role, attempt)
        meta = metadata(r.owner, name, r.role, attempt=attempt)
        job = r.container(r.role, command(r.description, CONFIG_FILE))
        return pod(meta, [job], config_name(r.owner.name, r.role), r.resources, r.defaults)

    def reporter(self, pods: tuple[PodState, ...], previous: Status, stage: Stage):
        """The newest attempt's main pod: its `done` event has the job's summary."""
        mains = [p for p in pods if p.role == stage.role and not p.terminating]
        newest = max(mains, key=lambda p: p.attempt, default=None)
        return (newest, stage.role) if newest else None

    def decide(self, o: Observed, owner: Owner, resource: Any, stage: Stage) -> Decision:
        status = begin(o)
        role = stage.role
        mains = {p.attempt: p for p in o.pods if p.role == role}
        attempt = max(max(mains, default=0), status.restarts)
        early = preamble(status, o, attempt)
        if early:
            return early
        main, names = mains.get(attempt), self.pod_names(owner, resource, role, attempt)
        helpers = [p for p in o.pods if p.role != role]
        stale = tuple(p.name for p in helpers if p.attempt != attempt and p.active)
        fault = failure(main) if main else _lost_or_none(status, main, names[0])
        if fault:
            ours = tuple(p.name for p in helpers if p.active)
            ours += (main.name,) if main and main.active else ()
            if retry_or_fail(status, o, attempt, fault, "the job"):
                create = tuple(self.pod_names(owner, resource, role, attempt + 1))
                return Decision(status, attempt + 1, create=create, delete=ours)
            return Decision(status, attempt, delete=ours)
        if main is not None and main.phase == "Succeeded":
            _finish(status, o, stage, main)
            return Decision(status, attempt, delete=tuple(p.name for p in helpers if p.active))
        if main is not None and main.phase == "Running":
            run_state(status, True, conditions.STARTED, f"{main.name} running", o.now)
        elif not queued(status, o, [p for p in o.pods if p.attempt == attempt and p.active]):
            waiting = main.waiting if main and main.waiting else "creating"
            run_state(status, False, conditions.CREATED, f"{names[0]}: {waiting}", o.now)
        present = {p.name for p in o.pods}
        busy = main is not None and main.terminating
        create = () if busy else tuple(n for n in names if n not in present)
        return Decision(status, attempt, create=create, delete=stale)


def _finish(status: Status, o: Observed, stage: Stage, main: PodState) -> None:
    """The job succeeded: its summary into status, and the outcome (a gate may fail it)."""
    missed = stage.finish(status, list(o.events))
    if missed is not None:
        status.fail(conditions.GATE_FAILED, missed, o.now)
    else:
        status.succeed(f"{main.name} finished", o.now)


def _lost_or_none(status: Status, main: PodState | None, name: str) -> Failure | None:
    if main is None and status.phase == "Running":
        return lost(name)
    return None


JOB = Job()
