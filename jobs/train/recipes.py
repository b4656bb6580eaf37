"""One recipe per training method: the model it trains, the rows it reads, what a step
minimises, what its checkpoints must match and what its validation adds. The trainer
(trainer.py) runs every recipe the same way and never asks which method it runs; `recipe()` is
the one place a config's method is looked at.
"""

from __future__ import annotations

import math

import numpy as np
import torch
from tokenizers import Tokenizer
from torch.distributed.algorithms._checkpoint.checkpoint_wrapper import (
    _CHECKPOINT_PREFIX as CHECKPOINT_PREFIX,
)
from torch.distributed.tensor import DTensor
from torch.distributed.tensor._utils import compute_local_shape_and_global_offset

from lmforge.jobs import hf
from lmforge.jobs.data.reader import ArrayReader, Sequences, ShardReader
from lmforge.jobs.finetune import data, preferences
from lmforge.jobs.generate import EOS, Sampling
from lmforge.jobs.model import Scorer, Transformer
from lmforge.jobs.storage import filesystem, join
from lmforge.jobs.train import objectives
from lmforge.operator.api.architecture import Architecture
from lmforge.operator.api.jobs import (
    ConfigError,
    DpoConfig,
    FineTuneConfig,
    GrpoConfig,
    PretrainConfig,
    RewardConfig,
    SftConfig,
    TrainConfig,
)


class Recipe:
    """What every method provides. `architecture`, `sequence_length`, `vocab_size` and `train`
    (the training rows, a Stateful reader) are set when the recipe is made."""

    architecture: Architecture
    sequence_length: int
    vocab_size: int
    train: Sequences

    def __init__(self, config: TrainConfig, rank: int, world: int):
        self.config, self.rank, self.world = config, rank, world

    def validation(self) -> Sequences:
        """The held-out rows; ValueError when there are too few to validate on."""
        raise NotImplementedError

    def network(self, arch: Architecture) -> torch.nn.Module:
        """The model to train, its weights drawn from torch's seeded RNG (none under
        torch.device("meta"): FSDP builds it there, shards it, and draws each rank's part)."""
        return Transformer(arch)

    def start(self, model: torch.nn.Module) -> torch.nn.Module:
        """The model with its starting weights (the drawn ones, or a base model's), in place
        under FSDP, whose parameters hold this rank's rows."""
        return model

    def objective(self, device: torch.device):
        """What a step minimises (jobs/train/objectives.py)."""
        raise NotImplementedError

    def tokenizer_json(self) -> bytes:
        """The tokenizer exported with the model."""
        raise NotImplementedError

    def identity(self) -> dict:
        """What a checkpoint must match besides the shape and the world, to be resumed."""
        return {}

    def extras(self, figures: dict[str, float]) -> dict[str, float]:
        """Figures validation reports besides the objective's own."""
        return {}

    def _reader(self, rows_or_uri, split: str) -> Sequences:
        c = self.config
        where = {"rank": self.rank, "world_size": self.world, "seed": c.training.seed}
        if not isinstance(rows_or_uri, str):
            return ArrayReader(rows_or_uri, split, **where)
        return ShardReader(rows_or_uri, split, endpoint_url=c.endpoint_url,
                           block=c.training.data.shuffle_shards, **where)  # fmt: skip


def perplexity(figures: dict[str, float]) -> dict[str, float]:
    return {"perplexity": round(math.exp(min(figures["loss"], 50)), 4)}


def rankings(config: RewardConfig | DpoConfig, tokenizer: Tokenizer, length: int) -> np.ndarray:
    """Ranked responses (a reward model's data, and DPO's), tokenized."""
    ranked = preferences.read(config.preferences_uri, config.endpoint_url)
    return preferences.encode(ranked, tokenizer, length)


