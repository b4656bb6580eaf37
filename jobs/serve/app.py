"""The HTTP API: OpenAI's /v1/completions, /v1/chat/completions (streamed as server-sent events
or not) and /v1/models, plus /v1/feedback, /healthz, /readyz and /metrics.

Bodies are read and validated here rather than by FastAPI's models, so that every bad request,
malformed JSON included, gets OpenAI's error shape with the parameter named.
"""

from __future__ import annotations

import asyncio
import json
import logging
import time
import uuid
from collections.abc import AsyncIterator
from typing import Annotated, Any, Literal

from fastapi import FastAPI, Request
from fastapi.responses import JSONResponse, Response, StreamingResponse
from opentelemetry import trace
from prometheus_client import (
    CONTENT_TYPE_LATEST,
    CollectorRegistry,
    Counter,
    Gauge,
    Histogram,
    generate_latest,
)
from pydantic import BaseModel, ConfigDict, Field, ValidationError, model_validator

from lmforge.jobs.chat import ROLES, render
from lmforge.jobs.generate import Sampling
from lmforge.jobs.serve.engine import Engine, Output
from lmforge.jobs.serve.guard import ApiError, Keys, Limiter, SafetyFilter
from lmforge.jobs.storage import filesystem, join, write_atomic
from lmforge.operator.api.jobs import ServeConfig

audit = logging.getLogger("lmforge.audit")
tracer = trace.get_tracer("lmforge.serve")

DEFAULT_MAX_TOKENS = 16  # OpenAI's default for completions
Stop = Annotated[list[str], Field(max_length=4)]


class StreamOptions(BaseModel):
    include_usage: bool = False


class _Body(BaseModel):
    model_config = ConfigDict(extra="ignore")  # OpenAI clients send fields we do not use

    model: str
    max_tokens: int | None = Field(default=None, ge=1)
    temperature: float = Field(default=1.0, ge=0, le=2)
    top_p: float = Field(default=1.0, gt=0, le=1)
    top_k: int = Field(default=0, ge=0)
    stop: str | Stop | None = None
    seed: int | None = None
    stream: bool = False
    stream_options: StreamOptions | None = None
    n: int = Field(default=1, ge=1, le=1)

    def sampling(self, max_tokens: int) -> Sampling:
        stop = [self.stop] if isinstance(self.stop, str) else self.stop or []
        return Sampling(
            max_tokens,
            self.temperature,
            self.top_p,
            self.top_k,
            tuple(s for s in stop if s),
            self.seed,
        )


class CompletionBody(_Body):
    prompt: str | list[str] = Field(min_length=1)

    @model_validator(mode="after")
    def _one_prompt(self) -> CompletionBody:
        if isinstance(self.prompt, list) and len(self.prompt) != 1:
            raise ValueError("prompt: give one prompt (a string); batches are not supported")
        return self

    def text(self) -> str:
        return self.prompt if isinstance(self.prompt, str) else self.prompt[0]


class Message(BaseModel):
    role: Literal[ROLES]  # type: ignore[valid-type]
    content: str


class ChatBody(_Body):
    messages: list[Message] = Field(min_length=1)
    max_completion_tokens: int | None = Field(default=None, ge=1)

    def text(self) -> str:
        return render([m.model_dump() for m in self.messages])


class FeedbackBody(BaseModel):
    """A preference (chosen over rejected, or responses ranked best first) or a rating."""

    model_config = ConfigDict(extra="forbid")

    prompt: str = Field(min_length=1)
    chosen: str | None = None
    rejected: str | None = None
    responses: list[str] | None = Field(default=None, min_length=2)
    response: str | None = None
    rating: int | None = Field(default=None, ge=-1, le=5)

    @model_validator(mode="after")
    def _one_kind(self) -> FeedbackBody:
        pair = self.chosen is not None and self.rejected is not None
        rated = self.response is not None and self.rating is not None
        if [pair, self.responses is not None, rated].count(True) != 1:
            raise ValueError(
                "give exactly one of: chosen and rejected; responses (best first);"
                " response and rating"
            )
        if pair and self.chosen == self.rejected:
            raise ValueError("chosen and rejected are the same text: a tie says nothing")
        if self.responses and len(set(self.responses)) != len(self.responses):
            raise ValueError("responses: two are the same text: a tie says nothing")
        return self


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


