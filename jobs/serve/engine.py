"""Continuous batching over one KV cache, in one thread.

Every running sequence holds a slot of the cache. Between two decode steps the loop admits
waiting requests (one prefill forward each, up to the free slots), then runs one decode step for
every running sequence at once: a batch of one token per sequence, each at its own position. A
request that finishes frees its slot for the next one at once, instead of waiting for the longest
request of a static batch. The running sequences always hold the first slots, in order (the last
one moves into a slot that frees up): a decode step's rows are one block of the cache, which the
onnx runtime binds without copying.

Output is text, decoded incrementally (only a window of the last tokens is decoded again, so a
long reply costs the same per token as a short one): a token that ends in an incomplete UTF-8
character waits for the next, and stop strings are found in the text (they may span tokens).
"""

from __future__ import annotations

import logging
import threading
import time
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass, field

import torch
from tokenizers import Tokenizer

from lmforge.jobs.generate import EOS, Sampling, pick
from lmforge.jobs.model import KVCache, Step, Transformer

log = logging.getLogger(__name__)


@dataclass
class Output:
    """What a request receives, from the engine's thread: text deltas, then one with a reason."""

    text: str
    finish_reason: str | None = None  # "stop" (eos or a stop string), "length", or "error"
    prompt_tokens: int = 0
    completion_tokens: int = 0


@dataclass(eq=False)
class Request:
    prompt: list[int]
    sampling: Sampling
    emit: Callable[[Output], None]
    generator: torch.Generator = field(init=False)
    tokens: list[int] = field(default_factory=list)
    slot: int = -1
    text: str = ""  # the decoded text of tokens[:read]
    prefix: int = 0  # the decode window starts here, a token before `read`
    read: int = 0
    sent: int = 0  # characters of the decoded text already emitted
    cancelled: bool = False
    submitted: float = field(default_factory=time.monotonic)

    def __post_init__(self) -> None:
        self.generator = self.sampling.generator()


class Engine:
    def __init__(self, model: Transformer, tokenizer: Tokenizer, slots: int = 16):
        self.model, self.tokenizer = model.eval(), tokenizer
        self.context = model.arch.context_length
        self.eos = tokenizer.token_to_id(EOS)
        weight = next(model.parameters())
        self.device = weight.device  # a GPU when the pod has one (serve/__main__.load)
        self.cache = KVCache(model.arch, slots, dtype=weight.dtype, device=self.device)
        self.slots = slots
        self.waiting: deque[Request] = deque()
        self.running: list[Request] = []
        self.condition = threading.Condition()
        self.closed = False
        self.on_step: Callable[[int, int], None] = lambda batch, queued: None
        """Called after each decode step with the batch size and the queue depth (metrics)."""
        self.thread = threading.Thread(target=self._loop, name="engine", daemon=True)
        self.thread.start()

    def submit(self, prompt: list[int], sampling: Sampling, emit: Callable[[Output], None]):
        request = Request(prompt, sampling, emit)
        with self.condition:
            self.waiting.append(request)
            self.condition.notify()
        return request

    def cancel(self, request: Request) -> None:
        """The client went away: the slot is freed at the next step."""
        request.cancelled = True

    def close(self) -> None:
        with self.condition:
            self.closed = True
            self.condition.notify()
        self.thread.join(timeout=10)

    @property
    def queued(self) -> int:
        return len(self.waiting)

    def _loop(self) -> None:
        while True:
            with self.condition:
                while not (self.closed or self.waiting or self.running):
                    self.condition.wait()
                if self.closed:
                    return
                admitted = []
                while self.waiting and len(self.running) + len(admitted) < self.slots:
                    admitted.append(self.waiting.popleft())
            try:
                with torch.inference_mode():
                    for request in admitted:
                        self._prefill(request)
                    if self.running:
                        self._decode()
            except Exception:  # a bug must not hang every client: fail the requests in flight
                log.exception("decoding failed")
                for request in {*admitted, *self.running}:
                    self._finish(request, "error")

    def _prefill(self, request: Request) -> None:
        request.slot = len(self.running)
        slot, start = torch.tensor([request.slot]), torch.tensor([0])
        step = Step(self.cache, slot.to(self.device), start.to(self.device))
        logits = self.model(torch.tensor([request.prompt], device=self.device), step=step)[0, -1]
        self.running.append(request)
        self._advance(request, pick(logits, request.sampling, request.generator))

    def _decode(self) -> None:
        batch = list(self.running)
        on = self.device
        tokens = torch.tensor([[r.tokens[-1]] for r in batch], device=on)
        slots = torch.tensor([r.slot for r in batch], device=on)
        positions = torch.tensor([len(r.prompt) + len(r.tokens) - 1 for r in batch], device=on)
        logits = self.model(tokens, step=Step(self.cache, slots, positions))[:, -1]
        greedy = logits.argmax(-1).tolist()  # one call for the batch; sampled rows pick alone
        for request, row, best in zip(batch, logits, greedy, strict=True):
            sampled = request.sampling.temperature > 0
            self._advance(
                request, pick(row, request.sampling, request.generator) if sampled else best
            )
        self.on_step(len(batch), len(self.waiting))

    def _advance(self, request: Request, token: int) -> None:
        """Take the sampled token: finish, or emit the new text and keep going."""
        if request.cancelled:
            return self._finish(request, None)
        if token == self.eos:
            return self._finish(request, "stop")
        request.tokens.append(token)
        text = self._text(request)
        sampling = request.sampling
        stops = [i for i in (text.find(s, max(0, request.sent - len(s))) for s in sampling.stop)]
        cut = min((i for i in stops if i >= 0), default=-1)
        if cut >= 0:
            return self._finish(request, "stop", text[:cut])
        full = len(request.prompt) + len(request.tokens) >= self.context
        if len(request.tokens) >= sampling.max_tokens or full:
            return self._finish(request, "length")
        # Hold back what could still become a stop string.
        ready = len(text) - max((len(s) - 1 for s in sampling.stop), default=0)
        if ready > request.sent:
            request.emit(Output(text[request.sent : ready]))
            request.sent = ready
        return None

    def _text(self, request: Request) -> str:
        """The request's text so far. Only the tokens from `prefix` on are decoded again: the
        window starts a token early so that decoders which treat a first token differently (a
        leading space) agree with decoding the whole; a window that ends in an incomplete
        character is kept for the next token."""
        decode, tokens = self.tokenizer.decode, request.tokens
        before = decode(tokens[request.prefix : request.read])
        after = decode(tokens[request.prefix :])
        if len(after) > len(before) and not after.endswith("\ufffd"):
            request.text += after[len(before) :]
            request.prefix, request.read = request.read, len(tokens)
        return request.text

    def _finish(self, request: Request, reason: str | None, text: str | None = None) -> None:
        if request in self.running:  # the last sequence moves into its slot
            last = self.running.pop()
            if last is not request:
                self.cache.move(last.slot, request.slot, len(last.prompt) + len(last.tokens))
                self.running[request.slot], last.slot = last, request.slot
        if reason is not None:
            if text is None:
                text = self.tokenizer.decode(request.tokens)
            rest = text[request.sent :]
            request.emit(Output(rest, reason, len(request.prompt), len(request.tokens)))
