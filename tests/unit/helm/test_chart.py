"""The chart installs what the handlers need: the same CRDs, and RBAC for every call they make."""

import os
import shutil
import subprocess
from pathlib import Path

import pytest
import yaml

ROOT = Path(__file__).resolve().parents[3]
CHART = ROOT / "helm" / "lmforge"
PLURALS = ["datasets", "pretrainjobs", "finetunes", "rewardmodels", "evaluations", "deployments"]

# (API group, resource, verb) for every call operator/kube.py and kopf make in a namespace.
NEEDED = [
    *[("lmforge.dev", p, v) for p in PLURALS for v in ("get", "list", "watch", "patch")],
    *[("lmforge.dev", f"{p}/status", "patch") for p in PLURALS],
    *[("", "pods", v) for v in ("get", "list", "create", "delete", "patch")],
    ("", "pods/log", "get"),
    *[
        ("", r, v)
        for r in ("services", "configmaps")
        for v in ("get", "list", "create", "patch", "delete")
    ],
    *[
        (group, r, v)
        for group, r in [
            ("apps", "deployments"),
            ("autoscaling", "horizontalpodautoscalers"),
            ("networking.k8s.io", "networkpolicies"),
            ("policy", "poddisruptionbudgets"),
        ]
        for v in ("get", "list", "create", "patch", "delete")
    ],
    *[(g, "podgroups", v) for g in ("scheduling.volcano.sh", "scheduling.x-k8s.io")
      for v in ("get", "create", "patch")],
    *[("ray.io", "rayclusters", v) for v in ("get", "create", "patch", "delete")],
    *[("kueue.x-k8s.io", "workloads", v) for v in ("get", "list")],
    ("", "events", "create"),
]  # fmt: skip


def helm() -> str:
    """$LMFORGE_HELM, helm on the PATH, or the one tests/cluster/build.sh built; in CI a missing
    helm fails the test instead of skipping it."""
    built = sorted(Path.home().glob(".cache/lmforge/bin/k8s-*/helm"))
    found = os.environ.get("LMFORGE_HELM") or shutil.which("helm") or (built and str(built[-1]))
    if not found:
        message = "no helm binary (set LMFORGE_HELM or build it with tests/cluster/build.sh)"
        if os.environ.get("CI"):
            pytest.fail(message)
        pytest.skip(message)
    return found


def template(*values: str) -> list[dict]:
    args = [helm(), "template", "t", str(CHART), "--namespace", "ops", "--kube-version", "1.36.3"]
    for value in values:
        args += ["--set", value]
    done = subprocess.run(args, capture_output=True, text=True, check=True)
    return [d for d in yaml.safe_load_all(done.stdout) if d]


def allowed(rules: list[dict], group: str, resource: str, verb: str) -> bool:
    return any(
        group in rule["apiGroups"] and resource in rule["resources"] and verb in rule["verbs"]
        for rule in rules
    )


def test_chart_crds_are_the_generated_ones():
    generated = {p.name: p.read_text() for p in (ROOT / "manifests" / "crds").glob("*.yaml")}
    packaged = {p.name: p.read_text() for p in (CHART / "crds").glob("*.yaml")}
    assert packaged == generated, "run lmforge crds"


def test_helm_lint_is_clean():
    done = subprocess.run([helm(), "lint", str(CHART)], capture_output=True, text=True)
    assert done.returncode == 0 and "[WARNING]" not in done.stdout and "[ERROR]" not in done.stdout