def _parse(raw: bytes, model: type[BaseModel]) -> Any:
    try:
        data = json.loads(raw)
    except (json.JSONDecodeError, UnicodeDecodeError) as error:
        raise ApiError(400, f"the body is not valid JSON: {error}") from error
    if not isinstance(data, dict):
        raise ApiError(400, "the body must be a JSON object")
    try:
        return model.model_validate(data)
    except ValidationError as error:
        first = error.errors()[0]
        param = ".".join(str(p) for p in first["loc"]) or None
        message = first["msg"].removeprefix("Value error, ")
        raise ApiError(400, f"{param}: {message}" if param else message, param=param) from error


def create_app(config: ServeConfig, engine: Engine) -> FastAPI:
    app = FastAPI(title="lmforge serve", docs_url=None, redoc_url=None)
    keys, limiter = Keys(config.api_keys_dir), Limiter(config.rate_limit)
    safety = SafetyFilter(config.safety)
    metrics = Metrics()
    tokenizer, limits = engine.tokenizer, config.limits
    created = int(time.time())

    def on_step(batch: int, queued: int) -> None:
        metrics.batch.set(batch)
        metrics.queue.set(queued)

    engine.on_step = on_step

    @app.exception_handler(ApiError)
    async def api_error(request: Request, error: ApiError) -> JSONResponse:
        metrics.errors.labels(str(error.status)).inc()
        return JSONResponse(error.body(), error.status, headers=error.headers)

    @app.exception_handler(404)
    async def not_found(request: Request, error: Exception) -> JSONResponse:
        return JSONResponse(ApiError(404, f"no route {request.url.path}").body(), 404)

    @app.exception_handler(405)
    async def not_allowed(request: Request, error: Exception) -> JSONResponse:
        message = f"method {request.method} not allowed on {request.url.path}"
        return JSONResponse(ApiError(405, message).body(), 405)

    @app.get("/healthz")
    async def healthz() -> dict:
        return {"status": "ok"}

    @app.get("/readyz")
    async def readyz() -> Response:
        ready = engine.thread.is_alive()
        return JSONResponse({"ready": ready}, 200 if ready else 503)

    @app.get("/metrics")
    async def prometheus() -> Response:
        return Response(generate_latest(metrics.registry), media_type=CONTENT_TYPE_LATEST)

    @app.get("/v1/models")
    async def models(request: Request) -> dict:
        keys.name(request.headers.get("authorization"))
        card = {
            "id": config.served_model_name,
            "object": "model",
            "created": created,
            "owned_by": "lmforge",
        }
        return {"object": "list", "data": [card]}

    async def read(request: Request) -> tuple[str | None, bytes]:
        key = keys.name(request.headers.get("authorization"))
        size = int(request.headers.get("content-length") or 0)
        raw = b"" if size > limits.max_request_bytes else await request.body()
        if max(size, len(raw)) > limits.max_request_bytes:
            raise ApiError(
                413,
                f"the request is larger than {limits.max_request_bytes} bytes"
                " (limits.maxRequestBytes)",
                code="request_too_large",
            )
        return key, raw

    def admit(key: str | None, body: _Body, text: str) -> tuple[list[int], Sampling]:
        if body.model != config.served_model_name:
            raise ApiError(
                404,
                f"model {body.model!r} does not exist; this server has "
                f"{config.served_model_name!r}",
                param="model",
                code="model_not_found",
            )
        keys.check_model(key, body.model)
        max_tokens = getattr(body, "max_completion_tokens", None) or body.max_tokens
        if max_tokens is not None and max_tokens > limits.max_tokens:
            raise ApiError(
                400,
                f"max_tokens: {max_tokens} is more than this server allows ({limits.max_tokens})",
                param="max_tokens",
            )
        sampling = body.sampling(max_tokens or DEFAULT_MAX_TOKENS)
        prompt = tokenizer.encode(text, add_special_tokens=False).ids
        context = engine.context
        longest = limits.max_prompt_tokens or context - 1
        if not prompt:
            raise ApiError(400, "the prompt is empty", param="prompt")
        if len(prompt) > min(longest, context - 1):
            raise ApiError(
                400,
                f"the prompt is {len(prompt)} tokens; this server takes at most "
                f"{min(longest, context - 1)}",
                param="prompt",
                code="context_length_exceeded",
            )
        limiter.request(key, len(prompt) + sampling.max_tokens)
        return prompt, sampling

    async def run(prompt: list[int], sampling: Sampling) -> AsyncIterator[Output]:
        """The engine's outputs for one request, as they come; cancels it if abandoned."""
        loop, queue = asyncio.get_running_loop(), asyncio.Queue()
        handle = engine.submit(
            prompt, sampling, lambda o: loop.call_soon_threadsafe(queue.put_nowait, o)
        )
        try:
            while True:
                output = await queue.get()
                yield output
                if output.finish_reason is not None:
                    return
        finally:
            engine.cancel(handle)

    def record(route: str, key: str | None, started: float, status: int, **fields: Any) -> None:
        if not config.log_prompts:
            fields = {k: v for k, v in fields.items() if k not in ("prompt", "completion")}
        line = {
            "time": round(time.time(), 3),
            "route": route,
            "key": key,
            "status": status,
            "seconds": round(time.monotonic() - started, 4),
            **fields,
        }
        audit.info(json.dumps(line))

    async def complete(request: Request, route: str, body_type: type[_Body], chat: bool):
        started = time.monotonic()
        with tracer.start_as_current_span(f"POST {route}") as span:
            key = None
            try:
                key, raw = await read(request)
                body = _parse(raw, body_type)
                prompt, sampling = admit(key, body, body.text())
            except ApiError as error:
                record(route, key, started, error.status, error=error.message)
                raise
            span.set_attribute("lmforge.prompt_tokens", len(prompt))
            ident = f"{'chatcmpl' if chat else 'cmpl'}-{uuid.uuid4().hex[:24]}"
            metrics.prompt_tokens.inc(len(prompt))
            outputs = run(prompt, sampling)

            def done(last: Output | None, text: str, reason: str | None) -> None:
                completion_tokens = last.completion_tokens if last else 0
                record(
                    route,
                    key,
                    started,
                    200,
                    model=body.model,
                    finish_reason=reason,
                    prompt_tokens=len(prompt),
                    completion_tokens=completion_tokens,
                    prompt=body.text(),
                    completion=text,
                )

            if body.stream:
                usage = bool(body.stream_options and body.stream_options.include_usage)
                stream = _stream(outputs, ident, body.model, chat, started, usage, done)
                return StreamingResponse(stream, media_type="text/event-stream")
            text, last, first = "", None, None
            async for output in outputs:
                first = first or time.monotonic()
                text, last = text + output.text, output
            text, refused = safety.apply(text)
            reason = "content_filter" if refused else last.finish_reason
            _account(started, first, last)
            done(last, text, reason)
            return _response(ident, body.model, chat, text, reason, last)

    def _account(started: float, first: float | None, last: Output | None) -> None:
        if first is not None:
            metrics.ttft.observe(first - started)
        if last is not None:
            metrics.tokens.inc(last.completion_tokens)
            elapsed = time.monotonic() - started
            if elapsed > 0:
                metrics.tokens_per_second.set(last.completion_tokens / elapsed)

    async def _stream(outputs, ident, model: str, chat: bool, started: float, usage: bool, done):
        raw, sent, first, last, text, reason = "", 0, None, None, "", None
        async for output in outputs:
            first = first or time.monotonic()
            raw += output.text
            finished = output.finish_reason is not None
            text, refused = safety.apply(raw)
            if refused:
                text, reason = "", "content_filter"
                yield _event(_chunk(ident, model, chat, "", reason))
                await outputs.aclose()  # frees the slot now
                break
            ready = len(text) if finished else max(sent, len(text) - safety.holdback)
            if ready > sent or finished:
                reason = output.finish_reason if finished else None
                yield _event(_chunk(ident, model, chat, text[sent:ready], reason))
                sent = ready
            last = output
        _account(started, first, last)
        done(last, text, reason)
        if usage and last is not None:  # OpenAI's stream_options.include_usage: a last chunk
            last_chunk = _chunk(ident, model, chat, "", None)
            yield _event({**last_chunk, "choices": [], "usage": _usage(last)})
        yield "data: [DONE]\n\n"

    @app.post("/v1/completions")
    async def completions(request: Request):
        return await complete(request, "/v1/completions", CompletionBody, chat=False)

    @app.post("/v1/chat/completions")
    async def chat_completions(request: Request):
        return await complete(request, "/v1/chat/completions", ChatBody, chat=True)

    @app.post("/v1/feedback")
    async def feedback(request: Request) -> dict:
        started = time.monotonic()
        key, raw = await read(request)
        if config.feedback_uri is None:
            raise ApiError(404, "feedback is turned off on this server (spec.feedback.enabled)")
        body = _parse(raw, FeedbackBody)
        row = body.model_dump(exclude_none=True)
        folder = "ratings" if body.rating is not None else "preferences"
        ident = f"fb-{uuid.uuid4().hex}"
        name = f"{time.strftime('%Y%m%d-%H%M%S', time.gmtime())}-{ident}.jsonl"
        fs, root = filesystem(config.feedback_uri, config.endpoint_url)
        line = json.dumps({**row, "model": config.served_model_name, "id": ident})
        await asyncio.to_thread(write_atomic, fs, join(root, folder, name), (line + "\n").encode())
        record("/v1/feedback", key, started, 200, kind=folder)
        return {
            "id": ident,
            "object": "feedback",
            "stored": f"{config.feedback_uri}/{folder}/{name}",
        }

    return app


