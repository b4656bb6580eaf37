"""KubeRay (github.com/ray-project/kuberay/ray-operator, tests/cluster/build.sh) for the test
cluster: its CRDs applied and its operator as a local process, like the control plane's daemons.

    kuberay = KubeRay(workdir, bin_dir, control_plane)
    kuberay.start()     # CRDs Established, the operator ready
    kuberay.stop()

KubeRay's own install runs it as a Deployment with a ServiceAccount; here it has a client
certificate of system:masters. Its webhooks are off, as in its default install.
"""

from __future__ import annotations

import json
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

import yaml
from controlplane import ControlPlane, free_port, spawn, terminate


class KubeRay:
    def __init__(self, workdir: Path, bin_dir: Path, control_plane: ControlPlane):
        self.workdir = Path(workdir).resolve()
        self.bin_dir, self.cp = Path(bin_dir), control_plane
        self.log = self.workdir / "logs" / "kuberay.log"
        self.health = f"127.0.0.1:{free_port()}"
        self.proc: subprocess.Popen | None = None

    def start(self, timeout: float = 90) -> KubeRay:
        t0 = time.monotonic()
        try:
            self._start(timeout)
        except BaseException:
            self.stop()
            raise
        print(f"kuberay ready in {time.monotonic() - t0:.1f}s", file=sys.stderr)
        return self

    def _start(self, timeout: float) -> None:
        files = sorted((self.bin_dir / "kuberay-crds").glob("*.yaml"))
        crds = [yaml.safe_load(p.read_text()) for p in files]
        # Server-side: the CRDs are far over client-side apply's annotation limit.
        document = json.dumps({"apiVersion": "v1", "kind": "List", "items": crds})
        self.cp.kubectl("apply", "--server-side", "--force-conflicts", "-f", "-", input=document)
        names = [f"crd/{crd['metadata']['name']}" for crd in crds]
        self.cp.kubectl("wait", "--for=condition=Established", "--timeout=30s", *names)
        kubeconfig = self.cp.write_kubeconfig("kuberay", "kuberay", ("system:masters",))
        command = [
            str(self.bin_dir / "ray-operator"), f"--kubeconfig={kubeconfig}",
            "--enable-leader-election=false", "--metrics-addr=0",
            f"--health-probe-bind-address={self.health}", "--log-stdout-encoder=console",
        ]  # fmt: skip
        self.proc = spawn(command, self.log)
        deadline = time.monotonic() + timeout
        while not self._ready():
            if self.proc.poll() is not None:
                raise RuntimeError(f"kuberay exited with {self.proc.returncode}; see {self.log}")
            if time.monotonic() > deadline:
                raise TimeoutError(f"kuberay: not ready after {timeout}s; see {self.log}")
            time.sleep(0.2)

    def stop(self) -> None:
        if self.proc is not None:
            terminate(self.proc)
            self.proc = None

    def _ready(self) -> bool:
        try:
            with urllib.request.urlopen(f"http://{self.health}/readyz", timeout=5) as r:
                return r.status == 200
        except OSError:
            return False
