"""PretrainJob: a gang of torchrun workers and their rendezvous Service, restarted as a whole.
`gang_work` is every training kind's pass (FineTune and RewardModel too); they differ only in
their config and inputs."""

from __future__ import annotations

from typing import Any

from ..api.pretrainjob import PretrainJob
from ..api.training import TrainingWorkload
from ..render import training
from ..render.gang import decide_gang
from ..render.inputs import Dependencies
from ..render.names import Owner
from ..render.observe import PodState
from ..render.pods import StorageSettings
from ..render.status import Observed, Plan
from .reconcile import Children, Kind, Work, register
from .settings import Settings


def worker_zero(
    pods: tuple[PodState, ...], previous: dict[str, Any]
) -> tuple[PodState, str] | None:
    """Rank 0 runs on worker 0 of the current attempt, and only rank 0 reports progress."""
    attempt = previous.get("restarts", 0)
    for pod in pods:
        if pod.role == training.WORKER and pod.index == 0 and pod.attempt == attempt:
            return (pod, "trainer") if not pod.terminating else None
    return None


def gang_work(
    spec: TrainingWorkload,
    owner: Owner,
    config: dict[str, Any] | None,
    lineage: dict[str, Any] | None,
    store: StorageSettings,
    settings: Settings,
    traceparent: str | None,
) -> Work:
    """The pass of a training kind: its gang of workers for `config`, or nothing to render while
    `config` is None (waiting for its inputs)."""
    training.check_names(owner.name, spec.resources.nodes)

    def decide(observed: Observed) -> Plan:
        return decide_gang(observed, owner.name, spec.resources.nodes)

    if config is None:
        return Work(decide, None, worker_zero)

    def render(attempt: int) -> Children:
        gang = training.gang(owner, spec, config, attempt, settings.defaults, store, traceparent)
        return [gang.config_map, gang.service], gang.pods

    return Work(decide, render, worker_zero, lineage)


def build(
    job: PretrainJob,
    owner: Owner,
    deps: Dependencies,
    store: StorageSettings,
    settings: Settings,
    traceparent: str | None,
) -> Work:
    spec, config, lineage = job.spec, None, None
    dataset = deps.outputs.get("spec.datasetRef")
    if dataset is not None:
        config = training.pretrain_config(job, dataset["uri"], store)
        image = spec.resources.image or settings.defaults.image
        lineage = training.pretrain_lineage(
            config, spec.dataset_ref.name, dataset.get("digest"), image
        )
    return gang_work(spec, owner, config, lineage, store, settings, traceparent)


KIND = Kind("PretrainJob", build)


register(KIND)
