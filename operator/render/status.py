"""Status logic every job's pass shares: the lifecycle gates every pass goes through (finished,
suspended, waiting for references, past its deadline), retries against the budget, the events a
change deserves, and the patch that writes a new status only where it differs.

Everything is a function of what was observed, passed in as `Observed`; what a pass does is a
`Decision` the handler carries out: write the status, then delete and create pods.
"""

from __future__ import annotations

import datetime
from dataclasses import dataclass
from typing import Any, NamedTuple

from lmforge.operator.api import conditions
from lmforge.operator.api.common import (
    FAILURE_CLASSES,
    Lineage,
    RunPolicy,
    Status,
    parse_time,
    timestamp,
)
from lmforge.operator.render.observe import Admission, Failure, PodState
from lmforge.operator.stages.inputs import Dependencies

TERMINAL = ("Succeeded", "Failed")
FAILED_PEER_GRACE_SECONDS = 30
"""A gang with a failed or lost worker cannot checkpoint (saving is collective): its other
workers get this long, not their full grace period, when they are deleted."""


@dataclass(frozen=True)
class Observed:
    """Everything one pass read, for a decision that reads nothing else."""

    previous: Status
    """The resource's status as read (empty when it has none), as the kind's Status model."""
    generation: int
    run_policy: RunPolicy
    dependencies: Dependencies
    pods: tuple[PodState, ...]
    now: datetime.datetime
    events: tuple[dict[str, Any], ...] = ()
    """Events read from the pod that reports them, oldest first."""
    lineage: Lineage | None = None
    """Inputs, outputs and image as described; recorded once the references resolved."""
    admission: Admission | None = None
    """Kueue's word on the pods' group; None when the resource names no queue."""


@dataclass
class Decision:
    """What a pass does: patch status, then delete pods, then create the missing ones."""

    status: Status
    attempt: int
    create: tuple[str, ...] = ()
    """Names of pods of `attempt` to create, with the objects they need."""
    delete: tuple[str, ...] = ()
    remove: tuple[tuple[str, str], ...] = ()
    """Other children to delete, as (kind, name): a finished Dataset's RayCluster."""
    cleanup: bool = False
    """ttlSecondsAfterFinished has passed: delete every child object."""
    grace_seconds: int | None = None
    """For the deletions; None: the pods' own grace period, for a checkpoint on SIGTERM."""


def begin(o: Observed) -> Status:
    status = o.previous.model_copy(deep=True)
    status.observed_generation = o.generation
    return status


def run_state(
    status: Status, running: bool, reason: str, message: str, now: datetime.datetime
) -> None:
    status.phase = "Running" if running else "Pending"
    status.set_condition(conditions.RUNNING, running, reason, message, now)
    if status.is_true(conditions.QUEUED):
        status.set_condition(conditions.QUEUED, False, conditions.ADMITTED, "", now)


def queued(status: Status, o: Observed, pods: list[PodState]) -> bool:
    """Pods of the attempt that Kueue still gates: phase Queued with Kueue's reason and
    message (`insufficient quota ...`); True when that is where the attempt stands."""
    if o.admission is None or o.admission.admitted or not any(p.gated for p in pods):
        return False
    reason, message = o.admission.reason or conditions.QUEUED, o.admission.message
    status.phase = "Queued"
    status.set_condition(conditions.QUEUED, True, reason, message, o.now)
    waiting = f"waiting in queue for admission: {message}".rstrip(": ")
    status.set_condition(conditions.RUNNING, False, conditions.QUEUED, waiting, o.now)
    return True


def ttl_expired(status: Status, policy: RunPolicy, now: datetime.datetime) -> bool:
    ttl, done = policy.ttl_seconds_after_finished, status.completion_time
    if ttl is None or not done:
        return False
    return now >= parse_time(done) + datetime.timedelta(seconds=ttl)


def deadline_exceeded(status: Status, policy: RunPolicy, now: datetime.datetime) -> bool:
    limit, started = policy.active_deadline_seconds, status.start_time
    if limit is None or not started:
        return False
    return now >= parse_time(started) + datetime.timedelta(seconds=limit)


def _suspend(status: Status, now: datetime.datetime) -> None:
    message = "runPolicy.suspend is true: pods deleted, checkpoints kept"
    status.phase = "Suspended"
    status.set_condition(conditions.SUSPENDED, True, conditions.SUSPENDED, message, now)
    status.set_condition(conditions.RUNNING, False, conditions.SUSPENDED, message, now)


def _resume(status: Status, now: datetime.datetime) -> None:
    # As a batch Job does: the deadline counts from the resume, not from the first start.
    status.phase = "Pending"
    status.start_time = None
    message = "runPolicy.suspend is false"
    status.set_condition(conditions.SUSPENDED, False, conditions.RESUMED, message, now)


def _dependencies(status: Status, o: Observed) -> bool:
    """Record what the resource waits for or failed on; True when it cannot proceed."""
    deps = o.dependencies
    if deps.failed:
        status.fail(conditions.DEPENDENCY_FAILED, "; ".join(deps.failed), o.now)
        return True
    if deps.waiting:
        status.phase = "Waiting"
        message = "; ".join(deps.waiting)
        status.set_condition(
            conditions.WAITING, True, conditions.DEPENDENCY_NOT_READY, message, o.now
        )
        return True
    if status.condition(conditions.WAITING):
        status.set_condition(conditions.WAITING, False, conditions.DEPENDENCIES_READY, "", o.now)
    return False


