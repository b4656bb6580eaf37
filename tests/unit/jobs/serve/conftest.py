"""A tiny model exported as a Hugging Face directory with a real BPE tokenizer, and servers of it:
real uvicorn on a free port, driven over HTTP."""

from __future__ import annotations

import json
import socket
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest
import torch
import uvicorn

from lmforge.jobs import hf
from lmforge.jobs.data.tokenize import train as train_tokenizer
from lmforge.jobs.model import Transformer
from lmforge.jobs.serve.__main__ import load
from lmforge.jobs.serve.app import create_app
from lmforge.jobs.serve.config import ServeConfig
from lmforge.jobs.serve.engine import Engine
from lmforge.operator.api.architecture import Architecture
from lmforge.operator.api.dataset import TokenizerTraining

NAME = "tiny"
CONTEXT = 96


@pytest.fixture(scope="session")
def model_dir(tmp_path_factory) -> Path:
    """Random weights (seeded) and a 512-token BPE trained on a slice of the standard library."""
    texts = [p.read_text() for p in sorted(Path(json.__file__).parent.glob("*.py"))]
    tokenizer = train_tokenizer(texts, TokenizerTraining(vocab_size=512))
    out = tmp_path_factory.mktemp("model")
    tokenizer.save(str(out / "tokenizer.json"))
    torch.manual_seed(0)
    arch = Architecture.model_validate(
        {
            "layers": 2,
            "dModel": 64,
            "heads": 4,
            "kvHeads": 2,
            "contextLength": CONTEXT,
            "vocabSize": 512,
        }
    )
    hf.export(Transformer(arch), arch, out, tokenizer_json_path=out / "tokenizer.json")
    return out


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture(scope="session")
def loaded(model_dir):
    return load(ServeConfig(model_uri=str(model_dir), served_model_name=NAME))


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