class Pretraining(Recipe):
    """Next-token prediction on a Dataset's packed sequences, from random weights."""

    config: PretrainConfig

    def __init__(self, config: PretrainConfig, rank: int, world: int):
        super().__init__(config, rank, world)
        self.train = self._reader(config.dataset_uri, "train")
        manifest = self.train.manifest
        self.architecture = config.architecture
        self.sequence_length = manifest["sequenceLength"]
        self.vocab_size = manifest["tokenizer"]["vocabSize"]
        try:  # made once, so that its shards are fetched once
            self.held_out: Sequences | ValueError = self._reader(config.dataset_uri, "validation")
        except ValueError as error:
            self.held_out = error
        streaming, readers = config.training.data, [self.train, self.held_out]
        needed = sum(r.cache_bytes for r in readers if isinstance(r, ShardReader))
        if needed > streaming.cache_mib << 20:
            raise ConfigError(
                f"training.data.cacheMiB ({streaming.cache_mib}) cannot hold the shards a rank"
                f" keeps, two blocks of training.data.shuffleShards ({self.train.block}) of the"
                f" largest of each split ({needed / 2**20:.1f} MiB): raise cacheMiB or lower"
                " shuffleShards"
            )

    def validation(self) -> Sequences:
        if isinstance(self.held_out, ValueError):
            raise self.held_out
        self.held_out.epoch = self.held_out.position = 0
        return self.held_out

    def objective(self, device: torch.device):
        return objectives.LanguageModel()

    def tokenizer_json(self) -> bytes:
        fs, root = filesystem(self.config.dataset_uri, self.config.endpoint_url)
        return fs.cat_file(join(root, self.train.manifest["tokenizer"]["path"]))

    def extras(self, figures: dict[str, float]) -> dict[str, float]:
        return perplexity(figures)


class FineTuning(Recipe):
    """Training that starts from a model (its shape, weights and tokenizer) and reads rows held in
    memory, a shuffle of the seed holding out `validationFraction` of them."""

    config: FineTuneConfig

    def __init__(self, config: FineTuneConfig, rank: int, world: int):
        super().__init__(config, rank, world)
        self.check()
        self.base = hf.Checkpoint(config.base_model_uri, config.endpoint_url)
        self.architecture = self.base.architecture
        self._tokenizer_json = self.base.file(hf.TOKENIZER)
        self.sequence_length = self.architecture.context_length
        self.vocab_size = self.architecture.vocab_size
        try:
            rows = self.rows(self.tokenizer(), self.sequence_length - 1)
            order = np.random.default_rng(config.training.seed).permutation(len(rows))
            held = int(len(rows) * config.validation_fraction)
            self.train = self._reader(rows[order[held:]], "train")
        except ValueError as error:  # a bad row (named by its line), or too few rows
            raise ConfigError(f"{config.data_field}: {error}") from error
        self.held_out = rows[order[:held]]

    def check(self) -> None:
        """ConfigError, before anything is read, for what the method cannot do."""

    def rows(self, tokenizer: Tokenizer, length: int) -> np.ndarray:
        """Every row of the method's data, tokenized to `length`."""
        raise NotImplementedError

    def validation(self) -> Sequences:
        return self._reader(self.held_out, "validation")

    def tokenizer_json(self) -> bytes:
        return self._tokenizer_json

    def tokenizer(self) -> Tokenizer:
        tokenizer = Tokenizer.from_str(self._tokenizer_json.decode())
        if tokenizer.token_to_id(EOS) is None:
            raise ConfigError(
                f"spec.baseModel: its tokenizer has no {EOS} token, which ends every reply in"
                " lmforge's chat template; use a tokenizer a Dataset trained (it has one)"
            )
        return tokenizer

    def start(self, model: torch.nn.Module) -> torch.nn.Module:
        load_base(model, self.base)
        if not self.config.lora:
            return model
        from lmforge.jobs.finetune import lora  # the finetune extra: peft

        return lora.add(model, self.config.lora)

    def identity(self) -> dict:
        return {"method": self.config.method}

    def reference(self, device: torch.device) -> torch.nn.Module:
        """A frozen copy of the base model (or of `uri`, which must have its shape), whole on
        every rank: what DPO and GRPO compare the policy with."""
        base, uri = self.base, getattr(self.config, "reference_uri", None)
        if uri:
            base = hf.Checkpoint(uri, self.config.endpoint_url)
            if base.architecture != self.architecture:
                raise ConfigError(
                    "spec.dpo.reference: its architecture differs from the base model's; DPO"
                    " compares the two on the same tokens, so use a model of the same shape"
                )
        reference = Transformer(self.architecture)
        load_base(reference, base)
        return reference.to(device).eval().requires_grad_(False)


class Sft(FineTuning):
    """Next-token prediction on the replies of chat examples."""

    config: SftConfig

    def rows(self, tokenizer: Tokenizer, length: int) -> np.ndarray:
        c = self.config
        return data.encode(data.read(c.examples_uri, c.endpoint_url), tokenizer, length)

    def objective(self, device: torch.device):
        return objectives.LanguageModel()

    def extras(self, figures: dict[str, float]) -> dict[str, float]:
        return perplexity(figures)


