"""An Evaluation as one pod per attempt (`<name>-eval-<k>`) running the evaluation job; results go
to `<artifact>/results.json` in object storage and, summarized, into status."""

from __future__ import annotations

from typing import Any

from ..api import conditions as c
from ..api.evaluation import Evaluation
from . import jobscripts
from .names import Owner, metadata
from .observe import Failure
from .pods import (
    CONFIG_FILE,
    SCRATCH_DIR,
    Defaults,
    StorageSettings,
    config_map,
    container,
    environment,
    pod,
)

MAIN = "eval"
CONFIG = "config"


def main_pod_name(name: str, attempt: int) -> str:
    return f"{name}-eval-{attempt}"


def config_name(name: str) -> str:
    return f"{name}-eval-config"


def results_uri(evaluation: Evaluation, store: StorageSettings) -> str:
    return f"{evaluation.artifact_uri(store.uri)}/results.json"


def evaluation_config(
    evaluation: Evaluation, model_uri: str, task_uris: dict[str, str], store: StorageSettings
) -> dict[str, Any]:
    """The job's EvalConfig, with the same fields the local runner writes."""
    spec = evaluation.spec
    return {
        "name": evaluation.metadata.name,
        "modelUri": model_uri,
        "taskUris": task_uris,
        "tasks": [t.wire() for t in spec.tasks],
        "thresholds": [t.wire() for t in spec.thresholds],
        "endpointUrl": store.endpoint_url,
    }


def children(
    owner: Owner,
    evaluation: Evaluation,
    config: dict[str, Any],
    attempt: int,
    defaults: Defaults,
    store: StorageSettings,
    traceparent: str | None = None,
) -> tuple[list[dict[str, Any]], list[dict[str, Any]]]:
    """(the ConfigMap, [the pod of attempt `attempt`])."""
    name = main_pod_name(owner.name, attempt)
    res = evaluation.spec.resources
    command = [
        "python",
        "-c",
        jobscripts.EVALUATION,
        CONFIG_FILE,
        f"{SCRATCH_DIR}/results.json",
        results_uri(evaluation, store),
    ]
    job = container(MAIN, command, res, environment(owner, defaults, traceparent), store, defaults)
    meta = metadata(owner, name, MAIN, attempt=attempt)
    body = pod(meta, [job], config_name(owner.name), res, defaults)
    return [config_map(owner, config_name(owner.name), CONFIG, config)], [body]


def finish(status: dict[str, Any], summary: dict[str, Any] | None) -> Failure | None:
    """results, passed and summary from the job's `done` line, as the local runner sets them; a
    Failure when a threshold was missed. Without the line the outcome is unknown: passed stays
    unset, so nothing that requires a pass goes ahead."""
    if summary is None:
        status["summary"] = "results not read: no done line in the pod's log or termination message"
        return None
    results = {k: round(v, 6) for k, v in summary.get("results", {}).items()}
    gating = [f"{k}={v:.4g}" for k, v in results.items() if k.endswith("perplexity")]
    status.update(results=results, passed=summary.get("passed"), summary=", ".join(gating))
    if summary.get("passed") is False:
        return Failure(c.GATE_FAILED, "; ".join(summary.get("missed") or []), False)
    return None


def lineage(
    evaluation: Evaluation,
    model_uri: str,
    task_uris: dict[str, str],
    output: str,
    image: str | None,
) -> dict[str, Any]:
    ref = evaluation.spec.model_ref
    kinds = {t.name: "Dataset" if t.dataset_ref else "RewardModel" for t in evaluation.spec.tasks}
    return {
        "inputs": [{"uri": model_uri, "kind": ref.kind, "name": ref.name}]
        + [{"uri": u, "kind": kinds[task]} for task, u in task_uris.items()],
        "outputs": [{"uri": output}],
        **({"image": image} if image else {}),
    }


def task_inputs(evaluation: Evaluation, outputs: dict[str, dict]) -> dict[str, str] | None:
    """Task name -> the output URI of the Dataset or RewardModel it references, from `outputs`
    (field -> output of each ready reference); None until every one resolved."""
    uris = {}
    for i, task in enumerate(evaluation.spec.tasks):
        field = "datasetRef" if task.dataset_ref else "rewardModelRef"
        if task.dataset_ref or task.reward_model_ref:
            found = outputs.get(f"spec.tasks[{i}].{field}")
            if found is None:
                return None
            uris[task.name] = found["uri"]
    return uris
