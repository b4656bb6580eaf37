"""A test node: registers a Node, keeps its Lease, and runs the pods bound to it as processes.

    python tests/cluster/node.py --kubeconfig KUBECONFIG --name n1 --workdir DIR \\
        [--cpu 16] [--memory 64Gi] [--forward 9000=127.0.0.1:PORT ...] \\
        [--tls-cert-file CRT --tls-private-key-file KEY --client-ca-file CA [--port 0]]

Needs root (namespaces, mounts).  Each container's `command` + `args` runs as given with this
Python environment in place of the image (`python` is this interpreter), inside the pod's own
network and UTS namespaces (podnet.py) and a mount namespace of its own, where /etc/hosts (the
stand-in for cluster DNS), /etc/resolv.conf and the pod's volumes are bind-mounted.  Status,
restarts and deletion follow the kubelet.  Files live in DIR/pods/<ns>_<name>_<uid>/, logs in
its logs/<container>/<restart>.log.  With a serving certificate, the kubelet API that
`kubectl logs` needs is served on 127.0.0.1 (kubelet.py).  DIR/node.json says the node is up.
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import platform
import shlex
import shutil
import signal
import sys
import threading
import time
import urllib.parse
from datetime import UTC, datetime
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

from kubeapi import MERGE, Api, ApiError
from kubelet import KubeletServer
from podnet import PREFIX, PREFIX_LEN, PodNetwork
from podspec import API_PORT, GATEWAY, data_of
from podworker import PodWorker

K8S_VERSION = "v1.36.3"
LEASE_SECONDS = 40
TOOLS = ("setpriv", "unshare", "nsenter", "ip", "mount", "sh", "bash", "sleep", "hostname")
log = logging.getLogger("node")


def now(micro: bool = False) -> str:
    t = datetime.now(UTC)
    return t.strftime("%Y-%m-%dT%H:%M:%S.%fZ") if micro else t.strftime("%Y-%m-%dT%H:%M:%SZ")


class Node:
    def __init__(self, api: Api, name: str, workdir: Path, cpu: str, memory: str):
        self.api, self.name, self.workdir = api, name, workdir
        self.resources = {"cpu": cpu, "memory": memory, "pods": "110", "ephemeral-storage": "100Gi"}
        self.net = PodNetwork()
        self.workers: dict[str, PodWorker] = {}
        self.services: list[dict] = []
        self.kubelet: KubeletServer | None = None
        self.slices: list[dict] = []
        # Containers find `python` (this interpreter: a wrapper, not a symlink, so that a
        # virtual environment is still found from its path), then its `torchrun`, `lmforge`.
        bindir = workdir / "bin"
        bindir.mkdir(parents=True, exist_ok=True)
        for alias in ("python", "python3"):
            (bindir / alias).write_text(f'#!/bin/sh\nexec {shlex.quote(sys.executable)} "$@"\n')
            (bindir / alias).chmod(0o755)
        system = ["/usr/local/sbin", "/usr/local/bin", "/usr/sbin", "/usr/bin", "/sbin", "/bin"]
        self.path = os.pathsep.join([str(bindir), str(Path(sys.executable).parent), *system])
        # What the image would hold: the aliases, this interpreter's environment, and this
        # checkout (an editable install imports from it). A pod volume mounted over a folder
        # that holds one of them (the Helm chart's emptyDir at /tmp, with the checkout under
        # /tmp) must not hide it: PodWorker binds them back on top.
        here = Path(__file__).resolve()
        self.image_paths = sorted({bindir.resolve(), Path(sys.prefix).resolve(), here.parents[2]})

    # -- the Node object and its Lease --------------------------------------------------------
    def _status(self) -> dict:
        t = now()
        conditions = [
            ("MemoryPressure", "False", "KubeletHasSufficientMemory"),
            ("DiskPressure", "False", "KubeletHasNoDiskPressure"),
            ("PIDPressure", "False", "KubeletHasSufficientPID"),
            ("Ready", "True", "KubeletReady"),
        ]
        times = {"lastHeartbeatTime": t, "lastTransitionTime": t}
        # The API server (host network namespace) reaches the kubelet API on loopback; pods see
        # the node as 10.244.0.1 (their status.hostIP), where nothing of the kubelet listens.
        address = self.kubelet.host if self.kubelet else GATEWAY
        port = self.kubelet.port if self.kubelet else 0
        return {
            "capacity": self.resources,
            "allocatable": self.resources,
            "conditions": [
                {"type": kind, "status": status, "reason": reason, "message": "test node", **times}
                for kind, status, reason in conditions
            ],
            "addresses": [
                {"type": "InternalIP", "address": address},
                {"type": "Hostname", "address": self.name},
            ],
            "daemonEndpoints": {"kubeletEndpoint": {"Port": port}},
            "nodeInfo": {
                **dict.fromkeys(("machineID", "systemUUID", "bootID", "kubeProxyVersion"), ""),
                "kernelVersion": platform.release(),
                "osImage": "lmforge test node",
                "containerRuntimeVersion": "lmforge-process://1",
                "kubeletVersion": K8S_VERSION,
                "operatingSystem": "linux",
                "architecture": "amd64",
            },
        }

    def register(self) -> None:
        body = {
            "apiVersion": "v1",
            "kind": "Node",
            "metadata": {
                "name": self.name,
                "labels": {
                    "kubernetes.io/hostname": self.name,
                    "kubernetes.io/os": "linux",
                    "kubernetes.io/arch": "amd64",
                    "lmforge.dev/test-node": "true",
                },
            },
            "spec": {"podCIDR": f"{PREFIX}0/{PREFIX_LEN}", "podCIDRs": [f"{PREFIX}0/{PREFIX_LEN}"]},
            "status": self._status(),
        }
        try:
            node = self.api.request("POST", "/api/v1/nodes", body)
        except ApiError as e:
            if e.status != 409:
                raise
            path = f"/api/v1/nodes/{self.name}/status"
            node = self.api.request("PATCH", path, {"status": self._status()}, MERGE)
        self.uid = node["metadata"]["uid"]
        log.info("registered node %s (uid %s)", self.name, self.uid)

    def renew_lease(self) -> None:
        namespace = "/apis/coordination.k8s.io/v1/namespaces/kube-node-lease/leases"
        spec = {"holderIdentity": self.name, "leaseDurationSeconds": LEASE_SECONDS}
        owner = {"apiVersion": "v1", "kind": "Node", "name": self.name, "uid": self.uid}
        while True:
            spec["renewTime"] = now(micro=True)
            try:
                try:
                    self.api.request("PATCH", f"{namespace}/{self.name}", {"spec": spec}, MERGE)
                except ApiError as e:
                    if e.status != 404:
                        raise
                    meta = {"name": self.name, "ownerReferences": [owner]}
                    self.api.request("POST", namespace, {"metadata": meta, "spec": spec})
            except (ApiError, OSError) as e:
                log.warning("lease renewal failed: %s", e)
            time.sleep(LEASE_SECONDS / 4)

    # -- what pods need from the cluster -------------------------------------------------------
    def fetch(self, kind: str, namespace: str, name: str) -> dict[str, bytes] | None:
        try:
            obj = self.api.get(f"/api/v1/namespaces/{namespace}/{kind}/{name}")
        except ApiError as e:
            if e.status == 404:
                return None
            raise
        return data_of(kind, obj)

    def refresh_dns(self) -> None:
        """Rewrite each running pod's /etc/hosts from the headless Services' EndpointSlices."""
        while True:
            live = [w for w in list(self.workers.values()) if w.running]
            if live:
                try:
                    self.services = self.api.get("/api/v1/services")["items"]
                    self.slices = self.api.get("/apis/discovery.k8s.io/v1/endpointslices")["items"]
                except (ApiError, OSError) as e:
                    log.warning("cannot list services for /etc/hosts: %s", e)
                for worker in live:
                    try:
                        worker.write_hosts()
                    except OSError as e:
                        log.warning("pod %s: /etc/hosts not written: %s", worker.name, e)
            time.sleep(1)

    # -- pods ----------------------------------------------------------------------------------
    def on_pod(self, kind: str, pod: dict) -> None:
        uid = pod["metadata"]["uid"]
        worker = self.workers.get(uid)
        if kind == "DELETED":
            if worker:
                worker.vanish()
                del self.workers[uid]
        elif worker:
            worker.update(pod)
        elif pod["metadata"].get("deletionTimestamp"):
            self.delete_now(pod)  # never started here (e.g. this node restarted)
        elif pod.get("status", {}).get("phase") not in ("Succeeded", "Failed"):
            self.workers[uid] = PodWorker(self, pod)
            self.workers[uid].start()

    def delete_now(self, pod: dict) -> None:
        """What the kubelet does once a pod's processes are gone: delete it with no grace."""
        meta = pod["metadata"]
        path = f"/api/v1/namespaces/{meta['namespace']}/pods/{meta['name']}"
        body = {"gracePeriodSeconds": 0, "preconditions": {"uid": meta["uid"]}}
        try:
            self.api.request("DELETE", path, body)
        except ApiError as e:
            if e.status not in (404, 409):
                log.warning("cannot delete pod %s/%s: %s", meta["namespace"], meta["name"], e)

    def watch_pods(self) -> None:
        selector = f"spec.nodeName={self.name}"
        while True:
            try:
                listing = self.api.get("/api/v1/pods", fieldSelector=selector)
                seen = {p["metadata"]["uid"] for p in listing["items"]}
                for uid in set(self.workers) - seen:
                    self.on_pod("DELETED", self.workers[uid].pod)
                for pod in listing["items"]:
                    self.on_pod("MODIFIED", pod)
                version = listing["metadata"]["resourceVersion"]
                while True:
                    events = self.api.watch(
                        "/api/v1/pods", fieldSelector=selector, resourceVersion=version
                    )
                    for event in events:
                        obj = event["object"]
                        if event["type"] == "ERROR":  # e.g. 410 Gone: list again
                            raise ApiError(obj.get("code", 0), "WATCH", "pods", obj.get("message"))
                        version = obj["metadata"]["resourceVersion"]
                        if event["type"] != "BOOKMARK":
                            self.on_pod(event["type"], obj)
            except (ApiError, OSError, ValueError) as e:
                log.warning("pod watch ended (%s); listing again", e)
                time.sleep(1)

    def shutdown(self) -> None:
        for worker in list(self.workers.values()):
            worker.kill()
        self.net.close()


