"""Elastic training (resources.minNodes) on the real node: a 2-worker gang loses worker 1 (its
pod deleted while the node is cordoned, so that its replacement cannot run), goes on with one
worker from the checkpoint the SIGTERM wrote, and grows back to two when the node takes pods
again; it finishes without a gang restart, and its step never goes back to 0."""

from __future__ import annotations

from e2e_support import (
    TRAIN_SECONDS,
    condition,
    dataset,
    pretrainjob,
    read,
    storage,
    unavailable,
    wait_for,
    wait_phase,
)
from kubeapi import Api

from lmforge.operator.api.events import parse

STEPS = 240  # long enough at one worker for the replacement to start and join


def test_an_elastic_gang_goes_from_two_workers_to_one_and_back(cluster, namespace, s3, operator):
    if cluster.node is None:
        unavailable("cordoning needs the cluster's own node")
    api = Api(cluster.kubeconfig)
    store = storage(s3.bucket, s3.endpoint, s3.secret)
    job = pretrainjob("elastic", "corpus", store, steps=STEPS)
    job["spec"]["resources"]["minNodes"] = 1
    job["spec"]["training"]["validation"]["everySteps"] = 60
    cluster.apply(dataset("corpus", store), job, namespace=namespace)

    def log() -> list[dict]:
        done = cluster("logs", "-n", namespace, "elastic-worker-0", check=False)
        return parse(done.stdout) if done.returncode == 0 else []

    def stepped() -> dict | None:
        status = (read(api, "PretrainJob", namespace, "elastic") or {}).get("status") or {}
        return status if status.get("step", 0) >= 6 else None

    wait_for("the elastic gang at step 6", stepped, TRAIN_SECONDS)
    (node,) = cluster("get", "nodes", "-o", "name").stdout.split()
    cluster("cordon", node)
    try:
        cluster("delete", "pod", "elastic-worker-1", "-n", namespace, "--wait=false")

        def world(size: int):
            """Once worker 0's ranks resumed with `size` ranks and took a step after it."""

            def check() -> list[dict] | None:
                found = log()
                resumed = [i for i, e in enumerate(found)
                           if e["event"] == "resume" and e["worldSize"] == size]  # fmt: skip
                later = resumed and [e for e in found[resumed[-1] :] if e["event"] == "step"]
                return found if later else None

            return check

        wait_for("training on with one worker", world(1), TRAIN_SECONDS)
        replacement = cluster.get("pod", "elastic-worker-1", "-n", namespace)
        assert replacement["status"]["phase"] == "Pending", replacement["status"]  # cordoned
        status = read(api, "PretrainJob", namespace, "elastic")
        assert status["status"]["phase"] == "Running", status["status"]
        running = condition(status, "Running")["message"]
        assert running == "1/2 workers running (elastic: lost workers are replaced)", running
    finally:
        cluster("uncordon", node)
    found = wait_for("two workers again", world(2), TRAIN_SECONDS)

    final = wait_phase(api, "PretrainJob", namespace, "elastic", "Succeeded")["status"]
    assert final["step"] == STEPS and final.get("restarts", 0) == 0, final
    assert final.get("failures", 0) == 0, final
    found = log()
    worlds = [(e["event"], e["worldSize"]) for e in found if e["event"] in ("start", "resume")]
    assert worlds[0] == ("start", 2) and ("resume", 1) in worlds and worlds[-1] == ("resume", 2)
    resumed = [e["step"] for e in found if e["event"] == "resume"]
    assert all(step > 0 for step in resumed) and resumed == sorted(resumed), resumed
    steps = [e["step"] for e in found if e["event"] == "step"]
    assert steps[-1] == STEPS and min(steps[steps.index(resumed[0]) :]) >= resumed[0]
