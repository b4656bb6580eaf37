"""A small dataset built once, and a launcher that runs the trainer under a real torchrun."""

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import psutil
import pytest

from lmforge.jobs.data import pipeline
from lmforge.operator.api.dataset import DatasetSpec

SEQUENCE = 33


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


def config(tmp: Path, dataset: str, strategy: str = "ddp", **training) -> dict:
    return {
        "name": "test",
        "architecture": {"layers": 2, "dModel": 64, "heads": 4, "kvHeads": 2, "contextLength": 32},
        "training": {"steps": 10, "globalBatchTokens": SEQUENCE * 16, "microBatch": 4,
                     "schedule": {"warmupSteps": 2}, "optimizer": {"lr": 0.003},
                     "parallelism": {"strategy": strategy},
                     "checkpoint": {"everySteps": 2, "keep": 2},
                     "validation": {"everySteps": 5, "batches": 2}, **training},
        "datasetUri": dataset,
        "checkpointUri": (tmp / "checkpoints").as_uri(),
        "outputUri": (tmp / "model").as_uri(),
        "processesPerNode": 2,
        "progressPath": str(tmp / "progress.jsonl"),
    }  # fmt: skip


def events(tmp: Path, kind: str | None = None) -> list[dict]:
    path = tmp / "progress.jsonl"
    lines = path.read_text().splitlines() if path.exists() else []
    return [e for e in map(json.loads, lines) if kind is None or e["event"] == kind]


def train(
    tmp: Path, cfg: dict, *, stop_at: int | None = None, sig=signal.SIGKILL, nproc: int = 2
) -> subprocess.CompletedProcess:
    """torchrun the trainer. With stop_at, once a step at or past it is reported: SIGKILL torchrun
    and every worker (a crash), or SIGTERM torchrun alone, as the kubelet does on preemption."""
    tmp.mkdir(parents=True, exist_ok=True)
    (tmp / "config.json").write_text(json.dumps(cfg))
    command = [sys.executable, "-m", "torch.distributed.run", "--standalone",
               f"--nproc-per-node={nproc}", "-m", "lmforge.jobs.train",
               "--config", str(tmp / "config.json")]  # fmt: skip
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    with open(tmp / "stderr.log", "a") as log:
        process = subprocess.Popen(command, stdout=subprocess.DEVNULL, stderr=log, env=env)
        deadline = time.monotonic() + 300
        while stop_at is not None and process.poll() is None and time.monotonic() < deadline:
            if any(e["step"] >= stop_at for e in events(tmp, "step")):
                agent = psutil.Process(process.pid)
                for target in (
                    [agent, *agent.children(recursive=True)] if sig == signal.SIGKILL else [agent]
                ):
                    target.send_signal(sig)
                break
            time.sleep(0.02)
        process.wait(timeout=300)
    return subprocess.CompletedProcess(
        command, process.returncode, "", (tmp / "stderr.log").read_text()
    )
