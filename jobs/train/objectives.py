"""What a training step minimises, for each method: a callable from (model, batch of rows) to a
vector of figures whose first entry is the loss. Validation averages the whole vector.

- LanguageModel (pretraining, SFT): next-token cross-entropy.
- Reward: a Scorer's scores of k ranked responses per prompt; Bradley-Terry over every ordered
  pair (the better one should score higher), or Plackett-Luce over the whole ranking.
- Dpo: the same pairs, scored by beta x the policy's log-probability ratio to a frozen reference
  (Rafailov et al., 2023).
- Grpo: replies sampled from the policy, scored by a reward model, each group of replies to a
  prompt normalised into advantages; policy gradient with a KL penalty to the reference
  (Shao et al., 2024).

Preference rows are [batch, K, 2, L] (jobs/finetune/preferences.py): responses best first, a
ranking shorter than K padded with responses that have no target.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F

from lmforge.jobs.finetune.data import IGNORE
from lmforge.jobs.generate import Sampling, generate_batch


def split(rows: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """(inputs, targets) from packed rows of L + 1 tokens, or from rows [..., 2, L] that hold
    both (targets -100 where not trained on)."""
    if rows.dim() == 2:
        return rows[:, :-1], rows[:, 1:]
    return rows[..., 0, :].flatten(0, -2), rows[..., 1, :].flatten(0, -2)


class LanguageModel:
    names = ("loss",)

    def __call__(self, model, rows: torch.Tensor) -> torch.Tensor:
        return model(*split(rows))[1][None]


class Reward:
    names = ("loss", "accuracy", "margin")

    def __init__(self, listwise: bool = False):
        self.listwise = listwise

    def __call__(self, model, rows: torch.Tensor) -> torch.Tensor:
        inputs, targets = split(rows)
        scores = model(inputs, last_target(targets)).view(rows.shape[:2])
        present = _present(rows)
        loss = plackett_luce(scores, present) if self.listwise else None
        return ranked_pairs(scores, present, loss)


class Dpo:
    names = ("loss", "accuracy", "margin", "referenceMargin")
    """accuracy: how often the implicit reward ranks a pair right; margin: the policy's
    log-probability of the better response minus the worse one's; referenceMargin: the same
    for the reference, on the same pairs."""

    def __init__(self, reference: torch.nn.Module, beta: float):
        self.reference, self.beta = reference, beta

    def __call__(self, model, rows: torch.Tensor) -> torch.Tensor:
        inputs, targets = split(rows)
        logps = sequence_logps(model(inputs), targets).view(rows.shape[:2])
        with torch.no_grad():
            reference = sequence_logps(self.reference(inputs), targets).view(rows.shape[:2])
        present = _present(rows)
        rewards = self.beta * (logps - reference)
        loss, accuracy, _ = ranked_pairs(rewards, present)
        margin = ranked_pairs(logps.detach(), present)[2]
        return torch.stack([loss, accuracy, margin, ranked_pairs(reference, present)[2]])


@dataclass
class Grpo:
    """Rows are prompts [batch, L] (ids, -1 after the end); one update per rollout, so the
    policy-ratio is 1 in value and its gradient is the plain policy gradient."""

    reference: torch.nn.Module
    scorer: torch.nn.Module
    eos: int
    samples: int
    """Replies per prompt: the group whose mean and spread make the advantages."""
    sampling: Sampling
    kl_coef: float
    names = ("loss", "reward", "kl")

    def __call__(self, model, rows: torch.Tensor) -> torch.Tensor:
        prompts = [row[row >= 0].tolist() for row in rows for _ in range(self.samples)]
        policy = getattr(model, "module", model)  # DDP: generate without the wrapper
        replies = generate_batch(policy, prompts, self.sampling, self.eos)
        inputs, targets = _rollout_rows(prompts, replies, rows.shape[1], self.eos)
        inputs, targets = inputs.to(rows.device), targets.to(rows.device)
        with torch.no_grad():
            scored, ends = _scored(prompts, replies, self.eos, rows.shape[1] + 1)
            rewards = self.scorer(scored.to(rows.device), ends.to(rows.device))
            rewards = rewards.view(-1, self.samples)
            spread = rewards.std(1, keepdim=True) + 1e-4
            advantages = (rewards - rewards.mean(1, keepdim=True)) / spread
            reference = token_logps(self.reference(inputs), targets)
        logps = token_logps(model(inputs), targets)
        mask = (targets != IGNORE).float()
        ratio = torch.exp(logps - logps.detach())  # 1, with the policy gradient's gradient
        log_ratio = reference - logps
        kl = torch.exp(log_ratio) - log_ratio - 1  # k3: unbiased, always >= 0
        per_token = -advantages.flatten()[:, None] * ratio + self.kl_coef * kl
        per_reply = (per_token * mask).sum(-1) / mask.sum(-1).clamp(min=1)
        mean_kl = (kl.detach() * mask).sum() / mask.sum().clamp(min=1)
        return torch.stack([per_reply.mean(), rewards.mean(), mean_kl])


def _scored(prompts, replies, eos: int, length: int) -> tuple[torch.Tensor, torch.Tensor]:
    """What the reward model reads: [n, length] prompt then reply without its <|eos|> (padded
    with eos), and the position of each reply's last token, where it was trained to score."""
    ids = [p + (r[:-1] if r[-1:] == [eos] else r) for p, r in zip(prompts, replies, strict=True)]
    scored = torch.full((len(ids), length), eos, dtype=torch.long)
    for n, sequence in enumerate(ids):
        scored[n, : len(sequence)] = torch.tensor(sequence)
    return scored, torch.tensor([len(sequence) - 1 for sequence in ids])


