"""Evaluation: perplexity, BLEU, ROUGE and benchmarks for a model; thresholds make it a gate."""

from __future__ import annotations

from typing import ClassVar, Literal

from pydantic import Field

from lmforge.operator.api.base import (
    NAME_PATTERN,
    URI_PATTERN,
    LocalRef,
    Model,
    Reference,
    Rule,
    immutable,
)
from lmforge.operator.api.common import ModelRef, Status, Workload
from lmforge.operator.api.resource import Column, Resource


class Task(Model):
    """One measurement. Its metrics are reported as <name>.<metric>, e.g. ppl.perplexity."""

    name: str = Field(pattern=NAME_PATTERN, max_length=63)
    type: Literal["perplexity", "bleu", "rouge", "exactMatch", "multipleChoice", "reward"]
    dataset_ref: LocalRef | None = None
    """perplexity: the Dataset whose split is scored."""
    reward_model_ref: LocalRef | None = None
    """reward: the RewardModel that scores the model's greedy replies to the prompts."""
    split: Literal["validation", "train"] = "validation"
    uri: str | None = Field(default=None, pattern=URI_PATTERN)
    """Other types: jsonl rows {"prompt", "reference"} (bleu, rouge, exactMatch; reward, where
    the reference is optional and scored too) or {"question", "choices", "answer"}
    (multipleChoice)."""
    max_examples: int | None = Field(default=None, ge=1)
    max_new_tokens: int = Field(default=64, ge=1, le=32768)
    stride: int | None = Field(default=None, ge=1)
    """perplexity: sliding-window stride in tokens; the model's context length when unset."""

    rules = (
        Rule(
            "self.type != 'perplexity' || has(self.datasetRef)",
            "type perplexity needs datasetRef",
            ".datasetRef",
        ),
        Rule("self.type == 'perplexity' || has(self.uri)", "this task type needs uri", ".uri"),
        Rule(
            "self.type != 'reward' || has(self.rewardModelRef)",
            "type reward needs rewardModelRef",
            ".rewardModelRef",
        ),
    )


class Threshold(Model):
    """A bound on one metric; any bound missed makes the Evaluation Failed."""

    metric: str = Field(pattern=r"^[a-z0-9]([-a-z0-9]*[a-z0-9])?\.[a-zA-Z0-9_]+$", max_length=128)
    """<task name>.<metric>, e.g. ppl.perplexity or summaries.rougeL."""
    min: float | None = None
    max: float | None = None

    rules = (Rule("has(self.min) || has(self.max)", "set min, max or both"),)


class Contamination(Model):
    """How much of each task the model saw in training: the share of the task's examples that
    share a word n-gram with the training data its model records (the Datasets and rows of
    every stage of its lineage), reported as <task>.overlap. The training data is read once
    per Evaluation: for a large corpus, decontaminate the Dataset instead
    (spec.filters.decontamination) and turn this off."""

    enabled: bool = True
    ngram: int = Field(default=13, ge=4, le=64)


class EvaluationSpec(Workload):
    model_ref: ModelRef = immutable()
    tasks: list[Task] = Field(min_length=1, max_length=64)
    thresholds: list[Threshold] = Field(default_factory=list, max_length=64)
    contamination: Contamination = Field(default_factory=Contamination)

    rules = (
        Rule(
            "self.tasks.all(t, self.tasks.exists_one(u, u.name == t.name))",
            "task names must be unique",
            ".tasks",
        ),
        Rule(
            "self.thresholds.all(h, self.tasks.exists(t, h.metric.startsWith(t.name + '.')))",
            "every threshold metric must start with the name of a task",
            ".thresholds",
        ),
    )


class EvaluationStatus(Status):
    results: dict[str, float] = Field(default_factory=dict)
    """Every metric, as <task>.<metric>."""
    passed: bool | None = None
    summary: str | None = None
    """The gating metrics in one line, for `kubectl get`."""


class Evaluation(Resource):
    """Perplexity, BLEU, ROUGE and benchmarks for a model; its thresholds can gate a Deployment."""

    kind: Literal["Evaluation"] = "Evaluation"
    spec: EvaluationSpec
    status: EvaluationStatus | None = None

    plural: ClassVar = "evaluations"
    short_names: ClassVar = ("lmeval",)
    columns: ClassVar = (
        Column("Phase", ".status.phase"),
        Column("Passed", ".status.passed", "boolean"),
        Column("Summary", ".status.summary"),
    )

    def references(self) -> list[Reference]:
        model = self.spec.model_ref
        refs = [Reference("spec.modelRef", model.kind, model.name)]
        for i, task in enumerate(self.spec.tasks):
            if task.dataset_ref:
                refs.append(
                    Reference(f"spec.tasks[{i}].datasetRef", "Dataset", task.dataset_ref.name)
                )
            if task.reward_model_ref:
                name = task.reward_model_ref.name
                refs.append(Reference(f"spec.tasks[{i}].rewardModelRef", "RewardModel", name))
        return refs
