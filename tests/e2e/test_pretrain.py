"""From `kubectl apply` to a trained model: a Dataset and a PretrainJob run by the operator on the
test cluster (pods in containers), with object storage in moto; then the faults: a killed worker
container, a killed operator,
a missing Dataset, and deletion."""

from __future__ import annotations

import itertools
import json
import re
import signal
import subprocess
import sys
import threading
import time
import warnings

import pytest
import s3fs
import safetensors.torch
from e2e_support import (
    FINALIZER,
    TRAIN_SECONDS,
    Recorder,
    bucket_files,
    children,
    condition,
    controller,
    dataset,
    events,
    path,
    pretrainjob,
    read,
    storage,
    unavailable,
    wait_for,
    wait_phase,
)
from kubeapi import Api

EVENT = re.compile(r"^\{\"event\".*$", re.MULTILINE)


def _store(s3) -> dict[str, str]:
    return storage(s3.bucket, s3.endpoint, s3.secret)


def _progress(log: str) -> list[dict]:
    return [json.loads(line) for line in EVENT.findall(log)]


@pytest.mark.parametrize("operator", ["process", "helm"], indirect=True)
def test_dataset_and_pretrainjob_succeed(cluster, namespace, s3, s3_endpoint, operator):
    """Case 1, with the operator as a process here, and as installed by the Helm chart."""
    api = Api(cluster.kubeconfig)
    store = _store(s3)
    cluster.apply(
        dataset("corpus", store), pretrainjob("tiny", "corpus", store), namespace=namespace
    )

    built = wait_phase(api, "Dataset", namespace, "corpus", "Succeeded")["status"]
    assert built["documentsOut"] > 0 and built["tokens"] > 0 and built["shards"] >= 1
    assert built["manifestUri"] == f"{s3.bucket}/lmforge/dataset/corpus/manifest.json"
    job = wait_phase(api, "PretrainJob", namespace, "tiny", "Succeeded")
    status = job["status"]

    # The figures come from worker-0's log, read by the operator through pods/log.
    assert status["restarts"] == 0
    assert (status["step"], status["totalSteps"], status["progress"]) == (12, 12, "12/12")
    assert 0 < status["loss"] < 10 and status["tokens"] == 12 * 16 * 33
    checkpoints = f"{s3.bucket}/lmforge/pretrainjob/tiny/checkpoints"
    assert status["lastCheckpoint"]["step"] == 12
    assert status["lastCheckpoint"]["uri"] == f"{checkpoints}/step-12"
    assert condition(job, "Succeeded")["status"] == "True"
    lineage = status["lineage"]
    assert lineage["inputs"][0]["kind"] == "Dataset" and lineage["inputs"][0]["digest"]
    assert lineage["outputs"] == [{"kind": "Model", "uri": f"{s3.bucket}/lmforge/pretrainjob/tiny/model"}]  # fmt: skip

    # kubectl get shows them.
    table = cluster("get", "pretrainjobs", "-n", namespace).stdout.splitlines()
    assert table[0].split() == ["NAME", "PHASE", "STEP", "%", "ETA", "LOSS", "RESTARTS", "AGE"]
    name, phase, step, percent, eta, loss, restarts, _ = table[1].split()
    assert (name, phase, step, percent, eta, restarts) == (
        "tiny",
        "Succeeded",
        "12/12",
        "100",
        "0s",
        "0",
    )
    assert float(loss) == status["loss"]
    assert "Succeeded" in cluster("get", "lmforge", "-n", namespace).stdout

    # Committed checkpoints (the last 2 kept) and the exported model are in the bucket.
    files = bucket_files(s3_endpoint, f"{s3.bucket}/lmforge/pretrainjob/tiny")
    committed = sorted(f.split("/")[1] for f in files if f.endswith("/COMMITTED"))
    assert committed == ["step-12", "step-9"], files
    assert {"model/config.json", "model/model.safetensors"} <= set(files)

    # The events tell the story, in order.
    told = [(e["reason"], e["message"]) for e in events(api, namespace, "PretrainJob", "tiny")]
    reasons = [reason for reason, _ in told]
    assert reasons[0] in ("Waiting", "Created"), told  # Waiting while the Dataset builds
    phases = [r for r in reasons if r not in ("Waiting", "Checkpoint")]
    assert phases == ["Created", "Running", "Succeeded"], told
    # A Checkpoint event for each one the operator saw (1 s apart: maybe not every one).
    saved = [m for r, m in told if r == "Checkpoint"]
    assert saved[-1] == f"step 12 saved to {checkpoints}/step-12", told
    assert reasons.index("Checkpoint") > reasons.index("Running"), told
    data = [e["reason"] for e in events(api, namespace, "Dataset", "corpus")]
    assert data == ["Created", "Running", "Succeeded"]

    # kubectl logs reaches the test node's kubelet API, as the operator's pods/log does.
    progress = _progress(cluster("logs", "-n", namespace, "tiny-worker-0").stdout)
    assert progress[0]["event"] == "start" and progress[-1]["event"] == "done"
    assert [e["step"] for e in progress if e["event"] == "step"] == list(range(1, 13))
    assert cluster("logs", "-n", namespace, "tiny-worker-1").stdout.count('{"event"') == 0

    if hasattr(operator, "upgrade"):  # installed by helm: an upgrade rolls it; the job stays done
        operator.upgrade(reconcileInterval="2")
        deployment = cluster.get("deployment", operator.release, "-n", namespace)
        (container,) = deployment["spec"]["template"]["spec"]["containers"]
        env = {e["name"]: e.get("value") for e in container["env"]}
        assert env["LMFORGE_RECONCILE_INTERVAL"] == "2"
        assert deployment["metadata"]["generation"] == 2
        assert read(api, "PretrainJob", namespace, "tiny")["status"]["phase"] == "Succeeded"
        _least_privilege(cluster, namespace, operator.release, s3.secret)


