"""Decoding with a KV cache: sampling settings, choosing the next token, and generating one
sequence. The server (jobs/serve) batches many sequences over the same cache and `pick`; reports
and RLHF rollouts use `generate`.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from tokenizers import Tokenizer

from .model import KVCache, Step, Transformer

EOS = "<|eos|>"


@dataclass(frozen=True)
class Sampling:
    """OpenAI's sampling parameters. temperature 0 is greedy (argmax), deterministic."""

    max_tokens: int = 16
    temperature: float = 1.0
    top_p: float = 1.0
    top_k: int = 0
    """0: no top-k cut."""
    stop: tuple[str, ...] = ()
    seed: int | None = None

    def generator(self) -> torch.Generator:
        generator = torch.Generator()
        if self.seed is None:
            generator.seed()
        else:
            generator.manual_seed(self.seed)
        return generator


def pick(logits: torch.Tensor, sampling: Sampling, generator: torch.Generator) -> int:
    """The next token from one row of logits (vocab,)."""
    if sampling.temperature == 0:
        return int(logits.argmax())
    logits = logits.float() / sampling.temperature
    if sampling.top_k:
        kth = torch.topk(logits, min(sampling.top_k, logits.numel())).values[-1]
        logits = logits.masked_fill(logits < kth, -float("inf"))
    probs = torch.softmax(logits, -1)
    if sampling.top_p < 1:
        sorted_probs, order = probs.sort(descending=True)
        # Keep the smallest prefix whose mass reaches top_p (always the most likely token).
        outside = sorted_probs.cumsum(-1) - sorted_probs >= sampling.top_p
        probs = probs.scatter(0, order[outside], 0.0)
    return int(torch.multinomial(probs, 1, generator=generator))


@torch.no_grad()
def generate(
    model: Transformer, prompt: list[int], sampling: Sampling, eos: int | None
) -> list[int]:
    """The prompt's continuation as token ids, without the prompt; stops at eos, at max_tokens
    or at the end of the context (stop strings are the caller's: they need the text)."""
    if not prompt:
        raise ValueError("the prompt has no tokens: generation needs at least one")
    model.eval()
    dtype = next(model.parameters()).dtype
    cache = KVCache(model.arch, slots=1, dtype=dtype)
    generator = sampling.generator()
    room = model.arch.context_length - len(prompt)
    tokens, position, out = torch.tensor([prompt], dtype=torch.long), 0, []
    for _ in range(min(sampling.max_tokens, room)):
        logits = model(tokens, step=Step(cache, torch.tensor([0]), torch.tensor([position])))
        position += tokens.shape[1]
        token = pick(logits[0, -1], sampling, generator)
        if token == eos:
            break
        out.append(token)
        tokens = torch.tensor([[token]])
    return out


def sample(
    model: Transformer,
    tokenizer: Tokenizer,
    prompt: str,
    max_new_tokens: int = 64,
    temperature: float = 0.8,
    top_k: int = 50,
    seed: int = 0,
) -> str:
    """The prompt's continuation as text, for reports: temperature and top-k, seeded."""
    context = model.arch.context_length
    # Keep the prompt's end, leaving room for at least half the context of new tokens.
    ids = tokenizer.encode(prompt, add_special_tokens=False).ids
    ids = ids[-max(1, context - min(max_new_tokens, context // 2)) :]
    settings = Sampling(max_new_tokens, temperature, top_k=top_k, seed=seed)
    return tokenizer.decode(generate(model, ids, settings, tokenizer.token_to_id(EOS)))
