"""What each resource refers to, by field: the edges of the lifecycle graph."""

from __future__ import annotations

from typing import NamedTuple

from .common import ModelSource
from .resource import Resource


class Reference(NamedTuple):
    field: str
    """Where the reference is, e.g. spec.baseModel.fineTuneRef."""
    kind: str
    name: str
    output: str | None = None
    """Which of the referenced resource's outputs (by kind); its first when unset."""


def _model_source(field: str, source: ModelSource | None) -> list[Reference]:
    if source is None:
        return []
    if source.pretrain_job_ref:
        return [Reference(f"{field}.pretrainJobRef", "PretrainJob", source.pretrain_job_ref.name)]
    if source.fine_tune_ref:
        return [Reference(f"{field}.fineTuneRef", "FineTune", source.fine_tune_ref.name)]
    return []


def references(resource: Resource) -> list[Reference]:
    spec, refs = resource.spec, []
    if resource.kind == "PretrainJob":
        refs.append(Reference("spec.datasetRef", "Dataset", spec.dataset_ref.name))
    if resource.kind in ("FineTune", "RewardModel"):
        refs += _model_source("spec.baseModel", spec.base_model)
        if spec.preferences and spec.preferences.deployment_ref:
            name = spec.preferences.deployment_ref.name
            refs.append(Reference("spec.preferences.deploymentRef", "Deployment", name, "Feedback"))
    if resource.kind == "FineTune":
        refs += _model_source("spec.dpo.reference", spec.dpo.reference)
        if spec.reward_model_ref:
            refs.append(Reference("spec.rewardModelRef", "RewardModel", spec.reward_model_ref.name))
    if resource.kind in ("Evaluation", "Deployment"):
        refs.append(Reference("spec.modelRef", spec.model_ref.kind, spec.model_ref.name))
    if resource.kind == "Evaluation":
        for i, task in enumerate(spec.tasks):
            if task.dataset_ref:
                refs.append(
                    Reference(f"spec.tasks[{i}].datasetRef", "Dataset", task.dataset_ref.name)
                )
            if task.reward_model_ref:
                name = task.reward_model_ref.name
                refs.append(Reference(f"spec.tasks[{i}].rewardModelRef", "RewardModel", name))
    if resource.kind == "Deployment" and spec.evaluation_ref:
        refs.append(Reference("spec.evaluationRef", "Evaluation", spec.evaluation_ref.name))
    return refs
