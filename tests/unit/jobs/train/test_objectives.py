"""The objectives' losses checked by hand: Bradley-Terry and Plackett-Luce over rankings, and
where GRPO's reward model reads each reply."""

import math

import pytest
import torch

from lmforge.jobs.train import objectives


def test_bradley_terry_and_plackett_luce_by_hand():
    # Two rankings: three responses, and two (padded to three).
    scores = torch.tensor([[2.0, 0.5, 1.0], [0.3, 1.3, 9.0]])
    present = torch.tensor([[True, True, True], [True, True, False]])
    loss, accuracy, margin = objectives.ranked_pairs(scores, present)
    differences = [2.0 - 0.5, 2.0 - 1.0, 0.5 - 1.0, 0.3 - 1.3]
    expected = sum(-math.log(1 / (1 + math.exp(-d))) for d in differences) / 4
    assert loss.item() == pytest.approx(expected, rel=1e-6)
    assert accuracy.item() == pytest.approx(2 / 4)
    assert margin.item() == pytest.approx(sum(differences) / 4)
    e = math.exp
    choices = [  # the best among all, then the next among the rest; the last is no choice
        2.0 - math.log(e(2.0) + e(0.5) + e(1.0)),
        0.5 - math.log(e(0.5) + e(1.0)),
        0.3 - math.log(e(0.3) + e(1.3)),
    ]
    listwise = objectives.plackett_luce(scores, present)
    assert listwise.item() == pytest.approx(-sum(choices) / 3, rel=1e-6)
    # With two responses Plackett-Luce is Bradley-Terry.
    two = torch.tensor([[True, True, False]] * 2)
    bt = objectives.ranked_pairs(scores, two)[0]
    assert objectives.plackett_luce(scores, two).item() == pytest.approx(bt.item(), rel=1e-6)


def test_grpo_scores_each_reply_at_its_last_token():
    """With or without the <|eos|> that ended it, and when the reply fills the context."""
    eos, length = 0, 8
    prompts, replies = [[5, 6], [5, 6], [5]], [[7, 8, eos], [7, 8], [9] * 7]
    scored, ends = objectives._scored(prompts, replies, eos, length)
    assert ends.tolist() == [3, 3, 7]
    assert [int(scored[n, e]) for n, e in enumerate(ends)] == [8, 8, 9]
    assert scored[0].tolist() == scored[1].tolist() == [5, 6, 7, 8, 0, 0, 0, 0]
