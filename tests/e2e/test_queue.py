"""A shared cluster's queue (Kueue) with quota for one gang: a second gang waits in it whole
(none of its pods scheduled), a higher-priority one preempts the running one, which checkpoints,
waits again with Kueue's reason in its status and resumes from that checkpoint without using up
its restart budget, to the same weights as the uninterrupted run of the same spec."""

from __future__ import annotations

import re

from e2e_support import (
    TRAIN_SECONDS,
    condition,
    dataset,
    events,
    model_weights,
    pretrainjob,
    read,
    storage,
    wait_for,
    wait_phase,
)
from kubeapi import Api

from lmforge.operator.api.events import parse


def queued(name: str, store: dict, steps: int, queue: str, priority: str) -> dict:
    """The e2e PretrainJob (2 workers) at 450m a worker, in `queue`: one such gang fits its
    quota of 1 CPU, two do not."""
    job = pretrainjob(name, "corpus", store, steps=steps)
    job["spec"]["resources"]["cpu"] = "450m"
    job["spec"]["runPolicy"]["schedulingPolicy"] = {"queue": queue, "priorityClass": priority}
    return job


def test_a_preempted_gang_checkpoints_waits_in_its_queue_and_resumes(
    cluster, namespace, s3, s3_endpoint, operator, queue
):
    api = Api(cluster.kubeconfig)
    store = storage(s3.bucket, s3.endpoint, s3.secret)
    cluster.apply(dataset("corpus", store), namespace=namespace)
    wait_phase(api, "Dataset", namespace, "corpus", "Succeeded")
    steps = 45
    low = queued("low", store, steps=steps, queue=queue, priority=f"{namespace}-low")
    cluster.apply(low, namespace=namespace)

    def checkpointed() -> dict | None:
        status = (read(api, "PretrainJob", namespace, "low") or {}).get("status") or {}
        return status.get("lastCheckpoint")

    first = wait_for("a checkpoint of the low-priority gang", checkpointed, TRAIN_SECONDS)
    pod = cluster.get("pod", "low-worker-0", "-n", namespace)
    assert pod["metadata"]["labels"]["kueue.x-k8s.io/pod-group-name"] == "low"
    assert pod["metadata"]["annotations"]["kueue.x-k8s.io/workload"] == "low"  # admitted

    # The same spec at the same priority: no room for its gang, so none of its pods runs.
    same = queued("same", store, steps=steps, queue=queue, priority=f"{namespace}-low")
    cluster.apply(same, namespace=namespace)
    job = wait_phase(api, "PretrainJob", namespace, "same", "Queued")
    assert condition(job, "Queued")["status"] == "True", job["status"]
    for index in (0, 1):
        pod = cluster.get("pod", f"same-worker-{index}", "-n", namespace)
        assert {"name": "kueue.x-k8s.io/admission"} in pod["spec"]["schedulingGates"]
        assert "nodeName" not in pod["spec"], pod["spec"]  # the gang waits whole

    high = queued("high", store, steps=6, queue=queue, priority=f"{namespace}-high")
    cluster.apply(high, namespace=namespace)

    def waiting() -> dict | None:
        job = read(api, "PretrainJob", namespace, "low")
        return job if job["status"].get("phase") == "Queued" else None

    job = wait_for("the preempted gang back in its queue", waiting, TRAIN_SECONDS)
    status, why = job["status"], condition(job, "Queued")
    assert status["restarts"] == 1 and status.get("failures", 0) == 0, status
    assert (why["status"], why["reason"]) == ("True", "Pending"), why
    assert re.search(r"insufficient (unused )?quota for cpu", why["message"]), why
    row = cluster("get", "pretrainjob", "low", "-n", namespace, "--no-headers").stdout.split()
    assert row[1] == "Queued", row
    gated = cluster.get("pod", "low-worker-0-1", "-n", namespace)
    assert {"name": "kueue.x-k8s.io/admission"} in gated["spec"]["schedulingGates"]

    wait_phase(api, "PretrainJob", namespace, "high", "Succeeded")
    final = wait_phase(api, "PretrainJob", namespace, "low", "Succeeded")["status"]
    assert final["restarts"] == 1 and final.get("failures", 0) == 0 and final["step"] == steps
    uninterrupted = wait_phase(api, "PretrainJob", namespace, "same", "Succeeded")["status"]
    assert uninterrupted["restarts"] == 0 and uninterrupted["step"] == steps
    # The new gang resumed from the checkpoint its SIGTERM wrote (or a later one), not step 0.
    resumed = parse(cluster("logs", "-n", namespace, "low-worker-0-1").stdout)[0]
    assert resumed["event"] == "resume" and resumed["step"] >= first["step"], resumed
    told = [(e["reason"], e["message"]) for e in events(api, namespace, "PretrainJob", "low")]
    restarting = [m for r, m in told if r == "Restarting"]
    assert len(restarting) == 1 and "preempted" in restarting[0], told
    assert restarting[0].endswith("(not counted: runPolicy.failurePolicy.preempted is Ignore)")
    assert ("Queued" in [r for r, _ in told]) and told[-1][0] == "Succeeded", told
    # Kueue finished the group's Workload once its pods succeeded: the quota is free.
    workload = cluster.get("workload", "low", "-n", namespace)
    assert {c["type"]: c["status"] for c in workload["status"]["conditions"]}["Finished"] == "True"
    # Preempted, requeued and resumed, it ends where the uninterrupted run of its spec ends.
    models = [f"{s3.bucket}/lmforge/pretrainjob/{name}/model" for name in ("low", "same")]
    resumed_weights, uninterrupted_weights = (model_weights(s3_endpoint, m) for m in models)
    assert resumed_weights.keys() == uninterrupted_weights.keys()
    differ = [k for k, v in resumed_weights.items() if not v.equal(uninterrupted_weights[k])]
    assert differ == [], differ