def _least_privilege(cluster, namespace: str, release: str, secret: str) -> None:
    """What the chart's ServiceAccount may do, as the API server answers `kubectl auth can-i`;
    the job pods' lack of a token; the operator's metrics through its Service."""
    account = f"system:serviceaccount:{namespace}:{release}"

    def can(verb: str, what: str, where: str = namespace) -> bool:
        done = cluster("auth", "can-i", verb, what, "-n", where, "--as", account, check=False)
        return done.stdout.strip() == "yes"

    assert can("create", "pods") and can("patch", "pretrainjobs.lmforge.dev/status")
    assert not can("get", f"secret/{secret}")  # the storage Secret the specs name: pods only
    assert not can("list", "secrets") and not can("get", "secret/anything")
    assert not can("create", "pods", "default")  # rbac.scope namespace: only its own
    for name in ("tiny-worker-0", "tiny-worker-1"):
        pod = cluster.get("pod", name, "-n", namespace)["spec"]
        assert pod["automountServiceAccountToken"] is False
        mounts = [m["mountPath"] for c in pod["containers"] for m in c.get("volumeMounts", [])]
        assert not [m for m in mounts if "serviceaccount" in m], mounts
    proxy = f"/api/v1/namespaces/{namespace}/services/{release}-metrics:metrics/proxy/metrics"
    scraped = cluster("get", "--raw", proxy).stdout
    assert "lmforge_operator_reconcile_duration_seconds_count" in scraped, scraped[:2000]


