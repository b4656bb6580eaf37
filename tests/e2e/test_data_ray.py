"""A Dataset with engine ray on the operator's own Ray pods, in containers of the default job
image: a head that runs the driver and offers Ray no CPUs, and a worker that joins it through
the head's Service and does the work. It writes what the local engine writes, byte for byte."""

from __future__ import annotations

import json

import s3fs
from e2e_support import Recorder, dataset, path, storage, wait_phase
from kubeapi import Api


def test_a_ray_dataset_runs_on_its_worker_pod_and_matches_the_local_engine(
    cluster, namespace, s3, s3_endpoint, operator
):
    api = Api(cluster.kubeconfig)
    store = storage(s3.bucket, s3.endpoint, s3.secret)
    local, ray = dataset("local", store), dataset("ray", store)
    ray["spec"]["engine"] = {"type": "ray", "workers": 1}
    ray["spec"]["resources"] = {"nodes": 2, "cpu": "1", "memory": "3Gi"}
    with Recorder(api, path("Pod", namespace), labelSelector="lmforge.dev/name=ray") as pods:
        cluster.apply(local, ray, namespace=namespace)
        for name in ("local", "ray"):
            wait_phase(api, "Dataset", namespace, name, "Succeeded", timeout=600)
    phases = {}
    for _, pod in pods.seen:
        phases.setdefault(pod["metadata"]["name"], set()).add(pod["status"].get("phase"))
    assert phases.keys() == {"ray-data-0", "ray-data-0-ray-1"}
    assert "Running" in phases["ray-data-0-ray-1"]  # the worker joined (and was then deleted)
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
