"""The learning-rate schedule, and the peak FLOP/s the trainer's MFU divides by."""

import pytest
import torch

from lmforge.jobs.train.schedule import lr_multiplier
from lmforge.jobs.train.trainer import _peak_flops
from lmforge.operator.api.training import Schedule


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