def test_killed_worker_container_restarts_the_gang_from_its_checkpoint(
    cluster, namespace, s3, s3_endpoint, operator, tmp_path
):  # fmt: skip
    if cluster.node is None:
        unavailable("killing a container needs the cluster's own node")
    api = Api(cluster.kubeconfig)
    store = _store(s3)
    steps = 18  # room to kill a worker after the first checkpoint, before the end
    job = pretrainjob("gang", "corpus", store, steps=steps)
    cluster.apply(dataset("corpus", store), job, namespace=namespace)
    selector = "lmforge.dev/name=gang,lmforge.dev/role=worker"
    with (
        Recorder(api, path("PretrainJob", namespace), fieldSelector="metadata.name=gang") as jobs,
        Recorder(api, path("Pod", namespace), labelSelector=selector) as pods,
    ):
        # Mid-training: once worker-0 printed its first checkpoint (read with kubectl logs).
        def checkpointed() -> dict | None:
            done = cluster("logs", "-n", namespace, "gang-worker-0", check=False).stdout
            return next((e for e in _progress(done) if e["event"] == "checkpoint"), None)

        first = wait_for("a checkpoint in gang-worker-0's log", checkpointed, TRAIN_SECONDS)

        def shown() -> list[str] | None:  # kubectl get: NAME PHASE STEP % ETA LOSS RESTARTS AGE
            row = cluster("get", "pretrainjob", "gang", "-n", namespace, "--no-headers").stdout
            if len(row.split()) != 8:  # no step, estimate and loss yet
                return None
            _, phase, step, percent, eta, loss, restarts, _ = row.split()
            if int(step.split("/")[0]) < first["step"]:
                return None
            return [phase, step, percent, eta, loss, restarts]

        phase, step, percent, eta, loss, restarts = wait_for("the step in kubectl get", shown, 30)
        assert (phase, step.split("/")[1], restarts) == ("Running", str(steps), "0")
        assert float(loss) > 0 and int(percent) == int(step.split("/")[0]) * 100 // steps
        assert re.fullmatch(r"\d+s|\d+m\d\ds", eta), eta
        before = {p["metadata"]["name"]: p["metadata"]["uid"] for p in children(api, namespace, "gang")["Pod"]}  # fmt: skip
        # SIGKILL to worker-1's container, through containerd, as the OOM killer would.
        worker = cluster.get("pod", "gang-worker-1", "-n", namespace)
        (container,) = worker["status"]["containerStatuses"]
        cluster.node.kill(container["containerID"])

        final = wait_phase(api, "PretrainJob", namespace, "gang", "Succeeded")
    status = final["status"]
    assert status["restarts"] == 1, status
    assert (status["step"], status["progress"]) == (steps, f"{steps}/{steps}")

    # The whole gang was recreated: two new pods of attempt 1, none of attempt 0 left.
    now = children(api, namespace, "gang")["Pod"]
    assert sorted(p["metadata"]["name"] for p in now) == ["gang-worker-0-1", "gang-worker-1-1"]
    assert all(p["metadata"]["labels"]["lmforge.dev/attempt"] == "1" for p in now)
    assert {p["spec"]["hostname"] for p in now} == {"gang-worker-0", "gang-worker-1"}
    assert not {p["metadata"]["uid"] for p in now} & set(before.values())
    uids = pods.uids()
    assert {name: len(seen) for name, seen in uids.items()} == dict.fromkeys(
        ["gang-worker-0", "gang-worker-1", "gang-worker-0-1", "gang-worker-1-1"], 1
    )

    # The new worker-0 resumed from a committed checkpoint, not from step 0.
    progress = _progress(cluster("logs", "-n", namespace, "gang-worker-0-1").stdout)
    assert progress[0]["event"] == "resume", progress[:3]
    resumed = progress[0]["step"]
    assert resumed >= first["step"] > 0
    assert progress[0]["uri"].endswith(f"/checkpoints/step-{resumed}")
    assert [e["step"] for e in progress if e["event"] == "step"] == list(range(resumed + 1, steps + 1))  # fmt: skip

    # status.step never went back to 0: every version the operator wrote, in order. It went
    # down at most once, at the restart, and no lower than the committed step the new gang
    # resumed from (the operator may read the resume and the next steps in one pass).
    written = [o["status"].get("step") for o in jobs.objects() if o.get("status")]
    written = [s for s in written if s is not None]
    since = next(i for i, step in enumerate(written) if step >= first["step"])
    assert written[-1] == steps and 0 not in written[since:], written
    drops = [b for a, b in itertools.pairwise(written) if b < a]
    assert len(drops) <= 1 and all(resumed <= d for d in drops), written
    reasons = [e["reason"] for e in events(api, namespace, "PretrainJob", "gang")]
    assert reasons.count("Restarting") == 1 and reasons[-1] == "Succeeded", reasons
    restarting = next(
        e["message"] for e in events(api, namespace, "PretrainJob", "gang")
        if e["reason"] == "Restarting"
    )  # fmt: skip
    assert "gang-worker-1" in restarting and "(failure 1 of 2 allowed)" in restarting

    # The result equals an uninterrupted run's: the gang's own config run here in one go, two
    # processes on one host instead of two pods of one (the same ranks, the same arithmetic).
    (config_map,) = children(api, namespace, "gang")["ConfigMap"]
    config = json.loads(config_map["data"]["config.json"])
    model_uri = config["outputUri"]
    config |= {
        "endpointUrl": s3_endpoint, "nodes": 1, "processesPerNode": 2,
        "checkpointUri": (tmp_path / "checkpoints").as_uri(),
        "outputUri": (tmp_path / "model").as_uri(),
    }  # fmt: skip
    (tmp_path / "config.json").write_text(json.dumps(config))
    command = [sys.executable, "-m", "torch.distributed.run", "--standalone",
               "--nproc-per-node=2", "-m", "lmforge.jobs.train", "--config",
               str(tmp_path / "config.json")]  # fmt: skip
    straight = subprocess.run(command, capture_output=True, text=True, timeout=TRAIN_SECONDS)
    assert straight.returncode == 0, straight.stderr[-3000:]
    fs = s3fs.S3FileSystem(endpoint_url=s3_endpoint)
    restarted = safetensors.torch.load(fs.cat_file(f"{model_uri}/model.safetensors"))
    expected = safetensors.torch.load_file(tmp_path / "model" / "model.safetensors")
    assert restarted.keys() == expected.keys()
    assert all(restarted[k].equal(expected[k]) for k in expected)


