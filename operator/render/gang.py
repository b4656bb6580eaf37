"""A training gang: N worker pods running torchrun, a headless Service for rendezvous, and the
job's config as a ConfigMap; and the decision for it. The workers of one attempt succeed, fail
and restart together. The attempt is status.restarts; every pod carries it as a label, so pods
of an older attempt are recognised (and deleted) whatever happened between two passes, a crashed
operator included. A later attempt's pods have names of their own (Kueue keeps a pod group's
failed pods until their replacements exist) and the same hostnames, so the rendezvous address
stays; they are created once no pod of an older attempt still runs.
"""

from __future__ import annotations

from typing import Any

from lmforge.operator.api import conditions
from lmforge.operator.api.common import TrainingStatus
from lmforge.operator.api.finetune import FineTune
from lmforge.operator.api.pretrainjob import PretrainJob
from lmforge.operator.api.rewardmodel import RewardModel
from lmforge.operator.api.training import SHARD_CACHE_ENV
from lmforge.operator.render.names import Owner, check_child_name, metadata
from lmforge.operator.render.observe import Failure, PodState, failure, lost
from lmforge.operator.render.pods import (
    CONFIG_FILE,
    Children,
    Rendering,
    grace_seconds,
    headless_service,
    pod,
)
from lmforge.operator.render.scheduling import queue
from lmforge.operator.render.status import (
    FAILED_PEER_GRACE_SECONDS,
    TERMINAL,
    Decision,
    Observed,
    begin,
    preamble,
    queued,
    retry_or_fail,
    run_state,
)
from lmforge.operator.stages.base import (
    RENDEZVOUS_PORT,
    SHUTDOWN_MARGIN_SECONDS,
    Rendezvous,
    SpecError,
    Stage,
    command,
)

WORKER = "worker"
RENDEZVOUS = "rendezvous"
CONTAINER = "trainer"
SHARD_CACHE = "/var/cache/lmforge"


def worker_name(name: str, index: int, attempt: int = 0) -> str:
    """The pod; also its hostname (attempt 0's name) in the rendezvous Service."""
    return f"{name}-worker-{index}" + (f"-{attempt}" if attempt else "")


def service_name(name: str) -> str:
    return f"{name}-workers"


def config_name(name: str) -> str:
    return f"{name}-config"


def worker_address(owner: Owner, index: int) -> str:
    """The DNS name the headless Service gives a worker (hostname + subdomain)."""
    return f"{worker_name(owner.name, index)}.{service_name(owner.name)}.{owner.namespace}.svc"


