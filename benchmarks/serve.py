"""Serving throughput: `lmforge serve` against Hugging Face transformers' generate, side by side.

    pip install -e '.[dev]' && python benchmarks/serve.py [--preset small] [--max-tokens 64]
        [--runtime native|onnx]

Both get the same exported weights (random, seeded: speed does not depend on what was learned),
the same prompts and greedy decoding of `--max-tokens` tokens. lmforge: the real server in its own
process (`lmforge serve`, 16 slots), driven over HTTP with streaming requests from 1, 4 and 16
client threads at once; time to first token is when the first chunk arrives. transformers:
`LlamaForCausalLM.generate` in this process with its KV cache, two ways: one request at a time
(what a server that calls generate per request does; request i waits for those before it), and
the c prompts of a round batched into one call (left-padded; no HTTP, no streaming: an upper
bound for static batching). Its time to first token is a `max_new_tokens=1` call.

Also measured here: the memory bandwidth this process reads at (a sum over a tensor far larger
than the caches), which bounds batch-1 decoding at bandwidth / bytes of weights per token (every
weight but the input embedding's other rows); and, stricter when the weights fit the CPU's
last-level cache, the bandwidth of the same sum over a tensor the size of the weights.
Prints a table, then one JSON line.
"""

from __future__ import annotations

import argparse
import concurrent.futures
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import httpx2 as httpx
import torch
from transformers import LlamaForCausalLM

from lmforge.jobs import hf
from lmforge.jobs.data.tokenize import train as train_tokenizer
from lmforge.jobs.model import Transformer
from lmforge.operator.api.architecture import Architecture
from lmforge.operator.api.dataset import TokenizerTraining

PROMPTS = [
    "def load(fp, *, cls=None",
    "import json\nimport sys\n\n",
    "class Decoder(object):",
    "    def __init__(self, ",
    "# Copyright 2001 ",
    "if __name__ == '__main__':",
    "    return self.",
    "from collections import ",
]
LEVELS = (1, 4, 16)


