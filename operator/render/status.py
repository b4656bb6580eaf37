"""Status logic shared by every kind: conditions, the lifecycle gates every pass goes through
(finished, suspended, waiting for references, past its deadline), the events a change deserves,
and the patch that writes a new status only where it differs.

Everything is a function of what was observed, passed in as `Observed`; a decision is a `Plan`
the handler carries out: write the status, then delete and create pods.
"""

from __future__ import annotations

import copy
import datetime
from dataclasses import dataclass
from typing import Any, NamedTuple

from ..api import conditions as c
from ..api import conditions as r
from ..api.common import RunPolicy
from .inputs import Dependencies
from .observe import Failure, PodState

TERMINAL = ("Succeeded", "Failed")
FAILED_PEER_GRACE_SECONDS = 30
"""A gang with a failed or lost worker cannot checkpoint (saving is collective): its other
workers get this long, not their full grace period, when they are deleted."""


def timestamp(now: datetime.datetime) -> str:
    return now.astimezone(datetime.UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


def parse_time(text: str) -> datetime.datetime:
    return datetime.datetime.strptime(text, "%Y-%m-%dT%H:%M:%SZ").replace(tzinfo=datetime.UTC)


@dataclass(frozen=True)
class Observed:
    """Everything one pass read, for a decision that reads nothing else."""

    previous: dict[str, Any]
    """The resource's status as read (empty when it has none)."""
    generation: int
    run_policy: RunPolicy
    dependencies: Dependencies
    pods: tuple[PodState, ...]
    now: datetime.datetime
    events: tuple[dict[str, Any], ...] = ()
    """Progress events read from the main pod, oldest first."""
    lineage: dict[str, Any] | None = None
    """Inputs, outputs and image as rendered; recorded once the references resolved."""


@dataclass
class Plan:
    """What a pass does: patch status, then delete pods, then create the missing ones."""

    status: dict[str, Any]
    attempt: int
    create: tuple[str, ...] = ()
    """Names of pods of `attempt` to create, with the objects they need."""
    delete: tuple[str, ...] = ()
    cleanup: bool = False
    """ttlSecondsAfterFinished has passed: delete every child object."""
    grace_seconds: int | None = None
    """For the deletions; None: the pods' own grace period, for a checkpoint on SIGTERM."""


def set_condition(
    status: dict[str, Any],
    type_: str,
    value: bool,
    reason: str,
    message: str,
    now: datetime.datetime,
) -> None:
    """Add or update a condition; lastTransitionTime moves only when its status flips."""
    text = "True" if value else "False"
    conditions = [dict(x) for x in status.get("conditions", [])]
    found = next((x for x in conditions if x["type"] == type_), None)
    if found is None:
        found = {"type": type_, "lastTransitionTime": timestamp(now)}
        conditions.append(found)
    elif found.get("status") != text:
        found["lastTransitionTime"] = timestamp(now)
    found.update(status=text, reason=reason, message=message)
    if status.get("observedGeneration") is not None:
        found["observedGeneration"] = status["observedGeneration"]
    status["conditions"] = conditions


def condition(status: dict[str, Any], type_: str) -> dict[str, Any] | None:
    return next((x for x in status.get("conditions", []) if x["type"] == type_), None)


def begin(o: Observed) -> dict[str, Any]:
    status = copy.deepcopy(o.previous)
    status["observedGeneration"] = o.generation
    return status


def fail(status: dict[str, Any], reason: str, message: str, now: datetime.datetime) -> None:
    status["phase"] = "Failed"
    status.setdefault("completionTime", timestamp(now))
    set_condition(status, c.RUNNING, False, reason, message, now)
    set_condition(status, c.FAILED, True, reason, message, now)


def succeed(status: dict[str, Any], message: str, now: datetime.datetime) -> None:
    status["phase"] = "Succeeded"
    status.setdefault("completionTime", timestamp(now))
    set_condition(status, c.RUNNING, False, c.COMPLETED, message, now)
    set_condition(status, c.SUCCEEDED, True, c.COMPLETED, message, now)


def run_state(
    status: dict[str, Any], running: bool, reason: str, message: str, now: datetime.datetime
) -> None:
    status["phase"] = "Running" if running else "Pending"
    set_condition(status, c.RUNNING, running, reason, message, now)


def ttl_expired(status: dict[str, Any], policy: RunPolicy, now: datetime.datetime) -> bool:
    ttl, done = policy.ttl_seconds_after_finished, status.get("completionTime")
    if ttl is None or not done:
        return False
    return now >= parse_time(done) + datetime.timedelta(seconds=ttl)


def deadline_exceeded(status: dict[str, Any], policy: RunPolicy, now: datetime.datetime) -> bool:
    limit, started = policy.active_deadline_seconds, status.get("startTime")
    if limit is None or not started:
        return False
    return now >= parse_time(started) + datetime.timedelta(seconds=limit)


def _suspend(status: dict[str, Any], now: datetime.datetime) -> None:
    message = "runPolicy.suspend is true: pods deleted, checkpoints kept"
    status["phase"] = "Suspended"
    set_condition(status, r.SUSPENDED, True, r.SUSPENDED, message, now)
    set_condition(status, c.RUNNING, False, r.SUSPENDED, message, now)


def _resume(status: dict[str, Any], now: datetime.datetime) -> None:
    # As a batch Job does: the deadline counts from the resume, not from the first start.
    status["phase"] = "Pending"
    status.pop("startTime", None)
    set_condition(status, r.SUSPENDED, False, r.RESUMED, "runPolicy.suspend is false", now)


def _dependencies(status: dict[str, Any], o: Observed) -> bool:
    """Record what the resource waits for or failed on; True when it cannot proceed."""
    deps = o.dependencies
    if deps.failed:
        fail(status, c.DEPENDENCY_FAILED, "; ".join(deps.failed), o.now)
        return True
    if deps.waiting:
        status["phase"] = "Waiting"
        set_condition(
            status, c.WAITING, True, c.DEPENDENCY_NOT_READY, "; ".join(deps.waiting), o.now
        )
        return True
    if condition(status, c.WAITING):
        set_condition(status, c.WAITING, False, r.DEPENDENCIES_READY, "", o.now)
    return False


def preamble(status: dict[str, Any], o: Observed, attempt: int) -> Plan | None:
    """The gates before any pod is looked at; a Plan when the pass ends at one of them."""
    active = tuple(p.name for p in o.pods if p.active)
    phase = status.get("phase")
    if phase in TERMINAL:  # final: free what still runs, keep finished pods for their logs
        return Plan(
            status, attempt, delete=active, cleanup=ttl_expired(status, o.run_policy, o.now)
        )
    if o.run_policy.suspend:
        _suspend(status, o.now)
        return Plan(status, attempt, delete=active)
    if phase == "Suspended":
        _resume(status, o.now)
    # References matter until the pods run with what they resolved to (a restart re-renders).
    if not active and _dependencies(status, o):
        return Plan(status, attempt)
    if o.lineage:
        kept = (status.get("lineage") or {}).get("parentCheckpoint")
        status["lineage"] = {**o.lineage, **({"parentCheckpoint": kept} if kept else {})}
    status.setdefault("startTime", timestamp(o.now))
    if deadline_exceeded(status, o.run_policy, o.now):
        limit = o.run_policy.active_deadline_seconds
        fail(
            status,
            r.DEADLINE_EXCEEDED,
            f"ran longer than runPolicy.activeDeadlineSeconds ({limit} s)",
            o.now,
        )
        return Plan(status, attempt, delete=active)
    return None


def retry_or_fail(
    status: dict[str, Any], o: Observed, attempt: int, fault: Failure, what: str
) -> bool:
    """Record a failure of attempt `attempt`; True when another attempt should start."""
    limit = o.run_policy.backoff_limit
    if not fault.retryable:
        fail(status, fault.reason, fault.message, o.now)
        return False
    if attempt >= limit:
        message = (
            f"{fault.message}; {what} was restarted {attempt} times, the limit in"
            f" runPolicy.backoffLimit"
        )
        fail(status, r.BACKOFF_LIMIT_EXCEEDED, message, o.now)
        return False
    message = f"{fault.message}: restarting {what} ({attempt + 1} of {limit})"
    run_state(status, False, r.RESTARTING, message, o.now)
    return True


class Event(NamedTuple):
    type: str
    """Normal or Warning."""
    reason: str
    message: str


def _phase_event(new: dict[str, Any]) -> Event | None:
    phase = new.get("phase")
    if phase == "Failed":
        failed = condition(new, c.FAILED) or {}
        return Event("Warning", failed.get("reason", "Failed"), failed.get("message", ""))
    types = {"Succeeded": c.SUCCEEDED, "Waiting": c.WAITING, "Suspended": r.SUSPENDED}
    found = condition(new, types.get(phase, c.RUNNING)) or {}
    if not found:
        return None
    return Event("Normal", phase if phase != "Pending" else found["reason"], found["message"])


def _restarted(old: dict[str, Any], new: dict[str, Any]) -> bool:
    running, before = condition(new, c.RUNNING) or {}, condition(old, c.RUNNING) or {}
    if running.get("reason") != r.RESTARTING:
        return False
    return before.get("reason") != r.RESTARTING or new.get("restarts", 0) > old.get("restarts", 0)


def transition_events(old: dict[str, Any], new: dict[str, Any]) -> list[Event]:
    """The Kubernetes events a status change deserves: a phase change, a restart, a checkpoint."""
    events = []
    if _restarted(old, new):
        running = condition(new, c.RUNNING) or {}
        events.append(Event("Warning", r.RESTARTING, running.get("message", "")))
    elif new.get("phase") != old.get("phase"):
        event = _phase_event(new)
        events += [event] if event else []
    checkpoint = new.get("lastCheckpoint")
    if checkpoint and checkpoint != old.get("lastCheckpoint"):
        message = f"step {checkpoint['step']} saved to {checkpoint['uri']}"
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
