"""The divergence guard: which steps' updates are applied, and when the run rolls back.

A step whose loss or gradient norm is NaN or infinite, or (with spikeFactor) whose loss jumps
over that factor times the mean of the last steps taken, is skipped. Enough skips in a row
mean the weights themselves have gone bad, and the trainer rolls back to its newest
checkpoint; past maxRollbacks it gives up. Every rank decides from the same figures (means
over ranks, and a gradient norm that is global), so the ranks always agree. The guard's
history is part of a checkpoint, so a resumed run decides as the uninterrupted one did.
"""

from __future__ import annotations

import math
from collections import deque
from typing import Any

from lmforge.operator.api.jobs import ConfigError
from lmforge.operator.api.training import Divergence


class Guard:
    def __init__(self, policy: Divergence):
        self.policy = policy
        self.recent: deque[float] = deque(maxlen=policy.window)
        """The losses of the last steps taken."""
        self.in_a_row = self.skipped = self.rollbacks = 0

    def check(self, loss: float, grad_norm: float, scaled: bool) -> str | None:
        """Why this step's update must not be applied, or None to apply it. With `scaled`
        (fp16's loss scaling) an infinite gradient is the scaler's to handle, not a skip."""
        reason = self._reason(loss, grad_norm, scaled)
        if reason is None:
            self.recent.append(loss)
            self.in_a_row = 0
        else:
            self.in_a_row += 1
            self.skipped += 1
        return reason

    def _reason(self, loss: float, grad_norm: float, scaled: bool) -> str | None:
        if not math.isfinite(loss):
            return f"the loss is {loss}"
        if not scaled and not math.isfinite(grad_norm):
            return f"the gradient norm is {grad_norm}"
        factor, recent = self.policy.spike_factor, self.recent
        if factor is None or len(recent) < (recent.maxlen or 0):
            return None
        mean = sum(recent) / len(recent)
        if mean > 0 and loss > factor * mean:
            return (
                f"the loss {loss:.4g} is over {factor:g} times the mean {mean:.4g} of the last"
                f" {len(recent)} steps (training.divergence.spikeFactor)"
            )
        return None

    @property
    def diverged(self) -> bool:
        """Enough steps skipped in a row to roll back."""
        return self.in_a_row >= self.policy.max_skips

    def roll_back(self, step: int, reason: str) -> None:
        """Count a rollback from `step`; ConfigError (never retried: a rerun diverges the same
        way) once there have been maxRollbacks."""
        p = self.policy
        if self.rollbacks >= p.max_rollbacks:
            raise ConfigError(
                f"training diverged at step {step}: {reason}, the last of"
                f" training.divergence.maxSkips ({p.max_skips}) steps skipped in a row, and its"
                f" maxRollbacks ({p.max_rollbacks}) are spent: lower training.optimizer.lr or"
                " training.gradClip, or look at the data these steps read"
            )
        self.rollbacks += 1
        self.in_a_row = 0

    def state_dict(self) -> dict[str, Any]:
        return {"recent": list(self.recent), "inARow": self.in_a_row,
                "skipped": self.skipped, "rollbacks": self.rollbacks}  # fmt: skip

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.recent = deque(state["recent"], maxlen=self.policy.window)
        self.in_a_row, self.skipped = state["inARow"], state["skipped"]
        self.rollbacks = state["rollbacks"]