@pytest.mark.parametrize(
    ("values", "role_kind", "args"),
    [
        ((), "Role", ["--namespace=ops"]),  # least privilege by default: its own namespace
        (("rbac.namespaces={a,b}",), "Role", ["--namespace=a", "--namespace=b"]),
        (("rbac.scope=cluster",), "ClusterRole", ["--all-namespaces"]),
    ],
)
def test_rbac_covers_every_call(values, role_kind, args):
    documents = template(*values)
    roles = [
        d
        for d in documents
        if d["kind"] == role_kind and not d["metadata"]["name"].endswith("-discovery")
    ]
    assert roles
    for role in roles:
        missing = [need for need in NEEDED if not allowed(role["rules"], *need)]
        assert missing == []
        # The pods mount the Secrets their specs name; the operator reads none.
        assert not any("secrets" in rule["resources"] for rule in role["rules"])
    if role_kind == "Role":
        namespaces = sorted(d["metadata"]["namespace"] for d in roles)
        assert namespaces == sorted(a.removeprefix("--namespace=") for a in args)
        assert not [d for d in documents if d["kind"] == "ClusterRole" and d not in roles
                    and not d["metadata"]["name"].endswith("-discovery")]  # fmt: skip
    (deployment,) = [d for d in documents if d["kind"] == "Deployment"]
    assert deployment["spec"]["template"]["spec"]["containers"][0]["args"][-len(args) :] == args


def test_operator_runs_locked_down():
    (deployment,) = [d for d in template() if d["kind"] == "Deployment"]
    pod = deployment["spec"]["template"]["spec"]
    container = pod["containers"][0]
    assert pod["securityContext"]["runAsNonRoot"] is True
    assert container["securityContext"]["readOnlyRootFilesystem"] is True
    assert container["livenessProbe"]["httpGet"]["path"] == "/healthz"
    assert "--module=lmforge.operator.main" in container["args"]


def test_metrics_service_and_service_monitor():
    documents = template()
    (deployment,) = [d for d in documents if d["kind"] == "Deployment"]
    container = deployment["spec"]["template"]["spec"]["containers"][0]
    env = {e["name"]: e.get("value") for e in container["env"]}
    ports = {p["name"]: p["containerPort"] for p in container["ports"]}
    assert env["LMFORGE_METRICS_PORT"] == "9090" and ports["metrics"] == 9090
    (service,) = [d for d in documents if d["kind"] == "Service"]
    assert service["metadata"]["name"] == "t-lmforge-metrics"
    assert service["spec"]["ports"][0]["targetPort"] == "metrics"
    pod_labels = deployment["spec"]["template"]["metadata"]["labels"]
    assert service["spec"]["selector"].items() <= pod_labels.items()
    assert not [d for d in documents if d["kind"] == "ServiceMonitor"]  # only when asked
    (monitor,) = [
        d
        for d in template("metrics.serviceMonitor.enabled=true", "metrics.port=9100")
        if d["kind"] == "ServiceMonitor"
    ]
    assert (
        monitor["spec"]["selector"]["matchLabels"].items() <= service["metadata"]["labels"].items()
    )
    assert monitor["spec"]["endpoints"] == [
        {"port": "metrics", "path": "/metrics", "interval": "30s"}
    ]


def test_jobs_nccl_reaches_the_operator_as_json(monkeypatch):
    from lmforge.operator.handlers.settings import Settings

    documents = template("jobs.nccl.NCCL_SOCKET_IFNAME=eth0", "jobs.nccl.NCCL_IB_DISABLE=1")
    (deployment,) = [d for d in documents if d["kind"] == "Deployment"]
    env = {e["name"]: e.get("value") for e in deployment["spec"]["template"]["spec"]["containers"][0]["env"]}  # fmt: skip
    monkeypatch.setenv("LMFORGE_JOB_NCCL", env["LMFORGE_JOB_NCCL"])
    nccl = Settings.from_env().defaults.nccl
    assert nccl == (("NCCL_IB_DISABLE", "1"), ("NCCL_SOCKET_IFNAME", "eth0"))
    (default,) = [d for d in template() if d["kind"] == "Deployment"]
    env = default["spec"]["template"]["spec"]["containers"][0]["env"]
    assert {"name": "LMFORGE_JOB_NCCL", "value": "{}"} in env
