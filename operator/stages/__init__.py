"""One description per kind, for both backends: what its job reads, how it is launched, and how
what it reports becomes status. `STAGES` is the registry the operator and `lmforge run` look a
kind up in; a kind's schema, columns and references are its API model's (operator/api)."""

from __future__ import annotations

from lmforge.operator.stages.base import Stage
from lmforge.operator.stages.dataset import DatasetStage
from lmforge.operator.stages.deployment import DeploymentStage
from lmforge.operator.stages.evaluation import EvaluationStage
from lmforge.operator.stages.training import FineTuneStage, PretrainStage, RewardModelStage

STAGES: dict[str, Stage] = {
    stage.kind: stage
    for stage in (
        DatasetStage(),
        PretrainStage(),
        FineTuneStage(),
        RewardModelStage(),
        EvaluationStage(),
        DeploymentStage(),
    )
}
