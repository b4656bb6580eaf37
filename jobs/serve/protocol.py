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
    n: int = Field(default=1, ge=1, le=1)

    def text(self) -> str:
        raise NotImplementedError

    def requested_tokens(self) -> int | None:
        return self.max_tokens

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
    delta = {"delta": {"content": text} if text or not reason else {}}
    return envelope(ident, model, "chat.completion.chunk" if chat else None, delta, text, reason)


def response(ident: str, model: str, chat: bool, text: str, reason: str, last: Output) -> dict:
    """A whole reply, with its usage."""
    message = {"message": {"role": "assistant", "content": text}}
    kind = "chat.completion" if chat else None
    return envelope(ident, model, kind, message, text, reason) | {"usage": usage(last)}


def envelope(ident, model, chat_kind: str | None, content: dict, text: str, reason) -> dict:
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


def usage(last: Output) -> dict:
    return {
        "prompt_tokens": last.prompt_tokens,
        "completion_tokens": last.completion_tokens,
        "total_tokens": last.prompt_tokens + last.completion_tokens,
    }


def event(data: dict) -> str:
    """One server-sent event."""
    return f"data: {json.dumps(data)}\n\n"
