"""A tiny model exported as a Hugging Face directory with a real BPE tokenizer, for the jobs that
read one (serving, evaluation); and an OTLP collector."""

from __future__ import annotations

import http.server
import json
import threading
from pathlib import Path

import pytest
import torch

from lmforge.jobs import hf
from lmforge.jobs.data.tokenize import train as train_tokenizer
from lmforge.jobs.model import Transformer
from lmforge.jobs.serve.__main__ import load
from lmforge.operator.api.architecture import Architecture
from lmforge.operator.api.dataset import TokenizerTraining
from lmforge.operator.api.jobs import ServeConfig

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


@pytest.fixture(scope="session")
def loaded(model_dir):
    return load(ServeConfig(model_uri=str(model_dir), served_model_name="tiny"))


@pytest.fixture
def otlp():
    """An OTLP/HTTP collector on a free port: (its endpoint, the bodies it received)."""
    bodies: list[bytes] = []

    class Collector(http.server.BaseHTTPRequestHandler):
        def do_POST(self):
            bodies.append(self.rfile.read(int(self.headers["Content-Length"])))
            self.send_response(200)
            self.end_headers()

        def log_message(self, *args):
            pass

    server = http.server.HTTPServer(("127.0.0.1", 0), Collector)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    yield f"http://127.0.0.1:{server.server_port}", bodies
    server.shutdown()
