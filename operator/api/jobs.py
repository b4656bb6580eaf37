"""What each job reads: its config, torch-free, written as JSON by the operator (a ConfigMap) and
by `lmforge run` (a file), from the stage's description (operator/stages).

A training config is of the class its `method` names (`read_train_config`);
`TrainConfig.resolve()` checks it against what only the running job knows (the world size
torchrun gave it, the sequence length and vocabulary of its data) before any compute, and names
the field to change when something does not fit.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Annotated, ClassVar, Literal

from pydantic import Field, TypeAdapter, ValidationError, model_validator

from lmforge.operator.api.architecture import Architecture
from lmforge.operator.api.base import Model
from lmforge.operator.api.dataset import DatasetSpec
from lmforge.operator.api.deployment import Limits, RateLimit, Safety
from lmforge.operator.api.evaluation import Contamination, Task, Threshold
from lmforge.operator.api.finetune import Lora, Rl
from lmforge.operator.api.training import Training


class ConfigError(ValueError):
    """The configuration cannot run; the message names the field and what to do."""


class DataConfig(Model):
    """The Dataset job's: the spec, with the storage the backend resolved."""

    name: str
    spec: DatasetSpec
    output_uri: str
    """Where shards, manifest.json and audit.json go."""


class TrainConfig(Model):
    """What every training run has, whatever its method (the subclasses below)."""

    name: str
    training: Training
    lora: Lora | None = None
    """Train LoRA adapters (merged into the exported model) instead of every weight."""
    checkpoint_uri: str
    output_uri: str
    """Where the trained model is exported (a Hugging Face Llama directory)."""
    nodes: int = 1
    min_nodes: int | None = None
    """Elastic: the world is between min_nodes and nodes times processes_per_node ranks."""
    processes_per_node: int = 1
    endpoint_url: str | None = None
    collective_timeout_seconds: int = 600
    """runPolicy.collectiveTimeoutSeconds: init_process_group's timeout."""

    data_field: ClassVar[str]
    """The spec field the run's data comes from, for the errors that name it."""
    data_uri_field: ClassVar[str]
    """The field of this config that holds the run's data URI."""

    def training_data(self) -> dict[str, str]:
        """What this run trains on, as the exported model's lineage records it (jobs/hf.py):
        a Dataset's output, or jsonl rows."""
        kind = "Dataset" if self.data_uri_field == "dataset_uri" else "jsonl"
        return {"uri": getattr(self, self.data_uri_field), "kind": kind}

    def resolve(
        self, architecture: Architecture, world_size: int, sequence_length: int, vocab_size: int
    ) -> Resolved:
        """The run's shape on this world, or a ConfigError naming the field that does not fit."""
        t = self.training
        first = self.min_nodes or self.nodes
        worlds = [n * self.processes_per_node for n in range(first, self.nodes + 1)]
        elastic = f" (elastic: {first} to {self.nodes} nodes)" if self.min_nodes else ""
        if world_size not in worlds:
            raise ConfigError(
                f"world size {world_size} does not match resources.nodes ({self.nodes}) x"
                f" resources.processesPerNode ({self.processes_per_node}){elastic}"
            )
        strategy = t.parallelism.strategy
        if self.lora and t.parallelism.sharded:
            raise ConfigError(
                f"lora: not supported with training.parallelism.strategy {strategy} yet; "
                "use ddp (the adapters are small)"
            )
        if t.precision == "fp16" and t.parallelism.sharded:
            raise ConfigError(
                f"training.precision: fp16 is not supported with {strategy}; use bf16"
            )
        arch = _shape(architecture, sequence_length, vocab_size)
        if t.global_batch_tokens % sequence_length:
            raise ConfigError(
                f"training.globalBatchTokens ({t.global_batch_tokens}) must be a multiple of the"
                f" dataset's sequence length ({sequence_length})"
            )
        sequences = t.global_batch_tokens // sequence_length
        for world in worlds:  # elastic: every size the gang may run with, checked up front
            if sequences % (t.micro_batch * world):
                raise ConfigError(
                    f"training.globalBatchTokens / sequence length = {sequences} sequences per"
                    f" step, not a multiple of training.microBatch ({t.micro_batch}) x {world}"
                    f" ranks{elastic}"
                )
        per_micro_step = t.micro_batch * world_size
        steps = t.steps or t.tokens // t.global_batch_tokens
        if steps < 1:
            raise ConfigError(f"training.tokens ({t.tokens}) is less than one step's batch")
        return Resolved(arch, steps, sequences // per_micro_step, sequence_length)


def _shape(architecture: Architecture, sequence_length: int, vocab_size: int) -> Architecture:
    try:
        arch = architecture.resolved(vocab_size=vocab_size)
    except (ValueError, ValidationError) as error:
        raise ConfigError(f"model: {error}") from error
    if arch.context_length < sequence_length - 1:
        raise ConfigError(
            f"model.contextLength ({arch.context_length}) is shorter than the dataset's"
            f" sequences ({sequence_length} tokens, {sequence_length - 1} as input): raise it"
        )
    return arch


@dataclass(frozen=True)
class Resolved:
    """A training config on the world it runs in."""

    architecture: Architecture
    steps: int
    accumulation: int
    """Micro-batches per optimizer step on each rank."""
    sequence_length: int


class PretrainConfig(TrainConfig):
    """Next-token prediction on a Dataset's packed sequences, from random weights."""

    method: Literal["pretrain"] = "pretrain"
    architecture: Architecture
    """The model to build."""
    dataset_uri: str
    """The Dataset's output (manifest.json and shards)."""

    data_field: ClassVar = "spec.datasetRef"
    data_uri_field: ClassVar = "dataset_uri"


class FineTuneConfig(TrainConfig):
    """Training that starts from a model and reads rows held in memory."""

    base_model_uri: str
    """The model to start from, a Hugging Face Llama directory with its tokenizer."""
    validation_fraction: float = 0.05
    """Of the rows, held out for validation."""


class SftConfig(FineTuneConfig):
    """Next-token prediction on the replies of chat examples."""

    method: Literal["sft"] = "sft"
    examples_uri: str
    """jsonl examples (jobs/finetune/data.py)."""

    data_field: ClassVar = "spec.data"
    data_uri_field: ClassVar = "examples_uri"


class RewardConfig(FineTuneConfig):
    """A scoring head on ranked preferences."""

    method: Literal["reward"] = "reward"
    preferences_uri: str
    """Ranked responses (jobs/finetune/preferences.py), a file or a folder."""
    ranking_loss: Literal["bradleyTerry", "plackettLuce"] = "bradleyTerry"
    """Over every ordered pair of a ranking, or the whole ranking."""

    data_field: ClassVar = "spec.preferences"
    data_uri_field: ClassVar = "preferences_uri"


class DpoConfig(FineTuneConfig):
    """The policy on ranked preferences against a frozen reference."""

    method: Literal["dpo"] = "dpo"
    preferences_uri: str
    beta: float = 0.1
    """The strength of the implicit KL constraint to the reference."""
    reference_uri: str | None = None
    """The frozen reference model; the base model when unset."""

    data_field: ClassVar = "spec.preferences"
    data_uri_field: ClassVar = "preferences_uri"


class GrpoConfig(FineTuneConfig):
    """The policy on its own replies to prompts, scored by a reward model."""

    method: Literal["grpo"] = "grpo"
    prompts_uri: str
    """jsonl rows {"prompt"} or {"messages"} to reply to."""
    reward_model_uri: str
    """The reward model that scores replies (a RewardModel's output)."""
    rl: Rl = Rl()

    data_field: ClassVar = "spec.prompts"
    data_uri_field: ClassVar = "prompts_uri"


AnyTrainConfig = Annotated[
    PretrainConfig | SftConfig | RewardConfig | DpoConfig | GrpoConfig,
    Field(discriminator="method"),
]
"""The trainer's config, of the class its `method` names."""


def read_train_config(text: str) -> TrainConfig:
    return TypeAdapter(AnyTrainConfig).validate_json(text)


class EvalConfig(Model):
    name: str
    model_uri: str
    """The model to evaluate: a Hugging Face Llama directory (what training exports)."""
    tasks: list[Task]
    task_uris: dict[str, str] = Field(default_factory=dict)
    """Task name -> the output URI of what it references: the Dataset of a perplexity task, the
    RewardModel of a reward task."""
    thresholds: list[Threshold] = Field(default_factory=list)
    results_uri: str
    """Where the job writes results.json (every figure, per-example details, samples)."""
    endpoint_url: str | None = None
    contamination: Contamination = Field(default_factory=Contamination)
    samples: list[str] = Field(default_factory=lambda: ["def ", "class ", "import "])
    """Prompts to sample continuations from, for the report."""


class ServeConfig(Model):
    model_uri: str
    """A Hugging Face Llama directory (what training exports), local or on object storage."""
    served_model_name: str
    """The `model` clients ask for."""
    endpoint_url: str | None = None
    slots: int = Field(default=16, ge=1, le=4096)
    """Sequences decoded together at most (the KV cache's rows); more requests wait in a queue."""
    dtype: Literal["fp32", "bf16"] = "fp32"
    runtime: Literal["native", "onnx"] = "native"
    """native: PyTorch; onnx: the model exported to an ONNX graph (with past keys and values),
    run by onnxruntime (fp32)."""
    quantization: Literal["none", "int8"] = "none"
    """int8: dynamic quantization of every linear layer (int8 weights, activations quantized per
    batch at run time; fbgemm/onednn kernels on CPU)."""
    api_keys_dir: str | None = None
    """A folder with one file per API key (a mounted Secret): file name = key name, content =
    the key. `<name>.models` (comma-separated) restricts a key to those models. None: open."""
    rate_limit: RateLimit = Field(default_factory=RateLimit)
    limits: Limits = Field(default_factory=Limits)
    safety: Safety = Field(default_factory=Safety)
    feedback_uri: str | None = None
    """Where POST /v1/feedback appends preference rows; None turns the route off."""
    log_prompts: bool = False
    audit_log: str | None = None
    """A file for the audit log (JSON lines); stderr when unset."""

    @model_validator(mode="after")
    def _onnx_is_fp32(self) -> ServeConfig:
        if self.runtime == "onnx" and (self.quantization != "none" or self.dtype != "fp32"):
            raise ValueError(
                "runtime onnx runs the fp32 graph: set quantization none (int8 is the native"
                " runtime's) and dtype fp32"
            )
        return self
