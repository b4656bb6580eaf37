"""What stands between a request and the model: API keys, rate limits, and the output filter."""

from __future__ import annotations

import hmac
import math
import re
import threading
import time
from pathlib import Path

from lmforge.operator.api.deployment import RateLimit, Safety


class ApiError(Exception):
    """An error in OpenAI's shape: {"error": {"message", "type", "param", "code"}}."""

    def __init__(
        self,
        status: int,
        message: str,
        kind: str = "invalid_request_error",
        param: str | None = None,
        code: str | None = None,
        headers: dict[str, str] | None = None,
    ):
        super().__init__(message)
        self.status, self.message, self.kind = status, message, kind
        self.param, self.code, self.headers = param, code, headers or {}

    def body(self) -> dict:
        return {
            "error": {
                "message": self.message,
                "type": self.kind,
                "param": self.param,
                "code": self.code,
            }
        }


class Keys:
    """API keys from a folder (a mounted Secret): file name = key name, content = the key;
    `<name>.models` lists the models that key may use (all when absent)."""

    def __init__(self, folder: str | None):
        self.keys: dict[str, str] = {}  # key -> name
        self.models: dict[str, set[str]] = {}
        if folder is None:
            return
        for path in sorted(Path(folder).iterdir()):
            if path.name.startswith(".") or not path.is_file():
                continue  # a mounted Secret's ..data links
            value = path.read_text().strip()
            if path.name.endswith(".models"):
                self.models[path.name.removesuffix(".models")] = {
                    m.strip() for m in value.split(",") if m.strip()
                }
            elif value:
                self.keys[value] = path.name
        if not self.keys:
            raise ValueError(f"{folder}: no API keys (one file per key: name -> key)")

    @property
    def open(self) -> bool:
        return not self.keys

    def name(self, authorization: str | None) -> str | None:
        """The key's name from an `Authorization: Bearer <key>` header; 401 without a known
        key. None when the server is open."""
        if self.open:
            return None
        scheme, _, given = (authorization or "").partition(" ")
        if scheme.lower() != "bearer" or not given:
            raise ApiError(
                401,
                "missing API key: send Authorization: Bearer <key>",
                "authentication_error",
                code="invalid_api_key",
            )
        for key, name in self.keys.items():  # constant time per comparison
            if hmac.compare_digest(key.encode(), given.strip().encode()):
                return name
        raise ApiError(401, "invalid API key", "authentication_error", code="invalid_api_key")

    def check_model(self, name: str | None, model: str) -> None:
        allowed = self.models.get(name) if name else None
        if allowed is not None and model not in allowed:
            raise ApiError(
                403,
                f"API key {name!r} has no access to model {model!r}",
                "permission_error",
                "model",
                "model_not_allowed",
            )


class Limiter:
    """Per key, requests and tokens per minute as token buckets that refill continuously."""

    def __init__(self, limit: RateLimit):
        self.limit = limit
        self.buckets: dict[tuple[str | None, str], tuple[float, float]] = {}
        self.lock = threading.Lock()

    def _take(self, key: str | None, what: str, per_minute: int | None, amount: float) -> None:
        if per_minute is None:
            return
        rate, now = per_minute / 60.0, time.monotonic()
        with self.lock:
            level, then = self.buckets.get((key, what), (float(per_minute), now))
            level = min(float(per_minute), level + (now - then) * rate)
            if level < amount:
                wait = math.ceil((amount - level) / rate)
                raise ApiError(
                    429,
                    f"rate limit of {per_minute} {what} per minute reached; retry in {wait} s",
                    "rate_limit_error",
                    code="rate_limit_exceeded",
                    headers={"Retry-After": str(wait)},
                )
            self.buckets[(key, what)] = (level - amount, now)

    def request(self, key: str | None, tokens: int) -> None:
        """Before a request: one request, and the tokens it may use at most."""
        self._take(key, "requests", self.limit.requests_per_minute, 1)
        if self.limit.tokens_per_minute is not None:
            self._take(
                key,
                "tokens",
                self.limit.tokens_per_minute,
                min(tokens, self.limit.tokens_per_minute),
            )


class SafetyFilter:
    """Words (whole words, any case) and regular expressions; redact them or refuse the reply."""

    REDACTED = "[redacted]"

    def __init__(self, safety: Safety):
        parts = [rf"\b{re.escape(w)}\b" for w in safety.words] + list(safety.patterns)
        self.pattern = re.compile("|".join(f"(?:{p})" for p in parts), re.I) if parts else None
        self.action = safety.action
        # A streamed reply is held back by this many characters, so that a word split across
        # tokens is caught before it is sent. Patterns longer than this can slip through a stream.
        self.holdback = max((len(w) for w in safety.words), default=0) + 32 if parts else 0

    def apply(self, text: str) -> tuple[str, bool]:
        """(the text to send, whether the reply is refused)."""
        if self.pattern is None or not self.pattern.search(text):
            return text, False
        if self.action == "refuse":
            return "", True
        return self.pattern.sub(self.REDACTED, text), False
