"""`lmforge lineage --kube` reads status.lineage of the resources in a namespace of a real API
server (the status as the operator writes it, patched here through the status subresource)."""

import json
import os
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
QUICKSTART = ROOT / "manifests" / "samples" / "quickstart"
DATA, MODEL = "s3://b/dataset/stdlib", "s3://b/pretrainjob/stdlib-tiny/model"
STATUS = {
    "dataset/stdlib": {"inputs": [{"uri": "stdlib://**/*.py", "digest": "sha256:" + "a" * 64}],
                       "outputs": [{"uri": DATA, "kind": "Dataset"}]},
    "pretrainjob/stdlib-tiny": {"inputs": [{"uri": DATA, "kind": "Dataset", "name": "stdlib"}],
                                "outputs": [{"uri": MODEL, "kind": "Model"}]},
    "evaluation/stdlib-tiny-eval": {"inputs": [{"uri": MODEL, "kind": "PretrainJob",
                                                "name": "stdlib-tiny"}],
                                    "outputs": [{"uri": "s3://b/evaluation/stdlib-tiny-eval"}]},
}  # fmt: skip


def lineage(cluster, *args: str) -> subprocess.CompletedProcess:
    command = [sys.executable, "-m", "lmforge.operator.cli", "lineage", "--kube", *args]
    env = {**os.environ, "KUBECONFIG": str(cluster.kubeconfig)}
    return subprocess.run(command, capture_output=True, text=True, env=env, timeout=60)


def test_lineage_reads_the_cluster(cluster, crds, namespace):
    cluster("apply", "-n", namespace, "-f", str(QUICKSTART))
    for resource, record in STATUS.items():
        patch = {"status": {"phase": "Succeeded", "lineage": record}}
        cluster("patch", resource, "-n", namespace, "--subresource=status", "--type=merge",
                "-p", json.dumps(patch))  # fmt: skip
    done = lineage(cluster, "-n", namespace, "evaluation/stdlib-tiny-eval")
    assert done.returncode == 0, done.stderr
    assert done.stdout.splitlines() == [
        "Evaluation/stdlib-tiny-eval (Succeeded)",
        "  -> s3://b/evaluation/stdlib-tiny-eval",
        "  PretrainJob/stdlib-tiny (Succeeded)",
        "    -> s3://b/pretrainjob/stdlib-tiny/model",
        "    Dataset/stdlib (Succeeded)",
        "      -> s3://b/dataset/stdlib",
        "      <- stdlib://**/*.py  sha256:aaaaaaaaaaaa",
    ]
    done = lineage(cluster, "-n", namespace, "--source", "stdlib://**/*.py")
    assert done.stdout.splitlines() == [
        "Dataset/stdlib  <- stdlib://**/*.py",
        "PretrainJob/stdlib-tiny  <- Dataset/stdlib",
        "Evaluation/stdlib-tiny-eval  <- PretrainJob/stdlib-tiny",
    ]
    missing = lineage(cluster, "-n", namespace, "pretrainjob/nope")
    assert missing.returncode == 1
    assert f"PretrainJob/nope not found in namespace {namespace}" in missing.stderr
