"""A launcher that runs the trainer under a real torchrun, and what it printed."""

import json
import os
import random
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

import numpy as np
import psutil

from lmforge.operator.api.events import parse

from ..conftest import BASE_CONTEXT, SEQUENCE

CONTEXT = BASE_CONTEXT


def config(tmp: Path, dataset: str, strategy: str = "ddp", **training) -> dict:
    return {
        "name": "test",
        "method": "pretrain",
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
    }  # fmt: skip


def reshard(dataset: str, uri: str, count: int, rows: int, endpoint_url: str | None = None):
    """A copy of `dataset` at `uri` whose train split is `count` shards of `rows` sequences,
    its own sequences from the first (repeated when there are too few)."""
    from lmforge.jobs.data import shards
    from lmforge.jobs.data.reader import ShardReader
    from lmforge.jobs.storage import filesystem

    source = ShardReader(dataset)
    tokens = np.stack([source.sequence(i % source.total) for i in range(count * rows)])
    fs, root = filesystem(uri, endpoint_url)
    _, local = filesystem(dataset)
    manifest = json.loads(Path(local, "manifest.json").read_text())
    for name in (manifest["tokenizer"]["path"],
                 *(e["path"] for e in manifest["splits"]["validation"]["shards"])):  # fmt: skip
        fs.put_file(f"{local}/{name}", f"{root}/{name}")
    row_bytes = tokens.shape[1] * tokens.itemsize
    entries = shards.write_stream(
        fs, root, "resharded/train", [tokens.reshape(-1)], tokens.shape[1], rows * row_bytes
    )
    assert len(entries) == count
    manifest["splits"]["train"]["shards"] = entries
    shards.write_json(fs, root, shards.MANIFEST, manifest)


class Watch:
    """The most shard files any one cache folder under `root` held, sampled while it runs."""

    def __init__(self, root: Path):
        self.root, self.most, self.folders = root, 0, set()

    def __enter__(self):
        self.done = threading.Event()
        self.thread = threading.Thread(target=self._sample, daemon=True)
        self.thread.start()
        return self

    def _sample(self):
        while not self.done.wait(0.005):
            for folder in self.root.glob("lmforge-shards/*"):
                self.folders.add(folder.name)
                self.most = max(self.most, len(list(folder.glob("*.arrow"))))

    def __exit__(self, *_):
        self.done.set()
        self.thread.join()


def events(tmp: Path, kind: str | None = None) -> list[dict]:
    """The events the trainer printed (rank 0, on stdout), every run in `tmp` in order."""
    path = tmp / "stdout.log"
    found = parse(path.read_text()) if path.exists() else []
    return [e for e in found if kind is None or e["event"] == kind]


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
    with open(tmp / "stderr.log", "a") as log, open(tmp / "stdout.log", "a") as out:
        process = subprocess.Popen(command, stdout=out, stderr=log, env=env)
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


def killed_and_resumed_equals_straight(tmp: Path, config, nproc: int = 2) -> None:
    """`config(folder)` run straight in one folder, and in another SIGKILLed at a random step
    (checkpoints every 5) then resumed: the same loss at every step, the same exported tensors."""
    from safetensors.torch import load_file

    straight, broken = tmp / "straight", tmp / "broken"
    assert train(straight, config(straight), nproc=nproc).returncode == 0
    stop = random.Random().randint(6, 9)
    assert train(broken, config(broken), stop_at=stop, nproc=nproc).returncode != 0
    assert train(broken, config(broken), nproc=nproc).returncode == 0
    (resumed,) = [e["step"] for e in events(broken, "resume")]
    assert resumed in range(5, stop + 1)
    final = {e["step"]: e["loss"] for e in events(broken, "step")}
    assert final == {e["step"]: e["loss"] for e in events(straight, "step")}, stop
    a, b = (load_file(d / "model" / "model.safetensors") for d in (straight, broken))
    assert a.keys() == b.keys() and all(a[k].equal(b[k]) for k in a)
