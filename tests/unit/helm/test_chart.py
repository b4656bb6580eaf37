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
    ("", "secrets", "get"),
    ("", "events", "create"),
]


def helm() -> str | None:
    default = Path.home() / ".cache/lmforge/bin/k8s-v1.36.3/helm"
    found = os.environ.get("LMFORGE_HELM") or shutil.which("helm")
    return found or (str(default) if default.exists() else None)


def template(*values: str) -> list[dict]:
    if helm() is None:
        pytest.skip("no helm binary (set LMFORGE_HELM or build it with tests/cluster/build.sh)")
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
    if helm() is None:
        pytest.skip("no helm binary")
    done = subprocess.run([helm(), "lint", str(CHART)], capture_output=True, text=True)
    assert done.returncode == 0 and "[WARNING]" not in done.stdout and "[ERROR]" not in done.stdout


@pytest.mark.parametrize(
    ("values", "role_kind", "args"),
    [
        ((), "ClusterRole", ["--all-namespaces"]),
        (
            ("rbac.scope=namespace", "rbac.namespaces={a,b}"),
            "Role",
            ["--namespace=a", "--namespace=b"],
        ),
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
        assert not allowed(role["rules"], "", "secrets", "list")  # get only: no listing secrets
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
