"""Bad configurations fail before any compute, naming the field to change."""

import pytest
import torch

from lmforge.jobs.train.schedule import lr_multiplier
from lmforge.jobs.train.trainer import _peak_flops
from lmforge.operator.api.jobs import ConfigError, TrainConfig
from lmforge.operator.api.training import Schedule


def make(**training) -> TrainConfig:
    return TrainConfig.model_validate({
        "name": "t", "datasetUri": "file:///d", "checkpointUri": "file:///c", "outputUri": "file:///o",
        "architecture": {"preset": "tiny", "contextLength": 128}, "processesPerNode": 2,
        "training": {"steps": 10, "globalBatchTokens": 4096, "microBatch": 4, **training},
    })  # fmt: skip


def test_a_good_plan():
    plan = make().plan(world_size=2, sequence_length=128, vocab_size=1000)
    assert (plan.steps, plan.accumulation, plan.architecture.vocab_size) == (10, 4, 1000)
    assert make(steps=None, tokens=40960).plan(2, 128, 1000).steps == 10


# fmt: off
BAD = [
    ({}, 3, 128, 1000, "world size 3 does not match resources.nodes (1) x resources.processesPerNode (2)"),
    ({}, 2, 100, 1000, "training.globalBatchTokens (4096) must be a multiple of the dataset's sequence length (100)"),
    ({"microBatch": 3}, 2, 128, 1000, "32 sequences per step, not a multiple of training.microBatch (3) x 2 ranks"),
    ({}, 2, 256, 1000, "model.contextLength (128) is shorter than the dataset's sequences (256 tokens"),
    ({"steps": None, "tokens": 100}, 2, 128, 1000, "training.tokens (100) is less than one step's batch"),
    ({"precision": "fp16", "parallelism": {"strategy": "fsdp"}}, 2, 128, 1000, "training.precision: fp16 is not supported with fsdp"),
]
# fmt: on


@pytest.mark.parametrize(("training", "world", "length", "vocab", "message"), BAD)
def test_bad_configuration_names_the_field(training, world, length, vocab, message):
    with pytest.raises(ConfigError) as raised:
        make(**training).plan(world, length, vocab)
    assert message in str(raised.value)


def test_vocabulary_smaller_than_the_tokenizer():
    config = make()
    config = config.model_copy(
        update={"architecture": config.architecture.model_copy(update={"vocab_size": 300})}
    )
    with pytest.raises(ConfigError, match="vocabSize 300 is smaller than the tokenizer's 1000"):
        config.plan(2, 128, 1000)


@pytest.mark.parametrize(
    ("kind", "step", "expected"),
    [
        ("cosine", 0, 0.1),
        ("cosine", 9, 1.0),
        ("cosine", 10, 1.0),
        ("cosine", 55, 0.55),
        ("cosine", 100, 0.1),
        ("linear", 55, 0.55),
        ("linear", 100, 0.1),
        ("constant", 80, 1.0),
    ],
)
def test_warmup_then_decay_to_the_floor(kind, step, expected):
    schedule = Schedule(type=kind, warmup_steps=10, min_lr_ratio=0.1)
    assert lr_multiplier(step, 100, schedule) == pytest.approx(expected)


@pytest.mark.parametrize(("device_name", "peak"), [
    ("NVIDIA H100 80GB HBM3", 989e12), ("NVIDIA L40S", 362e12), ("NVIDIA L4", 121e12),
    ("NVIDIA A100-SXM4-40GB", 312e12), ("Tesla T4", None),
])  # fmt: skip
def test_mfu_peak_comes_from_the_plan_gpu_table(monkeypatch, device_name, peak):
    monkeypatch.setattr(torch.cuda, "get_device_name", lambda device: device_name)
    assert _peak_flops(torch.device("cuda")) == peak
    monkeypatch.setenv("LMFORGE_PEAK_FLOPS", "1e15")
    assert _peak_flops(torch.device("cpu")) == 1e15
