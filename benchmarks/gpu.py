"""The GPU path, measured: the 350m and 1b presets on one GPU in bf16, torch.compile, FSDP2.

    python benchmarks/gpu.py [--presets 350m,1b] [--steps 40] [--out DIR]
    python benchmarks/gpu.py --dry      # CPU, a tiny shape, fp32: the same path (CI runs it)

For each preset the real trainer (torchrun, one rank, FSDP2, torch.compile, bf16, asynchronous
checkpoints) trains on a dataset built from the standard library's source, and the script
prints side by side:
- tokens/s and MFU at the steady state (the trainer's own figures; MFU against the GPU's dense
  bf16 peak, none on a CPU);
- peak memory (the CUDA allocator's; the process's resident set on a CPU, which includes torch
  itself) next to `lmforge plan`'s estimate for the same shape, and their ratio;
- how long a checkpoint save blocks training (the save runs on in the background), against the
  1 s target;
- decoding one sequence with the trained weights (bf16 on a GPU, the server's path): tokens/s
  next to the ceiling that memory bandwidth sets, every weight read once per token (the data
  sheet's bandwidth on a GPU, a measured copy on a CPU).
Then one JSON line with every figure.
"""

from __future__ import annotations

import argparse
import json
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import torch

from lmforge.jobs import hf
from lmforge.jobs.data import pipeline
from lmforge.jobs.generate import Sampling, generate
from lmforge.jobs.model import Transformer
from lmforge.operator import plan
from lmforge.operator.api import sizing
from lmforge.operator.api.architecture import Architecture
from lmforge.operator.api.dataset import DatasetSpec
from lmforge.operator.api.events import parse

CUDA = torch.cuda.is_available()
DRY = {"layers": 2, "dModel": 64, "heads": 4, "kvHeads": 2, "ffnSize": 192, "contextLength": 64}


def dataset(out: Path, length: int, vocab: int) -> str:
    uri = (out / "dataset").as_uri()
    spec = DatasetSpec.model_validate({
        "sources": [{"uri": "stdlib://**/*.py"}],
        "filters": {"quality": {"enabled": False}, "pii": {"enabled": False}},
        "deduplication": {"near": {"enabled": False}},
        "tokenizer": {"train": {"vocabSize": vocab}},
        "packing": {"sequenceLength": length + 1},
        "split": {"validationFraction": 0.01},
    })  # fmt: skip
    pipeline.run(spec, uri)
    return uri


