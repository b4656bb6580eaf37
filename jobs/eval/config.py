"""The evaluation job's config, torch-free: the Evaluation spec with its references resolved."""

from __future__ import annotations

from pydantic import Field

from lmforge.operator.api.base import Model
from lmforge.operator.api.evaluation import Task, Threshold


class EvalConfig(Model):
    name: str
    model_uri: str
    """The model to evaluate: a Hugging Face Llama directory (what training exports)."""
    tasks: list[Task]
    task_uris: dict[str, str] = Field(default_factory=dict)
    """Task name -> the output URI of what it references: the Dataset of a perplexity task, the
    RewardModel of a reward task."""
    thresholds: list[Threshold] = Field(default_factory=list)
    endpoint_url: str | None = None
    samples: list[str] = Field(default_factory=lambda: ["def ", "class ", "import "])
    """Prompts to sample continuations from, for the report."""


def passed(results: dict[str, float], thresholds: list[Threshold]) -> tuple[bool, list[str]]:
    """Whether every threshold holds, and a line for each that does not."""
    missed = []
    for t in thresholds:
        value = results.get(t.metric)
        if value is None:
            missed.append(f"{t.metric}: no such result (have {', '.join(sorted(results))})")
        elif t.min is not None and value < t.min:
            missed.append(f"{t.metric} = {value:.4g} is below the minimum {t.min:g}")
        elif t.max is not None and value > t.max:
            missed.append(f"{t.metric} = {value:.4g} is above the maximum {t.max:g}")
    return not missed, missed
