"""How a model is trained: batch, length, optimizer, schedule, precision, parallelism, saves."""

from __future__ import annotations

from typing import Literal

from pydantic import Field

from lmforge.operator.api.base import URI_PATTERN, Model, Rule
from lmforge.operator.api.common import Workload


class Optimizer(Model):
    """AdamW."""

    lr: float = Field(default=3e-4, gt=0, le=1)
    """Peak learning rate, reached at the end of warmup."""
    beta1: float = Field(default=0.9, ge=0, lt=1)
    beta2: float = Field(default=0.95, ge=0, lt=1)
    eps: float = Field(default=1e-8, gt=0)
    weight_decay: float = Field(default=0.1, ge=0)


class Schedule(Model):
    """Linear warmup, then decay to minLrRatio * lr at the last step."""

    type: Literal["cosine", "linear", "constant"] = "cosine"
    warmup_steps: int = Field(default=100, ge=0)
    min_lr_ratio: float = Field(default=0.1, ge=0, le=1)


class Parallelism(Model):
    """How ranks share the model. The number of ranks is resources.nodes * processesPerNode."""

    strategy: Literal["ddp", "fsdp", "hsdp"] = "ddp"
    """ddp replicates the model on every rank; fsdp (FSDP2) shards parameters and optimizer
    over all ranks; hsdp shards them within a node and replicates the shards across nodes
    (gradients are reduced within the node, then across, over a 2D device mesh)."""
    nccl: dict[str, str] = Field(default_factory=dict, max_length=64)
    """NCCL environment variables for every rank (NCCL_SOCKET_IFNAME, NCCL_IB_HCA, ...), over
    the installation's (the chart's jobs.nccl). Not for secrets: they are part of the spec."""

    @property
    def sharded(self) -> bool:
        """FSDP2, over all ranks or within each node."""
        return self.strategy in ("fsdp", "hsdp")

    rules = (
        Rule(
            "self.nccl.all(k, k.matches('^NCCL_[A-Z0-9_]+$'))",
            "every key of nccl is an NCCL environment variable (NCCL_ and capitals, digits, _)",
            ".nccl",
        ),
    )


SHARD_CACHE_ENV = "LMFORGE_SHARD_CACHE"
"""Where a rank caches remote shards: a volume of the pod (an emptyDir of cacheMiB per process);
the system's temporary folder when unset."""


class Streaming(Model):
    """How each rank reads a Dataset's shards: in blocks of shards shuffled together, remote
    ones through a bounded local cache (docs/training.md, "Reading data")."""

    shuffle_shards: int = Field(default=8, ge=1, le=4096)
    """Shards whose sequences are shuffled together (the order of the shards is shuffled every
    epoch too): more mixes better and needs a larger cache. Fixed for the life of a run."""
    cache_mib: int = Field(default=4096, ge=1, alias="cacheMiB")
    """Local disk per rank for remote shards. It must hold two blocks of shuffleShards of the
    largest shards (the one read and the next, fetched while it is read): checked before the
    first step."""


class Divergence(Model):
    """What the trainer does with a step whose loss or gradient norm goes bad: it skips the
    update (weights and optimizer stay as they were; the data and the schedule move on), and
    after maxSkips such steps in a row rolls back to its newest checkpoint and continues with
    the data after the bad steps (docs/training.md, "Divergence")."""

    spike_factor: float | None = Field(default=None, ge=1)
    """Also skip a step whose loss is over this many times the mean of the last `window`
    steps taken (for losses above zero: cross-entropy, reward, DPO). Unset: only a NaN or
    infinite loss or gradient norm is skipped."""
    window: int = Field(default=20, ge=1, le=10000)
    max_skips: int = Field(default=5, ge=1)
    """Steps skipped in a row that roll the run back to its newest checkpoint."""
    max_rollbacks: int = Field(default=3, ge=0)
    """Rollbacks after which the run fails, since it keeps diverging: lower the learning rate,
    or look at the data the skipped steps read."""


class CheckpointPolicy(Model):
    """Distributed checkpoints; a run resumes from the newest committed one by itself."""

    uri: str | None = Field(default=None, pattern=URI_PATTERN)
    """Where step-<N>/ directories go; <storage.uri>/<kind>/<name>/checkpoints when unset."""
    every_steps: int = Field(default=100, ge=1)
    keep: int = Field(default=3, ge=1, le=1000)
    """Committed checkpoints kept; older ones are deleted after a newer one commits."""
    async_save: bool = False
    """Write in the background while training continues."""


class Validation(Model):
    """Validation loss and perplexity during training."""

    every_steps: int = Field(default=100, ge=1)
    batches: int = Field(default=10, ge=1)


class Training(Model):
    """The training run. Either steps or tokens sets its length."""

    global_batch_tokens: int = Field(default=65536, ge=16)
    """Tokens per optimizer step over all ranks; gradient accumulation makes up the rest."""
    micro_batch: int = Field(default=8, ge=1, le=4096)
    """Sequences per rank per forward/backward."""
    steps: int | None = Field(default=None, ge=1)
    tokens: int | None = Field(default=None, ge=1)
    """Train for this many tokens; steps = tokens / globalBatchTokens."""
    optimizer: Optimizer = Field(default_factory=Optimizer)
    schedule: Schedule = Field(default_factory=Schedule)
    grad_clip: float = Field(default=1.0, ge=0)
    """Clip the global gradient norm to this value; 0 turns clipping off."""
    precision: Literal["auto", "bf16", "fp16", "fp32"] = "auto"
    """auto: bf16 mixed precision on GPUs that support it, fp32 on CPU."""
    activation_checkpointing: bool = False
    compile: bool = False
    """torch.compile the model."""
    seed: int = Field(default=0, ge=0)
    parallelism: Parallelism = Field(default_factory=Parallelism)
    data: Streaming = Field(default_factory=Streaming)
    checkpoint: CheckpointPolicy = Field(default_factory=CheckpointPolicy)
    divergence: Divergence = Field(default_factory=Divergence)
    validation: Validation = Field(default_factory=Validation)

    rules = (
        Rule(
            "has(self.steps) != has(self.tokens)",
            "set exactly one of steps or tokens",
        ),
    )


class TrainingWorkload(Workload):
    """The fields every training-type kind shares."""

    training: Training

    rules = (
        Rule(
            "self.training.parallelism.strategy != 'fsdp'"
            " || self.resources.nodes * self.resources.processesPerNode > 1",
            "fsdp shards the model over ranks and needs more than one: raise resources.nodes or"
            " resources.processesPerNode, or use strategy ddp",
            ".training.parallelism.strategy",
        ),
        Rule(
            "self.training.parallelism.strategy != 'hsdp'"
            " || (self.resources.nodes > 1 && self.resources.processesPerNode > 1)",
            "hsdp shards within a node and replicates across nodes: it needs resources.nodes and"
            " resources.processesPerNode above 1 (use fsdp on one node, ddp with one process"
            " per node)",
            ".training.parallelism.strategy",
        ),
    )
