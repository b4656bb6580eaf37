"""The trainer learns, keeps data and checkpoints on S3, and reports over OTLP."""

import json
import math
import subprocess
import sys
import time

import fsspec
import numpy as np
import psutil
import pytest

from lmforge.jobs import hf
from lmforge.jobs.data.reader import ShardReader
from lmforge.operator.api import conditions
from lmforge.operator.api.events import Exit
from lmforge.operator.render.observe import PodState, failure

from .conftest import config, events, reshard, train


def unigram_entropy(dataset: str) -> float:
    """Nats per token of the best model that ignores context: the baseline to beat."""
    reader = ShardReader(dataset, "validation")
    tokens = np.concatenate([reader.sequence(i) for i in range(len(reader))])
    counts = np.bincount(tokens).astype(float)
    p = counts[counts > 0] / counts.sum()
    return float(-(p * np.log(p)).sum())


def test_validation_loss_falls_well_below_the_unigram_baseline(tmp_path, dataset):
    cfg = config(tmp_path, dataset, steps=80, validation={"everySteps": 80, "batches": 4},
                 checkpoint={"everySteps": 80})  # fmt: skip
    assert train(tmp_path, cfg).returncode == 0
    (validation,) = events(tmp_path, "validation")
    baseline = unigram_entropy(dataset)
    assert validation["loss"] < baseline - 0.5, (validation["loss"], baseline)
    assert validation["perplexity"] == round(math.exp(validation["loss"]), 4)
    steps = events(tmp_path, "step")
    assert [e["step"] for e in steps] == list(range(1, 81))
    assert steps[-1]["loss"] < steps[0]["loss"] - 1.0


def test_data_and_checkpoints_on_s3(tmp_path, dataset, bucket, s3_endpoint):
    fs = fsspec.filesystem("s3", endpoint_url=s3_endpoint)
    fs.put(fsspec.url_to_fs(dataset)[1], f"{bucket[5:]}/dataset", recursive=True)
    cfg = config(tmp_path, f"{bucket}/dataset", steps=6)
    cfg |= {"checkpointUri": f"{bucket}/checkpoints", "outputUri": f"{bucket}/model",
            "endpointUrl": s3_endpoint}  # fmt: skip
    assert train(tmp_path, cfg, stop_at=5).returncode != 0
    result = train(tmp_path, cfg)
    assert result.returncode == 0, result.stderr[-3000:]
    assert [e["step"] for e in events(tmp_path, "resume")] == [4]
    assert fs.exists(f"{bucket[5:]}/checkpoints/step-6/COMMITTED")
    assert sorted(fs.ls(f"{bucket[5:]}/model", detail=False)) == [
        f"{bucket[5:]}/model/{name}"
        for name in ("config.json", "lineage.json", "model.safetensors", "tokenizer.json",
                     "tokenizer_config.json")
    ]  # fmt: skip
    assert hf.training_data(f"{bucket}/model", s3_endpoint) == [
        {"uri": f"{bucket}/dataset", "kind": "Dataset"}
    ]


def test_a_cache_too_small_for_two_blocks_is_refused_before_step_1(
    tmp_path, dataset, bucket, s3_endpoint
):
    reshard(dataset, f"{bucket}/data", 4, 5000, s3_endpoint)  # 4 shards of 330 kB
    cfg = config(tmp_path, f"{bucket}/data", data={"shuffleShards": 2, "cacheMiB": 1})
    result = train(tmp_path, cfg | {"endpointUrl": s3_endpoint, "processesPerNode": 1}, nproc=1)
    assert f"exitcode: {Exit.CONFIG_ERROR}" in result.stderr, result.stderr[-2000:]
    assert (
        "training.data.cacheMiB (1) cannot hold the shards a rank keeps, two blocks of"
        " training.data.shuffleShards (2) of the largest of each split (1.3 MiB): raise cacheMiB"
        " or lower shuffleShards"
    ) in result.stderr
    assert not events(tmp_path, "step")


@pytest.mark.parametrize("base", [False, True], ids=["drawn", "from-a-base"])
def test_fsdp_builds_only_each_ranks_shards_with_the_weights_of_an_unsharded_build(root, base):
    """benchmarks/init_memory.py on the small preset (221 MiB of weights) over 2 ranks: the
    trainer's FSDP model equals an unsharded build (or the base checkpoint it read) bit for bit,
    and building it grows a rank by its half and the fixed overhead, where building the whole
    model first (and reading the whole base) also adds the rest."""
    done = subprocess.run([sys.executable, str(root / "benchmarks" / "init_memory.py"),
                           "--preset", "small", "--check", *(["--base"] if base else [])],
                          capture_output=True, text=True, timeout=600)  # fmt: skip
    assert done.returncode == 0, done.stderr[-3000:]
    whole, sharded = json.loads(done.stdout.splitlines()[-1])["builds"]
    assert sharded["equal"] is True
    assert sharded["localParamMiB"] == pytest.approx(sharded["modelParamMiB"] / 2, rel=0.01)
    overhead = sharded["grownMiB"] - sharded["localParamMiB"]
    assert overhead < whole["grownMiB"] - whole["localParamMiB"] - whole["modelParamMiB"] / 4


