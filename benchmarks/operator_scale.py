"""The operator at scale: create N PretrainJobs at once on the real control plane of tests/cluster
and measure, per job, the time from its create call returning to the moment it has all its
children (ConfigMap, headless Service, one pod per node) and a status with a phase; and the
operator's peak memory (VmHWM). Side by side, the floor: one client creating the same children
straight through the API, as fast as it can.

The control plane runs without a node, so the pods stay Pending and nothing trains: this measures
the operator, not the trainer. The jobs' Dataset is marked Succeeded through the status
subresource, with the output URI the jobs read.

    pip install -e '.[dev]' && python benchmarks/operator_scale.py --jobs 100
"""

from __future__ import annotations

import argparse
import json
import os
import signal
import statistics
import subprocess
import sys
import tempfile
import threading
import time
import urllib.request
from pathlib import Path

from kubernetes import client, config, watch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "tests" / "cluster"))

from controlplane import ControlPlane, build, free_port  # noqa: E402

from lmforge.operator.api.common import Artifact  # noqa: E402
from lmforge.operator.api.pretrainjob import PretrainJob  # noqa: E402
from lmforge.operator.render.gang import GANG  # noqa: E402
from lmforge.operator.render.names import Owner  # noqa: E402
from lmforge.operator.render.pods import Defaults, Rendering  # noqa: E402
from lmforge.operator.stages import STAGES  # noqa: E402
from lmforge.operator.stages.base import storage  # noqa: E402

GROUP, VERSION = "lmforge.dev", "v1alpha1"
NAMESPACE, DIRECT = "bench", "bench-direct"
NODES = 2  # worker pods per job
DATASET_URI = "s3://bench/lmforge/dataset/data"
TARGETS = {"p50_seconds": 1.0, "all_seconds": 60.0, "operator_peak_mib": 300.0}


def pretrainjob(name: str) -> dict:
    return {
        "apiVersion": f"{GROUP}/{VERSION}",
        "kind": "PretrainJob",
        "metadata": {"name": name},
        "spec": {
            "datasetRef": {"name": "data"},
            "model": {"preset": "tiny"},
            "training": {"steps": 10, "globalBatchTokens": 4096, "microBatch": 8},
            "resources": {"nodes": NODES, "processesPerNode": 1, "cpu": "1", "memory": "1Gi"},
            "storage": {"uri": "s3://bench/lmforge"},
        },
    }


class Tracker:
    """Watches pods, services, configmaps and pretrainjobs; notes when each job is complete."""

    def __init__(self, namespace: str, names: list[str], need_status: bool):
        self.namespace, self.need_status = namespace, need_status
        self.have: dict[str, dict[str, set[str]]] = {n: {} for n in names}
        self.phase: dict[str, str] = {}
        self.done: dict[str, float] = {}
        self.lock = threading.Lock()
        self.threads = [threading.Thread(target=self._watch, args=(k,), daemon=True)
                        for k in ("Pod", "Service", "ConfigMap", "PretrainJob")]  # fmt: skip
        for thread in self.threads:
            thread.start()
        time.sleep(1)  # the watches are open before anything is created

    def _list(self, kind: str):
        core, custom = client.CoreV1Api(), client.CustomObjectsApi()
        if kind == "PretrainJob":
            return custom.list_namespaced_custom_object, (GROUP, VERSION, self.namespace,
                                                          "pretrainjobs")  # fmt: skip
        method = {"Pod": core.list_namespaced_pod, "Service": core.list_namespaced_service,
                  "ConfigMap": core.list_namespaced_config_map}[kind]  # fmt: skip
        return method, (self.namespace,)

    def _watch(self, kind: str) -> None:
        method, args = self._list(kind)
        try:
            for event in watch.Watch().stream(
                method, *args, timeout_seconds=600, deserialize=False
            ):
                self._seen(kind, event["object"])
        except Exception:  # the control plane stops under an open watch
            return

    def _seen(self, kind: str, obj: dict) -> None:
        now = time.monotonic()
        with self.lock:
            if kind == "PretrainJob":
                name = obj["metadata"]["name"]
                if (obj.get("status") or {}).get("phase"):
                    self.phase[name] = obj["status"]["phase"]
            else:
                name = (obj["metadata"].get("labels") or {}).get("lmforge.dev/name")
                if name not in self.have:
                    return
                self.have[name].setdefault(kind, set()).add(obj["metadata"]["name"])
            self._check(name, now)

    def _check(self, name: str, now: float) -> None:
        have = self.have.get(name, {})
        complete = (
            len(have.get("Pod", ())) >= NODES
            and have.get("Service")
            and have.get("ConfigMap")
            and (name in self.phase or not self.need_status)
        )
        if complete and name not in self.done:
            self.done[name] = now

    def wait(self, count: int, timeout: float) -> None:
        deadline = time.monotonic() + timeout
        while len(self.done) < count and time.monotonic() < deadline:
            time.sleep(0.05)