def forward(text: str) -> tuple[int, tuple[str, int]]:
    """PORT=HOST:PORT, e.g. 9000=127.0.0.1:41234."""
    port, _, target = text.partition("=")
    host, _, target_port = target.rpartition(":")
    if not (port.isdigit() and host and target_port.isdigit()):
        raise argparse.ArgumentTypeError(f"expected PORT=HOST:PORT, got {text!r}")
    return int(port), (host, int(target_port))


def parse_args(argv: list[str]) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--kubeconfig", required=True)
    parser.add_argument("--name", required=True)
    parser.add_argument("--workdir", required=True, type=Path)
    parser.add_argument("--cpu", default="16", help="advertised, not enforced")
    parser.add_argument("--memory", default="64Gi", help="advertised, not enforced")
    parser.add_argument(
        "--forward",
        action="append",
        default=[],
        type=forward,
        metavar="PORT=HOST:PORT",
        help=f"make a loopback address of this machine reachable from pods at {GATEWAY}:PORT",
    )
    kubelet = parser.add_argument_group("kubelet API (kubectl logs); served when a cert is given")
    kubelet.add_argument("--tls-cert-file", help="serving certificate (SAN IP:127.0.0.1)")
    kubelet.add_argument("--tls-private-key-file")
    kubelet.add_argument("--client-ca-file", help="CA of the API server's client certificate")
    kubelet.add_argument("--address", default="127.0.0.1", help="where the API server reaches it")
    kubelet.add_argument("--port", type=int, default=0, help="0: a free port")
    args = parser.parse_args(argv)
    tls = (args.tls_cert_file, args.tls_private_key_file, args.client_ca_file)
    if any(tls) and not all(tls):
        parser.error("--tls-cert-file, --tls-private-key-file and --client-ca-file go together")
    return args


