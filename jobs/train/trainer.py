"""The trainer, one per rank under torchrun: DDP or FSDP2, gradient accumulation to a global batch
in tokens, clipping, AdamW with warmup and decay, checkpoints, validation, exact resume.

What is trained, on what, towards what, is the method's recipe (recipes.py); `Trainer.train()`
is the loop, the same for every method, and everything it calls is a short method below it.
"""

from __future__ import annotations

import contextlib
import logging
import math
import os
import random
import resource
import signal
import sys
import tempfile
import time
from typing import Any

import numpy as np
import torch
import torch.distributed as dist
from torch.distributed.checkpoint.state_dict import (
    StateDictOptions,
    get_model_state_dict,
    get_state_dict,
    set_state_dict,
)
from torch.distributed.device_mesh import init_device_mesh
from torch.distributed.fsdp import MixedPrecisionPolicy, fully_shard
from torch.nn.parallel import DistributedDataParallel

from lmforge.jobs import hf
from lmforge.jobs.train.checkpoint import Checkpointer
from lmforge.jobs.train.guard import Guard
from lmforge.jobs.train.recipes import recipe
from lmforge.jobs.train.schedule import lr_multiplier
from lmforge.jobs.train.telemetry import Telemetry
from lmforge.operator.api import events, sizing
from lmforge.operator.api.events import Exit
from lmforge.operator.api.jobs import ConfigError, FineTuneConfig, TrainConfig
from lmforge.operator.api.training import Optimizer

log = logging.getLogger("lmforge.train")


