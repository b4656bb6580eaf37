"""Learning-rate schedules: linear warmup, then cosine, linear or no decay to a floor."""

from __future__ import annotations

import math

from lmforge.operator.api.training import Schedule


def lr_multiplier(step: int, total_steps: int, schedule: Schedule) -> float:
    """The factor applied to the peak learning rate at `step` (0-based)."""
    warmup = schedule.warmup_steps
    if step < warmup:
        return (step + 1) / warmup
    if schedule.type == "constant" or total_steps <= warmup:
        return 1.0
    progress = min(1.0, (step - warmup) / max(1, total_steps - warmup))
    decay = 0.5 * (1 + math.cos(math.pi * progress)) if schedule.type == "cosine" else 1 - progress
    floor = schedule.min_lr_ratio
    return floor + (1 - floor) * decay
