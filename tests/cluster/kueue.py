"""Kueue (sigs.k8s.io/kueue, tests/cluster/build.sh) for the test cluster: its controller as a
local process, like the control plane's daemons, with its webhooks called by URL.

    kueue = Kueue(workdir, bin_dir, control_plane)
    kueue.start()     # CRDs applied, webhooks registered, a ResourceFlavor passes them
    kueue.stop()

Kueue's own install runs it as a Deployment behind a Service with certificates it makes
itself; here the API server calls https://127.0.0.1:<port> with a serving certificate from the
cluster CA, so no Service, Secret or internal certificate management is involved. The API
version of every Kueue resource is kueue.x-k8s.io/v1beta2 (v1beta1 is still served, converted
by Kueue's webhook).

Kueue manages plain pods (the "pod" integration: pod groups) and batch/v1 Jobs, and pods only
in namespaces labelled NAMESPACE_LABEL: everywhere else its pod webhook is not even called.
"""

from __future__ import annotations

import base64
import json
import shutil
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

import yaml
from controlplane import ControlPlane, free_port, spawn, terminate

API_VERSION = "kueue.x-k8s.io/v1beta2"
NAMESPACE_LABEL = ("lmforge.dev/kueue", "enabled")
FRAMEWORKS = ("pod", "batch/job")
# The CRDs that Kueue's kustomization gives a conversion webhook (config/components/crd).
CONVERTED = ("localqueues", "clusterqueues", "cohorts", "workloads", "multikueueclusters")
# The webhooks kept: Kueue's own resources' and those of FRAMEWORKS. Kueue answers the other
# frameworks' with a no-op, but the API server would still call it for every Deployment and
# StatefulSet of the test suite.
WEBHOOK_RESOURCES = {("", "pods"), ("batch", "jobs")}
PROBE_FLAVOR = {
    "apiVersion": API_VERSION,
    "kind": "ResourceFlavor",
    "metadata": {"name": "lmforge-kueue-probe"},
}


