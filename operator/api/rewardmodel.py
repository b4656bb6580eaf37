"""RewardModel: a scalar reward head trained on ranked preferences (Bradley-Terry over pairs)."""

from __future__ import annotations

from typing import ClassVar, Literal

from lmforge.operator.api.base import Reference, immutable
from lmforge.operator.api.common import ModelSource, TrainingStatus
from lmforge.operator.api.finetune import Preferences
from lmforge.operator.api.resource import GANG_NAMES, PROGRESS, Column, Resource
from lmforge.operator.api.training import TrainingWorkload


class RewardModelSpec(TrainingWorkload):
    base_model: ModelSource = immutable()
    """The language model whose final hidden state the reward head reads."""
    preferences: Preferences
    loss: Literal["bradleyTerry", "plackettLuce"] = "bradleyTerry"
    """bradleyTerry: over every ordered pair of a ranking; plackettLuce: the whole ranking."""


class RewardModelStatus(TrainingStatus):
    accuracy: float | None = None
    """Held-out pairwise accuracy: how often the better response scores higher."""


class RewardModel(Resource):
    """A reward model trained on ranked preferences, for PPO/GRPO and for ranking outputs."""

    kind: Literal["RewardModel"] = "RewardModel"
    spec: RewardModelSpec
    status: RewardModelStatus | None = None

    rules: ClassVar = GANG_NAMES
    plural: ClassVar = "rewardmodels"
    short_names: ClassVar = ("rm",)
    columns: ClassVar = (
        Column("Phase", ".status.phase"),
        *PROGRESS,
        Column("Accuracy", ".status.accuracy", "number"),
        Column("Loss", ".status.loss", "number", priority=1),
    )

    def references(self) -> list[Reference]:
        spec = self.spec
        return spec.base_model.references("spec.baseModel") + spec.preferences.references(
            "spec.preferences"
        )