def _rollout_rows(prompts, replies, length: int, eos: int) -> tuple[torch.Tensor, torch.Tensor]:
    """[n, length] inputs (prompt then reply, padded with eos) and targets (the reply's tokens,
    -100 elsewhere)."""
    inputs = torch.full((len(prompts), length), eos, dtype=torch.long)
    targets = torch.full((len(prompts), length), IGNORE, dtype=torch.long)
    for n, (prompt, reply) in enumerate(zip(prompts, replies, strict=True)):
        ids = (prompt + reply)[: length + 1]
        inputs[n, : len(ids) - 1] = torch.tensor(ids[:-1])
        start = len(prompt) - 1
        targets[n, start : len(ids) - 1] = torch.tensor(ids[len(prompt) :])
    return inputs, targets


def token_logps(logits: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
    """(rows, L) the log-probability of each target (0 where -100); in fp32."""
    logp = logits.float().log_softmax(-1)
    picked = logp.gather(-1, targets.clamp(min=0)[..., None]).squeeze(-1)
    return picked * (targets != IGNORE)


def sequence_logps(logits: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
    """(rows,) the log-probability of each row's targets (those not -100), summed; in fp32."""
    return token_logps(logits, targets).sum(-1)


def last_target(targets: torch.Tensor) -> torch.Tensor:
    """(rows,) the position of each row's last target: where the model has read the whole
    response (the target there is its <|eos|>). 0 for a row with none (padding)."""
    positions = torch.arange(targets.shape[-1], device=targets.device)
    return ((targets != IGNORE) * positions).amax(-1)


def ranked_pairs(
    scores: torch.Tensor, present: torch.Tensor, loss: torch.Tensor | None = None
) -> torch.Tensor:
    """[loss, accuracy, margin] over every ordered pair (i better than j) of each ranking:
    Bradley-Terry's -log sigmoid(s_i - s_j) averaged (unless `loss` is given), how often
    s_i > s_j, and the mean s_i - s_j."""
    i, j = torch.triu_indices(scores.shape[1], scores.shape[1], 1, device=scores.device)
    difference = scores[:, i] - scores[:, j]
    valid = present[:, j]  # a ranking is a prefix: if j is present so is i
    difference = difference[valid]
    if loss is None:
        loss = -F.logsigmoid(difference).mean()
    accuracy = (difference > 0).float().mean()
    return torch.stack([loss, accuracy, difference.detach().mean()])


def plackett_luce(scores: torch.Tensor, present: torch.Tensor) -> torch.Tensor:
    """The negative log-likelihood of each whole ranking under Plackett-Luce (the best is chosen
    first among all, the next among the rest, ...), per choice made: -(s_i - logsumexp(s_i..))."""
    masked = scores.masked_fill(~present, -torch.inf)
    # logsumexp over each suffix: flip, cumulative logsumexp, flip back.
    rest = masked.flip(1).logcumsumexp(1).flip(1)
    choices = present[:, 1:]  # the last one is no choice
    return -(scores[:, :-1] - rest[:, :-1])[choices].mean()


def _present(rows: torch.Tensor) -> torch.Tensor:
    """[batch, K] whether each response slot holds a response (it has targets)."""
    return (rows[:, :, 1] != IGNORE).any(-1)