def test_operator_killed_mid_reconcile_leaves_no_duplicates(cluster, namespace, s3, operator):
    """SIGKILL the operator inside three passes: the Dataset's first (its ConfigMap made, its
    pod not yet), the PretrainJob's first (the same for the gang), and the gang restart after a
    worker was deleted (status.restarts written, the old gang not yet deleted). Each time a new
    operator finishes the pass: no pod is created twice, none is left without its owner."""
    api = Api(cluster.kubeconfig)
    store = _store(s3)
    steps = 18
    killed: dict[str, dict] = {}  # the moment -> the job's children when the kill landed
    lock = threading.Lock()

    def kill(moment: str, owner: str) -> None:
        with lock:
            if moment in killed:
                return
            operator.kill(signal.SIGKILL)
            state = children(api, namespace, owner)
            killed[moment] = {
                kind: sorted(f"{o['metadata']['name']}@{o['metadata']['labels'].get('lmforge.dev/attempt')}"
                             f"{'(deleting)' if o['metadata'].get('deletionTimestamp') else ''}"
                             for o in objs)
                for kind, objs in state.items()
            }  # fmt: skip

    def on_configmap(kind: str, obj: dict) -> None:
        name = obj["metadata"]["name"]  # the first object a pass creates is the config
        if kind == "ADDED" and name in ("corpus-data-config", "tiny-config"):
            kill(name, name.removesuffix("-config").removesuffix("-data"))

    def on_job(kind: str, obj: dict) -> None:
        if (obj.get("status") or {}).get("restarts") == 1:
            kill("restarts=1", "tiny")

    def restart_after(moment: str) -> None:
        wait_for(f"the operator killed at {moment}", lambda: moment in killed, TRAIN_SECONDS)
        time.sleep(2)  # the cluster goes on without it for a moment
        operator.start()

    jobs = path("PretrainJob", namespace)
    with (
        Recorder(api, path("Pod", namespace)) as pods,
        Recorder(api, path("ConfigMap", namespace), on_event=on_configmap),
        Recorder(api, jobs, on_event=on_job, fieldSelector="metadata.name=tiny"),
    ):
        job = pretrainjob("tiny", "corpus", store, steps=steps)
        cluster.apply(dataset("corpus", store), job, namespace=namespace)
        restart_after("corpus-data-config")
        restart_after("tiny-config")

        def checkpointed() -> bool:
            log = cluster("logs", "-n", namespace, "tiny-worker-0", check=False).stdout
            return any(e["event"] == "checkpoint" for e in _progress(log))

        wait_for("a checkpoint in tiny-worker-0's log", checkpointed, TRAIN_SECONDS)
        cluster("delete", "pod", "tiny-worker-1", "-n", namespace, "--wait=false")
        restart_after("restarts=1")
        final = wait_phase(api, "PretrainJob", namespace, "tiny", "Succeeded")

    # Every pod that ever existed: one Dataset pod and two gangs of two, each pod created once.
    created = {name: len(seen) for name, seen in pods.uids().items()}
    gangs = ["tiny-worker-0", "tiny-worker-1", "tiny-worker-0-1", "tiny-worker-1-1"]
    assert created == {"corpus-data-0": 1} | dict.fromkeys(gangs, 1), killed
    assert final["status"]["restarts"] == 1 and final["status"]["step"] == steps
    owners = {
        kind: read(api, kind, namespace, name)["metadata"]["uid"]
        for kind, name in (("Dataset", "corpus"), ("PretrainJob", "tiny"))
    }
    for pod in api.get(path("Pod", namespace))["items"]:
        ref = controller(pod)
        assert ref and ref["uid"] == owners[ref["kind"]], pod["metadata"]
        assert len(pod["metadata"]["ownerReferences"]) == 1, pod["metadata"]
    now = children(api, namespace, "tiny")
    assert sorted(p["metadata"]["labels"]["lmforge.dev/attempt"] for p in now["Pod"]) == ["1", "1"]
    assert (len(now["Service"]), len(now["ConfigMap"])) == (1, 1), now
    # Where the kills landed is a race with the operator (a watch event against its next API
    # call); it is usually won, so the passes were cut before their pods were made. Say so when
    # it was not: the checks above still hold, but they tested less.
    for moment in ("corpus-data-config", "tiny-config"):
        if killed[moment]["Pod"]:
            warnings.warn(f"operator killed after the pass made its pods: {killed}", stacklevel=1)
    print("children when the operator was killed:", json.dumps(killed, indent=1))