def summary(created: dict[str, float], done: dict[str, float], start: float) -> dict:
    latencies = sorted(done[n] - created[n] for n in created if n in done)
    return {
        "complete": len(latencies),
        "p50_seconds": round(statistics.median(latencies), 3) if latencies else None,
        "p95_seconds": round(latencies[int(0.95 * (len(latencies) - 1))], 3) if latencies else None,
        "max_seconds": round(latencies[-1], 3) if latencies else None,
        "all_seconds": round(max(done.values()) - start, 3) if len(done) == len(created) else None,
    }


def start_operator(kubeconfig: Path, log: Path) -> tuple[subprocess.Popen, int]:
    port = free_port()
    env = {k: v for k, v in os.environ.items() if not k.startswith("LMFORGE_")}
    env.update(KUBECONFIG=str(kubeconfig), PYTHONUNBUFFERED="1", LMFORGE_JOB_IMAGE="bench")
    command = [sys.executable, "-m", "lmforge.operator.main", "--namespace", NAMESPACE,
               "--liveness", f"http://127.0.0.1:{port}/healthz"]  # fmt: skip
    process = subprocess.Popen(command, stdout=log.open("wb"), stderr=subprocess.STDOUT, env=env)
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:
        try:
            with urllib.request.urlopen(f"http://127.0.0.1:{port}/healthz", timeout=1):
                return process, port
        except OSError:
            time.sleep(0.2)
    raise SystemExit(f"the operator did not become healthy; see {log}")


def peak_rss_mib(pid: int) -> float:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmHWM:"):
            return int(line.split()[1]) / 1024
    raise RuntimeError("no VmHWM")


def operator_run(jobs: int, kubeconfig: Path, work: Path) -> dict:
    custom = client.CustomObjectsApi()
    args = (GROUP, VERSION, NAMESPACE)
    dataset = {"apiVersion": f"{GROUP}/{VERSION}", "kind": "Dataset", "metadata": {"name": "data"},
               "spec": {"sources": [{"uri": "stdlib://json/*.py"}],
                        "storage": {"uri": "s3://bench/lmforge"}}}  # fmt: skip
    custom.create_namespaced_custom_object(*args, "datasets", dataset)
    outputs = [{"uri": DATASET_URI, "kind": "Dataset"}]
    status = {"status": {"phase": "Succeeded", "lineage": {"outputs": outputs}}}
    custom.patch_namespaced_custom_object_status(*args, "datasets", "data", status)
    operator, _ = start_operator(kubeconfig, work / "operator.log")
    names = [f"job-{i:03d}" for i in range(jobs)]
    tracker = Tracker(NAMESPACE, names, need_status=True)
    created, start = {}, time.monotonic()
    for name in names:
        custom.create_namespaced_custom_object(*args, "pretrainjobs", pretrainjob(name))
        created[name] = time.monotonic()
    tracker.wait(jobs, timeout=180)
    result = summary(created, tracker.done, start) | {
        "operator_peak_mib": peak_rss_mib(operator.pid)
    }
    result["phases"] = sorted(set(tracker.phase.values()))
    operator.send_signal(signal.SIGTERM)
    operator.wait(30)
    return result


