"""PretrainJob, FineTune and RewardModel: the trainer (jobs/train) under torchrun, one rank per
process, reporting its steps, validations and checkpoints as it goes."""

from __future__ import annotations

import datetime
from collections.abc import Callable
from typing import Any, NamedTuple

from lmforge.operator.api import conditions
from lmforge.operator.api.common import Artifact, Checkpoint, Lineage, TrainingStatus, timestamp
from lmforge.operator.api.events import CHECKPOINT, RESUME, ROLLBACK, START, STEP, VALIDATION
from lmforge.operator.api.finetune import FineTune
from lmforge.operator.api.jobs import (
    DpoConfig,
    GrpoConfig,
    PretrainConfig,
    RewardConfig,
    SftConfig,
    TrainConfig,
)
from lmforge.operator.api.pretrainjob import PretrainJob
from lmforge.operator.api.rewardmodel import RewardModel
from lmforge.operator.stages.base import Description, Inputs, Stage, Store, artifact

MODULE = "lmforge.jobs.train"


class TrainingStage(Stage):
    role = "worker"

    def progress(self, status: TrainingStatus, events: list[dict[str, Any]]) -> None:
        """The training figures the events report, later events winning."""
        for event in events:
            kind = event.get("event")
            if kind == STEP:
                _position(status, event["step"], event.get("totalSteps"))
                for field in ("loss", "tokens", "tokensPerSecond", "skippedSteps"):
                    if event.get(field) is not None:
                        setattr(status, FIELDS[field], event[field])
            elif kind == VALIDATION and event.get("loss") is not None:
                _validation(status, event)
            elif kind in (START, RESUME):
                _position(status, event.get("step", 0), event.get("totalSteps"))
            elif kind == CHECKPOINT:
                _checkpoint(status, event)
            elif kind == ROLLBACK:
                _position(status, event["step"], None)
                _rolled_back(status, event)
        _estimate(status, events)

    def _describe(self, job, reads: dict[str, Artifact], config: TrainConfig) -> Description:
        lineage = Lineage(
            inputs=list(reads.values()), outputs=[Artifact(uri=config.output_uri, kind="Model")]
        )
        resources = job.spec.resources
        return Description(config, lineage, MODULE, (resources.nodes, resources.processes_per_node))


FIELDS = {"loss": "loss", "tokens": "tokens", "tokensPerSecond": "tokens_per_second",
          "skippedSteps": "skipped_steps"}  # fmt: skip


def _position(status: TrainingStatus, step: int, total: int | None) -> None:
    status.step = step
    if total is not None:
        status.total_steps = total
    if status.total_steps:
        status.progress = f"{step}/{status.total_steps}"


