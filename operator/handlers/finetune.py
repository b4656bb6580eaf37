"""FineTune (sft or dpo, full or LoRA) and RewardModel: the PretrainJob's gang of torchrun
workers, started from the base model; PPO/GRPO are refused with the field named until they land."""

from __future__ import annotations

from ..api.finetune import FineTune
from ..api.rewardmodel import RewardModel
from ..render import training
from ..render.inputs import Dependencies
from ..render.names import Owner
from ..render.pods import StorageSettings
from .pretrainjob import gang_work
from .reconcile import Kind, Work, register
from .settings import Settings


def build(
    job: FineTune | RewardModel,
    owner: Owner,
    deps: Dependencies,
    store: StorageSettings,
    settings: Settings,
    traceparent: str | None,
) -> Work:
    config, lineage = None, None
    inputs = training.finetune_inputs(job, deps.outputs)
    if inputs is not None:
        config = training.finetune_config(job, inputs, store)  # RenderError: ppo/grpo not yet
        image = job.spec.resources.image or settings.defaults.image
        lineage = training.finetune_lineage(inputs, config, image)
    return gang_work(job.spec, owner, config, lineage, store, settings, traceparent)


KIND = Kind("FineTune", build)
REWARD_MODEL = Kind("RewardModel", build)


register(KIND)
register(REWARD_MODEL)
