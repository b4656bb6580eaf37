"""The divergence guard's decisions, and the trainer skipping and rolling back under torchrun."""

import math
import random

import pytest
from safetensors.torch import load_file

from lmforge.jobs.train.guard import Guard
from lmforge.operator.api import conditions
from lmforge.operator.api.common import TrainingStatus
from lmforge.operator.api.events import Exit
from lmforge.operator.api.jobs import ConfigError
from lmforge.operator.api.training import Divergence
from lmforge.operator.stages.training import PretrainStage

from .conftest import config, events, train
from .test_resume import losses


def test_bad_figures_are_skipped_and_enough_in_a_row_roll_back():
    guard = Guard(Divergence(spikeFactor=2, window=3, maxSkips=2, maxRollbacks=1))
    assert [guard.check(x, 1.0, scaled=False) for x in (4.0, 3.0, 2.0)] == [None] * 3
    assert "over 2 times the mean 3" in guard.check(6.5, 1.0, scaled=False)
    assert not guard.diverged
    assert guard.check(5.9, 1.0, scaled=False) is None  # the spike never joins the mean
    assert guard.check(math.nan, 1.0, scaled=False) == "the loss is nan"
    assert guard.check(1.0, math.inf, scaled=True) is None  # fp16: the scaler skips it
    assert guard.check(1.0, math.inf, scaled=False) == "the gradient norm is inf"
    assert guard.check(math.inf, 1.0, scaled=False) == "the loss is inf"
    assert guard.diverged and guard.skipped == 4
    restored = Guard(Divergence(spikeFactor=2, window=3, maxSkips=2, maxRollbacks=1))
    restored.load_state_dict(guard.state_dict())
    assert restored.state_dict() == guard.state_dict() and restored.diverged
    guard.roll_back(9, "the loss is inf")
    assert not guard.diverged and guard.rollbacks == 1
    guard.check(math.nan, 1.0, scaled=False), guard.check(math.nan, 1.0, scaled=False)
    with pytest.raises(ConfigError, match=r"step 12: the loss is nan, .*maxRollbacks \(1\)"):
        guard.roll_back(12, "the loss is nan")


def test_a_loss_below_zero_is_never_a_spike():
    guard = Guard(Divergence(spikeFactor=1.5, window=2))
    assert [guard.check(x, 1.0, scaled=False) for x in (-0.5, -0.1, 0.3)] == [None] * 3


def test_the_trainer_skips_spikes_rolls_back_says_so_and_resumes_exactly(tmp_path, dataset):
    """spikeFactor 1 over a window of 1: a step whose loss is above the last step taken is
    skipped, which a real run does now and then, and rolls back to the newest checkpoint.
    Killed at a random step and resumed, the run decides the same and ends the same."""
    divergence = {"spikeFactor": 1.0, "window": 1, "maxSkips": 1, "maxRollbacks": 20}

    def guarded(folder):
        return config(folder, dataset, steps=16, divergence=divergence,
                      checkpoint={"everySteps": 2, "keep": 3})  # fmt: skip

    straight, broken = tmp_path / "straight", tmp_path / "broken"
    result = train(straight, guarded(straight))
    assert result.returncode == 0, result.stderr[-3000:]
    stop = random.Random().randint(8, 15)
    assert train(broken, guarded(broken), stop_at=stop).returncode != 0
    assert train(broken, guarded(broken)).returncode == 0
    assert events(broken, "resume")
    assert losses(broken) == losses(straight), stop
    a, b = (load_file(d / "model" / "model.safetensors") for d in (straight, broken))
    assert all(a[k].equal(b[k]) for k in a), stop

    found = events(straight)
    steps = [e for e in found if e["event"] == "step"]
    taken = [e["loss"] for e in steps if "skipped" not in e]
    skipped = [e for e in steps if "skipped" in e]
    assert skipped and "training.divergence.spikeFactor" in skipped[0]["skipped"]
    last, in_a_row, saved = None, 0, 0
    for event in found:  # every decision replayed from the events
        if event["event"] == "step":
            spike = last is not None and event["loss"] > last
            assert ("skipped" in event) == spike, event
            last = last if spike else event["loss"]
            in_a_row = in_a_row + 1 if spike else 0
        elif event["event"] == "checkpoint":
            assert in_a_row == 0 or event["step"] == 16, event  # none while skipping
            saved = event["step"]
        elif event["event"] == "rollback":
            assert in_a_row == 1 and event["step"] == saved, event
            in_a_row = 0
    rollbacks = [e for e in found if e["event"] == "rollback"]
    assert rollbacks and steps[-1]["step"] == 16 and steps[-1]["skippedSteps"] == len(skipped)
    assert len(taken) + len(skipped) == len(steps)

    status = TrainingStatus()
    PretrainStage().progress(status, found)
    assert status.skipped_steps == len(skipped) and status.step == 16
    condition = status.condition(conditions.ROLLED_BACK)
    assert condition.reason == conditions.DIVERGED
    assert f"rollback {len(rollbacks)}" in condition.message


def test_a_run_that_keeps_diverging_fails_naming_the_setting(tmp_path, dataset):
    divergence = {"spikeFactor": 1.0, "window": 1, "maxSkips": 1, "maxRollbacks": 0}
    cfg = config(tmp_path, dataset, steps=16, divergence=divergence)
    result = train(tmp_path, cfg)
    assert f"exitcode: {Exit.CONFIG_ERROR}" in result.stderr, result.stderr[-3000:]
    assert (
        "training.divergence.maxSkips (1) steps skipped in a row, and its maxRollbacks (0)"
        " are spent: lower training.optimizer.lr" in result.stderr
    )
