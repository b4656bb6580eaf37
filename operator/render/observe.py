"""Pods as the operator needs to see them, and why one failed.

torchrun exits 1 whatever its worker exited with; the worker's own code is in torchrun's failure
summary, which FallbackToLogsOnError puts into the termination message. What the codes mean is
the jobs' protocol (operator/api/events.py): 2 a configuration error, which retrying cannot help;
3 a collective that timed out; 143 a checkpoint written after SIGTERM. A rendezvous that timed
out is torchrun's own error, recognised in its log.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Any, NamedTuple

from lmforge.operator.api import conditions
from lmforge.operator.api.events import Exit, last_error
from lmforge.operator.render.names import ATTEMPT, INDEX, ROLE

_ROOT_CAUSE = re.compile(r"exitcode\s*:\s*(-?\d+)")
_RENDEZVOUS = re.compile(r"Dist(?:Store|Network)Error: (.*timed out.*)", re.IGNORECASE)
"""torchrun's static rendezvous (a TCPStore) giving up on the other nodes, or on the first."""
_NCCL_WATCHDOG = "Watchdog caught collective operation timeout"
"""NCCL aborts the process on a collective timeout instead of raising."""
_PREEMPTION = {
    "Preempted",
    "PreemptionByScheduler",
    "DeletionByTaintManager",
    "TerminationByKubelet",
    "EvictionByEvictionAPI",
}


@dataclass(frozen=True)
class PodState:
    name: str
    role: str
    index: int
    attempt: int
    phase: str
    terminating: bool = False
    exit_code: int | None = None
    reason: str = ""
    """The container's terminated reason (OOMKilled, Error) or else the pod's (Evicted)."""
    message: str = ""
    """The termination message (the log's tail on failure) or the pod's status message."""
    waiting: str = ""
    """Why a container is not running yet (ImagePullBackOff: ...), if it says."""
    disrupted: bool = False
    """A DisruptionTarget condition (preempted, evicted, its node going away) or Kueue's
    TerminationTarget (its Workload was evicted)."""
    gated: bool = False
    """Held by a scheduling gate (Kueue's, until its pod group is admitted)."""
    finished_at: str = ""
    """When the deciding container terminated (RFC 3339, to the second), if it did."""

    @property
    def active(self) -> bool:
        return self.phase in ("Pending", "Running") and not self.terminating


def _container(status: dict[str, Any]) -> dict[str, Any]:
    """The status of the container that decides: one that failed, else the first."""
    containers = status.get("containerStatuses") or []
    for container in containers:
        terminated = (container.get("state") or {}).get("terminated") or {}
        if terminated.get("exitCode"):
            return container
    return containers[0] if containers else {}


def observe(pod: dict[str, Any]) -> PodState:
    meta, status = pod["metadata"], pod.get("status") or {}
    labels = meta.get("labels") or {}
    state = _container(status).get("state") or {}
    terminated, waiting = state.get("terminated") or {}, state.get("waiting") or {}
    disrupted = any(
        cond.get("type") in ("DisruptionTarget", "TerminationTarget")
        and cond.get("status") == "True"
        for cond in status.get("conditions") or []
    )
    waiting_text = ": ".join(filter(None, (waiting.get("reason"), waiting.get("message"))))
    return PodState(
        name=meta["name"],
        role=labels.get(ROLE, ""),
        index=int(labels.get(INDEX, 0)),
        attempt=int(labels.get(ATTEMPT, 0)),
        phase=status.get("phase", "Pending"),
        terminating=bool(meta.get("deletionTimestamp")),
        exit_code=terminated.get("exitCode"),
        reason=terminated.get("reason") or status.get("reason") or "",
        message=terminated.get("message") or status.get("message") or "",
        waiting="" if waiting.get("reason") == "ContainerCreating" else waiting_text,
        disrupted=disrupted,
        gated=bool((pod.get("spec") or {}).get("schedulingGates")),
        finished_at=terminated.get("finishedAt") or "",
    )


class Admission(NamedTuple):
    """Where a Kueue pod group's Workload stands."""

    admitted: bool
    reason: str
    message: str


def admission(workload: dict[str, Any] | None) -> Admission:
    """Kueue's word on a pod group: its Workload's QuotaReserved condition (or, before Kueue
    made one, that it waits for the whole group)."""
    found = {c.get("type"): c for c in ((workload or {}).get("status") or {}).get("conditions", [])}
    reserved = found.get("QuotaReserved")
    if reserved is None:
        return Admission(False, "WaitingForPods", "Kueue has not made the pod group's Workload yet")
    ok = reserved.get("status") == "True"
    return Admission(ok, reserved.get("reason", ""), reserved.get("message", ""))


class Failure(NamedTuple):
    reason: str
    message: str
    retryable: bool


def job_exit_code(pod: PodState) -> int | None:
    """The job's own exit code: torchrun's root cause when the message has one."""
    found = _ROOT_CAUSE.findall(pod.message)
    return int(found[0]) if found else pod.exit_code


def _last_error(pod: PodState) -> str:
    found = last_error(pod.message)
    return f": {found}" if found else ""


def failure(pod: PodState) -> Failure | None:
    """Why `pod` failed, or None if it did not."""
    if pod.phase == "Unknown":
        return Failure(conditions.WORKER_LOST, f"{pod.name}: its node stopped reporting", True)
    if pod.phase != "Failed":
        return None
    code = job_exit_code(pod)
    if pod.reason == "Evicted":
        return Failure(
            conditions.EVICTED, f"{pod.name} was evicted: {pod.message}".rstrip(": "), True
        )
    if pod.disrupted or pod.reason in _PREEMPTION or code == Exit.PREEMPTED:
        return Failure(
            conditions.PREEMPTED, f"{pod.name} was preempted (stopped with SIGTERM)", True
        )
    if pod.reason == "OOMKilled":
        message = f"{pod.name} ran out of memory (OOMKilled): raise spec.resources.memory"
        return Failure(conditions.OOM_KILLED, message, True)
    if pod.reason == "DeadlineExceeded":
        return Failure(
            conditions.DEADLINE_EXCEEDED, f"{pod.name}: {pod.message}".rstrip(": "), False
        )
    rendezvous = _RENDEZVOUS.search(pod.message)
    if rendezvous:
        message = (
            f"{pod.name}: the gang's workers did not all meet within"
            f" runPolicy.rendezvousTimeoutSeconds: {rendezvous.group(1).strip()}"
        )
        return Failure(conditions.RENDEZVOUS_TIMEOUT, message, True)
    if code == Exit.TIMED_OUT or _NCCL_WATCHDOG in pod.message:
        message = f"{pod.name}: a collective timed out{_last_error(pod)}"
        return Failure(conditions.COLLECTIVE_TIMEOUT, message, True)
    if code == Exit.CONFIG_ERROR:
        return Failure(
            conditions.CONFIG_ERROR, f"{pod.name}: configuration error{_last_error(pod)}", False
        )
    return Failure(conditions.JOB_FAILED, f"{pod.name} exited with {code}{_last_error(pod)}", True)


def lost(name: str) -> Failure:
    return Failure(
        conditions.WORKER_LOST, f"{name} disappeared (deleted or its node was lost)", True
    )
