"""Each method's recipe on the trainer, under a real torchrun: SFT (full and LoRA), reward
models, DPO and GRPO learn what they target on held-out rows, resume exactly, and refuse before
any compute what cannot work, naming the field."""

import itertools
import json
import math

import numpy as np
import pytest
from safetensors.torch import load_file

from lmforge.jobs import hf
from lmforge.jobs.finetune import data, preferences
from lmforge.jobs.model import Scorer, Transformer
from lmforge.jobs.storage import jsonl

from .conftest import CONTEXT, events, killed_and_resumed_equals_straight, train


def sft_config(tmp, base_dir, steps=30, **training) -> dict:
    return {
        "name": "sft",
        "method": "sft",
        "baseModelUri": (base_dir / "model").as_uri(),
        "examplesUri": (base_dir / "sft.jsonl").as_uri(),
        "validationFraction": 0.125,
        "training": {"steps": steps, "globalBatchTokens": CONTEXT * 8, "microBatch": 2,
                     "schedule": {"warmupSteps": 2}, "optimizer": {"lr": 0.003},
                     "checkpoint": {"everySteps": 5, "keep": 2},
                     "validation": {"everySteps": steps, "batches": 1}, **training},
        "checkpointUri": (tmp / "checkpoints").as_uri(),
        "outputUri": (tmp / "model").as_uri(),
        "processesPerNode": 2,
    }  # fmt: skip


def test_sft_learns_the_responses(tmp_path, base):
    base_dir, _ = base
    result = train(tmp_path, sft_config(tmp_path, base_dir))
    assert result.returncode == 0, result.stderr[-3000:]
    steps = [e["loss"] for e in events(tmp_path, "step")]
    assert len(steps) == 30 and np.mean(steps[-5:]) < np.mean(steps[:5]) - 1.0, steps
    (validation,) = events(tmp_path, "validation")
    assert validation["loss"] < steps[0]
    arch, _ = hf.load(tmp_path / "model")
    assert arch.context_length == CONTEXT
    assert (tmp_path / "model" / "tokenizer.json").read_bytes() == (
        base_dir / "model" / "tokenizer.json"
    ).read_bytes()


def test_lora_trains_adapters_and_exports_merged_weights(tmp_path, base):
    base_dir, _ = base
    cfg = sft_config(tmp_path, base_dir, steps=6)
    cfg["lora"] = {"rank": 4, "alpha": 8, "targetModules": ["q_proj", "v_proj"]}
    result = train(tmp_path, cfg)
    assert result.returncode == 0, result.stderr[-3000:]
    before, after = (
        load_file(base_dir / "model" / "model.safetensors"),
        load_file(tmp_path / "model" / "model.safetensors"),
    )
    assert before.keys() == after.keys()
    changed = {k for k in before if not before[k].equal(after[k])}
    assert changed and all(k.endswith(("q_proj.weight", "v_proj.weight")) for k in changed), changed


def test_sft_killed_and_resumed_equals_uninterrupted(tmp_path, base):
    base_dir, _ = base
    killed_and_resumed_equals_straight(tmp_path, lambda d: sft_config(d, base_dir, steps=12))


@pytest.fixture(scope="module")
def pairs(base, tmp_path_factory):
    """stdlib-tasks preference pairs (real body over a corrupted one) that fit the context."""
    _, tokenizer = base
    out = tmp_path_factory.mktemp("preferences") / "pairs.jsonl"
    rows = (row for _, row in jsonl("stdlib-tasks://functions/preferences.jsonl"))

    def fits(row):
        ranking = preferences.read_ranking("", row)
        replies = ([*ranking.context, {"role": "assistant", "content": r}]
                   for r in ranking.responses)  # fmt: skip
        return all(len(data.tokens(m, tokenizer)[0]) <= CONTEXT for m in replies)

    chosen = list(itertools.islice(filter(fits, rows), 160))
    out.write_text("".join(json.dumps(r) + "\n" for r in chosen))
    return out


