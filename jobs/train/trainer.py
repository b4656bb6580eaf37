"""The trainer, one per rank under torchrun: DDP or FSDP2, gradient accumulation to a global batch
in tokens, clipping, AdamW with warmup and decay, checkpoints, validation, exact resume.

`Trainer.train()` is the loop; everything it calls is a short method below it.
"""

from __future__ import annotations

import contextlib
import logging
import math
import os
import random
import re
import signal
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
from torch.distributed.fsdp import MixedPrecisionPolicy, fully_shard
from torch.nn.parallel import DistributedDataParallel

from lmforge.jobs import hf, sizing
from lmforge.jobs.data.reader import ShardReader
from lmforge.jobs.model import Transformer
from lmforge.jobs.storage import filesystem, join
from lmforge.operator.api.training import Optimizer

from .checkpoint import Checkpointer
from .config import ConfigError, TrainConfig
from .schedule import lr_multiplier
from .telemetry import Telemetry

log = logging.getLogger("lmforge.train")
PREEMPTED = 143  # exit status after a SIGTERM-triggered checkpoint, as if killed by SIGTERM


class Trainer:
    def __init__(self, config: TrainConfig):
        self.config, t = config, config.training
        self.rank, self.world = dist.get_rank(), dist.get_world_size()
        self.device = torch.device(
            f"cuda:{os.environ.get('LOCAL_RANK', 0)}" if torch.cuda.is_available() else "cpu"
        )
        self.base = None
        if config.base_model_uri:  # fine-tuning: its shape, weights and tokenizer
            arch, tensors = hf.load(config.base_model_uri, config.endpoint_url)
            fs, root = filesystem(config.base_model_uri, config.endpoint_url)
            self.tokenizer_json = fs.cat_file(join(root, hf.TOKENIZER))
            self.base, config = tensors, config.model_copy(update={"architecture": arch})
            self.config = config
        if config.examples_uri:
            if self.base is None:
                raise ConfigError("fine-tuning needs spec.baseModel")
            self.data, self.validation_rows = self._examples()
            length = config.architecture.context_length
            vocab = config.architecture.vocab_size
        else:
            self.data = self._reader("train")
            manifest = self.data.manifest
            length, vocab = manifest["sequenceLength"], manifest["tokenizer"]["vocabSize"]
        self.plan = config.plan(self.world, length, vocab)
        self.arch = self.plan.architecture
        self.dtype = _autocast_dtype(t.precision, self.device)
        torch.manual_seed(t.seed)  # every rank builds the same initial weights
        model = Transformer(self.arch)
        if self.base is not None:
            model.load_state_dict(self.base)
        if config.lora:
            from lmforge.jobs.finetune import lora

            model = lora.add(model, config.lora)
        self.model = self._parallelize(model)
        self.optimizer = _adamw(self.model, t.optimizer)
        self.scheduler = torch.optim.lr_scheduler.LambdaLR(
            self.optimizer, lambda step: lr_multiplier(step, self.plan.steps, t.schedule)
        )
        self.scaler = torch.amp.GradScaler(enabled=self.dtype == torch.float16)
        self.checkpointer = Checkpointer(
            config.checkpoint_uri, t.checkpoint.keep, config.endpoint_url, t.checkpoint.async_save
        )
        self.telemetry = Telemetry(self.rank, config.progress_path, config.name)
        self.step, self.stop_requested = 0, False
        self.flops_per_token = sizing.training_flops_per_token(self.arch, length)

    def _reader(self, split: str):
        """The Dataset's split, or the examples held out for validation."""
        if self.config.examples_uri:
            from lmforge.jobs.data.reader import ArrayReader

            rows = self.data.rows if split == "train" else self.validation_rows
            return ArrayReader(
                rows, split, rank=self.rank, world_size=self.world, seed=self.config.training.seed
            )
        return ShardReader(
            self.config.dataset_uri,
            split,
            rank=self.rank,
            world_size=self.world,
            seed=self.config.training.seed,
            endpoint_url=self.config.endpoint_url,
        )

    def _examples(self):
        """SFT rows of the examples (tokenized with the base model's tokenizer), split in train
        and validation by a shuffle of the seed; the train rows as a reader."""
        from tokenizers import Tokenizer

        from lmforge.jobs.data.reader import ArrayReader
        from lmforge.jobs.finetune import data

        c = self.config
        tokenizer = Tokenizer.from_str(self.tokenizer_json.decode())
        try:
            conversations = data.read(c.examples_uri, c.endpoint_url)
            rows = data.encode(conversations, tokenizer, c.architecture.context_length - 1)
        except ValueError as error:  # a bad row, named by its line
            raise ConfigError(f"spec.data: {error}") from error
        order = np.random.default_rng(c.training.seed).permutation(len(rows))
        held = int(len(rows) * c.validation_fraction)
        train = ArrayReader(
            rows[order[held:]], "train", rank=self.rank, world_size=self.world, seed=c.training.seed
        )
        return train, rows[order[:held]]

    def train(self) -> int:
        """Run to the last step (exit status 0), or checkpoint and stop on SIGTERM (143)."""
        signal.signal(signal.SIGTERM, lambda *_: setattr(self, "stop_requested", True))
        self.resume()
        try:
            batches = self.data.batches(self.config.training.micro_batch)
        except ValueError as error:
            raise ConfigError(f"training.microBatch: the training data has {error}") from error
        while self.step < self.plan.steps:
            started = time.perf_counter()
            loss, grad_norm = self.train_step(batches)
            self.step += 1
            loss, stop = self.reduce(loss)
            self.report(loss, grad_norm, time.perf_counter() - started)
            last = self.step == self.plan.steps
            if self.step % self.config.training.validation.every_steps == 0 or last:
                self.validate()
            if self.step % self.config.training.checkpoint.every_steps == 0 or last or stop:
                self.save()
            if stop:
                self.checkpointer.wait()
                self.telemetry.event("preempted", step=self.step)
                return PREEMPTED
        self.checkpointer.wait()
        self.export()
        self.telemetry.event("done", step=self.step, output=self.config.output_uri)
        return 0

    def train_step(self, batches) -> tuple[torch.Tensor, float]:
        self.optimizer.zero_grad(set_to_none=True)
        total = torch.zeros((), device=self.device)
        for micro in range(self.plan.accumulation):
            inputs, targets = self._split(next(batches))
            with self._sync_gradients(micro == self.plan.accumulation - 1), self._autocast():
                _, loss = self.model(inputs, targets)
            self.scaler.scale(loss / self.plan.accumulation).backward()
            total += loss.detach()
        self.scaler.unscale_(self.optimizer)
        clip = self.config.training.grad_clip or math.inf
        grad_norm = torch.nn.utils.clip_grad_norm_(self.model.parameters(), clip)
        self.scaler.step(self.optimizer)
        self.scaler.update()
        self.scheduler.step()
        norm = grad_norm.full_tensor() if hasattr(grad_norm, "full_tensor") else grad_norm
        return total / self.plan.accumulation, float(norm)

    def reduce(self, loss: torch.Tensor) -> tuple[float, bool]:
        """The mean loss over ranks, and whether any rank was asked to stop: one collective."""
        stop = torch.tensor(float(self.stop_requested), device=loss.device)
        both = torch.stack([loss.float(), stop])
        dist.all_reduce(both)
        return both[0].item() / self.world, both[1].item() > 0

    def report(self, loss: float, grad_norm: float, seconds: float) -> None:
        tokens = self.config.training.global_batch_tokens
        rate = tokens / seconds
        peak = _peak_flops(self.device)
        self.telemetry.event(
            "step",
            step=self.step,
            totalSteps=self.plan.steps,
            loss=round(loss, 6),
            lr=self.scheduler.get_last_lr()[0],
            gradNorm=round(grad_norm, 6),
            tokens=self.step * tokens,
            tokensPerSecond=round(rate, 1),
            stepSeconds=round(seconds, 4),
            mfu=round(rate * self.flops_per_token / (peak * self.world), 4) if peak else None,
        )

    @torch.no_grad()
    def validate(self) -> None:
        """Mean loss over the same first `batches` micro-batches of the validation split."""
        v = self.config.training.validation
        try:
            reader = self._reader("validation")
            batches = reader.batches(self.config.training.micro_batch)
        except ValueError as error:  # e.g. fewer validation sequences than ranks
            self.telemetry.event("validation", step=self.step, skipped=str(error))
            return
        self.model.eval()
        total = torch.zeros(1)
        for _ in range(v.batches):
            with self._autocast():
                total += self.model(*self._split(next(batches)))[1].float().cpu()
        batches.close()
        dist.all_reduce(total)
        loss = total.item() / (v.batches * self.world)
        self.model.train()
        self.telemetry.event(
            "validation",
            step=self.step,
            loss=round(loss, 6),
            perplexity=round(math.exp(min(loss, 50)), 4),
        )

    def save(self) -> None:
        started = time.perf_counter()
        model, optimizer = get_state_dict(self.model, self.optimizer)
        rank_state = {
            "data": self.data.state_dict(),
            "scheduler": self.scheduler.state_dict(),
            "scaler": self.scaler.state_dict(),
            "rng": _rng_state(),
        }
        self.checkpointer.save(
            self.step, {"model": model, "optimizer": optimizer}, rank_state, self._identity()
        )
        self.telemetry.event(
            "checkpoint",
            step=self.step,
            uri=self.checkpointer.step_uri(self.step),
            seconds=round(time.perf_counter() - started, 3),
        )

    def resume(self) -> None:
        """Continue from the newest committed checkpoint under the URI, if there is one."""
        model, optimizer = get_state_dict(self.model, self.optimizer)
        state = {"model": model, "optimizer": optimizer}
        try:
            found = self.checkpointer.load(state, self._identity())
        except ValueError as error:
            raise ConfigError(str(error)) from error
        if found is None:
            self.telemetry.event("start", step=0, totalSteps=self.plan.steps)
            return
        self.step, rank_state = found
        set_state_dict(
            self.model,
            self.optimizer,
            model_state_dict=state["model"],
            optim_state_dict=state["optimizer"],
        )
        self.data.load_state_dict(rank_state["data"])
        self.scheduler.load_state_dict(rank_state["scheduler"])
        self.scaler.load_state_dict(rank_state["scaler"])
        _set_rng_state(rank_state["rng"])
        self.telemetry.event("resume", step=self.step, uri=self.checkpointer.step_uri(self.step))

    def export(self) -> None:
        """The trained model as a Hugging Face Llama directory, with its tokenizer (the dataset's,
        or the base model's); LoRA adapters merged into the weights."""
        full = get_model_state_dict(
            self.model, options=StateDictOptions(full_state_dict=True, cpu_offload=True)
        )
        if self.rank == 0:  # the full state dict is gathered on rank 0 only
            if self.config.lora:
                from lmforge.jobs.finetune import lora

                full = lora.merged(full, lora.layers(self.model))
            if self.base is not None:
                tokenizer = self.tokenizer_json
            else:
                fs, root = filesystem(self.config.dataset_uri, self.config.endpoint_url)
                tokenizer = fs.cat_file(join(root, self.data.manifest["tokenizer"]["path"]))
            with tempfile.TemporaryDirectory() as folder:
                path = os.path.join(folder, "tokenizer.json")
                with open(path, "wb") as out:
                    out.write(tokenizer)
                hf.export(
                    full,
                    self.arch,
                    self.config.output_uri,
                    tokenizer_json_path=path,
                    endpoint_url=self.config.endpoint_url,
                )
        dist.barrier()

    def _split(self, batch: np.ndarray) -> tuple[torch.Tensor, torch.Tensor]:
        """(inputs, targets): from packed rows of L + 1 tokens, or from SFT rows [2, L] that hold
        both (targets -100 where not trained on)."""
        rows = torch.from_numpy(batch.astype(np.int64)).to(self.device)
        return (rows[:, :-1], rows[:, 1:]) if rows.dim() == 2 else (rows[:, 0], rows[:, 1])

    def _identity(self) -> dict[str, Any]:
        """What a checkpoint must match to resume: the shape, and the world it was sharded for."""
        return {
            "architecture": self.arch.wire(),
            "worldSize": self.world,
            "strategy": self.config.training.parallelism.strategy,
        }

    def _parallelize(self, model: Transformer) -> torch.nn.Module:
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
        model.to(self.device)
        if t.parallelism.strategy == "fsdp":
            policy = MixedPrecisionPolicy(
                param_dtype=self.dtype or torch.float32, reduce_dtype=torch.float32
            )
            for block in model.model.layers:
                fully_shard(block, mp_policy=policy)
            return fully_shard(model, mp_policy=policy)
        if self.world == 1:  # nothing to synchronise: DDP would only add overhead
            return model
        return DistributedDataParallel(
            model, device_ids=[self.device.index] if self.device.type == "cuda" else None
        )

    def _sync_gradients(self, sync: bool):
        """Reduce gradients only on the last micro-batch of a step."""
        if isinstance(self.model, DistributedDataParallel) and not sync:
            return self.model.no_sync()
        if hasattr(self.model, "set_requires_gradient_sync"):  # FSDP2
            self.model.set_requires_gradient_sync(sync)
        return contextlib.nullcontext()

    def _autocast(self):
        fsdp_handles_it = self.config.training.parallelism.strategy == "fsdp"
        if self.dtype is None or fsdp_handles_it:
            return contextlib.nullcontext()
        return torch.autocast(self.device.type, dtype=self.dtype)


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


