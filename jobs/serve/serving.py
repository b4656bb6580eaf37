"""The server's work behind the routes: admit a request (key, size, model, limits), run it on the
engine, answer whole or as a stream, account for it (metrics, audit log, a span), and store
feedback. The routes (app.py) only call these."""

from __future__ import annotations

import asyncio
import json
import logging
import time
import uuid
from collections.abc import AsyncIterator, Callable
from typing import Any

from fastapi import Request
from fastapi.responses import StreamingResponse
from opentelemetry import trace
from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram

from lmforge.jobs.generate import Sampling
from lmforge.jobs.serve import protocol
from lmforge.jobs.serve.engine import Engine, Output
from lmforge.jobs.serve.guard import ApiError, Keys, Limiter, SafetyFilter
from lmforge.jobs.serve.protocol import Body, FeedbackBody
from lmforge.jobs.storage import filesystem, join, write_atomic
from lmforge.operator.api.jobs import ServeConfig

audit = logging.getLogger("lmforge.audit")
tracer = trace.get_tracer("lmforge.serve")


class Metrics:
    def __init__(self) -> None:
        self.registry = r = CollectorRegistry()
        self.latency = Histogram(
            "lmforge_request_seconds", "Request latency", ["route"], registry=r
        )
        self.ttft = Histogram(
            "lmforge_time_to_first_token_seconds", "Time to first token", registry=r
        )
        self.tokens = Counter("lmforge_generated_tokens", "Tokens generated", registry=r)
        self.prompt_tokens = Counter("lmforge_prompt_tokens", "Prompt tokens read", registry=r)
        self.tokens_per_second = Gauge(
            "lmforge_tokens_per_second",
            "Generated tokens per second of the last request",
            registry=r,
        )
        self.batch = Gauge("lmforge_batch_size", "Sequences in the last decode step", registry=r)
        self.queue = Gauge("lmforge_queue_depth", "Requests waiting for a slot", registry=r)
        self.errors = Counter(
            "lmforge_request_errors", "Requests answered with an error", ["status"], registry=r
        )

    def step(self, batch: int, queued: int) -> None:
        self.batch.set(batch)
        self.queue.set(queued)

    def answered(self, started: float, first: float | None, generated: int | None) -> None:
        if first is not None:
            self.ttft.observe(first - started)
        if generated is not None:
            self.tokens.inc(generated)
            elapsed = time.monotonic() - started
            if elapsed > 0:
                self.tokens_per_second.set(generated / elapsed)


