"""Dataset: one pod running the data job (engine local), or a Ray head running it with Ray
workers (engine ray); a failed attempt's pod is kept and the next attempt is a new pod."""

from __future__ import annotations

from typing import Any

from ..api.dataset import Dataset
from ..render import dataset as render
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
    """The newest attempt's main pod: its `done` line has the dataset's figures."""
    mains = [p for p in pods if p.role == render.MAIN and not p.terminating]
    newest = max(mains, key=lambda p: p.attempt, default=None)
    return (newest, render.MAIN) if newest else None


def build(
    dataset: Dataset,
    owner: Owner,
    deps: Dependencies,
    store: StorageSettings,
    settings: Settings,
    traceparent: str | None,
) -> Work:
    output = render.output_uri(dataset, store)
    image = dataset.spec.resources.image or settings.defaults.image
    ray = dataset.spec.engine.type == "ray"
    nodes = dataset.spec.resources.nodes if ray else 1

    def names(attempt: int) -> list[str]:
        workers = [render.ray_worker_name(owner.name, attempt, i) for i in range(1, nodes)]
        return [render.main_pod_name(owner.name, attempt), *workers]

    def finish(status: dict[str, Any], events: list[dict[str, Any]]) -> Failure | None:
        summary = latest(events, "done")
        render.finish(status, summary, output)
        status["lineage"] = render.lineage(dataset, summary or {}, output, image)
        return None

    def decide(observed: Observed) -> Plan:
        return decide_job(observed, render.MAIN, names, finish)

    def children(attempt: int) -> Children:
        return render.children(owner, dataset, attempt, settings.defaults, store, traceparent)

    if ray:
        render.check_names(owner.name, 0, nodes)
    return Work(decide, children, main_pod, render.lineage(dataset, {}, output, image))


KIND = Kind("Dataset", build)


register(KIND)