def preference_config(tmp, base_dir, data, method, steps=40, **fields) -> dict:
    return {
        "name": method,
        "method": method,
        "baseModelUri": (base_dir / "model").as_uri(),
        "preferencesUri": data.as_uri(),
        "validationFraction": 0.2,
        "training": {"steps": steps, "globalBatchTokens": CONTEXT * 8, "microBatch": 2,
                     "schedule": {"warmupSteps": 2}, "optimizer": {"lr": 0.002},
                     "checkpoint": {"everySteps": 5, "keep": 2},
                     "validation": {"everySteps": steps // 2, "batches": 4}},
        "checkpointUri": (tmp / "checkpoints").as_uri(),
        "outputUri": (tmp / "model").as_uri(),
        "processesPerNode": 2,
        **fields,
    }  # fmt: skip


@pytest.mark.parametrize("loss", ["bradleyTerry", "plackettLuce"])
def test_reward_model_ranks_held_out_pairs_above_chance(tmp_path, base, pairs, loss):
    base_dir, _ = base
    cfg = preference_config(tmp_path, base_dir, pairs, "reward", rankingLoss=loss)
    result = train(tmp_path, cfg)
    assert result.returncode == 0, result.stderr[-3000:]
    first, last = events(tmp_path, "validation")
    assert last["accuracy"] >= 0.75, (first, last)  # 32 held-out pairs; chance is 0.5
    assert last["loss"] < math.log(2)  # what scoring every response alike gives
    # Exported as Hugging Face's LlamaForSequenceClassification, and loads back as a Scorer.
    config = json.loads((tmp_path / "model" / "config.json").read_text())
    assert config["architectures"] == ["LlamaForSequenceClassification"]
    arch, tensors = hf.load(tmp_path / "model")
    assert "score.weight" in tensors and "lm_head.weight" not in tensors
    Scorer(arch).load_state_dict(tensors)


def test_dpo_raises_the_held_out_margin(tmp_path, base, pairs):
    base_dir, _ = base
    cfg = preference_config(tmp_path, base_dir, pairs, "dpo", beta=0.1)
    result = train(tmp_path, cfg)
    assert result.returncode == 0, result.stderr[-3000:]
    middle, last = events(tmp_path, "validation")
    # nats of log-probability, over the reference's on the same held-out pairs
    assert last["margin"] > last["referenceMargin"] + 5, (middle, last)
    assert last["margin"] > middle["margin"], (middle, last)
    assert last["accuracy"] >= 0.75
    steps = [e["loss"] for e in events(tmp_path, "step")]
    assert steps[0] == pytest.approx(math.log(2), abs=1e-3)  # the policy starts as the reference
    assert np.mean(steps[-5:]) < math.log(2) - 0.2


def test_dpo_killed_and_resumed_equals_uninterrupted(tmp_path, base, pairs):
    base_dir, _ = base
    killed_and_resumed_equals_straight(
        tmp_path, lambda d: preference_config(d, base_dir, pairs, "dpo", steps=12)
    )


@pytest.fixture(scope="module")
def reward_model(base, pairs, tmp_path_factory):
    base_dir, _ = base
    out = tmp_path_factory.mktemp("rm")
    assert train(out, preference_config(out, base_dir, pairs, "reward")).returncode == 0
    return out / "model"


def grpo_config(tmp, base_dir, prompts, reward_model, steps=60) -> dict:
    cfg = preference_config(tmp, base_dir, prompts, "grpo", steps=steps)
    cfg["training"]["validation"] = {"everySteps": 10, "batches": 4}
    cfg["training"]["globalBatchTokens"] = CONTEXT * 4
    cfg["training"]["optimizer"] = {"lr": 0.01}
    del cfg["preferencesUri"]  # GRPO reads prompts, and nothing else
    return cfg | {
        "promptsUri": prompts.as_uri(),
        "rewardModelUri": reward_model.as_uri(),
        "validationFraction": 0.2,
        "rl": {"samplesPerPrompt": 4, "maxNewTokens": 16, "klCoef": 0.01},
    }


def test_grpo_raises_the_reward_of_held_out_replies(tmp_path, base, pairs, reward_model):
    base_dir, _ = base
    prompts = tmp_path / "prompts.jsonl"
    rows = [json.loads(line) for line in pairs.read_text().splitlines()]
    prompts.write_text("".join(json.dumps({"prompt": r["prompt"]}) + "\n" for r in rows))
    result = train(tmp_path, grpo_config(tmp_path, base_dir, prompts, reward_model))
    assert result.returncode == 0, result.stderr[-3000:]
    validations = [e["reward"] for e in events(tmp_path, "validation")]
    steps = [e["reward"] for e in events(tmp_path, "step")]
    assert validations[-1] > validations[0] + 0.5, validations
    assert np.mean(steps[-5:]) > np.mean(steps[:5]), steps
    assert all(e["kl"] >= 0 for e in events(tmp_path, "step"))


def test_a_reference_or_reward_model_that_does_not_match_is_refused(tmp_path, base, pairs):
    """Before any compute: fewer prompts than ranks, a DPO reference of another shape, a GRPO
    reward model with another tokenizer, a reward model where a language model belongs, and a
    base model whose tokenizer lacks the chat template's <|eos|>; each names its field."""
    base_dir, tokenizer = base
    arch, _ = hf.load(base_dir / "model")
    wider = arch.model_copy(update={"d_model": 128, "ffn_size": 256})
    hf.export(Transformer(wider), wider, tmp_path / "wide",
              tokenizer_json_path=base_dir / "model" / "tokenizer.json")  # fmt: skip
    other = tmp_path / "other-tokenizer"
    other.mkdir()
    (other / "tokenizer.json").write_text(tokenizer.to_str().replace('"<|eos|>"', '"<|end|>"'))
    for name, folder in (("rm", other), ("rm-same", base_dir / "model"), ("lm", other)):
        model = Transformer(arch) if name == "lm" else Scorer(arch)
        hf.export(model, arch, tmp_path / name, tokenizer_json_path=folder / "tokenizer.json")
    prompts = tmp_path / "prompts.jsonl"
    prompts.write_text(json.dumps({"prompt": "def f():"}) + "\n")
    cases = [
        (grpo_config(tmp_path / "d", base_dir, prompts, tmp_path / "rm"),
         "spec.prompts: split 'train' has 1 sequences, fewer than 2 ranks"),
        (preference_config(tmp_path / "a", base_dir, pairs, "dpo",
                           referenceUri=(tmp_path / "wide").as_uri()), "spec.dpo.reference"),
        (grpo_config(tmp_path / "b", base_dir, pairs, tmp_path / "rm"),
         "spec.rewardModelRef: its tokenizer differs"),
        (preference_config(tmp_path / "c", base_dir, pairs, "dpo") | {
            "baseModelUri": (tmp_path / "rm-same").as_uri()}, "spec.baseModel: a reward model"),
        (preference_config(tmp_path / "e", base_dir, pairs, "reward") | {
            "baseModelUri": (tmp_path / "lm").as_uri()}, "spec.baseModel: its tokenizer has no"),
    ]  # fmt: skip
    for n, (cfg, message) in enumerate(cases):
        result = train(tmp_path / str(n), cfg)
        assert result.returncode != 0 and message in result.stderr, result.stderr[-2000:]
        assert not events(tmp_path / str(n), "step")


@pytest.mark.parametrize("method", ["sft", "reward"])
def test_fsdp_reads_each_ranks_rows_of_the_base_and_trains_as_ddp_does(
    tmp_path, base, pairs, method
):
    """Under FSDP the model is built on the meta device and each rank reads its rows of the
    base model into its shards (a reward model's new head drawn as an unsharded build draws
    it): the same steps as DDP, which loads the whole base on every rank."""
    base_dir, _ = base

    def losses(folder, strategy):
        if method == "sft":
            cfg = sft_config(folder, base_dir, steps=4)
        else:
            cfg = preference_config(folder, base_dir, pairs, "reward", steps=4)
        cfg["training"]["parallelism"] = {"strategy": strategy}
        result = train(folder, cfg)
        assert result.returncode == 0, result.stderr[-3000:]
        return [e["loss"] for e in events(folder, "step")]

    ddp, fsdp = losses(tmp_path / "ddp", "ddp"), losses(tmp_path / "fsdp", "fsdp")
    assert len(fsdp) == 4 and fsdp == pytest.approx(ddp, rel=1e-4)
