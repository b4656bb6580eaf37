"""A Dataset with engine ray, in containers of the default job image, on the operator's own Ray
pods (a head that runs the driver and offers Ray no CPUs, and a worker that joins it through the
head's Service) and on a KubeRay RayCluster (the session's KubeRay operator makes its head and
worker pods; the job's pod joins as the driver). Either way it writes what the local engine
writes, byte for byte."""

from __future__ import annotations

import json
import time

import pytest
import s3fs
from e2e_support import Recorder, dataset, path, storage, wait_phase
from kubeapi import Api


@pytest.mark.parametrize(
    "operator",
    [{"LMFORGE_RAY_CLUSTERS": "pods"}, {}],
    ids=["own-pods", "kuberay"],
    indirect=True,
)
def test_a_ray_dataset_runs_on_its_worker_pod_and_matches_the_local_engine(
    cluster, namespace, s3, s3_endpoint, operator
):
    kuberay = operator.env.get("LMFORGE_RAY_CLUSTERS") != "pods"  # auto: KubeRay is installed
    api = Api(cluster.kubeconfig)
    store = storage(s3.bucket, s3.endpoint, s3.secret)
    local, ray = dataset("local", store), dataset("ray", store)
    ray["spec"]["engine"] = {"type": "ray", "workers": 1}
    # On KubeRay, three pods: the driver, the head and the worker; two CPUs on the node.
    cpu = "500m" if kuberay else "1"
    ray["spec"]["resources"] = {"nodes": 2, "cpu": cpu, "memory": "3Gi"}
    with Recorder(api, path("Pod", namespace)) as pods:
        cluster.apply(local, ray, namespace=namespace)
        for name in ("local", "ray"):
            wait_phase(api, "Dataset", namespace, name, "Succeeded", timeout=600)
    phases: dict[str, set] = {}
    labels: dict[str, dict] = {}
    for _, pod in pods.seen:
        name = pod["metadata"]["name"]
        labels[name] = pod["metadata"]["labels"]
        phases.setdefault(name, set()).add(pod["status"].get("phase"))
    ours = {n for n, seen in labels.items() if seen.get("lmforge.dev/name") == "ray"}
    nodes = {seen["ray.io/node-type"]: n for n, seen in labels.items()
             if seen.get("ray.io/cluster") == "ray-ray"}  # fmt: skip
    if kuberay:
        assert ours == {"ray-data-0"}  # the driver: no Ray pods of the operator's own
        assert nodes.keys() == {"head", "worker"}
        worker = nodes["worker"]
        deadline = time.monotonic() + 60  # the finished Dataset's RayCluster is deleted
        while cluster("get", "raycluster", "ray-ray", "-n", namespace, check=False).returncode == 0:
            assert time.monotonic() < deadline, "the RayCluster outlived its Dataset"
            time.sleep(1)
    else:
        assert ours == {"ray-data-0", "ray-data-0-ray-1"} and not nodes
        worker = "ray-data-0-ray-1"
    assert "Running" in phases[worker]  # the worker joined (and was then deleted)
    fs = s3fs.S3FileSystem(endpoint_url=s3_endpoint)
    manifests = {
        name: json.loads(fs.cat_file(f"{s3.bucket[5:]}/lmforge/dataset/{name}/manifest.json"))
        for name in ("local", "ray")
    }
    for key in ("configDigest", "inputDigest", "tokenizer", "sources"):
        assert manifests["ray"][key] == manifests["local"][key], key
    for split in ("train", "validation"):
        digests = {n: [s["digest"] for s in m["splits"][split]["shards"]]
                   for n, m in manifests.items()}  # fmt: skip
        assert digests["ray"] == digests["local"] and digests["ray"]
