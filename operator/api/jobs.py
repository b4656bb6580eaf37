"""What each job reads: its config, torch-free, written as JSON by the operator (a ConfigMap) and
by `lmforge run` (a file), from the stage's description (operator/stages).

`TrainConfig.plan()` checks the training config against what only the running job knows (the
world size torchrun gave it, the dataset's sequence length and vocabulary) before any compute,
and names the field to change when something does not fit.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

from pydantic import Field, ValidationError, model_validator

from lmforge.operator.api.architecture import Architecture
from lmforge.operator.api.base import Model
from lmforge.operator.api.dataset import DatasetSpec
from lmforge.operator.api.deployment import Limits, RateLimit, Safety
from lmforge.operator.api.evaluation import Task, Threshold
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
    name: str
    method: Literal["pretrain", "sft", "reward", "dpo", "grpo"] = "pretrain"
    """pretrain: next token on a Dataset; sft: on examples' replies; reward: a scoring head on
    ranked preferences; dpo: the policy on ranked preferences against a frozen reference; grpo:
    the policy on its own replies to prompts, scored by a reward model."""
    architecture: Architecture | None = None
    """The model to build; unset when fine-tuning (the base model's is used)."""
    training: Training
    dataset_uri: str | None = None
    """Pretraining: the Dataset's output (manifest.json and shards)."""
    base_model_uri: str | None = None
    """Fine-tuning: the model to start from, a Hugging Face Llama directory with its tokenizer."""
    examples_uri: str | None = None
    """Fine-tuning (SFT): jsonl examples (jobs/finetune/data.py)."""
    preferences_uri: str | None = None
    """reward and dpo: ranked responses (jobs/finetune/preferences.py), a file or a folder."""
    validation_fraction: float = 0.05
    """Of the examples or preferences, held out for validation."""
    ranking_loss: Literal["bradleyTerry", "plackettLuce"] = "bradleyTerry"
    """reward: over every ordered pair of a ranking, or the whole ranking."""
    beta: float = 0.1
    """dpo: the strength of the implicit KL constraint to the reference."""
    reference_uri: str | None = None
    """dpo: the frozen reference model; the base model when unset."""
    prompts_uri: str | None = None
    """grpo: jsonl rows {"prompt"} or {"messages"} to reply to."""
    reward_model_uri: str | None = None
    """grpo: the reward model that scores replies (a RewardModel's output)."""
    rl: Rl = Rl()
    lora: Lora | None = None
    """Train LoRA adapters (merged into the exported model) instead of every weight."""
    checkpoint_uri: str
    output_uri: str
    """Where the trained model is exported (a Hugging Face Llama directory)."""
    nodes: int = 1
    processes_per_node: int = 1
    endpoint_url: str | None = None

    def plan(self, world_size: int, sequence_length: int, vocab_size: int) -> Plan:
        t = self.training
        fields = {"pretrain": "datasetUri", "sft": "examplesUri", "grpo": "promptsUri"}
        field = fields.get(self.method, "preferencesUri")
        given = {
            "datasetUri": self.dataset_uri,
            "examplesUri": self.examples_uri,
            "preferencesUri": self.preferences_uri,
            "promptsUri": self.prompts_uri,
        }
        if given[field] is None or sum(uri is not None for uri in given.values()) != 1:
            raise ConfigError(f"method {self.method} reads {field}, and no other data")
        if self.method == "grpo":
            if self.reward_model_uri is None:
                raise ConfigError("method grpo needs spec.rewardModelRef")
            if t.parallelism.strategy == "fsdp":
                raise ConfigError(
                    "method grpo: training.parallelism.strategy fsdp is not supported yet; use ddp"
                )
        if self.method != "pretrain" and self.base_model_uri is None:
            raise ConfigError("fine-tuning needs spec.baseModel")
        if self.lora and t.parallelism.strategy == "fsdp":
            raise ConfigError(
                "lora: not supported with training.parallelism.strategy fsdp yet; "
                "use ddp (the adapters are small)"
            )
        if world_size != self.nodes * self.processes_per_node:
            raise ConfigError(
                f"world size {world_size} does not match resources.nodes ({self.nodes}) x"
                f" resources.processesPerNode ({self.processes_per_node})"
            )
        if t.precision == "fp16" and t.parallelism.strategy == "fsdp":
            raise ConfigError("training.precision: fp16 is not supported with fsdp; use bf16")
        if self.architecture is None:
            raise ConfigError("model: no architecture (and no base model to take it from)")
        try:
            arch = self.architecture.resolved(vocab_size=vocab_size)
        except (ValueError, ValidationError) as error:
            raise ConfigError(f"model: {error}") from error
        if arch.context_length < sequence_length - 1:
            raise ConfigError(
                f"model.contextLength ({arch.context_length}) is shorter than the dataset's"
                f" sequences ({sequence_length} tokens, {sequence_length - 1} as input): raise it"
            )
        if t.global_batch_tokens % sequence_length:
            raise ConfigError(
                f"training.globalBatchTokens ({t.global_batch_tokens}) must be a multiple of the"
                f" dataset's sequence length ({sequence_length})"
            )
        sequences = t.global_batch_tokens // sequence_length
        per_micro_step = t.micro_batch * world_size
        if sequences % per_micro_step:
            raise ConfigError(
                f"training.globalBatchTokens / sequence length = {sequences} sequences per step,"
                f" not a multiple of training.microBatch ({t.micro_batch}) x {world_size} ranks"
            )
        steps = t.steps or t.tokens // t.global_batch_tokens
        if steps < 1:
            raise ConfigError(f"training.tokens ({t.tokens}) is less than one step's batch")
        return Plan(arch, steps, sequences // per_micro_step, sequence_length)


@dataclass(frozen=True)
class Plan:
    architecture: Architecture
    steps: int
    accumulation: int
    """Micro-batches per optimizer step on each rank."""
    sequence_length: int


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