class Kueue:
    def __init__(self, workdir: Path, bin_dir: Path, control_plane: ControlPlane):
        self.workdir = Path(workdir).resolve()
        self.bin_dir, self.cp = Path(bin_dir), control_plane
        self.manifests = self.bin_dir / "kueue-manifests"
        self.log = self.workdir / "logs" / "kueue.log"
        self.url = f"https://127.0.0.1:{free_port()}"
        self.health = f"127.0.0.1:{free_port()}"
        self.proc: subprocess.Popen | None = None

    def start(self, timeout: float = 90) -> Kueue:
        t0 = time.monotonic()
        try:
            self._start(timeout)
        except BaseException:
            self.stop()
            raise
        print(f"kueue ready in {time.monotonic() - t0:.1f}s at {self.url}", file=sys.stderr)
        return self

    def _start(self, timeout: float) -> None:
        crds = self._crds()
        self._apply(crds)
        names = [f"crd/{crd['metadata']['name']}" for crd in crds]
        self.cp.kubectl("wait", "--for=condition=Established", "--timeout=30s", *names)
        self._apply(self._webhooks())
        kubeconfig = self.cp.write_kubeconfig("kueue", "kueue", ("system:masters",))
        kueue = [str(self.bin_dir / "kueue"), f"--config={self._config()}",
                 f"--kubeconfig={kubeconfig}"]  # fmt: skip
        # Without internal certificate management Kueue reads its metrics server's certificate
        # from /etc/kueue/metrics/certs, a path fixed in its main.go, even with the server off:
        # it sees workdir/etc over the host's /etc, in a mount namespace of its own.
        (self.workdir / "etc-work").mkdir(exist_ok=True)
        mount = 'mount -t overlay overlay -o "lowerdir=/etc,upperdir=$1,workdir=$2" /etc'
        command = ["unshare", "--mount", "--propagation", "private", "sh", "-c",
                   f'{mount} && shift 2 && exec "$@"', "sh", str(self.workdir / "etc"),
                   str(self.workdir / "etc-work"), *kueue]  # fmt: skip
        self.proc = spawn(command, self.log)
        self._wait("/readyz", self._ready, timeout)
        # Through the API server: its webhooks reach Kueue and its certificate is trusted.
        self._wait("a ResourceFlavor through the webhooks", self._admits, timeout)

    def stop(self) -> None:
        if self.proc is not None:
            terminate(self.proc)
            self.proc = None

    # -- manifests --------------------------------------------------------
    def _apply(self, objects: list[dict]) -> None:
        """Server-side: the Workload CRD is far over client-side apply's annotation limit."""
        document = json.dumps({"apiVersion": "v1", "kind": "List", "items": objects})
        self.cp.kubectl("apply", "--server-side", "--force-conflicts", "-f", "-", input=document)

    def _crds(self) -> list[dict]:
        files = sorted((self.manifests / "crds").glob("*.yaml"))
        crds = [yaml.safe_load(p.read_text()) for p in files]
        for crd in crds:
            if crd["spec"]["names"]["plural"] in CONVERTED:
                crd["spec"]["conversion"] = {
                    "strategy": "Webhook",
                    "webhook": {
                        "clientConfig": self._client_config("/convert"),
                        "conversionReviewVersions": ["v1"],
                    },
                }
        return crds

    def _webhooks(self) -> list[dict]:
        """Kueue's two webhook configurations, calling self.url instead of a Service."""
        text = (self.manifests / "webhook.yaml").read_text()
        configurations = [d for d in yaml.safe_load_all(text) if d]
        key, value = NAMESPACE_LABEL
        for configuration in configurations:
            kept = []
            for webhook in configuration["webhooks"]:
                rule = webhook["rules"][0]
                group, resource = rule["apiGroups"][0], rule["resources"][0]
                if group != "kueue.x-k8s.io" and (group, resource) not in WEBHOOK_RESOURCES:
                    continue
                path = webhook["clientConfig"]["service"]["path"]
                webhook["clientConfig"] = self._client_config(path)
                if resource == "pods":
                    webhook["namespaceSelector"] = {"matchLabels": {key: value}}
                kept.append(webhook)
            configuration["webhooks"] = kept
        return configurations

    def _client_config(self, path: str) -> dict:
        ca = base64.b64encode(self.cp.ca_cert.read_bytes()).decode()
        return {"url": self.url + path, "caBundle": ca}

    def _config(self) -> Path:
        """Kueue's Configuration: one replica (no leader election), no metrics server, no
        visibility API server; the webhooks' certificate (the metrics server's too) in certDir."""
        certs = self.workdir / "etc" / "kueue" / "metrics" / "certs"
        certs.mkdir(parents=True, exist_ok=True)
        crt, key = self.cp.issue_cert("kueue-webhook", "kueue-webhook", server=True,
                                      sans=("IP:127.0.0.1", f"IP:{self.cp.ip}"))  # fmt: skip
        shutil.copy(crt, certs / "tls.crt")
        shutil.copy(key, certs / "tls.key")
        host, port = self.url.removeprefix("https://").split(":")
        name, value = NAMESPACE_LABEL
        config = {
            "apiVersion": "config.kueue.x-k8s.io/v1beta2",
            "kind": "Configuration",
            "leaderElection": {"leaderElect": False},
            "webhook": {"host": host, "port": int(port), "certDir": str(certs)},
            "health": {"healthProbeBindAddress": self.health},
            "metrics": {"bindAddress": "0"},
            "internalCertManagement": {"enable": False},
            "managedJobsNamespaceSelector": {"matchLabels": {name: value}},
            "integrations": {"frameworks": list(FRAMEWORKS)},
            "featureGates": {"VisibilityOnDemand": False},
        }
        path = self.workdir / "config.yaml"
        path.write_text(yaml.safe_dump(config, sort_keys=False))
        return path

    # -- readiness --------------------------------------------------------
    def _ready(self) -> bool:
        try:
            with urllib.request.urlopen(f"http://{self.health}/readyz", timeout=5) as r:
                return r.status == 200
        except OSError:
            return False

    def _admits(self) -> bool:
        done = self.cp.kubectl("create", "--dry-run=server", "-f", "-",
                               input=json.dumps(PROBE_FLAVOR), check=False)  # fmt: skip
        return done.returncode == 0

    def _wait(self, what: str, check, timeout: float) -> None:
        deadline = time.monotonic() + timeout
        while not check():
            if self.proc.poll() is not None:
                raise RuntimeError(f"kueue exited with {self.proc.returncode}; see {self.log}")
            if time.monotonic() > deadline:
                raise TimeoutError(f"kueue: {what} not ready after {timeout}s; see {self.log}")
            time.sleep(0.2)
