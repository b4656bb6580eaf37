"""Evaluation: one pod per attempt running the evaluation job, its thresholds a gate."""

from __future__ import annotations

from typing import Any

from ..api.evaluation import Evaluation
from ..render import evaluation as render
from ..render.inputs import Dependencies
from ..render.job import decide_job
from ..render.names import Owner
from ..render.observe import Failure, PodState
from ..render.pods import StorageSettings
from ..render.progress import latest
from ..render.status import Observed, Plan
from .reconcile import Children, Kind, Work, register
from .settings import Settings


def main_pod(pods: tuple[PodState, ...], previous: dict[str, Any]) -> tuple[PodState, str] | None:
    mains = [p for p in pods if p.role == render.MAIN and not p.terminating]
    newest = max(mains, key=lambda p: p.attempt, default=None)
    return (newest, render.MAIN) if newest else None


def _dataset_uris(evaluation: Evaluation, deps: Dependencies) -> dict[str, str] | None:
    """Task name -> the referenced Dataset's output; None until every one resolved."""
    uris = {}
    for i, task in enumerate(evaluation.spec.tasks):
        if task.dataset_ref:
            found = deps.outputs.get(f"spec.tasks[{i}].datasetRef")
            if found is None:
                return None
            uris[task.name] = found["uri"]
    return uris


def build(
    evaluation: Evaluation,
    owner: Owner,
    deps: Dependencies,
    store: StorageSettings,
    settings: Settings,
    traceparent: str | None,
) -> Work:
    def names(attempt: int) -> list[str]:
        return [render.main_pod_name(owner.name, attempt)]

    def finish(status: dict[str, Any], events: list[dict[str, Any]]) -> Failure | None:
        return render.finish(status, latest(events, "done"))

    def decide(observed: Observed) -> Plan:
        return decide_job(observed, render.MAIN, names, finish)

    model, datasets = deps.outputs.get("spec.modelRef"), _dataset_uris(evaluation, deps)
    if model is None or datasets is None:
        return Work(decide, None, main_pod)
    config = render.evaluation_config(evaluation, model["uri"], datasets, store)
    image = evaluation.spec.resources.image or settings.defaults.image
    output = render.results_uri(evaluation, store)

    def children(attempt: int) -> Children:
        return render.children(
            owner, evaluation, config, attempt, settings.defaults, store, traceparent
        )

    lineage = render.lineage(evaluation, model["uri"], datasets, output, image)
    return Work(decide, children, main_pod, lineage)


KIND = Kind("Evaluation", build)


register(KIND)