def test_waits_for_a_missing_dataset_and_deletion_removes_children(
    cluster, namespace, s3, operator
):  # fmt: skip
    api = Api(cluster.kubeconfig)
    store = _store(s3)
    cluster.apply(pretrainjob("later", "late", store), namespace=namespace)

    job = wait_phase(api, "PretrainJob", namespace, "later", "Waiting", timeout=60)
    waiting = condition(job, "Waiting")
    assert (waiting["status"], waiting["reason"]) == ("True", "DependencyNotReady")
    assert waiting["message"] == "spec.datasetRef: Dataset/late does not exist yet"
    time.sleep(3)  # a few passes later: still waiting, and nothing was created
    assert read(api, "PretrainJob", namespace, "later")["status"]["phase"] == "Waiting"
    assert children(api, namespace, "later") == {"Pod": [], "Service": [], "ConfigMap": []}
    told = [(e["reason"], e["message"]) for e in events(api, namespace, "PretrainJob", "later")]
    assert told == [("Waiting", waiting["message"])]

    cluster.apply(dataset("late", store), namespace=namespace)
    wait_phase(api, "Dataset", namespace, "late", "Succeeded")
    job = wait_phase(api, "PretrainJob", namespace, "later", "Running")
    assert condition(job, "Waiting")["status"] == "False"
    made = children(api, namespace, "later")
    assert sorted(p["metadata"]["name"] for p in made["Pod"]) == ["later-worker-0", "later-worker-1"]  # fmt: skip
    assert [s["metadata"]["name"] for s in made["Service"]] == ["later-workers"]
    assert [c["metadata"]["name"] for c in made["ConfigMap"]] == ["later-config"]
    for obj in (job, read(api, "Dataset", namespace, "late")):
        assert FINALIZER in obj["metadata"]["finalizers"]

    # Deleting a running PretrainJob: the operator lets it go, the garbage collector takes
    # its pods, Service and ConfigMap (ownerReferences).
    cluster("delete", "pretrainjob", "later", "-n", namespace, "--timeout=60s")
    wait_for(
        "later's children deleted",
        lambda: children(api, namespace, "later") == {"Pod": [], "Service": [], "ConfigMap": []},
        90,
    )

    # Without the operator, a deleted resource waits for its finalizer to be removed; the
    # operator removes it when it is back, then its children go.
    operator.stop()
    cluster("delete", "dataset", "late", "-n", namespace, "--wait=false")
    time.sleep(3)
    stuck = read(api, "Dataset", namespace, "late")
    assert stuck["metadata"]["deletionTimestamp"] and stuck["metadata"]["finalizers"] == [FINALIZER]
    assert children(api, namespace, "late")["Pod"]  # kept while the owner exists
    operator.start()
    wait_for("Dataset late deleted", lambda: read(api, "Dataset", namespace, "late") is None, 60)
    wait_for(
        "late's children deleted",
        lambda: children(api, namespace, "late") == {"Pod": [], "Service": [], "ConfigMap": []},
        60,
    )