def test_the_gpu_benchmark_runs_its_path_on_the_cpu(root, tmp_path):
    """benchmarks/gpu.py --dry: FSDP2, torch.compile, async checkpoints, export and decoding on
    a tiny shape, so the script a GPU runs cannot rot; every figure it prints is measured."""
    done = subprocess.run([sys.executable, str(root / "benchmarks" / "gpu.py"), "--dry",
                           "--out", str(tmp_path)], capture_output=True, text=True,
                          timeout=900)  # fmt: skip
    assert done.returncode == 0, (done.stdout[-2000:], done.stderr[-3000:])
    (row,) = json.loads(done.stdout.splitlines()[-1])["rows"]
    assert row["tokensPerSecond"] > 0 and row["mfu"] is None  # no peak FLOP/s on a CPU
    assert row["peakMiB"] > 100 and 0 < row["planMiB"] < row["peakMiB"]  # RSS includes torch
    assert 0 < row["saveBlocksSeconds"] < 10
    assert 0 < row["decodeTokensPerSecond"] < row["decodeCeiling"]
    assert (tmp_path / "dry" / "model" / "model.safetensors").exists()


def test_hsdp_over_two_nodes_of_two_trains_as_ddp_does_and_resumes_exactly(tmp_path, dataset):
    """4 ranks as 2 nodes x 2 processes: each node shards the model, the nodes replicate it.
    The same steps as DDP on the same ranks (up to the order of float sums); killed at a random
    step and resumed, bit for bit the uninterrupted run."""
    from .conftest import killed_and_resumed_equals_straight

    def run(folder, strategy):
        cfg = config(folder, dataset, strategy, steps=10, checkpoint={"everySteps": 5})
        cfg |= {"nodes": 2, "processesPerNode": 2}
        return cfg

    ddp = tmp_path / "ddp"
    assert train(ddp, run(ddp, "ddp"), nproc=4).returncode == 0
    killed_and_resumed_equals_straight(tmp_path / "hsdp", lambda f: run(f, "hsdp"), nproc=4)
    assert events(tmp_path / "hsdp" / "straight", "start")[0]["mesh"] == [2, 2]
    expected = [e["loss"] for e in events(ddp, "step")]
    got = {e["step"]: e["loss"] for e in events(tmp_path / "hsdp" / "straight", "step")}
    assert [got[s] for s in range(1, 11)] == pytest.approx(expected, rel=1e-4)


def test_the_specs_nccl_settings_go_over_the_pods(tmp_path, dataset, monkeypatch):
    """The chart's jobs.nccl reach a pod as environment; the spec's win, key by key."""
    monkeypatch.setenv("NCCL_SOCKET_IFNAME", "lo")
    monkeypatch.setenv("NCCL_DEBUG", "INFO")
    parallelism = {"strategy": "ddp", "nccl": {"NCCL_DEBUG": "WARN"}}
    result = train(tmp_path, config(tmp_path, dataset, steps=1, parallelism=parallelism))
    assert result.returncode == 0, result.stderr[-2000:]
    (start,) = events(tmp_path, "start")
    assert start["nccl"] == {"NCCL_DEBUG": "WARN", "NCCL_SOCKET_IFNAME": "lo"}


def test_metrics_reach_an_otlp_endpoint(tmp_path, dataset, otlp):
    endpoint, bodies = otlp
    cfg = config(tmp_path, dataset, steps=3) | {"processesPerNode": 1}
    (tmp_path / "config.json").write_text(json.dumps(cfg))
    env = {"OTEL_EXPORTER_OTLP_ENDPOINT": endpoint,
           "OTEL_METRIC_EXPORT_INTERVAL": "100", "PATH": "/usr/bin:/bin"}  # fmt: skip
    done = subprocess.run([sys.executable, "-m", "lmforge.jobs.train", "--config",
                           str(tmp_path / "config.json")], env=env, capture_output=True, timeout=300)  # fmt: skip
    assert done.returncode == 0, done.stderr[-2000:]
    received = b"".join(bodies)
    for name in (b"lmforge.train.loss", b"lmforge.train.tokens_per_second", b"lmforge-trainer"):
        assert name in received


def test_a_hung_rank_fails_the_run_naming_the_collective_timeout(tmp_path, dataset):
    """Rank 1 stops (SIGSTOP) mid-run: rank 0's next collective gives up after
    collectiveTimeoutSeconds and the run exits as the operator recognises."""
    cfg = {**config(tmp_path, dataset, steps=200), "collectiveTimeoutSeconds": 5}
    (tmp_path / "config.json").write_text(json.dumps(cfg))
    command = [sys.executable, "-m", "torch.distributed.run", "--standalone",
               "--nproc-per-node=2", "-m", "lmforge.jobs.train",
               "--config", str(tmp_path / "config.json")]  # fmt: skip
    with open(tmp_path / "stdout.log", "w") as out:
        agent = subprocess.Popen(command, stdout=out, stderr=subprocess.PIPE, text=True)
        while not events(tmp_path, "step") and agent.poll() is None:
            time.sleep(0.05)
        ranks = psutil.Process(agent.pid).children()
        (hung,) = [p for p in ranks if p.environ().get("RANK") == "1"]
        hung.suspend()
        _, stderr = agent.communicate(timeout=120)
    assert agent.returncode == 1 and events(tmp_path, "step")[-1]["step"] < 200
    found = failure(PodState("w-0", "worker", 0, 0, "Failed", exit_code=1, message=stderr[-4000:]))
    assert found.reason == conditions.COLLECTIVE_TIMEOUT, stderr[-2000:]
    assert "within runPolicy.collectiveTimeoutSeconds (5 s)" in found.message
