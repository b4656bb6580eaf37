"""Decoding with a KV cache: sampling settings, choosing the next token, and generating one
sequence. The server (jobs/serve) batches many sequences over the same cache and `pick`; reports
and RLHF rollouts use `generate`.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from tokenizers import Tokenizer

from lmforge.jobs.model import KVCache, Step, Transformer

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
    logits = logits.float().cpu() / sampling.temperature  # `generator` is a CPU generator
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


def generate(
    model: Transformer, prompt: list[int], sampling: Sampling, eos: int | None
) -> list[int]:
    """The prompt's continuation as token ids, without the prompt; stops at eos, at max_tokens
    or at the end of the context (stop strings are the caller's: they need the text)."""
    (out,) = generate_batch(model, [prompt], sampling, eos, sampling.generator())
    return out[:-1] if out and out[-1] == eos else out


@torch.no_grad()
def generate_batch(
    model: Transformer,
    prompts: list[list[int]],
    sampling: Sampling,
    eos: int | None,
    generator: torch.Generator | None = None,
) -> list[list[int]]:
    """Continuations of several prompts at once over one KV cache (RLHF rollouts): each prompt is
    read into its own slot, then every unfinished sequence advances one token per forward pass.
    A continuation ends with eos when the model chose it (kept, so a caller can train on it),
    else at max_tokens or at the end of the context. `generator` None samples from torch's
    global generator (a trainer's, saved in its checkpoints)."""
    if not all(prompts):
        raise ValueError("a prompt has no tokens: generation needs at least one")
    training = model.training
    model.eval()
    device = next(model.parameters()).device
    dtype = next(model.parameters()).dtype
    context = model.arch.context_length
    cache = KVCache(model.arch, slots=len(prompts), dtype=dtype, device=device)
    last = []
    for slot, prompt in enumerate(prompts):  # prompts differ in length: one prefill each
        step = Step(cache, torch.tensor([slot], device=device), torch.tensor([0], device=device))
        last.append(model(torch.tensor([prompt], device=device), step=step)[0, -1])
    logits, active = torch.stack(last), list(range(len(prompts)))
    positions, out = [len(p) for p in prompts], [[] for _ in prompts]
    for _ in range(sampling.max_tokens):
        going = []
        for row, i in enumerate(active):
            if positions[i] >= context:  # no room for another token
                continue
            token = pick(logits[row], sampling, generator)
            out[i].append(token)
            if token != eos and len(out[i]) < sampling.max_tokens and positions[i] + 1 < context:
                going.append(i)
            positions[i] += 1
        if not going:
            break
        tokens = torch.tensor([[out[i][-1]] for i in going], device=device)
        at = torch.tensor([positions[i] - 1 for i in going], device=device)
        logits = model(tokens, step=Step(cache, torch.tensor(going, device=device), at))[:, -1]
        active = going
    model.train(training)
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
