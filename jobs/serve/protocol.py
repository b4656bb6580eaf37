"""The OpenAI API's shapes: request bodies as models (read and checked here, so that every bad
request, malformed JSON included, gets OpenAI's error shape with the parameter named), and the
responses and stream chunks built from what the engine produced."""

from __future__ import annotations

import json
import time
from typing import Annotated, Any, Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationError, model_validator

from lmforge.jobs.chat import ROLES, render
from lmforge.jobs.generate import Sampling
from lmforge.jobs.serve.engine import Output
from lmforge.jobs.serve.guard import ApiError

DEFAULT_MAX_TOKENS = 16  # OpenAI's default for completions
MAX_CANDIDATES = 16
"""The most `n` a request may ask for: each candidate holds a slot of the engine's batch."""
Stop = Annotated[list[str], Field(max_length=4)]


class StreamOptions(BaseModel):
    include_usage: bool = False


class Body(BaseModel):
    """What completions and chat completions share."""

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
    n: int = Field(default=1, ge=1, le=MAX_CANDIDATES)
    """Candidates for the prompt, each sampled on its own (with a seed: seed, seed + 1, ...)."""

    def text(self) -> str:
        raise NotImplementedError

    def requested_tokens(self) -> int | None:
        return self.max_tokens

    def samplings(self, max_tokens: int) -> list[Sampling]:
        """One per candidate: with a seed, candidate i samples from seed + i, so that the n
        differ and each is reproducible."""
        stop = [self.stop] if isinstance(self.stop, str) else self.stop or []
        return [
            Sampling(
                max_tokens,
                self.temperature,
                self.top_p,
                self.top_k,
                tuple(s for s in stop if s),
                None if self.seed is None else self.seed + i,
            )
            for i in range(self.n)
        ]

    @model_validator(mode="after")
    def _one_stream(self):
        if self.stream and self.n > 1:
            raise ValueError("n: a stream carries one candidate; set stream false for n > 1")
        return self


class CompletionBody(Body):
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


class ChatBody(Body):
    messages: list[Message] = Field(min_length=1)
    max_completion_tokens: int | None = Field(default=None, ge=1)

    def text(self) -> str:
        return render([m.model_dump() for m in self.messages])

    def requested_tokens(self) -> int | None:
        return self.max_completion_tokens or self.max_tokens


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


def parse(raw: bytes, model: type[BaseModel]) -> Any:
    """A request body as `model`, or an ApiError (400) naming the parameter."""
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


def chunk(ident: str, model: str, chat: bool, text: str, reason: str | None) -> dict:
    """A streamed piece: a chat delta (empty in the last one), or a completion's text."""
    kind = "chat.completion.chunk" if chat else None
    delta = {"delta": {"content": text} if text or not reason else {}}
    return envelope(ident, model, kind, [choice(0, kind, delta, text, reason)])


def response(ident: str, model: str, chat: bool, replies: list[tuple[str, str]],
             last: list[Output]) -> dict:  # fmt: skip
    """A whole answer: a choice per candidate (text, finish reason), and the usage of all (the
    prompt counted once)."""
    kind = "chat.completion" if chat else None
    choices = [
        choice(i, kind, {"message": {"role": "assistant", "content": text}}, text, reason)
        for i, (text, reason) in enumerate(replies)
    ]
    return envelope(ident, model, kind, choices) | {"usage": usage(last)}


def choice(index: int, chat_kind: str | None, content: dict, text: str, reason) -> dict:
    """One choice: a chat one holds `content` (message or delta), a completion one the text."""
    if chat_kind:
        return {"index": index, **content, "finish_reason": reason}
    return {"index": index, "text": text, "finish_reason": reason, "logprobs": None}


def envelope(ident, model, chat_kind: str | None, choices: list[dict]) -> dict:
    """OpenAI's response shape around the choices."""
    return {
        "id": ident,
        "object": chat_kind or "text_completion",
        "created": int(time.time()),
        "model": model,
        "choices": choices,
    }


def usage(last: list[Output]) -> dict:
    """The prompt's tokens (read once) and every candidate's completion tokens."""
    prompt, completion = last[0].prompt_tokens, sum(o.completion_tokens for o in last)
    return {
        "prompt_tokens": prompt,
        "completion_tokens": completion,
        "total_tokens": prompt + completion,
    }


def event(data: dict) -> str:
    """One server-sent event."""
    return f"data: {json.dumps(data)}\n\n"