def _peak_flops(device: torch.device) -> float | None:
    """Dense bf16 peak FLOP/s of this device, for MFU; LMFORGE_PEAK_FLOPS overrides it."""
    if os.environ.get("LMFORGE_PEAK_FLOPS"):
        return float(os.environ["LMFORGE_PEAK_FLOPS"])
    if device.type == "cuda":
        name = torch.cuda.get_device_name(device)
        # "NVIDIA H100 80GB HBM3" -> H100-80GB; LMFORGE_PEAK_FLOPS covers the GPUs not listed.
        model = (k for k in sizing.GPUS if re.search(rf"\b{k.split('-')[0]}\b", name))
        peaks = (sizing.GPUS[k].bf16_tflops for k in model)
        return next((p * 1e12 for p in peaks), None)
    return None


def _rng_state() -> dict[str, Any]:
    state = {
        "python": random.getstate(),
        "numpy": np.random.get_state(),
        "torch": torch.get_rng_state(),
    }
    if torch.cuda.is_available():
        state["cuda"] = torch.cuda.get_rng_state()
    return state


def _set_rng_state(state: dict[str, Any]) -> None:
    random.setstate(state["python"])
    np.random.set_state(state["numpy"])
    torch.set_rng_state(state["torch"])
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state(state["cuda"])