class Serving:
    """Completions, chat completions, models and feedback over one engine."""

    def __init__(self, config: ServeConfig, engine: Engine):
        self.config, self.engine = config, engine
        self.keys, self.limiter = Keys(config.api_keys_dir), Limiter(config.rate_limit)
        self.safety = SafetyFilter(config.safety)
        self.metrics = Metrics()
        self.created = int(time.time())
        engine.on_step = self.metrics.step

    def models(self, request: Request) -> dict:
        self.keys.name(request.headers.get("authorization"))
        card = {
            "id": self.config.served_model_name,
            "object": "model",
            "created": self.created,
            "owned_by": "lmforge",
        }
        return {"object": "list", "data": [card]}

    async def read(self, request: Request) -> tuple[str | None, bytes]:
        """The caller's key name and the body, within limits.maxRequestBytes."""
        key = self.keys.name(request.headers.get("authorization"))
        size, most = int(request.headers.get("content-length") or 0), self.config.limits
        raw = b"" if size > most.max_request_bytes else await request.body()
        if max(size, len(raw)) > most.max_request_bytes:
            raise ApiError(
                413,
                f"the request is larger than {most.max_request_bytes} bytes"
                " (limits.maxRequestBytes)",
                code="request_too_large",
            )
        return key, raw

    def admit(self, key: str | None, body: Body) -> tuple[list[int], list[Sampling]]:
        """The prompt's tokens and each candidate's sampling, once the model, the key, the limits
        and the rate allow them."""
        served, limits = self.config.served_model_name, self.config.limits
        if body.model != served:
            raise ApiError(
                404,
                f"model {body.model!r} does not exist; this server has {served!r}",
                param="model",
                code="model_not_found",
            )
        self.keys.check_model(key, body.model)
        max_tokens = body.requested_tokens()
        if max_tokens is not None and max_tokens > limits.max_tokens:
            raise ApiError(
                400,
                f"max_tokens: {max_tokens} is more than this server allows ({limits.max_tokens})",
                param="max_tokens",
            )
        samplings = body.samplings(max_tokens or protocol.DEFAULT_MAX_TOKENS)
        prompt = self.engine.tokenizer.encode(body.text(), add_special_tokens=False).ids
        longest = min(limits.max_prompt_tokens or self.engine.context - 1, self.engine.context - 1)
        if not prompt:
            raise ApiError(400, "the prompt is empty", param="prompt")
        if len(prompt) > longest:
            raise ApiError(
                400,
                f"the prompt is {len(prompt)} tokens; this server takes at most {longest}",
                param="prompt",
                code="context_length_exceeded",
            )
        self.limiter.request(key, len(prompt) + sum(s.max_tokens for s in samplings))
        return prompt, samplings

    async def run(self, prompt: list[int], sampling: Sampling) -> AsyncIterator[Output]:
        """The engine's outputs for one request, as they come; cancels it if abandoned."""
        loop, queue = asyncio.get_running_loop(), asyncio.Queue()
        handle = self.engine.submit(
            prompt, sampling, lambda o: loop.call_soon_threadsafe(queue.put_nowait, o)
        )
        try:
            while True:
                output = await queue.get()
                yield output
                if output.finish_reason is not None:
                    return
        finally:
            self.engine.cancel(handle)

    def record(self, route: str, key: str | None, started: float, status: int, **fields: Any):
        """One line of the audit log: who, what, how long; prompts only with logPrompts."""
        if not self.config.log_prompts:
            fields = {k: v for k, v in fields.items() if k not in ("prompt", "completion")}
        seconds = time.monotonic() - started
        self.metrics.latency.labels(route).observe(seconds)
        line = {
            "time": round(time.time(), 3),
            "route": route,
            "key": key,
            "status": status,
            "seconds": round(seconds, 4),
            **fields,
        }
        audit.info(json.dumps(line))

    async def complete(self, request: Request, route: str, body_type: type[Body], chat: bool):
        """A completion or chat completion, whole or streamed."""
        started = time.monotonic()
        with tracer.start_as_current_span(f"POST {route}") as span:
            key = None
            try:
                key, raw = await self.read(request)
                body = protocol.parse(raw, body_type)
                prompt, samplings = self.admit(key, body)
            except ApiError as error:
                self.record(route, key, started, error.status, error=error.message)
                raise
            span.set_attribute("lmforge.prompt_tokens", len(prompt))
            self.metrics.prompt_tokens.inc(len(prompt))
            reply = Reply(f"{'chatcmpl' if chat else 'cmpl'}-{uuid.uuid4().hex[:24]}", body, chat)

            def done(generated: int, replies: list[tuple[str, str | None]]) -> None:
                texts, reasons = [t for t, _ in replies], [r for _, r in replies]
                one = len(replies) == 1
                self.record(
                    route,
                    key,
                    started,
                    200,
                    model=body.model,
                    finish_reason=reasons[0] if one else reasons,
                    prompt_tokens=len(prompt),
                    completion_tokens=generated,
                    prompt=body.text(),
                    completion=texts[0] if one else texts,
                )

            if body.stream:  # one candidate (the body says so)
                stream = self.stream(self.run(prompt, samplings[0]), reply, started, done)
                return StreamingResponse(stream, media_type="text/event-stream")
            candidates = [self.run(prompt, sampling) for sampling in samplings]
            return await self.whole(candidates, reply, started, done)

    async def whole(
        self, candidates: list[AsyncIterator[Output]], reply: Reply, started: float, done
    ):
        """Every candidate, generated side by side in the engine's batch, each through the
        safety filter."""
        firsts: list[float] = []

        async def one(outputs: AsyncIterator[Output]) -> tuple[str, str, Output]:
            text, last = "", None
            async for output in outputs:
                if last is None:
                    firsts.append(time.monotonic())
                text, last = text + output.text, output
            text, refused = self.safety.apply(text)
            return text, "content_filter" if refused else last.finish_reason, last

        answers = await asyncio.gather(*(one(c) for c in candidates))
        replies, last = [(t, r) for t, r, _ in answers], [o for _, _, o in answers]
        generated = sum(o.completion_tokens for o in last)
        self.metrics.answered(started, min(firsts, default=None), generated)
        done(generated, replies)
        return protocol.response(reply.ident, reply.model, reply.chat, replies, last)

    async def stream(
        self, outputs: AsyncIterator[Output], reply: Reply, started: float, done: Callable
    ) -> AsyncIterator[str]:
        """Server-sent events: text as the safety filter releases it (it holds back what a match
        could still start with), then [DONE]."""
        raw, sent, first, last, text, reason = "", 0, None, None, "", None
        async for output in outputs:
            first = first or time.monotonic()
            raw += output.text
            finished = output.finish_reason is not None
            text, refused = self.safety.apply(raw)
            if refused:
                text, reason = "", "content_filter"
                yield protocol.event(reply.chunk("", reason))
                await outputs.aclose()  # frees the slot now
                break
            ready = len(text) if finished else max(sent, len(text) - self.safety.holdback)
            if ready > sent or finished:
                reason = output.finish_reason if finished else None
                yield protocol.event(reply.chunk(text[sent:ready], reason))
                sent = ready
            last = output
        generated = last.completion_tokens if last else 0
        self.metrics.answered(started, first, generated if last else None)
        done(generated, [(text, reason)])
        if reply.usage and last is not None:  # OpenAI's stream_options.include_usage: a last chunk
            yield protocol.event(
                {**reply.chunk("", None), "choices": [], "usage": protocol.usage([last])}
            )
        yield "data: [DONE]\n\n"

    async def feedback(self, request: Request) -> dict:
        """Store a preference or a rating as one jsonl file, where a RewardModel reads it."""
        started = time.monotonic()
        key, raw = await self.read(request)
        if self.config.feedback_uri is None:
            raise ApiError(404, "feedback is turned off on this server (spec.feedback.enabled)")
        body = protocol.parse(raw, FeedbackBody)
        folder = "ratings" if body.rating is not None else "preferences"
        ident = f"fb-{uuid.uuid4().hex}"
        name = f"{time.strftime('%Y%m%d-%H%M%S', time.gmtime())}-{ident}.jsonl"
        fs, root = filesystem(self.config.feedback_uri, self.config.endpoint_url)
        row = body.model_dump(exclude_none=True)
        line = json.dumps({**row, "model": self.config.served_model_name, "id": ident})
        path = join(root, folder, name)
        await asyncio.to_thread(write_atomic, fs, path, (line + "\n").encode())
        self.record("/v1/feedback", key, started, 200, kind=folder)
        stored = f"{self.config.feedback_uri}/{folder}/{name}"
        return {"id": ident, "object": "feedback", "stored": stored}


class Reply:
    """What every piece of one answer carries: its id, the model, chat or completion."""

    def __init__(self, ident: str, body: Body, chat: bool):
        self.ident, self.model, self.chat = ident, body.model, chat
        self.usage = bool(body.stream_options and body.stream_options.include_usage)

    def chunk(self, text: str, reason: str | None) -> dict:
        return protocol.chunk(self.ident, self.model, self.chat, text, reason)