def _estimate(status: TrainingStatus, events: list[dict[str, Any]]) -> None:
    """Percent complete, and the seconds left at the step rate measured over the steps this
    attempt reported (a restart's loading time is not a step's)."""
    if not status.total_steps or status.step is None:
        return
    status.percent_complete = min(100, status.step * 100 // status.total_steps)
    starts = [i for i, e in enumerate(events) if e.get("event") in (START, RESUME)]
    steps = [e for e in events[starts[-1] if starts else 0 :] if e.get("event") == STEP]
    left = status.total_steps - status.step
    if left <= 0:
        status.eta_seconds, status.eta = 0, "0s"
        return
    if len(steps) < 2 or steps[0].get("time") is None or steps[-1].get("time") is None:
        return
    seconds = steps[-1]["time"] - steps[0]["time"]
    done = steps[-1]["step"] - steps[0]["step"]
    if seconds > 0 and done > 0:
        status.eta_seconds = round(left * seconds / done)
        status.eta = _duration(status.eta_seconds)


def _duration(seconds: int) -> str:
    """1h02m, 4m10s, 9s: as kubectl writes an age."""
    hours, rest = divmod(seconds, 3600)
    minutes, seconds = divmod(rest, 60)
    if hours:
        return f"{hours}h{minutes:02d}m"
    return f"{minutes}m{seconds:02d}s" if minutes else f"{seconds}s"


def _validation(status: TrainingStatus, event: dict[str, Any]) -> None:
    status.validation_loss = event["loss"]
    for field in ("accuracy", "reward"):  # reward models and DPO; GRPO
        if event.get(field) is not None and field in type(status).model_fields:
            setattr(status, field, event[field])
    if event.get("referenceMargin") is not None:  # DPO: the margin over the reference's
        status.margin = round(event["margin"] - event["referenceMargin"], 6)


def _rolled_back(status: TrainingStatus, event: dict[str, Any]) -> None:
    message = (
        f"rolled back from step {event['fromStep']} to the checkpoint of step {event['step']}"
        f" ({event['uri']}), rollback {event['rollbacks']}: steps skipped in a row, the last"
        f" because {event['reason']}; the data goes on after the skipped steps"
    )
    status.set_condition(conditions.ROLLED_BACK, True, conditions.DIVERGED, message,
                         _moment(event) or datetime.datetime.now(datetime.UTC))  # fmt: skip


def _moment(event: dict[str, Any]) -> datetime.datetime | None:
    seconds = event.get("time")
    return datetime.datetime.fromtimestamp(seconds, datetime.UTC) if seconds else None


def _checkpoint(status: TrainingStatus, event: dict[str, Any]) -> None:
    moment = _moment(event)
    status.last_checkpoint = Checkpoint(
        step=event["step"], uri=event["uri"], time=timestamp(moment) if moment else None
    )
    lineage = status.lineage or Lineage()
    status.lineage = lineage.model_copy(update={"parent_checkpoint": event["uri"]})


def _run(job: PretrainJob | FineTune | RewardModel, store: Store) -> dict[str, Any]:
    """What every training config has: name, schedule, outputs and the gang's shape."""
    spec, folder = job.spec, job.artifact_uri(store.uri)
    return {
        "name": job.metadata.name,
        "training": spec.training,
        "output_uri": f"{folder}/model",
        "checkpoint_uri": spec.training.checkpoint.uri or f"{folder}/checkpoints",
        "nodes": spec.resources.nodes,
        "min_nodes": spec.resources.min_nodes,
        "processes_per_node": spec.resources.processes_per_node,
        "endpoint_url": store.endpoint_url,
        "collective_timeout_seconds": spec.run_policy.collective_timeout_seconds,
    }


class PretrainStage(TrainingStage):
    kind = "PretrainJob"

    def describe(self, job: PretrainJob, inputs: Inputs, store: Store) -> Description:
        dataset = artifact(inputs, "spec.datasetRef", "Dataset", job.spec.dataset_ref.name)
        config = PretrainConfig(
            architecture=job.spec.model, dataset_uri=dataset.uri, **_run(job, store)
        )
        return self._describe(job, {"spec.datasetRef": dataset}, config)


class FineTuneStage(TrainingStage):
    """FineTune (sft, dpo, grpo; full or LoRA) and RewardModel: the trainer from a base model."""

    kind = "FineTune"

    def describe(self, job: FineTune | RewardModel, inputs: Inputs, store: Store) -> Description:
        reads, method = _reads(job, inputs), _method(job)
        common = {
            "base_model_uri": reads["spec.baseModel"].uri,
            "lora": getattr(job.spec, "lora", None),
            **_run(job, store),
        }
        return self._describe(job, reads, METHODS[method].config(job.spec, reads, common))


def _sft(spec, reads: dict[str, Artifact], common: dict[str, Any]) -> SftConfig:
    fraction = spec.data.validation_fraction
    return SftConfig(examples_uri=reads["spec.data"].uri, validation_fraction=fraction, **common)


def _reward(spec, reads: dict[str, Artifact], common: dict[str, Any]) -> RewardConfig:
    preferences, fraction = reads["spec.preferences"].uri, spec.preferences.validation_fraction
    return RewardConfig(preferences_uri=preferences, validation_fraction=fraction,
                        ranking_loss=spec.loss, **common)  # fmt: skip


def _dpo(spec, reads: dict[str, Artifact], common: dict[str, Any]) -> DpoConfig:
    reference = reads.get("spec.dpo.reference")
    return DpoConfig(
        preferences_uri=reads["spec.preferences"].uri,
        validation_fraction=spec.preferences.validation_fraction,
        beta=spec.dpo.beta,
        reference_uri=reference.uri if reference else None,
        **common,
    )


def _grpo(spec, reads: dict[str, Artifact], common: dict[str, Any]) -> GrpoConfig:
    return GrpoConfig(
        prompts_uri=reads["spec.prompts"].uri,
        reward_model_uri=reads["spec.rewardModelRef"].uri,
        rl=spec.rl,
        validation_fraction=spec.prompts.validation_fraction,
        **common,
    )


class Method(NamedTuple):
    reads: tuple[str, ...]
    """What the method reads besides spec.baseModel, by spec field."""
    config: Callable[[Any, dict[str, Artifact], dict[str, Any]], TrainConfig]
    """(spec, what it reads, the fields every run has) -> the trainer's config."""


METHODS = {
    "sft": Method(("spec.data",), _sft),
    "reward": Method(("spec.preferences",), _reward),
    "dpo": Method(("spec.preferences", "spec.dpo.reference"), _dpo),
    "grpo": Method(("spec.prompts", "spec.rewardModelRef"), _grpo),
}
"""The one map from a FineTune's method (or a RewardModel) to what it reads and runs."""


class RewardModelStage(FineTuneStage):
    kind = "RewardModel"


def _method(job: FineTune | RewardModel) -> str:
    if job.kind == "RewardModel":
        return "reward"
    return job.spec.method


def _reads(job: FineTune | RewardModel, inputs: Inputs) -> dict[str, Artifact]:
    """What the run reads, by spec field (spec.baseModel, spec.data, spec.preferences, ...): the
    output of each reference, and each URI the spec gives."""
    found = {}
    for ref in job.references():
        where = ref.field.rsplit(".", 1)[0] if ref.field.count(".") > 1 else ref.field
        found[where] = artifact(inputs, ref.field, ref.kind, ref.name)
    spec = job.spec
    sources = {"spec.baseModel": spec.base_model, "spec.preferences": spec.preferences}
    if job.kind == "FineTune":
        sources |= {"spec.data": spec.data, "spec.dpo.reference": spec.dpo.reference,
                    "spec.prompts": spec.prompts}  # fmt: skip
    found |= {f: Artifact(uri=s.uri) for f, s in sources.items() if s is not None and s.uri}
    used = ("spec.baseModel", *METHODS[_method(job)].reads)
    return {f: a for f, a in found.items() if f in used}
