"""Supervised fine-tuning on the trainer: a base model, chat-templated examples with the loss on
responses only, full or LoRA (merged on export), and the same exact resume as pretraining."""

import numpy as np
import pytest
import torch
from safetensors.torch import load_file

from lmforge.jobs import hf
from lmforge.jobs.finetune import data, lora
from lmforge.jobs.model import Transformer
from lmforge.operator.api.architecture import Architecture
from lmforge.operator.api.finetune import Lora

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


def test_targets_are_the_responses_and_their_eos(base):
    _, tokenizer = base
    row = {"prompt": 'def f(x):\n    """Double."""', "response": "    return 2 * x"}
    (encoded,) = data.encode([data.read_row(row)], tokenizer, CONTEXT - 1)
    inputs, targets = encoded
    trained = targets[targets != data.IGNORE]
    assert (
        tokenizer.decode(trained.tolist(), skip_special_tokens=False) == row["response"] + "<|eos|>"
    )
    ids, _ = data.tokens(data.read_row(row), tokenizer)
    assert inputs[: len(ids) - 1].tolist() == ids[:-1]
    with pytest.raises(data.ExampleError, match="example 1 is"):
        data.encode([data.read_row(row)], tokenizer, 8)


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


def test_merged_lora_computes_what_the_adapted_model_does():
    torch.manual_seed(0)
    arch = Architecture.model_validate({"layers": 2, "dModel": 64, "heads": 4, "kvHeads": 2,
                                        "contextLength": 32, "vocabSize": 256})  # fmt: skip
    adapted = lora.add(Transformer(arch), Lora(rank=4, alpha=8))
    for name, p in adapted.named_parameters():
        if "lora_B" in name:
            torch.nn.init.normal_(p, std=0.1)  # as if trained (peft starts B at zero)
    merged = Transformer(arch)
    merged.load_state_dict(lora.merged(adapted.state_dict(), lora.layers(adapted)))
    tokens = torch.randint(0, 256, (2, 16))
    with torch.no_grad():
        assert torch.allclose(adapted(tokens), merged(tokens), atol=1e-5)


def test_sft_killed_and_resumed_equals_uninterrupted(tmp_path, base):
    base_dir, _ = base
    killed_and_resumed_equals_straight(tmp_path, lambda d: sft_config(d, base_dir, steps=12))
