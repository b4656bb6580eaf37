"""Exact automatic resume: killed twice at random steps, the run ends bit for bit where an
uninterrupted one does, for DDP and FSDP2, with 2 processes on CPU (gloo)."""

import random
import shutil
import signal

import pytest
from safetensors.torch import load_file

from .conftest import Watch, config, events, reshard, train


def losses(tmp) -> dict[int, float]:
    return {e["step"]: e["loss"] for e in events(tmp, "step")}  # a resumed step overwrites


def weights(tmp):
    return load_file(tmp / "model" / "model.safetensors")


@pytest.mark.parametrize("strategy", ["ddp", "fsdp"])
def test_killed_twice_and_resumed_equals_uninterrupted(
    tmp_path, dataset, bucket, s3_endpoint, monkeypatch, strategy
):
    """The data on S3 in 12 shards of 10 sequences, read in blocks of 2 through each rank's
    cache: 10 steps of 16 sequences cross blocks and an epoch."""
    reshard(dataset, f"{bucket}/data", 12, 10, s3_endpoint)
    monkeypatch.setenv("LMFORGE_SHARD_CACHE", str(tmp_path / "cache"))

    def streamed(folder):
        return config(folder, f"{bucket}/data", strategy, data={"shuffleShards": 2}) | {
            "endpointUrl": s3_endpoint}  # fmt: skip

    straight, broken = tmp_path / "straight", tmp_path / "broken"
    with Watch(tmp_path / "cache") as watch:
        assert train(straight, streamed(straight)).returncode == 0
        rng = random.Random()
        first, second = rng.randint(3, 5), rng.randint(6, 8)
        cfg = streamed(broken)
        assert train(broken, cfg, stop_at=first).returncode != 0
        assert train(broken, cfg, stop_at=second).returncode != 0
        result = train(broken, cfg)
    assert result.returncode == 0, result.stderr[-3000:]
    # Each rank held at most two blocks of the 12 shards; a killed run's folder went at the
    # next start, a finished run's at its exit. 4 runs x 2 ranks x (train, validation):
    assert 3 <= watch.most <= 4 and len(watch.folders) == 16
    assert not list((tmp_path / "cache" / "lmforge-shards").iterdir())
    resumes = [e["step"] for e in events(broken, "resume")]
    assert len(resumes) == 2 and 0 < resumes[0] <= first, (first, second, resumes)
    assert losses(broken) == losses(straight), (first, second)
    expected, got = weights(straight), weights(broken)
    assert expected.keys() == got.keys()
    assert all(expected[k].equal(got[k]) for k in expected), (first, second)


def test_sigterm_commits_a_checkpoint_at_the_current_step(tmp_path, dataset):
    cfg = config(tmp_path, dataset, steps=200, checkpoint={"everySteps": 1000})
    result = train(tmp_path, cfg, stop_at=3, sig=signal.SIGTERM)
    assert result.returncode != 0
    (preempted,) = events(tmp_path, "preempted")
    step = preempted["step"]
    assert 3 <= step < 200
    assert (tmp_path / "checkpoints" / f"step-{step}" / "COMMITTED").exists()
    assert (
        train(tmp_path, {**cfg, "training": {**cfg["training"], "steps": step + 2}}).returncode == 0
    )
    assert [e["step"] for e in events(tmp_path, "resume")] == [step]


