"""Perplexity on a Dataset split: every packed sequence scored once, token-weighted."""

from __future__ import annotations

import math

import numpy as np
import torch

from lmforge.jobs.data.reader import ShardReader
from lmforge.jobs.model import Transformer


@torch.no_grad()
def perplexity(
    model: Transformer, reader: ShardReader, max_sequences: int | None = None, batch: int = 8
) -> dict[str, float]:
    """exp(mean next-token loss) over the split's sequences, in order. The dataset's sequences are
    independent windows of sequenceLength tokens, so the context is the sequence (stride = its
    length): each token is predicted from the tokens before it in its own sequence."""
    model.eval()
    total = len(reader) if max_sequences is None else min(len(reader), max_sequences)
    loss_sum, tokens = 0.0, 0
    for start in range(0, total, batch):
        rows = [reader.sequence(i) for i in range(start, min(start + batch, total))]
        batch_tokens = torch.from_numpy(np.stack(rows).astype(np.int64))
        logits = model(batch_tokens[:, :-1]).float()
        targets = batch_tokens[:, 1:]
        loss = torch.nn.functional.cross_entropy(
            logits.flatten(0, 1), targets.flatten(), reduction="sum"
        )
        loss_sum += float(loss)
        tokens += targets.numel()
    mean = loss_sum / tokens
    length = reader.sequence_length
    return {
        "perplexity": math.exp(mean),
        "loss": mean,
        "tokens": tokens,
        "sequences": total,
        "context": length - 1,
        "stride": length,
    }