def train(out: Path, arch: dict, data: str, steps: int, micro: int, length: int) -> list[dict]:
    """The trainer under torchrun, one rank; its events."""
    config = {
        "name": "gpu", "method": "pretrain", "architecture": arch, "datasetUri": data,
        "checkpointUri": (out / "checkpoints").as_uri(), "outputUri": (out / "model").as_uri(),
        "processesPerNode": 1,
        "training": {"steps": steps, "globalBatchTokens": micro * (length + 1), "microBatch": micro,
                     "precision": "bf16" if CUDA else "fp32", "compile": True,
                     "parallelism": {"strategy": "fsdp"}, "schedule": {"warmupSteps": 5},
                     "checkpoint": {"everySteps": max(2, steps // 3), "keep": 1, "asyncSave": True},
                     "validation": {"everySteps": 10**9, "batches": 1}},
    }  # fmt: skip
    out.mkdir(parents=True, exist_ok=True)
    (out / "config.json").write_text(json.dumps(config))
    command = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc-per-node=1",
               "-m", "lmforge.jobs.train", "--config", str(out / "config.json")]  # fmt: skip
    done = subprocess.run(command, stdout=subprocess.PIPE, text=True)
    if done.returncode:
        raise SystemExit(f"the trainer failed ({done.returncode}): see its output above")
    return parse(done.stdout)


def planned_bytes(arch: Architecture, length: int, micro: int) -> float:
    """`lmforge plan`'s FSDP estimate (no activation checkpointing) for this GPU, one of it."""
    name = torch.cuda.get_device_name() if CUDA else "cpu"
    gpu = sizing.gpu_named(name)
    hardware = plan.Hardware(name, gpu.memory_gib if gpu else 0, gpu.bf16_tflops if gpu else 0,
                             1, 1, "nvlink")  # fmt: skip
    estimates = plan.memory_estimates(arch, hardware, length, micro)
    return next(m.total_bytes for m in estimates if (m.strategy, m.activation_checkpointing)
                == ("fsdp", False))  # fmt: skip


def decode(model_uri: str, tokens: int) -> tuple[float, float, float]:
    """Greedy decoding of one sequence: (tokens/s, bytes of weights, bandwidth in bytes/s)."""
    arch, tensors = hf.load(model_uri)
    model = Transformer(arch)
    model.load_state_dict(tensors)
    device = "cuda" if CUDA else "cpu"
    model = model.to(device, torch.bfloat16 if CUDA else torch.float32).eval()
    weights = sum(p.numel() * p.element_size() for p in model.parameters())
    settings = Sampling(max_tokens=tokens, temperature=0)
    generate(model, [1, 2, 3], Sampling(max_tokens=4, temperature=0), None)  # warm up
    if CUDA:
        torch.cuda.synchronize()
    started = time.perf_counter()
    made = len(generate(model, [1, 2, 3], settings, None))
    seconds = time.perf_counter() - started
    return made / seconds, weights, bandwidth()


def bandwidth() -> float:
    """Bytes/s: the data sheet's on a known GPU; else a measured copy (read + write)."""
    gpu = sizing.gpu_named(torch.cuda.get_device_name()) if CUDA else None
    if gpu:
        return gpu.memory_tbps * 1e12
    source = torch.empty(2**26, dtype=torch.float32, device="cuda" if CUDA else "cpu")
    target = torch.empty_like(source)
    target.copy_(source)
    started = time.perf_counter()
    for _ in range(5):
        target.copy_(source)
    if CUDA:
        torch.cuda.synchronize()
    return 5 * 2 * source.numel() * 4 / (time.perf_counter() - started)


def measure(preset: str, out: Path, steps: int, micro: int, vocab: int) -> dict:
    arch = DRY if preset == "dry" else {"preset": preset}
    shape = Architecture.model_validate({**arch, "vocabSize": vocab}).resolved()
    length = shape.context_length
    data = dataset(out / "data", length, vocab)
    found = train(out / preset, arch, data, steps, micro, length)
    step = [e for e in found if e["event"] == "step"]
    steady = step[len(step) // 2 :]  # past compilation and warmup
    saves = [e["seconds"] for e in found if e["event"] == "checkpoint"]
    peak = max(e["peakMemoryMiB"] for e in step) * 2**20
    planned = planned_bytes(shape, length, micro)
    done = next(e for e in found if e["event"] == "done")
    rate, weights, ceiling = decode(done["output"], 32 if preset == "dry" else 256)
    mfus = [e["mfu"] for e in steady if e.get("mfu") is not None]
    return {
        "preset": preset,
        "parameters": sizing.parameter_count(shape),
        "tokensPerSecond": round(statistics.median(e["tokensPerSecond"] for e in steady), 1),
        "mfu": round(statistics.median(mfus), 4) if mfus else None,
        "peakMiB": round(peak / 2**20),
        "planMiB": round(planned / 2**20),
        "planOverPeak": round(planned / peak, 3),
        "saveBlocksSeconds": max(saves),
        "decodeTokensPerSecond": round(rate, 1),
        "decodeCeiling": round(ceiling / weights, 1),
    }


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--dry", action="store_true", help="CPU, a tiny shape: the path only")
    parser.add_argument("--presets", default="350m,1b")
    parser.add_argument("--steps", type=int, default=40)
    parser.add_argument("--micro-batch", type=int, default=8)
    parser.add_argument("--vocab", type=int, default=32000)
    parser.add_argument("--out", type=Path, default=None)
    args = parser.parse_args()
    if not (CUDA or args.dry):
        raise SystemExit("no GPU here: run with --dry for the CPU path")
    presets = ["dry"] if args.dry else args.presets.split(",")
    steps, micro, vocab = (6, 2, 512) if args.dry else (args.steps, args.micro_batch, args.vocab)
    out = args.out or Path(tempfile.mkdtemp(prefix="lmforge-gpu-"))
    device = torch.cuda.get_device_name() if CUDA else "CPU (dry run)"
    print(f"{device}; {steps} steps, micro-batch {micro}, vocab {vocab}")
    rows = [measure(p, out, steps, micro, vocab) for p in presets]
    heads = ("preset", "params", "tok/s", "MFU", "peak MiB", "plan MiB", "plan/peak", "save s",
             "decode/s", "ceiling/s")  # fmt: skip
    widths = (7, 8, 10, 6, 9, 9, 9, 7, 9, 9)
    print(" ".join(f"{h:>{w}}" for h, w in zip(heads, widths, strict=True)))
    for r in rows:
        mfu = f"{r['mfu']:.1%}" if r["mfu"] is not None else "-"
        print(f"{r['preset']:>7} {r['parameters'] / 1e6:>7.0f}M {r['tokensPerSecond']:>10,.0f} "
              f"{mfu:>6} {r['peakMiB']:>9,} {r['planMiB']:>9,} {r['planOverPeak']:>9.2f} "
              f"{r['saveBlocksSeconds']:>7.2f} {r['decodeTokensPerSecond']:>9,.0f} "
              f"{r['decodeCeiling']:>9,.0f}")  # fmt: skip
    print("targets: MFU >= 45%, a save blocks < 1 s; plan/peak within 0.8-1.2 on a GPU")
    print(json.dumps({"device": device, "rows": rows}))


if __name__ == "__main__":
    main()