def read_bandwidth(size_mib: int = 1024, repeat: int = 5) -> float:
    """Bytes per second a sum streams from memory (fp32, far larger than any cache)."""
    x = torch.ones(size_mib * 2**20 // 4)
    x.sum()
    best = min(_timed(x.sum) for _ in range(repeat))
    return x.numel() * 4 / best


def _timed(fn) -> float:
    t = time.perf_counter()
    fn()
    return time.perf_counter() - t


def build(out: Path, preset: str) -> tuple[Path, int]:
    import json as stdlib_json

    texts = [p.read_text() for p in Path(stdlib_json.__file__).parents[1].glob("email/*.py")]
    tokenizer = train_tokenizer(texts, TokenizerTraining(vocab_size=8192))
    tokenizer.save(str(out / "tokenizer.json"))
    torch.manual_seed(0)
    arch = Architecture.model_validate({"preset": preset, "vocabSize": tokenizer.get_vocab_size()})
    model = Transformer(arch)
    hf.export(model, arch, out, tokenizer_json_path=out / "tokenizer.json")
    # Bytes of weights a token reads: all of them but the input embedding, of which it reads one
    # row (the output projection is a separate matrix in this preset, read whole).
    weights = sum(p.numel() * p.element_size() for p in model.parameters())
    if not model.arch.tied_embeddings:
        embedding = model.model.embed_tokens.weight
        weights -= (embedding.shape[0] - 1) * embedding.shape[1] * embedding.element_size()
    return out, weights


def lmforge_round(client: httpx.Client, base: str, clients: int, max_tokens: int) -> dict:
    def one(i: int) -> tuple[float, int]:
        body = {
            "model": "bench",
            "prompt": PROMPTS[i % len(PROMPTS)],
            "max_tokens": max_tokens,
            "temperature": 0,
            "stream": True,
            "stream_options": {"include_usage": True},
        }
        start, first, tokens = time.perf_counter(), None, 0
        with client.stream("POST", f"{base}/v1/completions", json=body) as response:
            for line in response.iter_lines():
                if line.startswith("data: {"):
                    first = first or time.perf_counter()
                    chunk = json.loads(line[6:])
                    if chunk.get("usage"):
                        tokens = chunk["usage"]["completion_tokens"]
        return first - start, tokens

    start = time.perf_counter()
    with concurrent.futures.ThreadPoolExecutor(clients) as pool:
        results = list(pool.map(one, range(clients)))
    wall = time.perf_counter() - start
    return {
        "tokens_per_second": sum(t for _, t in results) / wall,
        "ttft_seconds": statistics.median(f for f, _ in results),
    }


def hf_round(model, tokenizer, clients: int, max_tokens: int) -> dict:
    prompts = [PROMPTS[i % len(PROMPTS)] for i in range(clients)]
    batch = tokenizer(prompts, return_tensors="pt", padding=True)
    kwargs = {"do_sample": False, "pad_token_id": tokenizer.pad_token_id, "eos_token_id": None}
    with torch.inference_mode():
        ttft = _timed(lambda: model.generate(**batch, max_new_tokens=1, **kwargs))
        wall = _timed(
            lambda: model.generate(
                **batch, max_new_tokens=max_tokens, min_new_tokens=max_tokens, **kwargs
            )
        )
    return {"tokens_per_second": clients * max_tokens / wall, "ttft_seconds": ttft}


def hf_one_at_a_time(model, tokenizer, clients: int, max_tokens: int) -> dict:
    """A server that calls generate per request, in turn: request i waits for those before it."""
    kwargs = {"do_sample": False, "pad_token_id": tokenizer.pad_token_id, "eos_token_id": None}
    clock, ttfts = 0.0, []
    with torch.inference_mode():
        for i in range(clients):
            batch = tokenizer([PROMPTS[i % len(PROMPTS)]], return_tensors="pt")
            first = _timed(lambda b=batch: model.generate(**b, max_new_tokens=1, **kwargs))
            ttfts.append(clock + first)
            clock += _timed(
                lambda b=batch: model.generate(
                    **b, max_new_tokens=max_tokens, min_new_tokens=max_tokens, **kwargs
                )
            )
    return {
        "tokens_per_second": clients * max_tokens / clock,
        "ttft_seconds": statistics.median(ttfts),
    }


def best_of(rounds: int, run) -> dict:
    """For each level of concurrency, the round with the most tokens/s."""
    return {
        c: max((run(c) for _ in range(rounds)), key=lambda r: r["tokens_per_second"])
        for c in LEVELS
    }


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--preset", default="small")
    parser.add_argument("--max-tokens", type=int, default=64)
    parser.add_argument("--rounds", type=int, default=2, help="best of this many per level")
    parser.add_argument("--runtime", choices=["native", "onnx"], default="native")
    args = parser.parse_args()
    work = Path(tempfile.mkdtemp(prefix="lmforge-serve-bench-"))
    model_dir, weight_bytes = build(work, args.preset)
    bandwidth = read_bandwidth()
    ceiling = bandwidth / weight_bytes
    # A stricter bound where the weights fit the last-level cache (the small preset does, on a
    # CPU with hundreds of MiB of L3): the same sum over a tensor the size of the weights.
    resident = read_bandwidth(max(1, weight_bytes // 2**20), repeat=20)

    port = 8765
    server = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "lmforge.operator.cli",
            "serve",
            "--model",
            str(model_dir),
            "--name",
            "bench",
            "--port",
            str(port),
            "--slots",
            "16",
            "--runtime",
            args.runtime,
        ],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    base = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + 120
        while True:
            try:
                if httpx.get(f"{base}/readyz").status_code == 200:
                    break
            except httpx.TransportError:
                if time.monotonic() > deadline or server.poll() is not None:
                    raise SystemExit("the server did not start") from None
                time.sleep(0.2)
        # One client, its connections kept open, as an application would hold one (creating an
        # httpx client per request costs tens of milliseconds, mostly its TLS context).
        limits = httpx.Limits(max_connections=max(LEVELS))
        with httpx.Client(timeout=600, limits=limits) as client:
            lmforge_round(client, base, 4, 8)  # warm-up
            ours = best_of(args.rounds, lambda c: lmforge_round(client, base, c, args.max_tokens))
    finally:
        server.terminate()
        server.wait(30)

    from transformers import AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(model_dir)
    tokenizer.pad_token, tokenizer.padding_side = "<|pad|>", "left"
    reference = LlamaForCausalLM.from_pretrained(model_dir, dtype=torch.float32).eval()
    hf_round(reference, tokenizer, 4, 8)  # warm-up
    theirs = best_of(args.rounds, lambda c: hf_round(reference, tokenizer, c, args.max_tokens))
    serial = {c: hf_one_at_a_time(reference, tokenizer, c, args.max_tokens) for c in LEVELS}

    print(
        f"preset {args.preset}: {weight_bytes / 2**20:.0f} MiB of fp32 weights read per token;"
        f" read bandwidth {bandwidth / 1e9:.1f} GB/s -> batch-1 ceiling {ceiling:.1f} tokens/s; "
        f"{args.max_tokens} greedy tokens per request; threads {torch.get_num_threads()};"
        f" lmforge runtime {args.runtime}"
    )
    print("tokens/s (time to first token, median) at each number of concurrent requests")
    print(
        f"{'concurrent':>10} {'lmforge serve':>20} {'hf one at a time':>20} {'hf batched':>20}"
        f" {'vs one':>7} {'vs batched':>10}"
    )
    for c in LEVELS:
        row = [ours[c], serial[c], theirs[c]]
        cells = [f"{r['tokens_per_second']:.1f} ({r['ttft_seconds']:.3f}s)" for r in row]
        print(
            f"{c:>10} {cells[0]:>20} {cells[1]:>20} {cells[2]:>20}"
            f" {row[0]['tokens_per_second'] / row[1]['tokens_per_second']:>6.2f}x"
            f" {row[0]['tokens_per_second'] / row[2]['tokens_per_second']:>9.2f}x"
        )
    at_one = ours[1]["tokens_per_second"] / ceiling
    at_one_resident = ours[1]["tokens_per_second"] / (resident / weight_bytes)
    speedup = ours[16]["tokens_per_second"] / serial[16]["tokens_per_second"]
    batched = ours[16]["tokens_per_second"] / theirs[16]["tokens_per_second"]
    print(
        f"batch 1: {at_one:.0%} of the bandwidth ceiling (target >= 60%), {at_one_resident:.0%} of"
        f" the ceiling at the weights' size ({resident / 1e9:.1f} GB/s); 16 concurrent: "
        f"{speedup:.2f}x transformers one request at a time (target >= 3x), "
        f"{batched:.2f}x transformers batching all 16 at once"
    )
    print(
        json.dumps(
            {
                "benchmark": "serve",
                "runtime": args.runtime,
                "preset": args.preset,
                "weight_bytes": weight_bytes,
                "read_bandwidth": bandwidth,
                "ceiling_tokens_per_second": ceiling,
                "lmforge": ours,
                "transformers_batched": theirs,
                "transformers_one_at_a_time": serial,
                "batch1_fraction": at_one,
                "read_bandwidth_at_weights_size": resident,
                "batch1_fraction_at_weights_size": at_one_resident,
                "speedup_16": speedup,
                "speedup_16_vs_batched": batched,
                "cpus": os.cpu_count(),
            }
        )
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