class Gang:
    """How the operator runs a training stage (PretrainJob, FineTune, RewardModel)."""

    def check(self, owner: Owner, resource: PretrainJob | FineTune | RewardModel) -> None:
        """SpecError naming metadata.name when a child's name would not be a valid hostname, or
        resources.minNodes when the gang waits in a Kueue queue."""
        last = worker_name(owner.name, resource.spec.resources.nodes - 1)
        check_child_name(last, "last worker pod")  # a hostname: later attempts' names are longer
        check_child_name(service_name(owner.name), "rendezvous Service")
        if resource.spec.resources.min_nodes and queue(resource):
            raise SpecError(
                "spec.resources.minNodes",
                f"an elastic gang cannot wait in a Kueue queue ({queue(resource)}): Kueue admits"
                " a pod group of a fixed size; remove minNodes or the queue",
            )

    def children(self, r: Rendering, attempt: int) -> Children:
        """(the ConfigMap and the rendezvous Service, the worker pods of attempt `attempt`)."""
        self.check(r.owner, r.resource)
        pods = [self.worker(r, i, attempt) for i in range(r.resources.nodes)]
        name = r.owner.name
        service = headless_service(
            r.owner, service_name(name), RENDEZVOUS, WORKER, {RENDEZVOUS: RENDEZVOUS_PORT}
        )
        return [r.config_map(config_name(name)), service], pods

    def worker(self, r: Rendering, index: int, attempt: int) -> dict[str, Any]:
        name, hostname = worker_name(r.owner.name, index, attempt), worker_name(r.owner.name, index)
        grace = grace_seconds(r.resources, r.defaults)
        address = worker_address(r.owner, 0)
        meeting = Rendezvous(
            index,
            address,
            RENDEZVOUS_PORT,
            max(1, grace - SHUTDOWN_MARGIN_SECONDS),
            r.resource.spec.run_policy.rendezvous_timeout_seconds,
            r.resources.min_nodes,
            worker_address(r.owner, index),
            f"{r.owner.name}-{attempt}",
        )
        trainer = r.container(CONTAINER, command(r.description, CONFIG_FILE, rendezvous=meeting))
        trainer["env"] += [{"name": k, "value": v} for k, v in r.defaults.nccl]
        trainer["ports"] = [{"name": RENDEZVOUS, "containerPort": RENDEZVOUS_PORT}]
        if r.resources.min_nodes:
            # torch's shared rendezvous store publishes its address in the first round only, so
            # a node that joins a later round (a replacement) would wait for it forever.
            trainer["env"].append({"name": "TORCH_DISABLE_SHARE_RDZV_TCP_STORE", "value": "1"})
        volumes = []
        if isinstance(r.resource, PretrainJob):  # ranks cache the Dataset's remote shards here
            cache = r.resource.spec.training.data.cache_mib * r.resources.processes_per_node
            trainer["volumeMounts"].append({"name": "shards", "mountPath": SHARD_CACHE})
            trainer["env"].append({"name": SHARD_CACHE_ENV, "value": SHARD_CACHE})
            volumes.append({"name": "shards", "emptyDir": {"sizeLimit": f"{cache}Mi"}})
        if r.resources.gpus:  # NCCL needs more shared memory than a container's default 64 MiB
            trainer["volumeMounts"].append({"name": "dshm", "mountPath": "/dev/shm"})
            volumes.append({"name": "dshm", "emptyDir": {"medium": "Memory"}})
        meta = metadata(r.owner, name, WORKER, index=index, attempt=attempt)
        return pod(
            meta,
            [trainer],
            config_name(r.owner.name),
            r.resources,
            r.defaults,
            tuple(volumes),
            hostname=hostname,
            subdomain=service_name(r.owner.name),
        )

    def reporter(self, pods: tuple[PodState, ...], previous: TrainingStatus, stage: Stage):
        """Rank 0 runs on worker 0 of the current attempt, and only rank 0 reports progress."""
        for found in pods:
            if found.role == WORKER and found.index == 0 and found.attempt == previous.restarts:
                return (found, CONTAINER) if not found.terminating else None
        return None

    def decide(self, o: Observed, owner: Owner, resource, stage: Stage) -> Decision:
        """What to do with the gang of training resource `owner`."""
        nodes = resource.spec.resources.nodes
        status = begin(o)
        stage.progress(status, list(o.events))
        attempt = status.restarts
        early = preamble(status, o, attempt)
        if early:
            return early
        workers = [p for p in o.pods if p.role == WORKER]
        current = {p.index: p for p in workers if p.attempt == attempt and not p.terminating}
        going = [p for p in workers if p.attempt == attempt and p.terminating]
        stale = tuple(p.name for p in workers if p.attempt != attempt and not p.terminating)
        names = [worker_name(owner.name, i, attempt) for i in range(nodes)]
        replaced: tuple[str, ...] = ()
        elastic = resource.spec.resources.min_nodes is not None
        if elastic:  # a worker but 0 that the cluster took is replaced alone; the rest go on
            lost_ones = [p for i, p in current.items() if i > 0 and _replaceable(p)]
            replaced = tuple(p.name for p in lost_ones)
            current = {i: p for i, p in current.items() if p not in lost_ones}
            going = [p for p in going if p.index == 0]
        required = names[:1] if elastic else names
        fault = gang_failure(current, required, status.phase, going) or stalled(o, status)
        if fault:
            whole = tuple(p.name for p in current.values()) + stale
            grace = FAILED_PEER_GRACE_SECONDS
            if retry_or_fail(status, o, attempt, fault, f"all {nodes} workers"):
                return Decision(status, attempt + 1, delete=whole, grace_seconds=grace)
            active = tuple(p.name for p in workers if p.active)
            return Decision(status, attempt, delete=active, grace_seconds=grace)
        if len(current) == nodes and all(p.phase == "Succeeded" for p in current.values()):
            status.succeed(f"all {nodes} workers finished", o.now)
            return Decision(status, attempt)
        # Elastic: rank 0 exported the model; a replacement that never got to run is not needed.
        done = 0 in current and current[0].phase == "Succeeded"
        if elastic and done and all(p.phase in ("Succeeded", "Pending") for p in current.values()):
            finished = sum(p.phase == "Succeeded" for p in current.values())
            status.succeed(f"{finished} of {nodes} workers finished (elastic)", o.now)
            waiting = tuple(p.name for p in current.values() if p.phase == "Pending")
            return Decision(status, attempt, delete=waiting)
        missing = tuple(n for i, n in enumerate(names) if i not in current)
        if not missing and all(p.phase in ("Running", "Succeeded") for p in current.values()):
            run_state(status, True, conditions.STARTED, f"{nodes} workers running", o.now)
        elif elastic and status.phase == "Running" and 0 in current:  # smaller for a while
            running = sum(p.phase == "Running" for p in current.values())
            message = f"{running}/{nodes} workers running (elastic: lost workers are replaced)"
            run_state(status, True, conditions.STARTED, message, o.now)
        elif not queued(status, o, list(current.values())):
            run_state(status, False, conditions.CREATED, _waiting(current, nodes), o.now)
        # An older attempt must be over first: its workers hold the hostnames and resources;
        # so must a replaced worker, whose name its replacement takes.
        older = [p for p in workers if p.attempt != attempt or p.terminating]
        busy = stale or any(p.phase not in TERMINAL for p in older)
        taken = {p.name for p in workers}
        create = () if busy else tuple(n for n in missing if n not in taken)
        return Decision(status, attempt, create=create, delete=stale + replaced)


