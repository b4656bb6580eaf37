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

from lmforge.jobs import hf
from lmforge.jobs.data.reader import ShardReader
from lmforge.jobs.generate import EOS, Sampling
from lmforge.jobs.model import Scorer, Transformer
from lmforge.jobs.storage import filesystem, join
from lmforge.jobs.train import objectives
from lmforge.jobs.train.checkpoint import Checkpointer
from lmforge.jobs.train.schedule import lr_multiplier
from lmforge.jobs.train.telemetry import Telemetry
from lmforge.operator.api import sizing
from lmforge.operator.api.events import Exit
from lmforge.operator.api.jobs import ConfigError, TrainConfig
from lmforge.operator.api.training import Optimizer

log = logging.getLogger("lmforge.train")


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
        if config.method != "pretrain":
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
        model = Scorer(self.arch) if config.method == "reward" else Transformer(self.arch)
        if self.base is not None:
            _load_base(model, self.base)
        if config.lora:
            from lmforge.jobs.finetune import lora

            model = lora.add(model, config.lora)
            if config.method == "reward":  # a new head: trained in full
                model.score.requires_grad_(True)
        self.model = self._parallelize(model)
        self.objective = self._objective()
        self.optimizer = _adamw(self.model, t.optimizer)
        self.scheduler = torch.optim.lr_scheduler.LambdaLR(
            self.optimizer, lambda step: lr_multiplier(step, self.plan.steps, t.schedule)
        )
        self.scaler = torch.amp.GradScaler(enabled=self.dtype == torch.float16)
        self.checkpointer = Checkpointer(
            config.checkpoint_uri, t.checkpoint.keep, config.endpoint_url, t.checkpoint.async_save
        )
        self.telemetry = Telemetry(self.rank, config.name)
        self.step, self.stop_requested = 0, False
        self.flops_per_token = sizing.training_flops_per_token(self.arch, length)

    def _reader(self, split: str):
        """The Dataset's split, or the examples held out for validation."""
        if self.config.method != "pretrain":
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
        """The fine-tuning rows (examples, or ranked preferences, tokenized with the base model's
        tokenizer), split in train and validation by a shuffle of the seed; the train rows as a
        reader."""
        from lmforge.jobs.data.reader import ArrayReader
        from lmforge.jobs.finetune import data, preferences

        c = self.config
        tokenizer = self._tokenizer()
        length = c.architecture.context_length - 1
        field = {"sft": "spec.data", "grpo": "spec.prompts"}.get(c.method, "spec.preferences")
        try:
            if c.method == "sft":
                rows = data.encode(data.read(c.examples_uri, c.endpoint_url), tokenizer, length)
            elif c.method == "grpo":
                prompts = data.read_prompts(c.prompts_uri, c.endpoint_url)
                rows = data.encode_prompts(prompts, tokenizer, length)
            else:
                rankings = preferences.read(c.preferences_uri, c.endpoint_url)
                rows = preferences.encode(rankings, tokenizer, length)
            order = np.random.default_rng(c.training.seed).permutation(len(rows))
            held = int(len(rows) * c.validation_fraction)
            train = ArrayReader(rows[order[held:]], "train", rank=self.rank,
                                world_size=self.world, seed=c.training.seed)  # fmt: skip
        except ValueError as error:  # a bad row (named by its line), or too few rows
            raise ConfigError(f"{field}: {error}") from error
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
            figures, grad_norm = self.train_step(batches)
            self.step += 1
            figures, stop = self.reduce(figures)
            self.report(figures, grad_norm, time.perf_counter() - started)
            last = self.step == self.plan.steps
            if self.step % self.config.training.validation.every_steps == 0 or last:
                self.validate()
            if self.step % self.config.training.checkpoint.every_steps == 0 or last or stop:
                self.save()
            if stop:
                self.checkpointer.wait()
                self.telemetry.event("preempted", step=self.step)
                return Exit.PREEMPTED
        self.checkpointer.wait()
        self.export()
        self.telemetry.event("done", step=self.step, output=self.config.output_uri)
        return 0

    def train_step(self, batches) -> tuple[torch.Tensor, float]:
        """One optimizer step; the objective's figures (loss first) averaged over its
        micro-batches, and the gradient norm before clipping."""
        self.optimizer.zero_grad(set_to_none=True)
        total = torch.zeros(len(self.objective.names), device=self.device)
        for micro in range(self.plan.accumulation):
            rows = self._tensor(next(batches))
            with self._sync_gradients(micro == self.plan.accumulation - 1), self._autocast():
                figures = self.objective(self.model, rows)
            self.scaler.scale(figures[0] / self.plan.accumulation).backward()
            total += figures.detach().float()
        self.scaler.unscale_(self.optimizer)
        clip = self.config.training.grad_clip or math.inf
        grad_norm = torch.nn.utils.clip_grad_norm_(self.model.parameters(), clip)
        self.scaler.step(self.optimizer)
        self.scaler.update()
        self.scheduler.step()
        norm = grad_norm.full_tensor() if hasattr(grad_norm, "full_tensor") else grad_norm
        return total / self.plan.accumulation, float(norm)

    def reduce(self, figures: torch.Tensor) -> tuple[dict[str, float], bool]:
        """The figures' means over ranks, and whether any rank was asked to stop: one
        collective."""
        stop = torch.tensor([float(self.stop_requested)], device=figures.device)
        both = torch.cat([figures, stop])
        dist.all_reduce(both)
        means = (both[:-1] / self.world).tolist()
        return dict(zip(self.objective.names, means, strict=True)), both[-1].item() > 0

    def report(self, figures: dict[str, float], grad_norm: float, seconds: float) -> None:
        tokens = self.config.training.global_batch_tokens
        rate = tokens / seconds
        peak = _peak_flops(self.device)
        self.telemetry.event(
            "step",
            step=self.step,
            totalSteps=self.plan.steps,
            **{name: round(x, 6) for name, x in figures.items()},
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
        total = torch.zeros(len(self.objective.names))
        for _ in range(v.batches):
            with self._autocast():
                total += self.objective(self.model, self._tensor(next(batches))).float().cpu()
        batches.close()
        dist.all_reduce(total)
        mean = (total / (v.batches * self.world)).tolist()
        figures = dict(zip(self.objective.names, mean, strict=True))
        self.model.train()
        rounded = {k: round(x, 6) for k, x in figures.items()}
        if self.config.method in ("pretrain", "sft"):
            rounded["perplexity"] = round(math.exp(min(figures["loss"], 50)), 4)
        self.telemetry.event("validation", step=self.step, **rounded)

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

    def _tensor(self, batch: np.ndarray) -> torch.Tensor:
        return torch.from_numpy(batch.astype(np.int64)).to(self.device)

    def _objective(self):
        c = self.config
        if c.method == "reward":
            return objectives.Reward(listwise=c.ranking_loss == "plackettLuce")
        if c.method == "dpo":
            return objectives.Dpo(self._reference(), c.beta)
        if c.method == "grpo":
            rl = c.rl
            sampling = Sampling(rl.max_new_tokens, rl.temperature, rl.top_p)
            eos = self._tokenizer().token_to_id(EOS)
            return objectives.Grpo(self._reference(), self._scorer(), eos, rl.samples_per_prompt,
                                   sampling, rl.kl_coef)  # fmt: skip
        return objectives.LanguageModel()

    def _tokenizer(self):
        from tokenizers import Tokenizer

        tokenizer = Tokenizer.from_str(self.tokenizer_json.decode())
        if tokenizer.token_to_id(EOS) is None:
            raise ConfigError(
                f"spec.baseModel: its tokenizer has no {EOS} token, which ends every reply in"
                " lmforge's chat template; use a tokenizer a Dataset trained (it has one)"
            )
        return tokenizer

    def _scorer(self) -> Scorer:
        """GRPO's reward model, frozen: it must read the policy's tokens the policy's way."""
        c = self.config
        arch, tensors = hf.load(c.reward_model_uri, c.endpoint_url)
        fs, root = filesystem(c.reward_model_uri, c.endpoint_url)
        if "score.weight" not in tensors:
            raise ConfigError(
                "spec.rewardModelRef: its model has no score head (not a RewardModel)"
            )
        if fs.cat_file(join(root, hf.TOKENIZER)) != self.tokenizer_json:
            raise ConfigError(
                "spec.rewardModelRef: its tokenizer differs from the base model's; train the"
                " reward model from the same base model (or one with the same tokenizer)"
            )
        if arch.context_length < self.arch.context_length:
            raise ConfigError(
                f"spec.rewardModelRef: its context ({arch.context_length}) is shorter than the"
                f" policy's ({self.arch.context_length})"
            )
        scorer = Scorer(arch)
        scorer.load_state_dict(tensors)
        return scorer.to(self.device).eval().requires_grad_(False)

    def _reference(self) -> torch.nn.Module:
        """DPO's frozen reference: the base model, or spec.dpo.reference (same shape), whole on
        every rank, in the training precision."""
        c, tensors = self.config, self.base
        if c.reference_uri:
            arch, tensors = hf.load(c.reference_uri, c.endpoint_url)
            if arch != self.arch:
                raise ConfigError(
                    "spec.dpo.reference: its architecture differs from the base model's; DPO"
                    " compares the two on the same tokens, so use a model of the same shape"
                )
        reference = Transformer(self.arch)
        _load_base(reference, tensors)
        return reference.to(self.device).eval().requires_grad_(False)

    def _identity(self) -> dict[str, Any]:
        """What a checkpoint must match to resume: the shape, what is trained, and the world it
        was sharded for."""
        identity = {
            "architecture": self.arch.wire(),
            "worldSize": self.world,
            "strategy": self.config.training.parallelism.strategy,
        }
        if self.config.method != "pretrain":
            identity["method"] = self.config.method
        return identity

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


def _load_base(model: Transformer, tensors: dict[str, torch.Tensor]) -> None:
    """The base model's weights; a Scorer built on a language model keeps its new head and
    leaves the language-model head out."""
    if isinstance(model, Scorer) and "score.weight" not in tensors:
        tensors = {k: v for k, v in tensors.items() if k != "lm_head.weight"}
        tensors["score.weight"] = model.score.weight.detach()
    elif not isinstance(model, Scorer) and "score.weight" in tensors:
        raise ConfigError(
            "spec.baseModel: a reward model (a score head, no language-model head);"
            " start from a language model"
        )
    model.load_state_dict(tensors)


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