class RewardModelling(FineTuning):
    """A scoring head on the base model, trained on ranked preferences."""

    config: RewardConfig

    def rows(self, tokenizer: Tokenizer, length: int) -> np.ndarray:
        return rankings(self.config, tokenizer, length)

    def network(self, arch: Architecture) -> torch.nn.Module:
        return Scorer(arch)

    def start(self, model: torch.nn.Module) -> torch.nn.Module:
        model = super().start(model)
        model.score.requires_grad_(True)  # a new head: trained in full, with or without LoRA
        return model

    def objective(self, device: torch.device):
        return objectives.Reward(listwise=self.config.ranking_loss == "plackettLuce")


class Dpo(FineTuning):
    """The policy on ranked preferences, against a frozen reference."""

    config: DpoConfig

    def rows(self, tokenizer: Tokenizer, length: int) -> np.ndarray:
        return rankings(self.config, tokenizer, length)

    def objective(self, device: torch.device):
        return objectives.Dpo(self.reference(device), self.config.beta)


class Grpo(FineTuning):
    """The policy on its own replies to prompts, scored by a reward model."""

    config: GrpoConfig

    def check(self) -> None:
        parallelism = self.config.training.parallelism
        if parallelism.sharded:
            raise ConfigError(
                f"method grpo: training.parallelism.strategy {parallelism.strategy} is not"
                " supported yet; use ddp"
            )

    def rows(self, tokenizer: Tokenizer, length: int) -> np.ndarray:
        c = self.config
        return data.encode_prompts(data.read_prompts(c.prompts_uri, c.endpoint_url), tokenizer,
                                   length)  # fmt: skip

    def objective(self, device: torch.device):
        rl = self.config.rl
        sampling = Sampling(rl.max_new_tokens, rl.temperature, rl.top_p)
        eos = self.tokenizer().token_to_id(EOS)
        return objectives.Grpo(self.reference(device), self.scorer(device), eos,
                               rl.samples_per_prompt, sampling, rl.kl_coef)  # fmt: skip

    def scorer(self, device: torch.device) -> Scorer:
        """The reward model, frozen: it must read the policy's tokens the policy's way."""
        c = self.config
        checkpoint = hf.Checkpoint(c.reward_model_uri, c.endpoint_url)
        arch = checkpoint.architecture
        if hf.SCORE not in checkpoint.tensors:
            raise ConfigError(
                "spec.rewardModelRef: its model has no score head (not a RewardModel)"
            )
        if checkpoint.file(hf.TOKENIZER) != self.tokenizer_json():
            raise ConfigError(
                "spec.rewardModelRef: its tokenizer differs from the base model's; train the"
                " reward model from the same base model (or one with the same tokenizer)"
            )
        if arch.context_length < self.architecture.context_length:
            raise ConfigError(
                f"spec.rewardModelRef: its context ({arch.context_length}) is shorter than the"
                f" policy's ({self.architecture.context_length})"
            )
        scorer = Scorer(arch)
        load_base(scorer, checkpoint)
        return scorer.to(device).eval().requires_grad_(False)


RECIPES: dict[type[TrainConfig], type[Recipe]] = {
    PretrainConfig: Pretraining,
    SftConfig: Sft,
    RewardConfig: RewardModelling,
    DpoConfig: Dpo,
    GrpoConfig: Grpo,
}


def recipe(config: TrainConfig, rank: int, world: int) -> Recipe:
    """The recipe of the config's method, with its data read."""
    return RECIPES[type(config)](config, rank, world)


def load_base(model: torch.nn.Module, base: hf.Checkpoint) -> None:
    """The base model's weights, in place: each parameter whole, or under FSDP this rank's rows
    of it, read from the checkpoint (nothing else of it is fetched). A Scorer built on a language
    model keeps its drawn head and leaves the language-model head out."""
    scorer, scored = isinstance(model, Scorer), hf.SCORE in base.tensors
    if scored and not scorer:
        raise ConfigError(
            "spec.baseModel: a reward model (a score head, no language-model head);"
            " start from a language model"
        )
    for name, param in model.named_parameters():  # a tied head is listed once, as embedding
        name = name.replace(CHECKPOINT_PREFIX, "")
        if name == hf.SCORE and not scored:
            continue  # a new head: as drawn
        local, rows = param, None
        if isinstance(param, DTensor):
            shape, offset = compute_local_shape_and_global_offset(
                param.shape, param.device_mesh, param.placements
            )
            if tuple(shape[1:]) != tuple(param.shape[1:]):
                raise NotImplementedError(f"{name}: only the first dimension may be sharded")
            local, rows = param.to_local(), (offset[0], offset[0] + shape[0])
        with torch.no_grad():
            local.copy_(base.read(name, rows))
