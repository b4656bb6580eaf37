"""Supervised examples: chat-templated, tokenized, and labelled so the loss falls on the replies."""

import pytest

from lmforge.jobs.finetune import data

from ..conftest import BASE_CONTEXT as CONTEXT


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
