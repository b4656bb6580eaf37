"""The cluster fixtures of the integration and e2e tiers (tests/conftest.py imports them): a
real control plane and node (kubelet, containerd, kube-proxy, CoreDNS), started once per
session for both tiers; a fresh namespace per test, where Pod Security "restricted" is enforced;
the CRDs; S3 that pods can reach.

LMFORGE_TEST_KUBECONFIG=<file> runs the tiers against that cluster instead (kind, k3d ...): pods
run on its nodes, and the tests that need S3 from a pod are skipped there.  With CI=true,
anything that keeps the tiers from running is a failure, never a skip.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
import tempfile
import time
import urllib.parse
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest
import yaml
from cluster import Kube, LocalCluster
from controlplane import build, default_bin_dir, host_ip
from kueue import API_VERSION, NAMESPACE_LABEL
from node import IMAGES, TOOLS, containerd_root

ROOT = Path(__file__).resolve().parents[2]
CRDS = sorted((ROOT / "manifests" / "crds").glob("*.yaml"))
IN_CI = os.environ.get("CI") == "true"
_kept: list[Path] = []


def unavailable(reason: str) -> None:
    """Skip, except in CI, where the cluster tiers must run."""
    if IN_CI:
        pytest.fail(f"the cluster tiers cannot run: {reason}", pytrace=False)
    pytest.skip(reason)


def _build() -> Path:
    if os.geteuid() != 0:
        unavailable(
            "the test node needs root (kubelet, containerd); or set LMFORGE_TEST_KUBECONFIG"
        )
    missing = [tool for tool in TOOLS if not shutil.which(tool)]
    if missing:
        unavailable(f"the test node needs {missing}: see docs/testing.md (apt-get install ...)")
    try:
        bin_dir = build()
    except (subprocess.CalledProcessError, OSError) as e:
        unavailable(
            f"tests/cluster/build.sh failed ({e}): install Go (see docs/testing.md) "
            "or set LMFORGE_TEST_KUBECONFIG"
        )
        raise
    if not containerd_root().is_dir():
        unavailable(f"no images in {containerd_root()} ({', '.join(IMAGES)}): run images/build.sh")
    return bin_dir


@pytest.fixture(scope="session")
def cluster(request: pytest.FixtureRequest, s3_endpoint: str) -> Iterator[Kube]:
    """kubectl against the session's cluster: our own, or LMFORGE_TEST_KUBECONFIG's."""
    external = os.environ.get("LMFORGE_TEST_KUBECONFIG")
    if external:
        yield Kube(Path(external), shutil.which("kubectl") or default_bin_dir() / "kubectl")
        return
    workdir = Path(tempfile.mkdtemp(prefix="lmforge-it-"))
    local = LocalCluster(workdir, _build())
    try:
        local.start()
    except BaseException:
        _kept.append(workdir)
        raise
    # The session's S3 server listens on every address: pods reach it at this machine's.
    local.kube.pod_s3 = f"http://{host_ip()}:{urllib.parse.urlsplit(s3_endpoint).port}"
    yield local.kube
    local.stop()
    if request.session.testsfailed:
        _kept.append(workdir)
    else:
        shutil.rmtree(workdir, ignore_errors=True)


@pytest.fixture(scope="session")
def crds(cluster: Kube) -> dict[str, dict]:
    """manifests/crds installed and Established; the definitions by name."""
    cluster("apply", "-f", str(ROOT / "manifests" / "crds"))
    definitions = {d["metadata"]["name"]: d for d in map(yaml.safe_load, map(Path.read_text, CRDS))}
    names = [f"crd/{name}" for name in definitions]
    cluster("wait", "--for=condition=Established", "--timeout=60s", *names, timeout=90)
    return definitions


@pytest.fixture
def namespace(cluster: Kube, request: pytest.FixtureRequest) -> Iterator[str]:
    """A new namespace, named after the test, with its default ServiceAccount."""
    slug = re.sub(r"[^a-z0-9]+", "-", request.node.name.lower()).strip("-")[:40].strip("-")
    name = f"{slug}-{uuid.uuid4().hex[:5]}"
    restricted = {
        f"pod-security.kubernetes.io/{mode}": "restricted" for mode in ("enforce", "warn")
    }
    labels = {**restricted, "lmforge.dev/test": "true"}
    namespace = {
        "apiVersion": "v1",
        "kind": "Namespace",
        "metadata": {"name": name, "labels": labels},
    }
    cluster("create", "-f", "-", input=json.dumps(namespace))
    # Pods are refused until the serviceaccount controller has made `default`.
    deadline = time.monotonic() + 30
    while cluster("get", "serviceaccount", "default", "-n", name, check=False).returncode:
        assert time.monotonic() < deadline, f"no default ServiceAccount in namespace {name}"
        time.sleep(0.2)
    yield name
    cluster("delete", "namespace", name, "--wait=false")


@pytest.fixture
def queue(cluster: Kube, namespace: str) -> Iterator[str]:
    """The Kueue LocalQueue `queue` in the test's namespace (labelled so that Kueue manages its
    pods), on a ClusterQueue of 1 CPU and 4Gi that preempts lower priorities, and the
    WorkloadPriorityClasses `<namespace>-low` (100) and `<namespace>-high` (1000); all named
    after the namespace."""
    if cluster.node is None:
        unavailable("Kueue runs in the session's own cluster only")
    cluster("label", "namespace", namespace, "=".join(NAMESPACE_LABEL))
    flavor = {"apiVersion": API_VERSION, "kind": "ResourceFlavor", "metadata": {"name": namespace}}
    quota = {"name": namespace, "resources": [{"name": "cpu", "nominalQuota": "1"},
                                              {"name": "memory", "nominalQuota": "4Gi"}]}  # fmt: skip
    cluster_queue = {
        "apiVersion": API_VERSION,
        "kind": "ClusterQueue",
        "metadata": {"name": namespace},
        "spec": {
            "namespaceSelector": {"matchLabels": {"kubernetes.io/metadata.name": namespace}},
            "resourceGroups": [{"coveredResources": ["cpu", "memory"], "flavors": [quota]}],
            "preemption": {"withinClusterQueue": "LowerPriority"},
        },
    }
    local_queue = {
        "apiVersion": API_VERSION,
        "kind": "LocalQueue",
        "metadata": {"name": "queue"},
        "spec": {"clusterQueue": namespace},
    }
    priorities = [
        {"apiVersion": API_VERSION, "kind": "WorkloadPriorityClass",
         "metadata": {"name": f"{namespace}-{name}"}, "value": value}
        for name, value in (("low", 100), ("high", 1000))
    ]  # fmt: skip
    cluster.apply(flavor, cluster_queue, local_queue, *priorities, namespace=namespace)
    yield "queue"
    # Kueue's finalizers hold them until the namespace's Workloads are gone.
    cluster("delete", "clusterqueue,resourceflavor", namespace, "--wait=false")
    names = [p["metadata"]["name"] for p in priorities]
    cluster("delete", "workloadpriorityclass", *names, "--wait=false")


@dataclass
class S3:
    bucket: str  # s3://<name>, new and empty
    endpoint: str  # the S3 endpoint as pods reach it
    secret: str  # Secret in the test namespace with AWS_ACCESS_KEY_ID and AWS_SECRET_ACCESS_KEY


@pytest.fixture
def s3(cluster: Kube, namespace: str, bucket: str) -> S3:
    """A bucket, and a credentials Secret in the test namespace, for pods."""
    if cluster.pod_s3 is None:
        unavailable("pods of LMFORGE_TEST_KUBECONFIG's cluster cannot reach the local S3 server")
    secret = "s3-credentials"
    cluster(
        "create", "secret", "generic", secret, "-n", namespace,
        f"--from-literal=AWS_ACCESS_KEY_ID={os.environ['AWS_ACCESS_KEY_ID']}",
        f"--from-literal=AWS_SECRET_ACCESS_KEY={os.environ['AWS_SECRET_ACCESS_KEY']}",
    )  # fmt: skip
    return S3(bucket, cluster.pod_s3, secret)


@pytest.hookimpl(hookwrapper=True)
def pytest_runtest_makereport(item: pytest.Item, call: pytest.CallInfo):
    """A failed test's report says where the cluster's logs are and what its namespace holds."""
    report = (yield).get_result()
    kube = item.funcargs.get("cluster") if hasattr(item, "funcargs") else None
    if report.when != "call" or not report.failed or not isinstance(kube, Kube):
        return
    lines = [f"log: {path}" for path in kube.log_files]
    namespace = item.funcargs.get("namespace")
    if namespace:
        if kube.pod_logs:
            lines.append(f"pods' logs: {kube.pod_logs}/{namespace}_*")
        what = "pods,jobs,services,endpointslices,configmaps,events"
        state = kube("get", what, "-n", namespace, "-o", "wide", check=False, timeout=30)
        lines.append(f"kubectl get {what} -n {namespace}:\n{state.stdout}{state.stderr}")
    report.sections.append(("lmforge cluster", "\n".join(lines)))


def pytest_terminal_summary(terminalreporter) -> None:
    for workdir in _kept:
        terminalreporter.write_line(f"lmforge test cluster files and logs kept in {workdir}")