def preamble(status: Status, o: Observed, attempt: int) -> Decision | None:
    """The gates before any pod is looked at; a Decision when the pass ends at one of them."""
    active = tuple(p.name for p in o.pods if p.active)
    if status.phase in TERMINAL:  # final: free what still runs, keep finished pods for their logs
        expired = ttl_expired(status, o.run_policy, o.now)
        return Decision(status, attempt, delete=active, cleanup=expired)
    if o.run_policy.suspend:
        _suspend(status, o.now)
        return Decision(status, attempt, delete=active)
    if status.phase == "Suspended":
        _resume(status, o.now)
    # References matter until the pods run with what they resolved to (a restart re-renders).
    if not active and _dependencies(status, o):
        return Decision(status, attempt)
    if o.lineage:
        kept = status.lineage.parent_checkpoint if status.lineage else None
        status.lineage = o.lineage.model_copy(update={"parent_checkpoint": kept})
    status.start_time = status.start_time or timestamp(o.now)
    if deadline_exceeded(status, o.run_policy, o.now):
        limit = o.run_policy.active_deadline_seconds
        message = f"ran longer than runPolicy.activeDeadlineSeconds ({limit} s)"
        status.fail(conditions.DEADLINE_EXCEEDED, message, o.now)
        return Decision(status, attempt, delete=active)
    return None


def retry_or_fail(status: Status, o: Observed, attempt: int, fault: Failure, what: str) -> bool:
    """Record a failure of attempt `attempt` as runPolicy.failurePolicy says; True when attempt
    `attempt + 1` should start (status.restarts says so from here on)."""
    policy = o.run_policy
    action = policy.failure_policy.action(fault.reason) if fault.retryable else "FailJob"
    if action == "FailJob":
        status.fail(fault.reason, fault.message, o.now)
        return False
    if action == "Count":
        status.failures += 1
        if status.failures > policy.backoff_limit:
            message = (
                f"{fault.message}; {what} failed {status.failures} times, more than"
                f" runPolicy.backoffLimit ({policy.backoff_limit}) allows"
            )
            status.fail(conditions.BACKOFF_LIMIT_EXCEEDED, message, o.now)
            return False
        counted = f"failure {status.failures} of {policy.backoff_limit} allowed"
    else:
        counted = f"not counted: runPolicy.failurePolicy.{_policy_field(fault.reason)} is Ignore"
    message = f"{fault.message}: restarting {what} ({counted})"
    run_state(status, False, conditions.RESTARTING, message, o.now)
    status.restarts = attempt + 1
    return True


def _policy_field(reason: str) -> str:
    snake = FAILURE_CLASSES[reason]
    head, *rest = snake.split("_")
    return head + "".join(part.title() for part in rest)


class Event(NamedTuple):
    type: str
    """Normal or Warning."""
    reason: str
    message: str


def _phase_event(new: Status) -> Event | None:
    if new.phase == "Failed":
        failed = new.condition(conditions.FAILED)
        return Event(
            "Warning", failed.reason if failed else "Failed", failed.message if failed else ""
        )
    types = {
        "Succeeded": conditions.SUCCEEDED,
        "Waiting": conditions.WAITING,
        "Suspended": conditions.SUSPENDED,
        "Queued": conditions.QUEUED,
    }
    found = new.condition(types.get(new.phase, conditions.RUNNING))
    if not found:
        return None
    return Event("Normal", new.phase if new.phase != "Pending" else found.reason, found.message)


def _restarted(old: Status, new: Status) -> bool:
    running, before = new.condition(conditions.RUNNING), old.condition(conditions.RUNNING)
    if running is None or running.reason != conditions.RESTARTING:
        return False
    restarts = new.restarts > old.restarts
    return before is None or before.reason != conditions.RESTARTING or restarts


def transition_events(old: Status, new: Status) -> list[Event]:
    """The Kubernetes events a status change deserves: a phase change, a restart, a checkpoint."""
    events = []
    if _restarted(old, new):
        events.append(
            Event("Warning", conditions.RESTARTING, new.condition(conditions.RUNNING).message)
        )
    elif new.phase != old.phase:
        event = _phase_event(new)
        events += [event] if event else []
    checkpoint = getattr(new, "last_checkpoint", None)
    if checkpoint and checkpoint != getattr(old, "last_checkpoint", None):
        message = f"step {checkpoint.step} saved to {checkpoint.uri}"
        events.append(Event("Normal", "Checkpoint", message))
    return events


def status_patch(old: dict[str, Any], new: dict[str, Any]) -> dict[str, Any] | None:
    """A JSON merge patch from `old` to `new` (None when they are equal): changed keys only,
    removed keys as null, objects recursively; lists (conditions) are replaced whole."""
    patch: dict[str, Any] = {}
    for key, value in new.items():
        before = old.get(key)
        if isinstance(value, dict) and isinstance(before, dict):
            inner = status_patch(before, value)
            if inner is not None:
                patch[key] = inner
        elif key not in old or before != value:
            patch[key] = value
    for key in old.keys() - new.keys():
        patch[key] = None
    return patch or None