def _chunk(ident: str, model: str, chat: bool, text: str, reason: str | None) -> dict:
    """A streamed piece: a chat delta (empty in the last one), or a completion's text."""
    delta = {"delta": {"content": text} if text or not reason else {}}
    return _envelope(ident, model, "chat.completion.chunk" if chat else None, delta, text, reason)


def _envelope(ident, model, chat_kind: str | None, content: dict, text: str, reason) -> dict:
    """OpenAI's response shape around one choice: a chat one holds `content` (message or
    delta), a completion one the text."""
    if chat_kind:
        choice = {"index": 0, **content, "finish_reason": reason}
    else:
        choice = {"index": 0, "text": text, "finish_reason": reason, "logprobs": None}
    return {
        "id": ident,
        "object": chat_kind or "text_completion",
        "created": int(time.time()),
        "model": model,
        "choices": [choice],
    }


def _usage(last: Output) -> dict:
    return {
        "prompt_tokens": last.prompt_tokens,
        "completion_tokens": last.completion_tokens,
        "total_tokens": last.prompt_tokens + last.completion_tokens,
    }


def _event(data: dict) -> str:
    return f"data: {json.dumps(data)}\n\n"


def _response(ident: str, model: str, chat: bool, text: str, reason: str, last: Output) -> dict:
    message = {"message": {"role": "assistant", "content": text}}
    kind = "chat.completion" if chat else None
    return _envelope(ident, model, kind, message, text, reason) | {"usage": _usage(last)}
