"""Servers of the tiny model (tests/unit/jobs/conftest.py): real uvicorn on a free port, driven over
HTTP."""

from __future__ import annotations

import socket
import threading
import time
from collections.abc import Callable, Iterator

import pytest
import uvicorn

from lmforge.jobs.serve.app import create_app
from lmforge.jobs.serve.engine import Engine
from lmforge.operator.api.jobs import ServeConfig

from ..conftest import CONTEXT  # noqa: F401 (the tests import it from here)

NAME = "tiny"


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture
def serve(loaded) -> Iterator[Callable[..., str]]:
    """serve(**config) -> the base URL of a running server with that config (camelCase keys)."""
    running: list[tuple[uvicorn.Server, threading.Thread, Engine]] = []

    def start(**overrides) -> str:
        model, tokenizer = loaded
        config = ServeConfig.model_validate(
            {"modelUri": "unused", "servedModelName": NAME, **overrides}
        )
        engine = Engine(model, tokenizer, config.slots)
        port = free_port()
        server = uvicorn.Server(
            uvicorn.Config(
                create_app(config, engine), host="127.0.0.1", port=port, log_level="warning"
            )
        )
        thread = threading.Thread(target=server.run, daemon=True)
        thread.start()
        deadline = time.monotonic() + 20
        while not server.started:
            assert time.monotonic() < deadline, "server did not start"
            time.sleep(0.02)
        running.append((server, thread, engine))
        return f"http://127.0.0.1:{port}"

    yield start
    for server, thread, engine in running:
        server.should_exit = True
        thread.join(10)
        engine.close()
