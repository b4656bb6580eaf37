"""Evaluation: the evaluation job scores a model on each task, writes results.json to object
storage and reports every metric, and whether the thresholds held, in its `done` event."""

from __future__ import annotations

from typing import Any

from lmforge.operator.api.common import Artifact, Lineage
from lmforge.operator.api.evaluation import Evaluation, EvaluationStatus
from lmforge.operator.api.events import DONE, latest
from lmforge.operator.api.jobs import EvalConfig
from lmforge.operator.stages.base import Description, Inputs, Stage, Store, artifact

TASK_INPUTS = {True: ("Dataset", "datasetRef"), False: ("RewardModel", "rewardModelRef")}
"""Whether a task has a datasetRef -> what it reads and where the reference is."""


class EvaluationStage(Stage):
    kind = "Evaluation"
    role = "eval"

    def describe(self, evaluation: Evaluation, inputs: Inputs, store: Store) -> Description:
        spec = evaluation.spec
        model = artifact(inputs, "spec.modelRef", spec.model_ref.kind, spec.model_ref.name)
        tasks = {}  # task name -> what it reads: the Dataset or the RewardModel it references
        for i, task in enumerate(spec.tasks):
            if task.dataset_ref or task.reward_model_ref:
                kind, field = TASK_INPUTS[bool(task.dataset_ref)]
                tasks[task.name] = Artifact(uri=inputs[f"spec.tasks[{i}].{field}"].uri, kind=kind)
        results = f"{evaluation.artifact_uri(store.uri)}/results.json"
        config = EvalConfig(
            name=evaluation.metadata.name,
            model_uri=model.uri,
            tasks=spec.tasks,
            task_uris={name: task.uri for name, task in tasks.items()},
            thresholds=spec.thresholds,
            contamination=spec.contamination,
            results_uri=results,
            endpoint_url=store.endpoint_url,
        )
        lineage = Lineage(
            inputs=[model, *tasks.values()],
            outputs=[Artifact(uri=results)],
        )
        return Description(config, lineage, "lmforge.jobs.eval")

    def finish(self, status: EvaluationStatus, events: list[dict[str, Any]]) -> str | None:
        """Results, passed and summary from the `done` event; the thresholds missed when it did
        not pass. Without the event the outcome is unknown: `passed` stays unset, so nothing
        that requires a pass goes ahead."""
        summary = latest(events, DONE)
        if summary is None:
            status.summary = (
                "results not read: no done event in the job's log or termination message"
            )
            return None
        results = {k: round(v, 6) for k, v in summary.get("results", {}).items()}
        gating = [f"{k}={v:.4g}" for k, v in results.items() if k.endswith("perplexity")]
        status.results, status.passed = results, summary.get("passed")
        status.summary = ", ".join(gating)
        if summary.get("passed") is False:
            return "; ".join(summary.get("missed") or [])
        return None
