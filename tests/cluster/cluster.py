"""A whole test cluster: the control plane (controlplane.py) and one test node (node.py), plus
`Kube`, the kubectl wrapper tests use against it or against any cluster.

    with LocalCluster(workdir, build(), forwards={9000: s3_port}) as cluster:
        cluster.kube("get", "nodes")

    python tests/cluster/cluster.py up [--workdir DIR]   # prints the kubeconfig; Ctrl-C stops
"""

from __future__ import annotations

import contextlib
import json
import os
import signal
import subprocess
import sys
import tempfile
import textwrap
import time
from pathlib import Path

from controlplane import ControlPlane, build, die_with_parent

HERE = Path(__file__).resolve().parent
NODE_NAME = "n1"
IMAGE = "python:3.11-slim"  # what a real cluster would pull; the test node runs `python` here


def python_pod(name: str, code: str, restart: str = "Never", **spec) -> dict:
    """A pod whose container `main` runs `python -u -c <code>`.

    `container={...}` adds to the container, `metadata={...}` to the metadata, any other
    keyword to the pod spec.
    """
    container = {
        "name": "main",
        "image": IMAGE,
        "command": ["python", "-u", "-c", textwrap.dedent(code)],
        **spec.pop("container", {}),
    }
    return {
        "apiVersion": "v1",
        "kind": "Pod",
        "metadata": {"name": name, **spec.pop("metadata", {})},
        "spec": {
            "restartPolicy": restart,
            "terminationGracePeriodSeconds": 5,
            "containers": [container],
            **spec,
        },
    }


class Kube:
    """kubectl against one cluster; `node_dir` is set when the test node runs its pods."""

    def __init__(self, kubeconfig: Path, kubectl: Path | str, node_dir: Path | None = None):
        self.kubeconfig, self.kubectl, self.node_dir = Path(kubeconfig), str(kubectl), node_dir
        self.pod_s3: str | None = None  # an S3 endpoint as pods reach it, where there is one
        self.log_files: list[Path] = []  # of the cluster's components, for failure reports

    def __call__(
        self, *args: str, input: str | None = None, check: bool = True, timeout: float = 120
    ) -> subprocess.CompletedProcess:
        command = [self.kubectl, "--kubeconfig", str(self.kubeconfig), *args]
        done = subprocess.run(command, input=input, capture_output=True, text=True, timeout=timeout)
        if check and done.returncode:
            raise AssertionError(
                f"`kubectl {' '.join(args)}` exited {done.returncode}:\n{done.stderr}{done.stdout}"
            )
        return done

    def get(self, *args: str) -> dict:
        return json.loads(self("get", *args, "-o", "json").stdout)

    def apply(self, *objects: dict, namespace: str) -> None:
        document = {"apiVersion": "v1", "kind": "List", "items": list(objects)}
        self("apply", "-n", namespace, "-f", "-", input=json.dumps(document))

    def wait(self, what: str, condition: str, namespace: str, timeout: int = 60) -> None:
        """`kubectl wait --for=<condition>`; on timeout the error shows the object's status."""
        done = self(
            "wait", "-n", namespace, what, f"--for={condition}", f"--timeout={timeout}s",
            check=False, timeout=timeout + 30,
        )  # fmt: skip
        if done.returncode:
            state = self("get", "-n", namespace, what, "-o", "yaml", check=False)
            raise AssertionError(
                f"{what} in {namespace}: not {condition} after {timeout}s: {done.stderr}\n"
                f"{state.stdout}{state.stderr}"
            )

    def logs(self, namespace: str, pod: str, container: str | None = None) -> str:
        """A container's output: every run in order from the test node's files (`kubectl logs`
        gives only the current or the previous run), or the current run from `kubectl logs` on
        another cluster."""
        if self.node_dir is None:
            extra = ["-c", container] if container else []
            return self("logs", "-n", namespace, pod, *extra).stdout
        uid = self.get("pod", "-n", namespace, pod)["metadata"]["uid"]
        folder = self.node_dir / "pods" / f"{namespace}_{pod}_{uid}" / "logs"
        if container is None:
            (folder,) = folder.iterdir()  # the only container
        else:
            folder /= container
        files = sorted(folder.glob("*.log"), key=lambda p: int(p.stem))
        return "".join(f.read_text(errors="replace") for f in files)


