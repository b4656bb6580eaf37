"""The decision for a training gang: N worker pods of one attempt that succeed, fail and restart
together. The attempt is status.restarts; every pod carries it as a label, so pods of an older
attempt are recognised (and deleted) whatever happened between two passes, a crashed operator
included.
"""

from __future__ import annotations

from ..api import conditions as c
from ..api import conditions as r
from .observe import Failure, PodState, failure, lost
from .progress import apply_training_events
from .status import (
    FAILED_PEER_GRACE_SECONDS,
    Observed,
    Plan,
    begin,
    preamble,
    retry_or_fail,
    run_state,
    succeed,
)
from .training import WORKER, worker_name


def gang_failure(
    current: dict[int, PodState], names: list[str], phase: str | None
) -> Failure | None:
    """The first failed worker, or the first missing one once the gang had started."""
    for index in sorted(current):
        found = failure(current[index])
        if found:
            return found
    started = phase == "Running" or any(p.phase != "Pending" for p in current.values())
    missing = [name for i, name in enumerate(names) if i not in current]
    return lost(missing[0]) if started and missing else None


def _waiting_message(current: dict[int, PodState], nodes: int) -> str:
    for index in sorted(current):
        if current[index].waiting:
            return f"{current[index].name}: {current[index].waiting}"
    running = sum(p.phase == "Running" for p in current.values())
    return f"{running}/{nodes} workers running"


def decide_gang(o: Observed, name: str, nodes: int) -> Plan:
    """What to do with the gang of training resource `name` with `nodes` workers."""
    status = apply_training_events(begin(o), list(o.events))
    attempt = status.get("restarts", 0)
    early = preamble(status, o, attempt)
    if early:
        return early
    workers = [p for p in o.pods if p.role == WORKER]
    current = {p.index: p for p in workers if p.attempt == attempt and not p.terminating}
    stale = tuple(p.name for p in workers if p.attempt != attempt and not p.terminating)
    names = [worker_name(name, i) for i in range(nodes)]
    fault = gang_failure(current, names, status.get("phase"))
    if fault:
        whole = tuple(p.name for p in current.values()) + stale
        if retry_or_fail(status, o, attempt, fault, f"all {nodes} workers"):
            status["restarts"] = attempt + 1
            return Plan(status, attempt + 1, delete=whole, grace_seconds=FAILED_PEER_GRACE_SECONDS)
        active = tuple(p.name for p in workers if p.active)
        return Plan(status, attempt, delete=active, grace_seconds=FAILED_PEER_GRACE_SECONDS)
    if len(current) == nodes and all(p.phase == "Succeeded" for p in current.values()):
        succeed(status, f"all {nodes} workers finished", o.now)
        return Plan(status, attempt)
    missing = tuple(n for i, n in enumerate(names) if i not in current)
    if not missing and all(p.phase in ("Running", "Succeeded") for p in current.values()):
        run_state(status, True, c.STARTED, f"{nodes} workers running", o.now)
    else:
        run_state(status, False, r.CREATED, _waiting_message(current, nodes), o.now)
    # Names are reused across attempts: create only once no older pod holds one.
    busy = stale or any(p.terminating for p in workers)
    return Plan(status, attempt, create=() if busy else missing, delete=stale)