class Trainer:
    def __init__(self, config: TrainConfig):
        self.config, t = config, config.training
        self.rank, self.world = dist.get_rank(), dist.get_world_size()
        self.device = torch.device(
            f"cuda:{os.environ.get('LOCAL_RANK', 0)}" if torch.cuda.is_available() else "cpu"
        )
        self.recipe = r = recipe(config, self.rank, self.world)
        self.shape = config.resolve(r.architecture, self.world, r.sequence_length, r.vocab_size)
        self.arch = self.shape.architecture
        self.dtype = _autocast_dtype(t.precision, self.device)
        torch.manual_seed(t.seed)  # every rank draws the same initial weights
        self.mesh = None
        """hsdp's 2D device mesh (replicate, shard), set by _build."""
        self.model = self._build()
        self.objective = r.objective(self.device)
        self.data = r.train
        self.optimizer = _adamw(self.model, t.optimizer)
        self.scheduler = torch.optim.lr_scheduler.LambdaLR(
            self.optimizer, lambda step: lr_multiplier(step, self.shape.steps, t.schedule)
        )
        self.scaler = torch.amp.GradScaler(enabled=self.dtype == torch.float16)
        self.checkpointer = Checkpointer(
            config.checkpoint_uri, t.checkpoint.keep, config.endpoint_url, t.checkpoint.async_save
        )
        self.state = TrainState(self.model, self.optimizer)
        self.guard = Guard(t.divergence)
        # What differs per rank, saved by each: every part saves and loads itself.
        self.rank_state = {
            "data": self.data,
            "scheduler": self.scheduler,
            "scaler": self.scaler,
            "rng": RngState(),
            "guard": self.guard,
        }
        self.telemetry = Telemetry(self.rank, config.name)
        self.step, self.stop_requested = 0, False
        self.flops_per_token = sizing.training_flops_per_token(self.arch, r.sequence_length)
        self.peak_flops = _peak_flops(self.device)

    def train(self) -> int:
        """Run to the last step (Exit.DONE), or checkpoint and stop on SIGTERM (PREEMPTED)."""
        signal.signal(signal.SIGTERM, lambda *_: setattr(self, "stop_requested", True))
        self.resume()
        micro = self.config.training.micro_batch
        try:
            batches = self.data.batches(micro, micro * self.world * self.shape.accumulation)
        except ValueError as error:
            raise ConfigError(
                f"training.globalBatchTokens: the training data has {error}"
            ) from error
        try:
            while self.step < self.shape.steps:
                started = time.perf_counter()
                figures, grad_norm, stop, skipped = self.train_step(batches)
                self.step += 1
                self.report(figures, grad_norm, time.perf_counter() - started, skipped)
                if skipped and self.guard.diverged and not stop:
                    self.roll_back(skipped)
                    continue
                last = self.step == self.shape.steps
                if self.step % self.config.training.validation.every_steps == 0 or last:
                    self.validate()
                # While steps are skipped the weights do not change: a rollback's checkpoint
                # is one from before.
                every = self.config.training.checkpoint.every_steps
                if (self.step % every == 0 and not self.guard.in_a_row) or last or stop:
                    self.save()
                if stop:
                    self.checkpointer.wait()
                    self.telemetry.event(events.PREEMPTED, step=self.step)
                    return Exit.PREEMPTED
            self.checkpointer.wait()
            self.export()
            self.telemetry.event(events.DONE, step=self.step, output=self.config.output_uri)
            return Exit.DONE
        finally:
            self.telemetry.close()

    def train_step(self, batches) -> tuple[dict[str, float], float, bool, str | None]:
        """One optimizer step: the objective's figures (loss first), means over micro-batches
        and ranks; the gradient norm before clipping; whether a rank was asked to stop; and
        why the guard skipped the update, if it did."""
        self.optimizer.zero_grad(set_to_none=True)
        accumulation = self.shape.accumulation
        total = torch.zeros(len(self.objective.names), device=self.device)
        for micro in range(accumulation):
            rows = self._tensor(next(batches))
            with self._sync_gradients(micro == accumulation - 1), self._autocast():
                figures = self.objective(self.model, rows)
            self.scaler.scale(figures[0] / accumulation).backward()
            total += figures.detach().float()
        self.scaler.unscale_(self.optimizer)
        clip = self.config.training.grad_clip or math.inf
        grad_norm = torch.nn.utils.clip_grad_norm_(self.model.parameters(), clip)
        norm = float(grad_norm.full_tensor() if hasattr(grad_norm, "full_tensor") else grad_norm)
        figures, stop = self.reduce(total / accumulation)
        skipped = self.guard.check(next(iter(figures.values())), norm, self.scaler.is_enabled())
        if skipped is None:
            self.scaler.step(self.optimizer)
        self.scaler.update()
        self.scheduler.step()
        return figures, norm, stop, skipped

    def reduce(self, figures: torch.Tensor) -> tuple[dict[str, float], bool]:
        """The figures' means over ranks, and whether any rank was asked to stop: one
        collective."""
        stop = torch.tensor([float(self.stop_requested)], device=figures.device)
        both = torch.cat([figures, stop])
        dist.all_reduce(both)
        means = (both[:-1] / self.world).tolist()
        return dict(zip(self.objective.names, means, strict=True)), both[-1].item() > 0

    def report(
        self, figures: dict[str, float], grad_norm: float, seconds: float, skipped: str | None
    ) -> None:
        tokens = self.config.training.global_batch_tokens
        rate = tokens / seconds
        peak = self.peak_flops
        self.telemetry.event(
            events.STEP,
            step=self.step,
            totalSteps=self.shape.steps,
            **{name: round(x, 6) for name, x in figures.items()},
            lr=self.scheduler.get_last_lr()[0],
            gradNorm=round(grad_norm, 6),
            tokens=self.step * tokens,
            tokensPerSecond=round(rate, 1),
            stepSeconds=round(seconds, 4),
            mfu=round(rate * self.flops_per_token / (peak * self.world), 4) if peak else None,
            **_memory(self.device),
            **({"skipped": skipped} if skipped else {}),
            **({"skippedSteps": self.guard.skipped} if self.guard.skipped else {}),
        )

    @torch.no_grad()
    def validate(self) -> None:
        """Mean figures over the same first `batches` micro-batches of the validation rows."""
        v = self.config.training.validation
        try:
            batches = self.recipe.validation().batches(self.config.training.micro_batch)
        except ValueError as error:  # e.g. fewer validation sequences than ranks
            self.telemetry.event(events.VALIDATION, step=self.step, skipped=str(error))
            return
        self.model.eval()
        total = torch.zeros(len(self.objective.names))
        for _ in range(v.batches):
            with self._autocast():
                total += self.objective(self.model, self._tensor(next(batches))).float().cpu()
        batches.close()
        dist.all_reduce(total)
        mean = (total / (v.batches * self.world)).tolist()
        figures = dict(zip(self.objective.names, mean, strict=True))
        self.model.train()
        rounded = {k: round(x, 6) for k, x in figures.items()} | self.recipe.extras(figures)
        self.telemetry.event(events.VALIDATION, step=self.step, **rounded)

    def save(self) -> None:
        started = time.perf_counter()
        self.checkpointer.save(self.step, self.state, self.rank_state, self._identity())
        self.telemetry.event(
            events.CHECKPOINT,
            step=self.step,
            uri=self.checkpointer.step_uri(self.step),
            seconds=round(time.perf_counter() - started, 3),
        )

    def resume(self) -> None:
        """Continue from the newest committed checkpoint under the URI, if there is one."""
        try:
            step = self.checkpointer.load(self.state, self.rank_state, self._identity())
        except ValueError as error:
            raise ConfigError(str(error)) from error
        if step is None:
            nccl = {k: v for k, v in sorted(os.environ.items()) if k.startswith("NCCL_")}
            self.telemetry.event(
                events.START, step=0, totalSteps=self.shape.steps, worldSize=self.world,
                nccl=nccl, **({"mesh": list(self.mesh.shape)} if self.mesh else {}),
            )  # fmt: skip
            return
        self.step = step
        uri = self.checkpointer.step_uri(step)
        self.telemetry.event(events.RESUME, step=step, uri=uri, worldSize=self.world)

    def roll_back(self, reason: str) -> None:
        """Back to the newest committed checkpoint's weights, optimizer, schedule and RNGs,
        after the guard skipped maxSkips steps in a row. The data goes on from here (the
        batches that diverged are not read again) and the guard keeps its counts."""
        at = self.step
        self.guard.roll_back(at, reason)
        self.checkpointer.wait()
        kept = {k: v for k, v in self.rank_state.items() if k not in ("data", "guard")}
        step = self.checkpointer.load(self.state, kept, self._identity())
        if step is None:
            every = self.config.training.checkpoint.every_steps
            raise ConfigError(
                f"training diverged at step {at} ({reason}) before its first checkpoint, so"
                f" there is nothing to roll back to: lower training.optimizer.lr or"
                f" training.checkpoint.everySteps ({every})"
            )
        self.step = step
        self.telemetry.event(
            events.ROLLBACK,
            step=step,
            fromStep=at,
            uri=self.checkpointer.step_uri(step),
            reason=reason,
            rollbacks=self.guard.rollbacks,
        )

    def export(self) -> None:
        """The trained model as a Hugging Face Llama directory, with its tokenizer; LoRA adapters
        merged into the weights."""
        full = get_model_state_dict(
            self.model, options=StateDictOptions(full_state_dict=True, cpu_offload=True)
        )
        if self.rank == 0:  # the full state dict is gathered on rank 0 only
            if self.config.lora:
                from lmforge.jobs.finetune import lora  # the finetune extra: peft

                full = lora.merged(full, lora.layers(self.model))
            with tempfile.TemporaryDirectory() as folder:
                path = os.path.join(folder, "tokenizer.json")
                with open(path, "wb") as out:
                    out.write(self.recipe.tokenizer_json())
                hf.export(
                    full,
                    self.arch,
                    self.config.output_uri,
                    tokenizer_json_path=path,
                    endpoint_url=self.config.endpoint_url,
                    training_data=training_data(self.config),
                )
        dist.barrier()

    def _identity(self) -> dict[str, Any]:
        """What a checkpoint must match to resume: the shape, what is trained, and (unless the
        gang is elastic, resharding on resume) the world it was sharded for."""
        world = {} if self.config.min_nodes else {"worldSize": self.world}
        return {
            "architecture": self.arch.wire(),
            **world,
            "strategy": self.config.training.parallelism.strategy,
            **self.recipe.identity(),
        }

    def _tensor(self, batch: np.ndarray) -> torch.Tensor:
        return torch.from_numpy(batch.astype(np.int64)).to(self.device)

    def _build(self) -> torch.nn.Module:
        """The model, parallelized, with its starting weights. Under FSDP it is created on the
        meta device, sharded, then materialized: a rank allocates its shards and never the whole
        model, draws the weights an unsharded build draws (its part of them), and reads its rows
        of a base model's."""
        if not self.config.training.parallelism.sharded:
            model = self.recipe.start(self.recipe.network(self.arch))
            return self._parallelize(model.to(self.device))
        with torch.device("meta"):
            model = self.recipe.network(self.arch)
        model = self._parallelize(model)
        model.to_empty(device=self.device)
        model.init_weights()
        return self.recipe.start(model)

    def _parallelize(self, model: torch.nn.Module) -> torch.nn.Module:
        t = self.config.training
        if t.activation_checkpointing:
            from torch.distributed.algorithms._checkpoint.checkpoint_wrapper import (
                checkpoint_wrapper,
            )

            for i, block in enumerate(model.model.layers):
                model.model.layers[i] = checkpoint_wrapper(block, preserve_rng_state=False)
        if t.compile:
            for block in model.model.layers:
                block.compile()
        if t.parallelism.sharded:
            policy = MixedPrecisionPolicy(
                param_dtype=self.dtype or torch.float32, reduce_dtype=torch.float32
            )
            self.mesh = mesh = self._mesh()
            for block in model.model.layers:
                fully_shard(block, mesh=mesh, mp_policy=policy)
            return fully_shard(model, mesh=mesh, mp_policy=policy)
        if self.world == 1:  # nothing to synchronise: DDP would only add overhead
            return model
        return DistributedDataParallel(
            model, device_ids=[self.device.index] if self.device.type == "cuda" else None
        )

    def _mesh(self):
        """hsdp: nodes x processes per node, replicated across the first dimension and sharded
        along the second; fsdp: None, every rank in one dimension."""
        if self.config.training.parallelism.strategy != "hsdp":
            return None
        per_node = self.config.processes_per_node
        shape = (self.world // per_node, per_node)  # an elastic gang: the nodes present
        return init_device_mesh(self.device.type, shape, mesh_dim_names=("replicate", "shard"))

    def _sync_gradients(self, sync: bool):
        """Reduce gradients only on the last micro-batch of a step."""
        if isinstance(self.model, DistributedDataParallel) and not sync:
            return self.model.no_sync()
        if hasattr(self.model, "set_requires_gradient_sync"):  # FSDP2
            self.model.set_requires_gradient_sync(sync)
        return contextlib.nullcontext()

    def _autocast(self):
        fsdp_handles_it = self.config.training.parallelism.sharded
        if self.dtype is None or fsdp_handles_it:
            return contextlib.nullcontext()
        return torch.autocast(self.device.type, dtype=self.dtype)


class TrainState:
    """The model and optimizer, sharded the way the model is (torch.distributed.checkpoint)."""

    def __init__(self, model: torch.nn.Module, optimizer: torch.optim.Optimizer):
        self.model, self.optimizer = model, optimizer

    def state_dict(self) -> dict[str, Any]:
        model, optimizer = get_state_dict(self.model, self.optimizer)
        return {"model": model, "optimizer": optimizer}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        set_state_dict(
            self.model,
            self.optimizer,
            model_state_dict=state["model"],
            optim_state_dict=state["optimizer"],
        )


class RngState:
    """Every random number generator a step draws from."""

    def state_dict(self) -> dict[str, Any]:
        state = {
            "python": random.getstate(),
            "numpy": np.random.get_state(),
            "torch": torch.get_rng_state(),
        }
        if torch.cuda.is_available():
            state["cuda"] = torch.cuda.get_rng_state()
        return state

    def load_state_dict(self, state: dict[str, Any]) -> None:
        random.setstate(state["python"])
        np.random.set_state(state["numpy"])
        torch.set_rng_state(state["torch"])
        if "cuda" in state and torch.cuda.is_available():
            torch.cuda.set_rng_state(state["cuda"])


def _adamw(model: torch.nn.Module, o: Optimizer) -> torch.optim.AdamW:
    trained = [p for p in model.parameters() if p.requires_grad]  # LoRA freezes the base
    decay = [p for p in trained if p.dim() >= 2]
    rest = [p for p in trained if p.dim() < 2]  # norm gains: no weight decay
    groups = [
        {"params": decay, "weight_decay": o.weight_decay},
        {"params": rest, "weight_decay": 0},
    ]
    return torch.optim.AdamW(groups, lr=o.lr, betas=(o.beta1, o.beta2), eps=o.eps, foreach=True)


def _autocast_dtype(precision: str, device: torch.device) -> torch.dtype | None:
    """None means fp32 throughout. CPU always trains in fp32."""
    if device.type != "cuda" or precision == "fp32":
        return None
    if precision == "fp16":
        return torch.float16
    return torch.bfloat16  # auto and bf16


def _memory(device: torch.device) -> dict[str, int]:
    """This rank's peak memory so far in MiB (the CUDA allocator's on a GPU, the process's
    resident set otherwise), and the GPU's utilization in percent where NVML tells it."""
    if device.type != "cuda":
        peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss  # KiB; bytes on macOS
        return {"peakMemoryMiB": round(peak / (2**20 if sys.platform == "darwin" else 2**10))}
    found = {"peakMemoryMiB": round(torch.cuda.max_memory_allocated(device) / 2**20)}
    with contextlib.suppress(Exception):  # without pynvml (NVML) torch cannot read it
        found["gpuUtilization"] = torch.cuda.utilization(device)
    return found


def _peak_flops(device: torch.device) -> float | None:
    """Dense bf16 peak FLOP/s of this device, for MFU; LMFORGE_PEAK_FLOPS overrides it."""
    if os.environ.get("LMFORGE_PEAK_FLOPS"):
        return float(os.environ["LMFORGE_PEAK_FLOPS"])
    if device.type == "cuda":  # LMFORGE_PEAK_FLOPS covers the GPUs not listed
        gpu = sizing.gpu_named(torch.cuda.get_device_name(device))
        return gpu.bf16_tflops * 1e12 if gpu else None
    return None


def training_data(config: TrainConfig) -> list[dict[str, str]]:
    """What the exported model is trained on (hf.LINEAGE): this run's data, then everything its
    base model was trained on."""
    data = [config.training_data()]
    if isinstance(config, FineTuneConfig):
        data += hf.training_data(config.base_model_uri, config.endpoint_url)
    return list({d["uri"]: d for d in data}.values())