def test_uncommitted_and_corrupt_checkpoints_are_skipped(tmp_path, dataset):
    cfg = config(tmp_path, dataset, steps=6)
    assert train(tmp_path, cfg).returncode == 0
    root = tmp_path / "checkpoints"
    assert sorted(p.name for p in root.iterdir()) == ["step-4", "step-6"]  # keep: 2
    shutil.copytree(root / "step-6", root / "step-9")  # a save that died before its marker
    (root / "step-9" / "COMMITTED").unlink()
    shard = root / "step-6" / "__0_0.distcp"
    data = bytearray(shard.read_bytes())
    data[len(data) // 2] ^= 0xFF  # one flipped byte in the newest committed checkpoint
    shard.write_bytes(bytes(data))
    result = train(tmp_path, {**cfg, "training": {**cfg["training"], "steps": 8}})
    assert result.returncode == 0, result.stderr[-3000:]
    assert [e["step"] for e in events(tmp_path, "resume")] == [4]
    assert "does not match its digest" in result.stderr
    assert "falling back to the previous committed checkpoint" in result.stderr
    # Steps 5 and 6 ran again and step-6 was saved anew; the debris (step-9) is gone.
    assert sorted(p.name for p in root.iterdir()) == ["step-6", "step-8"]
    assert (root / "step-6" / "COMMITTED").exists()


def test_a_checkpoint_of_another_architecture_is_refused_before_compute(tmp_path, dataset):
    cfg = config(tmp_path, dataset, steps=2)
    assert train(tmp_path, cfg).returncode == 0
    cfg["architecture"]["layers"] = 3
    cfg["training"]["steps"] = 4
    result = train(tmp_path, cfg)
    assert result.returncode != 0
    assert "was written by another configuration (architecture:" in result.stderr
    assert "set training.checkpoint.uri to a new location" in result.stderr
    assert not events(tmp_path, "resume")


def test_activation_checkpointing_and_async_save_change_no_result(tmp_path, dataset):
    """Recomputing activations in backward and saving in the background are optimisations only:
    losses, weights and resume after a crash are bit for bit those of a plain run."""
    plain, tuned = tmp_path / "plain", tmp_path / "tuned"
    assert train(plain, config(plain, dataset, "fsdp")).returncode == 0
    cfg = config(tuned, dataset, "fsdp", activationCheckpointing=True,
                 checkpoint={"everySteps": 2, "keep": 2, "asyncSave": True})  # fmt: skip
    assert train(tuned, cfg, stop_at=5).returncode != 0
    result = train(tuned, cfg)
    assert result.returncode == 0, result.stderr[-3000:]
    (resume,) = events(tuned, "resume")
    assert 2 <= resume["step"] <= 5
    assert losses(tuned) == losses(plain)
    expected, got = weights(plain), weights(tuned)
    assert all(expected[k].equal(got[k]) for k in expected)
    assert (tuned / "checkpoints" / "step-10" / "COMMITTED").exists()  # the last async save


def test_compiled_model_trains_like_the_eager_one(tmp_path, dataset):
    """torch.compile (inductor, C++ on CPU) fuses kernels, so results agree to rounding."""
    eager, compiled = tmp_path / "eager", tmp_path / "compiled"
    one = {"processesPerNode": 1}
    assert train(eager, {**config(eager, dataset, steps=4), **one}, nproc=1).returncode == 0
    cfg = {**config(compiled, dataset, steps=4, compile=True), **one}
    result = train(compiled, cfg, nproc=1)
    assert result.returncode == 0, result.stderr[-3000:]
    a, b = losses(eager), losses(compiled)
    assert a.keys() == b.keys() == {1, 2, 3, 4}
    assert all(abs(a[s] - b[s]) < 1e-3 * a[s] for s in a), (a, b)


@pytest.mark.parametrize("strategy", ["ddp", "fsdp"])
def test_an_elastic_run_resumes_on_fewer_and_more_ranks(tmp_path, dataset, strategy):
    """resources.minNodes: 2 ranks, preempted; 1 rank (DCP reshards, rank 0's data position and
    schedule), preempted; 2 ranks to the end. Every step trains on the sequences the
    uninterrupted 2-rank run's step did, so the losses agree to float rounding (the sums run in
    another order), and the step never goes back."""
    straight, elastic = tmp_path / "straight", tmp_path / "elastic"
    cfg = {**config(straight, dataset, strategy, steps=30, checkpoint={"everySteps": 100}),
           "nodes": 2, "minNodes": 1, "processesPerNode": 1}  # fmt: skip
    assert train(straight, cfg).returncode == 0
    cfg |= {"checkpointUri": (elastic / "checkpoints").as_uri(),
            "outputUri": (elastic / "model").as_uri()}  # fmt: skip
    assert train(elastic, cfg, stop_at=3, sig=signal.SIGTERM).returncode != 0
    first = events(elastic, "preempted")[-1]["step"]
    assert train(elastic, cfg, stop_at=first + 3, sig=signal.SIGTERM, nproc=1).returncode != 0
    second = events(elastic, "preempted")[-1]["step"]
    result = train(elastic, cfg)
    assert result.returncode == 0, result.stderr[-3000:]
    resumes = [(e["step"], e["worldSize"]) for e in events(elastic, "resume")]
    assert resumes == [(first, 1), (second, 2)] and 0 < first < second < 30
    assert sorted(losses(elastic)) == list(range(1, 31))
    assert losses(elastic) == pytest.approx(losses(straight), rel=1e-4)
    expected, got = weights(straight), weights(elastic)
    assert all(expected[k].allclose(got[k], atol=1e-4) for k in expected)
