"""`python -m lmforge.jobs.serve --config serve.json`: load the model, serve until SIGTERM."""

from __future__ import annotations

import argparse
import json
import logging
import sys
import tempfile
from pathlib import Path

import torch
import uvicorn
from tokenizers import Tokenizer

from lmforge.jobs import hf
from lmforge.jobs.model import Transformer
from lmforge.jobs.serve.app import create_app
from lmforge.jobs.serve.engine import Engine
from lmforge.jobs.storage import filesystem, join
from lmforge.operator.api import telemetry
from lmforge.operator.api.jobs import ServeConfig


def load(config: ServeConfig) -> tuple[Transformer, Tokenizer]:
    """The model (for the runtime asked for) and its tokenizer from a Hugging Face Llama
    directory. The onnx runtime writes its graph to a temporary folder, loads it, and deletes it."""
    arch, tensors = hf.load(config.model_uri, config.endpoint_url)
    model = Transformer(arch)
    model.load_state_dict(tensors)
    if config.dtype == "bf16":
        model = model.to(torch.bfloat16)
    if config.quantization == "int8":
        model = quantize_int8(model)
    elif config.runtime == "native" and torch.cuda.is_available():  # int8 and onnx: CPU only
        model = model.to("cuda", torch.bfloat16)  # a pod with a GPU serves on it, in bf16
    if config.runtime == "onnx":
        from lmforge.jobs.serve.onnx import OnnxModel, export

        with tempfile.TemporaryDirectory(prefix="lmforge-onnx-") as folder:  # read at load
            model = OnnxModel(export(model, Path(folder) / "model.onnx"), arch)
        # torch now only copies the odd KV-cache row; its thread pool spinning between steps
        # would take the cores from onnxruntime's (one decode step alone, small preset, 2 cores:
        # 10.8 -> 7.5 ms).
        torch.set_num_threads(1)
    fs, root = filesystem(config.model_uri, config.endpoint_url)
    path = join(root, "tokenizer.json")
    if not fs.exists(path):
        raise SystemExit(
            f"{config.model_uri}/tokenizer.json: not found; the server needs the "
            "tokenizer next to the weights (training exports it there)"
        )
    return model.eval(), Tokenizer.from_str(fs.cat_file(path).decode())


def quantize_int8(model: Transformer) -> Transformer:
    """Every nn.Linear to int8 weights with dynamic activation quantization. torch marks its eager
    quantization API deprecated in favour of torchao; it still ships and is the one that needs no
    other package (docs/decisions.md)."""
    import warnings

    with warnings.catch_warnings():
        warnings.simplefilter("ignore", DeprecationWarning)
        warnings.filterwarnings("ignore", "torch.quantize_per_tensor", UserWarning)
        return torch.ao.quantization.quantize_dynamic(
            model.eval(), {torch.nn.Linear}, dtype=torch.qint8
        )


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="lmforge serve", description="Serve a model over an OpenAI-compatible HTTP API."
    )
    source = parser.add_mutually_exclusive_group(required=True)
    source.add_argument("--config", type=Path, help="a ServeConfig JSON (what the operator mounts)")
    source.add_argument("--model", help="a Hugging Face Llama directory, local or s3://")
    parser.add_argument("--name", help="the model name clients ask for (default: the folder's)")
    parser.add_argument("--slots", type=int, default=16, help="sequences decoded together")
    parser.add_argument("--api-keys", help="a folder of API key files (default: open)")
    parser.add_argument("--quantization", choices=["none", "int8"], default="none")
    parser.add_argument("--runtime", choices=["native", "onnx"], default="native")
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, default=8000)
    args = parser.parse_args(argv)
    if args.config:
        config = ServeConfig.model_validate(json.loads(args.config.read_text()))
    else:
        name = args.name or args.model.rstrip("/").rsplit("/", 1)[-1]
        config = ServeConfig(
            model_uri=args.model,
            served_model_name=name,
            slots=args.slots,
            api_keys_dir=args.api_keys,
            quantization=args.quantization,
            runtime=args.runtime,
        )
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s %(message)s")
    if config.audit_log:
        handler = logging.FileHandler(config.audit_log)
        logging.getLogger("lmforge.audit").addHandler(handler)
    telemetry.setup("lmforge-serve")  # spans per request, when OTEL_EXPORTER_OTLP_ENDPOINT is set
    model, tokenizer = load(config)
    engine = Engine(model, tokenizer, config.slots)
    app = create_app(config, engine)
    print(f"serving {config.served_model_name} on http://{args.host}:{args.port}/v1", flush=True)
    uvicorn.run(app, host=args.host, port=args.port, log_level="warning")
    engine.close()
    return 0


if __name__ == "__main__":
    sys.exit(main())