class LocalCluster:
    """The control plane and the test node `n1`, all files in `workdir`.

    `forwards` maps a port on the pods' gateway (10.244.0.1) to a loopback port of this machine,
    e.g. {9000: <port of a local S3 server>}.
    """

    def __init__(self, workdir: Path, bin_dir: Path, forwards: dict[int, int] | None = None):
        self.workdir = Path(workdir).resolve()
        self.control_plane = ControlPlane(self.workdir / "control-plane", bin_dir)
        self.node_dir = self.workdir / "node"
        self.node_log = self.workdir / "node.log"
        self.forwards = forwards or {}
        self.node: subprocess.Popen | None = None
        self.kube = Kube(self.control_plane.kubeconfig, Path(bin_dir) / "kubectl", self.node_dir)
        self.kube.log_files = self.logs

    @property
    def logs(self) -> list[Path]:
        names = ("etcd", "kube-apiserver", "kube-controller-manager", "kube-scheduler")
        return [self.control_plane.logs / f"{name}.log" for name in names] + [self.node_log]

    def start(self, timeout: float = 60) -> LocalCluster:
        t0 = time.monotonic()
        self.control_plane.start()
        try:
            self._start_node(timeout)
        except BaseException:
            self.stop()
            raise
        self.start_seconds = time.monotonic() - t0
        print(
            f"cluster ready in {self.start_seconds:.1f}s; logs in {self.workdir}", file=sys.stderr
        )
        return self

    def _start_node(self, timeout: float) -> None:
        command = [sys.executable, str(HERE / "node.py"), "--name", NODE_NAME]
        command += ["--kubeconfig", str(self.control_plane.kubeconfig)]
        command += ["--workdir", str(self.node_dir)]
        for port, target in self.forwards.items():
            command += ["--forward", f"{port}=127.0.0.1:{target}"]
        cert, key = self.control_plane.kubelet_cert(NODE_NAME)
        command += ["--tls-cert-file", str(cert), "--tls-private-key-file", str(key)]
        command += ["--client-ca-file", str(self.control_plane.ca_cert)]
        with open(self.node_log, "ab") as log:
            self.node = subprocess.Popen(
                command, stdin=subprocess.DEVNULL, stdout=log, stderr=subprocess.STDOUT,
                start_new_session=True, preexec_fn=die_with_parent,
            )  # fmt: skip
        deadline = time.monotonic() + timeout
        while not (self.node_dir / "node.json").exists():
            if self.node.poll() is not None or time.monotonic() > deadline:
                raise RuntimeError(f"test node did not start; see {self.node_log}")
            time.sleep(0.1)
        self.kube.wait(f"node/{NODE_NAME}", "condition=Ready", "default", int(timeout))

    def stop(self) -> None:
        if self.node and self.node.poll() is None:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(self.node.pid, signal.SIGTERM)
            try:
                self.node.wait(10)
            except subprocess.TimeoutExpired:
                os.killpg(self.node.pid, signal.SIGKILL)
                self.node.wait()
        self.control_plane.stop()

    def __enter__(self) -> LocalCluster:
        return self.start()

    def __exit__(self, *exc) -> None:
        self.stop()


def main(argv: list[str]) -> int:
    if argv[:1] != ["up"] or len(argv) not in (1, 3) or (len(argv) == 3 and argv[1] != "--workdir"):
        print("usage: cluster.py up [--workdir DIR]", file=sys.stderr)
        return 2
    workdir = Path(argv[2] if len(argv) == 3 else tempfile.mkdtemp(prefix="lmforge-cluster-"))
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(0))
    with LocalCluster(workdir, build()) as cluster:
        print(cluster.control_plane.kubeconfig, flush=True)
        print(f"pods' files and logs in {cluster.node_dir}/pods; Ctrl-C to stop", file=sys.stderr)
        with contextlib.suppress(KeyboardInterrupt):
            signal.pause()
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
