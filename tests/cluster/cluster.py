"""A whole test cluster: the control plane (controlplane.py), Kueue (kueue.py), KubeRay
(kuberay.py) and one real node (node.py: kubelet, containerd, kube-proxy, CoreDNS), plus `Kube`,
the kubectl wrapper tests use against it or against any cluster.

    with LocalCluster(workdir, build()) as cluster:
        cluster.kube("get", "nodes")

    python tests/cluster/cluster.py up [--workdir DIR]   # prints the kubeconfig; Ctrl-C stops
"""

from __future__ import annotations

import contextlib
import copy
import json
import signal
import subprocess
import sys
import tempfile
import textwrap
import time
from pathlib import Path

from controlplane import ControlPlane, build
from kuberay import KubeRay
from kueue import Kueue
from node import DAEMONS, TAG, Node

IMAGE = f"ghcr.io/lmforge/lmforge-trainer:{TAG}"  # Python 3.11 with lmforge, UID 1000
# What Pod Security "restricted" asks of every container.
RESTRICTED = {
    "runAsNonRoot": True,
    "allowPrivilegeEscalation": False,
    "capabilities": {"drop": ["ALL"]},
    "seccompProfile": {"type": "RuntimeDefault"},
}


def python_pod(name: str, code: str, restart: str = "Never", **spec) -> dict:
    """A pod whose container `main` runs `python -u -c <code>` in the job image, admitted by
    Pod Security "restricted".

    `container={...}` adds to the container, `metadata={...}` to the metadata, any other
    keyword to the pod spec.
    """
    container = {
        "name": "main",
        "image": IMAGE,
        "command": ["python", "-u", "-c", textwrap.dedent(code)],
        "securityContext": copy.deepcopy(RESTRICTED),
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
    """kubectl against one cluster; `pod_logs` is the kubelet's podLogsDir on our own node."""

    def __init__(self, kubeconfig: Path, kubectl: Path | str, pod_logs: Path | None = None):
        self.kubeconfig, self.kubectl, self.pod_logs = Path(kubeconfig), str(kubectl), pod_logs
        self.pod_s3: str | None = None  # an S3 endpoint as pods reach it, where there is one
        self.node: Node | None = None  # the cluster's own node, where we run it
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
            logs = ""
            if what.startswith("pod/"):
                logs = self("logs", "-n", namespace, what, "--all-containers", check=False)
                logs = f"\nlogs:\n{logs.stdout}{logs.stderr}"
            raise AssertionError(
                f"{what} in {namespace}: not {condition} after {timeout}s: {done.stderr}\n"
                f"{state.stdout}{state.stderr}{logs}"
            )

    def logs(self, namespace: str, pod: str, container: str | None = None) -> str:
        """A container's output: the runs whose log files the kubelet keeps (the last, and the
        one before while it restarts), in order; the current run from `kubectl logs` on another
        cluster."""
        if self.pod_logs is None:
            extra = ["-c", container] if container else []
            return self("logs", "-n", namespace, pod, *extra).stdout
        uid = self.get("pod", "-n", namespace, pod)["metadata"]["uid"]
        folder = self.pod_logs / f"{namespace}_{pod}_{uid}"
        if container is None:
            (folder,) = folder.iterdir()  # the only container
        else:
            folder /= container
        files = sorted(folder.glob("*.log"), key=lambda p: int(p.stem))
        return "".join(cri_log(f.read_text(errors="replace")) for f in files)


def cri_log(text: str) -> str:
    """The output in a CRI log file: each line is `<time> <stream> <P|F> <text>`, where P
    marks a line the runtime split (no newline of its own)."""
    out = []
    for line in text.splitlines():
        _, _, tag, content = ([*line.split(" ", 3), ""])[:4]
        out.append(content if tag == "P" else content + "\n")
    return "".join(out)


class LocalCluster:
    """The control plane, Kueue, KubeRay and the node `n1`, their files in `workdir`."""

    def __init__(self, workdir: Path, bin_dir: Path):
        self.workdir = Path(workdir).resolve()
        self.control_plane = ControlPlane(self.workdir / "control-plane", bin_dir)
        self.kueue = Kueue(self.workdir / "kueue", bin_dir, self.control_plane)
        self.kuberay = KubeRay(self.workdir / "kuberay", bin_dir, self.control_plane)
        self.node = Node(self.workdir / "node", bin_dir, self.control_plane)
        kubectl = Path(bin_dir) / "kubectl"
        self.kube = Kube(self.control_plane.kubeconfig, kubectl, self.node.pod_logs)
        self.kube.log_files = self.logs
        self.kube.node = self.node

    @property
    def logs(self) -> list[Path]:
        planes = ("etcd", "kube-apiserver", "kube-controller-manager", "kube-scheduler")
        return [
            *(self.control_plane.logs / f"{name}.log" for name in planes),
            self.kueue.log,
            self.kuberay.log,
            *(self.node.logs / f"{name}.log" for name in DAEMONS),
        ]

    def start(self) -> LocalCluster:
        t0 = time.monotonic()
        self.control_plane.start()
        try:
            self.kueue.start()
            self.kuberay.start()
            self.node.start()
        except BaseException:
            self.stop()
            raise
        self.start_seconds = time.monotonic() - t0
        print(
            f"cluster ready in {self.start_seconds:.1f}s; logs in {self.workdir}", file=sys.stderr
        )
        return self

    def stop(self) -> None:
        """The node first: Kueue takes its finalizers off the pods the node deletes."""
        self.node.stop()
        self.kuberay.stop()
        self.kueue.stop()
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
        print(f"pods' logs in {cluster.node.pod_logs}; Ctrl-C to stop", file=sys.stderr)
        with contextlib.suppress(KeyboardInterrupt):
            signal.pause()
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