def _cause_first(found: tuple[Failure, PodState]) -> tuple[bool, str, int]:
    """Orders failed workers: another class before torchrun's plain exit 1, then the earliest."""
    fault, pod = found
    plain = fault.reason == conditions.JOB_FAILED and (pod.exit_code or 0) <= 128
    return plain, pod.finished_at, pod.index


def gang_failure(
    current: dict[int, PodState], names: list[str], phase: str | None, going: list[PodState]
) -> Failure | None:
    """The failed worker that started it, or one of this attempt that someone else is deleting
    (Kueue's preemption, a drain), or the first missing one once the gang had started. When
    several failed, torchrun's plain exit 1 (one of its ranks raised) is most likely what a
    lost peer did to them: the cause is a failure of another class (OOMKilled, a signal's exit
    code) if there is one, else the earliest."""
    failed = [(f, p) for p in current.values() if (f := failure(p))]
    if failed:
        return min(failed, key=_cause_first)[0]
    for leaving in going:
        if leaving.disrupted or leaving.phase == "Failed":
            preempted = f"{leaving.name} was preempted (stopped with SIGTERM)"
            return failure(leaving) or Failure(conditions.PREEMPTED, preempted, True)
    started = phase == "Running" or any(p.phase != "Pending" for p in current.values())
    missing = [name for i, name in enumerate(names) if i not in current]
    return lost(missing[0]) if started and missing else None


def _replaceable(pod: PodState) -> bool:
    """An elastic gang's worker that the cluster took away (deleted, evicted, preempted, its
    node lost), not one whose code failed: the others go on without it until it is back."""
    found = failure(pod)
    return found is not None and found.reason in _REPLACEABLE


_REPLACEABLE = (conditions.WORKER_LOST, conditions.EVICTED, conditions.PREEMPTED)


def stalled(o: Observed, status: TrainingStatus) -> Failure | None:
    """A running gang whose rank 0 reported nothing for runPolicy.progressTimeoutSeconds: hung
    somewhere no timeout of its own catches (a deadlock, storage that never answers)."""
    limit = o.run_policy.progress_timeout_seconds
    times = [e["time"] for e in o.events if isinstance(e.get("time"), int | float)]
    if not limit or status.phase != "Running" or not times:
        return None
    quiet = int(o.now.timestamp() - max(times))
    if quiet < limit:
        return None
    message = (
        f"no progress reported for {quiet} s (last at step {status.step}), longer than"
        f" runPolicy.progressTimeoutSeconds ({limit})"
    )
    return Failure(conditions.PROGRESS_TIMEOUT, message, True)


def _waiting(current: dict[int, PodState], nodes: int) -> str:
    for index in sorted(current):
        if current[index].waiting:
            return f"{current[index].name}: {current[index].waiting}"
    running = sum(p.phase == "Running" for p in current.values())
    return f"{running}/{nodes} workers running"


GANG = Gang()
