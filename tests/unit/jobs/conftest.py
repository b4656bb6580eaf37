"""A tiny model exported as a Hugging Face directory with a real BPE tokenizer, for the jobs that
read one (serving, evaluation); a small packed dataset and a base model with its tokenizer, for
training and fine-tuning; and an OTLP collector."""

from __future__ import annotations

import http.server
import itertools
import json
import threading
from pathlib import Path

import pytest
import torch
from tokenizers import Tokenizer

from lmforge.jobs import hf
from lmforge.jobs.data import pipeline
from lmforge.jobs.data.tokenize import train as train_tokenizer
from lmforge.jobs.finetune import data
from lmforge.jobs.finetune.functions import functions
from lmforge.jobs.model import Transformer
from lmforge.jobs.serve.__main__ import load
from lmforge.operator.api.architecture import Architecture
from lmforge.operator.api.dataset import DatasetSpec, TokenizerTraining
from lmforge.operator.api.jobs import ServeConfig

CONTEXT = 96
SEQUENCE = 33
"""Of the packed dataset the trainer tests read."""
BASE_CONTEXT = 128
"""Of the fine-tuning base model."""


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


@pytest.fixture(scope="session")
def dataset(tmp_path_factory) -> str:
    spec = DatasetSpec.model_validate({
        "sources": [{"uri": "stdlib://json/*.py"}, {"uri": "stdlib://email/*.py"}],
        "filters": {"quality": {"enabled": False}},
        "tokenizer": {"train": {"vocabSize": 512}},
        "packing": {"sequenceLength": SEQUENCE},
        "split": {"validationFraction": 0.1},
        "engine": {"workers": 1},
    })  # fmt: skip
    uri = (tmp_path_factory.mktemp("dataset") / "out").as_uri()
    pipeline.run(spec, uri)
    return uri


@pytest.fixture(scope="session")
def base(dataset, tmp_path_factory):
    """A random tiny model with the test dataset's tokenizer, exported; and SFT examples that fit."""
    out = tmp_path_factory.mktemp("base")
    folder = dataset.removeprefix("file://")
    manifest = json.loads((Path(folder) / "manifest.json").read_text())
    tokenizer_path = f"{folder}/{manifest['tokenizer']['path']}"
    tokenizer = Tokenizer.from_file(tokenizer_path)
    torch.manual_seed(1)
    arch = Architecture.model_validate({"layers": 2, "dModel": 64, "heads": 4, "kvHeads": 2,
                                        "contextLength": BASE_CONTEXT,
                                        "vocabSize": tokenizer.get_vocab_size()})  # fmt: skip
    hf.export(Transformer(arch), arch, out / "model", tokenizer_json_path=tokenizer_path)
    fits = (r for r in functions(max_lines=4)
            if len(data.tokens(data.read_row(r), tokenizer)[0]) <= BASE_CONTEXT)  # fmt: skip
    rows = list(itertools.islice(fits, 48))
    (out / "sft.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    return out, tokenizer
