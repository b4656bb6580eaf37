"""The e2e tier: the operator, as a process or installed with the Helm chart, against the
session's cluster (tests/cluster/fixtures.py: the cluster, the CRDs, the per-test namespace
and the S3 bucket with its credentials Secret).

The process is `python -m lmforge.operator.main --namespace <ns>` with the admin kubeconfig, a
1 s reconcile interval and short grace periods, ready once /healthz answers, stopped with
SIGTERM; its log goes to a file, and a failed test's report has the file's path and its tail.
Job pods run the images from images/ in containers on the cluster's node.
"""

from __future__ import annotations

import contextlib
import os
import signal
import subprocess
import sys
import time
import urllib.request
from collections.abc import Iterator
from pathlib import Path

import pytest
from cluster import Kube
from controlplane import die_with_parent, free_port

ROOT = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(Path(__file__).resolve().parent))  # e2e_support, for the tests

READY_SECONDS = 60
OPERATOR_ENV = {
    "LMFORGE_RECONCILE_INTERVAL": "1",
    "LMFORGE_RETRY_DELAY": "1",
    # torchrun gets grace - 15 s to checkpoint on SIGTERM; a deleted gang is gone in seconds.
    "LMFORGE_TERMINATION_GRACE_SECONDS": "20",
    "LMFORGE_LOG_TAIL_LINES": "200",
}


class Operator:
    """The operator process for one namespace; start() again after kill() is a restart."""

    def __init__(self, kube: Kube, namespace: str, folder: Path, env: dict[str, str] | None = None):
        self.kube, self.namespace, self.folder = kube, namespace, folder
        self.env = {**OPERATOR_ENV, **(env or {})}
        self.process: subprocess.Popen | None = None
        self.logs: list[Path] = []
        self.port = 0

    def start(self) -> Operator:
        assert self.process is None or self.process.poll() is not None, "already running"
        self.port = free_port()
        log = self.folder / f"operator-{len(self.logs)}.log"
        self.logs.append(log)
        env = {k: v for k, v in os.environ.items() if not k.startswith("LMFORGE_")}
        env.update(self.env, KUBECONFIG=str(self.kube.kubeconfig), PYTHONUNBUFFERED="1")
        command = [
            sys.executable, "-m", "lmforge.operator.main", "--namespace", self.namespace,
            "--liveness", f"http://127.0.0.1:{self.port}/healthz",
        ]  # fmt: skip
        with open(log, "wb") as out:
            self.process = subprocess.Popen(
                command, stdin=subprocess.DEVNULL, stdout=out, stderr=subprocess.STDOUT,
                env=env, cwd=ROOT, start_new_session=True, preexec_fn=die_with_parent,
            )  # fmt: skip
        deadline = time.monotonic() + READY_SECONDS
        while not self.healthy():
            if self.process.poll() is not None:
                raise AssertionError(f"operator exited with {self.process.returncode}; see {log}")
            if time.monotonic() > deadline:
                raise AssertionError(f"operator: no /healthz after {READY_SECONDS}s; see {log}")
            time.sleep(0.1)
        return self

    def healthy(self) -> bool:
        try:
            with urllib.request.urlopen(f"http://127.0.0.1:{self.port}/healthz", timeout=1) as r:
                return r.status == 200
        except OSError:
            return False

    def kill(self, sig: int = signal.SIGKILL, timeout: float = 30) -> int:
        """Signal the operator (SIGKILL: a crash, SIGTERM: a clean stop); its exit status."""
        assert self.process is not None
        with contextlib.suppress(ProcessLookupError):
            os.killpg(self.process.pid, sig)
        try:
            return self.process.wait(timeout)
        except subprocess.TimeoutExpired:
            os.killpg(self.process.pid, signal.SIGKILL)
            return self.process.wait()

    def stop(self) -> None:
        if self.process is not None and self.process.poll() is None:
            self.kill(signal.SIGTERM)

    def log_text(self) -> str:
        return "".join(
            f"===== {path} =====\n{path.read_text(errors='replace')}" for path in self.logs
        )


