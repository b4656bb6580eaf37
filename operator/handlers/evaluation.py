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

    model, inputs = deps.outputs.get("spec.modelRef"), render.task_inputs(evaluation, deps.outputs)
    if model is None or inputs is None:
        return Work(decide, None, main_pod)
    config = render.evaluation_config(evaluation, model["uri"], inputs, store)
    image = evaluation.spec.resources.image or settings.defaults.image
    output = render.results_uri(evaluation, store)

    def children(attempt: int) -> Children:
        return render.children(
            owner, evaluation, config, attempt, settings.defaults, store, traceparent
        )

    lineage = render.lineage(evaluation, model["uri"], inputs, output, image)
    return Work(decide, children, main_pod, lineage)


KIND = Kind("Evaluation", build)


register(KIND)