def preflight() -> None:
    missing = [tool for tool in TOOLS if not shutil.which(tool)]
    if missing:
        raise SystemExit(f"node: missing tools {missing} (apt-get install util-linux iproute2)")
    if os.geteuid() != 0:
        raise SystemExit("node: must run as root (network and mount namespaces)")


def main(argv: list[str]) -> int:
    args = parse_args(argv)
    logging.basicConfig(
        level=logging.INFO, format="%(asctime)s %(threadName)s %(levelname)s %(message)s"
    )
    preflight()
    (args.workdir / "node.json").unlink(missing_ok=True)  # written again once this node is up
    api = Api(args.kubeconfig)
    node = Node(api, args.name, args.workdir.resolve(), args.cpu, args.memory)
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(0))
    try:
        server = urllib.parse.urlsplit(api.server)
        node.net.forward(API_PORT, (server.hostname, server.port or 443))
        for port, target in args.forward:
            node.net.forward(port, target)
        if args.tls_cert_file:
            node.kubelet = KubeletServer(
                node,
                args.address,
                args.port,
                args.tls_cert_file,
                args.tls_private_key_file,
                args.client_ca_file,
            )
            node.kubelet.start()
        node.register()
        threading.Thread(target=node.renew_lease, name="lease", daemon=True).start()
        threading.Thread(target=node.refresh_dns, name="dns", daemon=True).start()
        info = {"name": node.name, "pid": os.getpid(), "netns": node.net.netns, "gateway": GATEWAY}
        if node.kubelet:
            info["kubelet"] = f"https://{node.kubelet.host}:{node.kubelet.port}"
        (node.workdir / "node.json").write_text(json.dumps(info))
        log.info("node ready: %s", json.dumps(info))
        node.watch_pods()
    finally:
        node.shutdown()
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
