"""Training throughput: the lmforge trainer against a plain reference loop, side by side.

    python benchmarks/train.py [--steps 300] [--preset tiny] [--out DIR]

Same model (jobs/model.py), batch, precision and optimizer in both. The reference is the
simplest loop that trains it: tokens already in memory, no DDP, no checkpoints, no telemetry.
The trainer runs under its real entry point (python -m lmforge.jobs.train, world of one) once
without checkpoints and once with a checkpoint every 100 steps. Also measured in the same run:
this machine's matmul throughput (what "fraction of peak" is a fraction of) and raw write
bandwidth to the checkpoint storage (what a checkpoint save is compared with).

On a GPU the same script trains the 350m preset in bf16 and reports MFU against the GPU's
dense bf16 peak. Prints figures, then one JSON line.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import torch

from lmforge.jobs.data import pipeline
from lmforge.jobs.data.reader import ShardReader
from lmforge.jobs.model import Transformer
from lmforge.operator.api import sizing
from lmforge.operator.api.architecture import Architecture
from lmforge.operator.api.dataset import DatasetSpec
from lmforge.operator.api.events import parse

CUDA = torch.cuda.is_available()


def build_dataset(out: Path, length: int) -> str:
    uri = (out / "dataset").as_uri()
    spec = DatasetSpec.model_validate({
        "sources": [{"uri": "stdlib://**/*.py"}],
        "filters": {"quality": {"enabled": False}, "pii": {"enabled": False}},
        "deduplication": {"near": {"enabled": False}},
        "tokenizer": {"train": {"vocabSize": 8192}},
        "packing": {"sequenceLength": length + 1},
        "split": {"validationFraction": 0.01},
    })  # fmt: skip
    pipeline.run(spec, uri)
    return uri


def reference(arch: Architecture, dataset: str, steps: int, batch: int, lr: float) -> list[float]:
    """The plain loop; returns seconds per step."""
    device = torch.device("cuda" if CUDA else "cpu")
    torch.manual_seed(0)
    model = Transformer(arch).to(device)
    optimizer = torch.optim.AdamW(model.parameters(), lr=lr, betas=(0.9, 0.95), weight_decay=0.1)
    reader = ShardReader(dataset)
    data = torch.stack(
        [torch.from_numpy(reader.sequence(i).astype("int64")) for i in range(batch * 8)]
    )
    data = data.to(device)
    times = []
    for step in range(steps):
        started = time.perf_counter()
        tokens = data[(step % 8) * batch : (step % 8 + 1) * batch]
        with torch.autocast(device.type, torch.bfloat16, enabled=CUDA):
            _, loss = model(tokens[:, :-1], tokens[:, 1:])
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)
        if CUDA:
            torch.cuda.synchronize()
        times.append(time.perf_counter() - started)
    return times


def trainer(out: Path, arch: dict, dataset: str, steps: int, batch: int, length: int, lr: float,
            checkpoint_every: int) -> list[dict]:  # fmt: skip
    """The real trainer in its own process; returns its progress events."""
    run = out / f"trainer-{checkpoint_every}"
    config = {
        "name": "bench", "method": "pretrain", "architecture": arch, "datasetUri": dataset,
        "checkpointUri": (run / "checkpoints").as_uri(), "outputUri": (run / "model").as_uri(),
        "training": {"steps": steps, "globalBatchTokens": batch * (length + 1), "microBatch": batch,
                     "optimizer": {"lr": lr}, "schedule": {"warmupSteps": 10},
                     "checkpoint": {"everySteps": checkpoint_every, "keep": 1},
                     "validation": {"everySteps": 10**9}},
    }  # fmt: skip
    run.mkdir(parents=True, exist_ok=True)
    (run / "config.json").write_text(json.dumps(config))
    command = [sys.executable, "-m", "lmforge.jobs.train", "--config", str(run / "config.json")]
    done = subprocess.run(command, check=True, stdout=subprocess.PIPE, text=True)
    return parse(done.stdout)


def matmul_flops(seconds: float = 3.0) -> float:
    """Sustained fp32 (CPU) or bf16 (GPU) matmul FLOP/s: the ceiling a training step can reach."""
    n = 4096 if CUDA else 1024
    dtype = torch.bfloat16 if CUDA else torch.float32
    device = "cuda" if CUDA else "cpu"
    a, b = (
        torch.randn(n, n, dtype=dtype, device=device),
        torch.randn(n, n, dtype=dtype, device=device),
    )
    count, started = 0, time.perf_counter()
    while time.perf_counter() - started < seconds:
        a @ b
        count += 1
        if CUDA:
            torch.cuda.synchronize()
    return 2 * n**3 * count / (time.perf_counter() - started)


def raw_write_seconds(folder: Path, size: int) -> float:
    data = os.urandom(min(size, 64 << 20)) * max(1, size // (64 << 20))
    path = folder / "raw.bin"
    started = time.perf_counter()
    with open(path, "wb") as out:
        out.write(data[:size])
        out.flush()
        os.fsync(out.fileno())
    seconds = time.perf_counter() - started
    path.unlink()
    return seconds


def steady(times: list[float]) -> float:
    """Median step time after the first 10% (warm-up, allocator growth)."""
    return statistics.median(times[len(times) // 10 :])


def with_checkpoints(events: list[dict], steps: int) -> float:
    """Seconds per step after warm-up with the saves made during training amortized over them
    (the save after the last step is the end of the run, not a cost per step)."""
    first = steps // 10
    times = [e["stepSeconds"] for e in events if e["event"] == "step" and e["step"] > first]
    saves = [
        e["seconds"] for e in events if e["event"] == "checkpoint" and first < e["step"] < steps
    ]
    return (statistics.median(times) * len(times) + sum(saves)) / len(times)


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--steps", type=int, default=200)
    parser.add_argument("--preset", default="350m" if CUDA else "tiny")
    parser.add_argument("--batch", type=int, default=8)
    parser.add_argument("--out", type=Path, default=None)
    args = parser.parse_args()
    torch.set_num_threads(os.cpu_count() or 1)
    out = args.out or Path(tempfile.mkdtemp(prefix="lmforge-bench-train-"))
    length = 1024 if CUDA else 256
    dataset = build_dataset(out, length)
    vocab = ShardReader(dataset).manifest["tokenizer"]["vocabSize"]
    arch_spec = {"preset": args.preset, "contextLength": length}
    arch = Architecture.model_validate(arch_spec).resolved(vocab_size=vocab)
    lr = 3e-4
    peak = matmul_flops()
    print(f"matmul: {peak / 1e9:.1f} GFLOP/s", flush=True)
    ref = steady(reference(arch, dataset, args.steps, args.batch, lr))
    print(f"reference loop: {ref:.4f} s/step", flush=True)
    plain_events = trainer(out, arch_spec, dataset, args.steps, args.batch, length, lr, 10**9)
    plain = steady([e["stepSeconds"] for e in plain_events if e["event"] == "step"])
    print(f"trainer, no checkpoints: {plain:.4f} s/step", flush=True)
    ckpt_events = trainer(out, arch_spec, dataset, args.steps, args.batch, length, lr, 100)
    ckpt = with_checkpoints(ckpt_events, args.steps)
    print(f"trainer, checkpoint every 100: {ckpt:.4f} s/step", flush=True)
    saves = [e["seconds"] for e in ckpt_events if e["event"] == "checkpoint"]
    step_dir = out / "trainer-100" / "checkpoints" / f"step-{args.steps}"
    checkpoint_bytes = sum(p.stat().st_size for p in step_dir.iterdir())
    raw = raw_write_seconds(out, checkpoint_bytes)
    tokens_per_step = args.batch * length
    flops_per_token = sizing.training_flops_per_token(arch, length)
    results = {
        "device": torch.cuda.get_device_name() if CUDA else f"cpu x{torch.get_num_threads()}",
        "preset": args.preset, "parameters": sizing.parameter_count(arch), "steps": args.steps,
        "tokensPerStep": tokens_per_step,
        "referenceTokensPerSecond": round(tokens_per_step / ref, 1),
        "trainerTokensPerSecond": round(tokens_per_step / plain, 1),
        "ratioNoCheckpoints": round(ref / plain, 4),
        "trainerWithCheckpointsTokensPerSecond": round(tokens_per_step / ckpt, 1),
        "ratioCheckpointEvery100": round(ref / ckpt, 4),
        "matmulFlops": round(peak),
        "trainerFlops": round(flops_per_token * tokens_per_step / plain),
        "fractionOfMatmulPeak": round(flops_per_token * tokens_per_step / plain / peak, 4),
        "checkpointBytes": checkpoint_bytes,
        "checkpointSaveSeconds": round(statistics.median(saves), 4),
        "rawWriteSeconds": round(raw, 4),
    }  # fmt: skip
    if CUDA:
        results["mfu"] = round(flops_per_token * tokens_per_step / plain / 989e12, 4)
    for key, value in results.items():
        print(f"{key:>40}: {value}")
    print(f"{'targets':>40}: ratioNoCheckpoints >= 0.97, ratioCheckpointEvery100 >= 0.93,"
          " fractionOfMatmulPeak >= 0.50" + (", mfu >= 0.45" if CUDA else ""))  # fmt: skip
    print(json.dumps(results))


if __name__ == "__main__":
    main()
