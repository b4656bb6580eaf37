"""Children with an ownerReference to an lmforge resource go when it goes (the GC controller)."""

from pathlib import Path

import yaml
from cluster import python_pod

ROOT = Path(__file__).resolve().parents[2]


def test_deleting_an_owner_deletes_its_children(cluster, crds, namespace):
    cluster("apply", "-n", namespace, "-f", str(ROOT / "manifests" / "samples" / "dataset.yaml"))
    name = yaml.safe_load((ROOT / "manifests" / "samples" / "dataset.yaml").read_text())[
        "metadata"
    ]["name"]
    owner = cluster.get("dataset.lmforge.dev", name, "-n", namespace)["metadata"]
    reference = {
        "apiVersion": "lmforge.dev/v1alpha1",
        "kind": "Dataset",
        "name": owner["name"],
        "uid": owner["uid"],
        "controller": True,
        "blockOwnerDeletion": True,
    }
    child_pod = python_pod(
        "child", "import time; time.sleep(600)", metadata={"ownerReferences": [reference]}
    )
    child_config = {
        "apiVersion": "v1",
        "kind": "ConfigMap",
        "metadata": {"name": "child", "ownerReferences": [reference]},
        "data": {"config.json": "{}"},
    }
    cluster.apply(child_pod, child_config, namespace=namespace)
    cluster.wait("pod/child", "condition=Ready", namespace)

    cluster("delete", "dataset.lmforge.dev", name, "-n", namespace)
    cluster.wait("pod/child", "delete", namespace, timeout=90)
    cluster.wait("configmap/child", "delete", namespace, timeout=90)
