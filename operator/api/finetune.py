"""FineTune: continue training a base model with SFT, DPO, or PPO/GRPO against a RewardModel."""

from __future__ import annotations

from typing import ClassVar, Literal

from pydantic import Field

from lmforge.operator.api.base import URI_PATTERN, LocalRef, Model, Reference, Rule, immutable
from lmforge.operator.api.common import ModelSource, TrainingStatus
from lmforge.operator.api.resource import GANG_NAMES, PROGRESS, Column, Resource
from lmforge.operator.api.training import TrainingWorkload


class Lora(Model):
    """Train low-rank adapters instead of every weight; merged into the model on export."""

    rank: int = Field(default=8, ge=1, le=1024)
    alpha: float = Field(default=16.0, gt=0)
    dropout: float = Field(default=0.0, ge=0, lt=1)
    target_modules: list[str] = Field(
        default=["q_proj", "k_proj", "v_proj", "o_proj"], min_length=1, max_length=64
    )


class Examples(Model):
    """jsonl rows for SFT: {"prompt", "response"} or {"messages": [{"role", "content"}, ...]}."""

    uri: str = Field(pattern=URI_PATTERN)
    validation_fraction: float = Field(default=0.05, ge=0, lt=1)


class Preferences(Model):
    """Ranked responses per prompt: rows {"prompt", "responses": [best, ..., worst]} (k >= 2), or
    {"prompt", "chosen", "rejected"}. From a URI, or the feedback a Deployment collected."""

    uri: str | None = Field(default=None, pattern=URI_PATTERN)
    deployment_ref: LocalRef | None = None
    """Use the preference data recorded by this Deployment's /v1/feedback."""
    validation_fraction: float = Field(default=0.1, ge=0, lt=1)

    rules = (
        Rule("has(self.uri) != has(self.deploymentRef)", "set exactly one of uri or deploymentRef"),
    )

    def references(self, field: str) -> list[Reference]:
        if self.deployment_ref is None:
            return []
        name = self.deployment_ref.name
        return [Reference(f"{field}.deploymentRef", "Deployment", name, "Feedback")]


class Prompts(Model):
    """jsonl rows {"prompt"} or {"messages"} to generate rollouts from, for GRPO."""

    uri: str = Field(pattern=URI_PATTERN)
    validation_fraction: float = Field(default=0.1, ge=0, lt=1)
    """Held out: validation reports the reward of replies to these."""


class Dpo(Model):
    beta: float = Field(default=0.1, gt=0, le=10)
    """Strength of the implicit KL constraint to the reference model."""
    reference: ModelSource | None = None
    """The frozen reference model; the base model when unset."""


class Rl(Model):
    """GRPO's rollouts and the KL penalty to the reference (base) model. One update per rollout
    (on-policy), so there is no ratio to clip."""

    kl_coef: float = Field(default=0.05, ge=0)
    samples_per_prompt: int = Field(default=4, ge=2, le=256)
    """Rollouts per prompt: GRPO's group, whose mean and spread make each reply's advantage."""
    max_new_tokens: int = Field(default=128, ge=1, le=32768)
    temperature: float = Field(default=1.0, gt=0, le=10)
    top_p: float = Field(default=1.0, gt=0, le=1)


class FineTuneSpec(TrainingWorkload):
    base_model: ModelSource = immutable()
    method: Literal["sft", "dpo", "ppo", "grpo"] = immutable(default="sft")
    lora: Lora | None = None
    """Set to train LoRA adapters; unset trains every weight."""
    data: Examples | None = None
    """SFT examples (method sft)."""
    preferences: Preferences | None = None
    """Preference data (method dpo)."""
    prompts: Prompts | None = None
    """Prompts for rollouts (method grpo)."""
    reward_model_ref: LocalRef | None = None
    """The RewardModel that scores rollouts (method grpo)."""
    dpo: Dpo = Field(default_factory=Dpo)
    rl: Rl = Field(default_factory=Rl)

    rules = (
        Rule("self.method != 'sft' || has(self.data)", "method sft needs spec.data", ".data"),
        Rule(
            "self.method != 'dpo' || has(self.preferences)",
            "method dpo needs spec.preferences",
            ".preferences",
        ),
        Rule(
            "self.method != 'grpo' || has(self.rewardModelRef)",
            "method grpo needs spec.rewardModelRef",
            ".rewardModelRef",
        ),
        Rule(
            "self.method != 'grpo' || has(self.prompts)",
            "method grpo needs spec.prompts",
            ".prompts",
        ),
        Rule(
            "self.method != 'ppo'",
            "method ppo is not available in this version: use grpo (a group of replies per"
            " prompt takes the place of PPO's value model)",
            ".method",
        ),
    )


class FineTuneStatus(TrainingStatus):
    accuracy: float | None = None
    """dpo: on held-out pairs, how often the implicit reward ranks the better response first."""
    margin: float | None = None
    """dpo: on held-out pairs, the log-probability margin of the better response over the worse,
    minus the reference model's: how much more the model prefers what people preferred."""
    reward: float | None = None
    """grpo: the reward model's mean score of the replies to held-out prompts."""


class FineTune(Resource):
    """A base model trained further: SFT (full or LoRA), DPO, or PPO/GRPO against a RewardModel."""

    kind: Literal["FineTune"] = "FineTune"
    spec: FineTuneSpec
    status: FineTuneStatus | None = None

    rules: ClassVar = GANG_NAMES
    plural: ClassVar = "finetunes"
    short_names: ClassVar = ("ft",)
    columns: ClassVar = (
        Column("Method", ".spec.method"),
        Column("Phase", ".status.phase"),
        *PROGRESS,
        Column("Loss", ".status.loss", "number"),
        Column("Margin", ".status.margin", "number", priority=1),
        Column("Reward", ".status.reward", "number", priority=1),
        Column("Restarts", ".status.restarts", "integer", priority=1),
    )

    def references(self) -> list[Reference]:
        spec = self.spec
        refs = spec.base_model.references("spec.baseModel")
        if spec.preferences:
            refs += spec.preferences.references("spec.preferences")
        if spec.dpo.reference:
            refs += spec.dpo.reference.references("spec.dpo.reference")
        if spec.reward_model_ref:
            refs.append(Reference("spec.rewardModelRef", "RewardModel", spec.reward_model_ref.name))
        return refs
