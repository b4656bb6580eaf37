"""PretrainJob: a gang of torchrun workers and their rendezvous Service, restarted as a whole."""

from __future__ import annotations

from typing import Any

from ..api.pretrainjob import PretrainJob
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


def build(
    job: PretrainJob,
    owner: Owner,
    deps: Dependencies,
    store: StorageSettings,
    settings: Settings,
    traceparent: str | None,
) -> Work:
    spec = job.spec
    training.check_names(owner.name, spec.resources.nodes)

    def decide(observed: Observed) -> Plan:
        return decide_gang(observed, owner.name, spec.resources.nodes)

    dataset = deps.outputs.get("spec.datasetRef")
    if dataset is None:  # waiting for the Dataset: nothing to render yet
        return Work(decide, None, worker_zero)
    config = training.pretrain_config(job, dataset["uri"], store)
    image = spec.resources.image or settings.defaults.image
    lineage = training.pretrain_lineage(config, spec.dataset_ref.name, dataset.get("digest"), image)

    def render(attempt: int) -> Children:
        gang = training.gang(owner, spec, config, attempt, settings.defaults, store, traceparent)
        return [gang.config_map, gang.service], gang.pods

    return Work(decide, render, worker_zero, lineage)


KIND = Kind("PretrainJob", build)


register(KIND)