class HelmOperator:
    """The operator installed with helm/lmforge into the test's namespace (its default values:
    rbac.scope namespace): a Deployment whose pod runs on the test node with the chart's ServiceAccount
    and RBAC, talking to the API server in-cluster, with the chart's securityContext and
    probes."""

    def __init__(self, kube: Kube, namespace: str, folder: Path):
        self.kube, self.namespace, self.folder = kube, namespace, folder
        self.release = f"lmforge-{namespace.rsplit('-', 1)[-1]}"  # unique: ClusterRoles
        bin_dir = Path(kube.kubectl).parent
        self.helm = str(bin_dir / "helm") if (bin_dir / "helm").exists() else "helm"
        self.logs: list[Path] = []

    def _helm(self, *args: str) -> str:
        command = [self.helm, "--kubeconfig", str(self.kube.kubeconfig), "-n", self.namespace]
        done = subprocess.run(command + list(args), capture_output=True, text=True, timeout=180)
        if done.returncode:
            raise AssertionError(f"helm {' '.join(args)} exited {done.returncode}:\n{done.stderr}")
        return done.stdout

    def start(self) -> HelmOperator:
        values = {
            "reconcileInterval": OPERATOR_ENV["LMFORGE_RECONCILE_INTERVAL"],
            "jobs.terminationGracePeriodSeconds": OPERATOR_ENV["LMFORGE_TERMINATION_GRACE_SECONDS"],
        }
        sets = [f"--set={key}={value}" for key, value in values.items()]
        chart = str(ROOT / "helm" / "lmforge")
        self._helm("install", self.release, chart, "--skip-crds", *sets)
        deployment = f"deployment/{self.release}"
        self.kube.wait(deployment, "condition=Available", self.namespace, READY_SECONDS)
        # Available means the readiness probe passed (kopf's /healthz); wait for kopf's own word.
        deadline = time.monotonic() + READY_SECONDS
        while "lmforge operator: reconcile every" not in self.log_text():
            if time.monotonic() > deadline:
                raise AssertionError(f"the chart's operator did not start:\n{self.log_text()}")
            time.sleep(0.5)
        return self

    def upgrade(self, **values: str) -> None:
        """`helm upgrade --reuse-values` with these values; returns once the new pod is ready."""
        sets = [f"--set={key}={value}" for key, value in values.items()]
        self._helm("upgrade", self.release, str(ROOT / "helm" / "lmforge"), "--reuse-values",
                   "--skip-crds", *sets)  # fmt: skip
        self.kube("rollout", "status", f"deployment/{self.release}", "-n", self.namespace,
                  f"--timeout={READY_SECONDS}s", timeout=READY_SECONDS + 30)  # fmt: skip

    def log_text(self) -> str:
        """The operator pod's log, through `kubectl logs` (the kubelet's API)."""
        done = self.kube(
            "logs", "-n", self.namespace, f"deployment/{self.release}", check=False, timeout=30
        )
        return done.stdout + done.stderr

    def stop(self) -> None:
        (self.folder / "operator.log").write_text(self.log_text())
        self.logs = [self.folder / "operator.log"]
        self._helm("uninstall", self.release, "--wait", "--timeout=60s")


@pytest.fixture
def operator(
    request: pytest.FixtureRequest, cluster: Kube, crds, namespace: str, tmp_path: Path
) -> Iterator[Operator | HelmOperator]:
    """The operator watching the test's namespace, started and healthy: a process on this
    machine, or (parametrized indirectly with "helm") installed with the Helm chart, or (with a
    dict) a process with those settings in its environment."""
    how = getattr(request, "param", "process")
    if isinstance(how, dict):
        running = Operator(cluster, namespace, tmp_path, env=how).start()
    else:
        running = {"process": Operator, "helm": HelmOperator}[how](cluster, namespace, tmp_path)
        running.start()
    yield running
    running.stop()


@pytest.hookimpl(hookwrapper=True)
def pytest_runtest_makereport(item: pytest.Item, call: pytest.CallInfo):
    """A failed test's report has the operator's log (the cluster's section comes from
    tests/cluster/fixtures.py)."""
    report = (yield).get_result()
    running = getattr(item, "funcargs", {}).get("operator")
    if report.when == "call" and report.failed and isinstance(running, Operator | HelmOperator):
        text = running.log_text()
        paths = ", ".join(map(str, running.logs)) or "kubectl logs"
        report.sections.append(("lmforge operator", f"logs: {paths}\n...\n{text[-20000:]}"))