def direct_run(jobs: int) -> dict:
    """The floor: the children the operator would render, created by one client in one thread
    with no operator (and no ownerReferences: there is no owner here to collect them)."""
    core = client.CoreV1Api()
    create = {"ConfigMap": core.create_namespaced_config_map, "Pod": core.create_namespaced_pod,
              "Service": core.create_namespaced_service}  # fmt: skip
    names = [f"job-{i:03d}" for i in range(jobs)]
    tracker = Tracker(DIRECT, names, need_status=False)
    created, start = {}, time.monotonic()
    for name in names:
        began = time.monotonic()
        job = PretrainJob.model_validate(pretrainjob(name))
        store = storage(job.spec.storage, Defaults().store)
        stage = STAGES["PretrainJob"]
        description = stage.describe(job, {"spec.datasetRef": Artifact(uri=DATASET_URI)}, store)
        owner = Owner(f"{GROUP}/{VERSION}", "PretrainJob", name, DIRECT, "0")
        r = Rendering(owner, job, stage.role, description, Defaults(), store)
        lasting, pods = GANG.children(r, 0)
        for child in (*lasting, *pods):
            child["metadata"].pop("ownerReferences", None)
            create[child["kind"]](DIRECT, child)
        created[name] = began
    tracker.wait(jobs, timeout=180)
    return summary(created, tracker.done, start)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--jobs", type=int, default=100)
    parser.add_argument("--work", type=Path, help="keep the control plane's files and logs here")
    args = parser.parse_args()
    work = args.work or Path(tempfile.mkdtemp(prefix="lmforge-scale-"))
    work.mkdir(parents=True, exist_ok=True)
    plane = ControlPlane(work / "control-plane", build()).start()
    try:
        kubectl = [str(plane.bin_dir / "kubectl"), "--kubeconfig", str(plane.kubeconfig)]
        subprocess.run([*kubectl, "apply", "-f", str(ROOT / "manifests" / "crds")], check=True,
                       capture_output=True)  # fmt: skip
        subprocess.run([*kubectl, "wait", "--for=condition=Established", "crd", "--all"],
                       check=True, capture_output=True)  # fmt: skip
        config.load_kube_config(str(plane.kubeconfig))
        for namespace in (NAMESPACE, DIRECT):
            client.CoreV1Api().create_namespace({"metadata": {"name": namespace}})
        wait_for_service_account(NAMESPACE, DIRECT)
        operator = operator_run(args.jobs, plane.kubeconfig, work)
        direct = direct_run(args.jobs)
    finally:
        plane.stop()
    print(f"{args.jobs} PretrainJobs x ({NODES} pods + Service + ConfigMap), control plane only")
    print(f"{'':28}{'operator':>12}{'direct (floor)':>16}{'target':>10}")
    for field in ("p50_seconds", "p95_seconds", "max_seconds", "all_seconds"):
        target = TARGETS.get(field, "")
        print(f"{field:28}{operator[field]!s:>12}{direct[field]!s:>16}{target!s:>10}")
    print(f"{'operator_peak_mib':28}{operator['operator_peak_mib']:>12.1f}{'':>16}{300:>10}")
    print(f"phases seen: {operator['phases']}; files and logs in {work}")
    met = all(operator[k] is not None and operator[k] < v for k, v in TARGETS.items())
    print(json.dumps({"benchmark": "operator_scale", "jobs": args.jobs, "operator": operator,
                      "direct": direct, "targets": TARGETS, "met": met}))  # fmt: skip
    return 0


def wait_for_service_account(*namespaces: str) -> None:
    """Pods are refused until the serviceaccount controller has made `default`."""
    core = client.CoreV1Api()
    for namespace in namespaces:
        for _ in range(300):
            if core.list_namespaced_service_account(namespace).items:
                break
            time.sleep(0.1)


if __name__ == "__main__":
    sys.exit(main())
