"""The e2e tier: the operator as a process against the integration tier's cluster.

The cluster, the CRDs, the per-test namespace and the S3 bucket with its credentials Secret are
tests/integration's fixtures (its conftest, loaded here as a module). What this tier adds is the
operator: `python -m lmforge.operator.main --namespace <ns>` as a subprocess with the admin
kubeconfig, a 1 s reconcile interval and short grace periods, ready once /healthz answers,
stopped with SIGTERM. Its log goes to a file; a failed test's report has the file's path and its
tail.

Like the integration tier, this one is skipped without root, util-linux/iproute2 or Go (and
fails instead with CI=true); against LMFORGE_TEST_KUBECONFIG the tests need S3 reachable from
the pods, so they are skipped (failed in CI) there.
"""

from __future__ import annotations

import contextlib
import importlib.util
import os
import signal
import subprocess
import sys
import time
import urllib.request
from collections.abc import Iterator
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]


def _integration_fixtures():
    """tests/integration/conftest.py as a module of its own, so that its fixture functions (and
    its list of kept cluster folders) serve this tier too."""
    path = ROOT / "tests" / "integration" / "conftest.py"
    spec = importlib.util.spec_from_file_location("lmforge_integration_fixtures", path)
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module
    spec.loader.exec_module(module)
    return module


_it = _integration_fixtures()
cluster = _it.cluster
crds = _it.crds
namespace = _it.namespace
s3 = _it.s3
pytest_terminal_summary = _it.pytest_terminal_summary

sys.path.insert(0, str(Path(__file__).resolve().parent))  # e2e_support, for the tests

from cluster import Kube  # noqa: E402  (tests/cluster is on sys.path once the module loaded)
from controlplane import die_with_parent, free_port  # noqa: E402

READY_SECONDS = 60
OPERATOR_ENV = {
    "LMFORGE_RECONCILE_INTERVAL": "1",
    "LMFORGE_RETRY_DELAY": "1",
    # torchrun gets grace - 15 s to checkpoint on SIGTERM; a deleted gang is gone in seconds.
    "LMFORGE_TERMINATION_GRACE_SECONDS": "20",
    # Nominal: the test node runs each command with this machine's Python, never an image.
    "LMFORGE_JOB_IMAGE": "python:3.11-slim",
    "LMFORGE_LOG_TAIL_LINES": "200",
}


class Operator:
    """The operator process for one namespace; start() again after kill() is a restart."""

    def __init__(self, kube: Kube, namespace: str, folder: Path):
        self.kube, self.namespace, self.folder = kube, namespace, folder
        self.process: subprocess.Popen | None = None
        self.logs: list[Path] = []
        self.port = 0

    def start(self) -> Operator:
        assert self.process is None or self.process.poll() is not None, "already running"
        self.port = free_port()
        log = self.folder / f"operator-{len(self.logs)}.log"
        self.logs.append(log)
        env = {k: v for k, v in os.environ.items() if not k.startswith("LMFORGE_")}
        env.update(OPERATOR_ENV, KUBECONFIG=str(self.kube.kubeconfig), PYTHONUNBUFFERED="1")
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
    """The operator installed with helm/lmforge into the test's namespace (rbac.scope
    namespace): a Deployment whose pod runs on the test node with the chart's ServiceAccount
    and RBAC, talking to the API server in-cluster."""

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
            "rbac.scope": "namespace",
            "reconcileInterval": OPERATOR_ENV["LMFORGE_RECONCILE_INTERVAL"],
            "jobs.terminationGracePeriodSeconds": OPERATOR_ENV["LMFORGE_TERMINATION_GRACE_SECONDS"],
            "jobs.image": OPERATOR_ENV["LMFORGE_JOB_IMAGE"],
        }
        sets = [f"--set={key}={value}" for key, value in values.items()]
        chart = str(ROOT / "helm" / "lmforge")
        self._helm("install", self.release, chart, "--skip-crds", *sets)
        deployment = f"deployment/{self.release}"
        self.kube.wait(deployment, "condition=Available", self.namespace, READY_SECONDS)
        # Ready means running here (the test node runs no probes): wait for kopf's own word.
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
        """The operator pod's log, through `kubectl logs` (the test node's kubelet API)."""
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
    machine, or (parametrized indirectly with "helm") installed with the Helm chart."""
    how = getattr(request, "param", "process")
    kind = {"process": Operator, "helm": HelmOperator}[how]
    running = kind(cluster, namespace, tmp_path).start()
    yield running
    running.stop()


@pytest.hookimpl(hookwrapper=True)
def pytest_runtest_makereport(item: pytest.Item, call: pytest.CallInfo):
    """A failed test's report: the cluster's logs and namespace (as in the integration tier),
    and the operator's log."""
    outcome = yield
    report = outcome.get_result()
    if report.when != "call" or not report.failed:
        return
    funcargs = getattr(item, "funcargs", {})
    kube, where = funcargs.get("cluster"), funcargs.get("namespace")
    if isinstance(kube, Kube):
        lines = [f"log: {path}" for path in kube.log_files]
        if where:
            if kube.node_dir:
                lines.append(f"pods' files and logs: {kube.node_dir}/pods/{where}_*")
            what = "pods,services,configmaps,lmforge,events"
            state = kube("get", what, "-n", where, "-o", "wide", check=False, timeout=30)
            lines.append(f"kubectl get {what} -n {where}:\n{state.stdout}{state.stderr}")
        report.sections.append(("lmforge cluster", "\n".join(lines)))
    running = funcargs.get("operator")
    if isinstance(running, Operator | HelmOperator):
        text = running.log_text()
        paths = ", ".join(map(str, running.logs)) or "kubectl logs"
        report.sections.append(("lmforge operator", f"logs: {paths}\n...\n{text[-20000:]}"))
