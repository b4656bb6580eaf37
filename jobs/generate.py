"""Sampling text from a trained model: temperature and top-k, seeded, for reports and quick looks.

This is the plain loop (one full forward per token); the server ([8/8]) decodes with a KV cache.
"""

from __future__ import annotations

import torch
from tokenizers import Tokenizer

from .model import Transformer


@torch.no_grad()
def sample(
    model: Transformer,
    tokenizer: Tokenizer,
    prompt: str,
    max_new_tokens: int = 64,
    temperature: float = 0.8,
    top_k: int = 50,
    seed: int = 0,
) -> str:
    """The prompt's continuation (without the prompt); stops at end of text."""
    generator = torch.Generator().manual_seed(seed)
    ids = tokenizer.encode(prompt, add_special_tokens=False).ids
    eos = tokenizer.token_to_id("<|eos|>")
    prompt_length = len(ids)
    model.eval()
    for _ in range(max_new_tokens):
        window = torch.tensor([ids[-model.arch.context_length :]])
        logits = model(window)[0, -1].float() / max(temperature, 1e-5)
        if top_k:
            kth = torch.topk(logits, min(top_k, logits.numel())).values[-1]
            logits[logits < kth] = -float("inf")
        token = int(torch.multinomial(torch.softmax(logits, -1), 1, generator=generator))
        if token == eos:
            break
        ids.append(token)
    return tokenizer.decode(ids[prompt_length:])
