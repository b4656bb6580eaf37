"""PretrainJob: train a decoder-only transformer from scratch on a Dataset."""

from __future__ import annotations

from typing import ClassVar, Literal

from lmforge.operator.api.architecture import Architecture
from lmforge.operator.api.base import LocalRef, Reference, immutable
from lmforge.operator.api.common import TrainingStatus
from lmforge.operator.api.resource import GANG_NAMES, PROGRESS, Column, Resource
from lmforge.operator.api.training import TrainingWorkload


class PretrainJobSpec(TrainingWorkload):
    dataset_ref: LocalRef = immutable()
    """The Dataset whose train split is read; its tokenizer sets the vocabulary."""
    model: Architecture = immutable()
    """The architecture; fixed for the life of the run, since checkpoints depend on it."""


class PretrainJob(Resource):
    """A decoder-only transformer trained from scratch on a Dataset, resuming by itself."""

    kind: Literal["PretrainJob"] = "PretrainJob"
    spec: PretrainJobSpec
    status: TrainingStatus | None = None

    rules: ClassVar = GANG_NAMES
    plural: ClassVar = "pretrainjobs"
    short_names: ClassVar = ("ptj",)
    columns: ClassVar = (
        Column("Phase", ".status.phase"),
        *PROGRESS,
        Column("Loss", ".status.loss", "number"),
        Column("Restarts", ".status.restarts", "integer"),
        Column("Tokens/s", ".status.tokensPerSecond", "number", priority=1),
    )

    def references(self) -> list[Reference]:
        return [Reference("spec.datasetRef", "Dataset", self.spec.dataset_ref.name)]
