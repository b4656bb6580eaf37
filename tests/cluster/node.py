"""A real Kubernetes node for the test cluster: containerd + runc + CNI from Debian's packages,
kubelet and kube-proxy from tests/cluster/build.sh, and CoreDNS behind the `kube-dns` Service.

    node = Node(workdir, bin_dir, control_plane)
    node.start()      # the Node is Ready once start() returns
    node.stop()       # every pod's containers, the daemons, their mounts, cgroups, netns, rules

Pods run in containers from the images images/build.sh imported into containerd's root under
$LMFORGE_CACHE (nothing is pulled: no registry is reachable here). All other state is in
`workdir`. The VM's quirks (docs/testing.md): cgroup v1 (failCgroupV1: false, cgroupfs) and no
CAP_SYS_RESOURCE (restrict_oom_score_adj). One node per machine: the bridge `lmf0`, the pod
CIDR and kube-proxy's rules are the host's.
"""

from __future__ import annotations

import contextlib
import fcntl
import json
import os
import re
import shlex
import subprocess
import time
from pathlib import Path

import yaml
from controlplane import ControlPlane, cache_dir, free_port, host_ip, spawn, terminate

NAME = "n1"
POD_CIDR = "10.244.0.0/24"
BRIDGE = "lmf0"
CNI_NETWORK = "lmforge-test"
CLUSTER_DNS = "10.96.0.10"
CNI_BIN = Path("/usr/lib/cni")  # Debian's containernetworking-plugins
PAUSE_IMAGE = "registry.k8s.io/pause:3.10"
TAG = "0.1.0"
IMAGES = (
    PAUSE_IMAGE,
    *(f"ghcr.io/lmforge/lmforge-{n}:{TAG}" for n in ("operator", "trainer", "serve")),
)
LOCK = Path("/run/lmforge-test-node.lock")
CGROUP = Path("/sys/fs/cgroup")
TOOLS = ("containerd", "runc", "ctr", "iptables", "iptables-save", "ip", "conntrack")
DAEMONS = ("containerd", "kubelet", "kube-proxy", "coredns")

# CoreDNS reads Services, EndpointSlices and namespaces as the user system:coredns.
COREDNS_RBAC = """
apiVersion: rbac.authorization.k8s.io/v1
kind: ClusterRole
metadata: {name: "system:coredns"}
rules:
- {apiGroups: [""], resources: [endpoints, services, pods, namespaces], verbs: [list, watch]}
- {apiGroups: [discovery.k8s.io], resources: [endpointslices], verbs: [list, watch]}
---
apiVersion: rbac.authorization.k8s.io/v1
kind: ClusterRoleBinding
metadata: {name: "system:coredns"}
roleRef: {apiGroup: rbac.authorization.k8s.io, kind: ClusterRole, name: "system:coredns"}
subjects: [{apiGroup: rbac.authorization.k8s.io, kind: User, name: "system:coredns"}]
"""


def containerd_root() -> Path:
    """Where images/build.sh imports the images: the content store outlives each node."""
    return cache_dir() / "containerd"


class Node:
    def __init__(self, workdir: Path, bin_dir: Path, control_plane: ControlPlane):
        self.workdir = Path(workdir).resolve()
        self.bin_dir, self.cp = Path(bin_dir), control_plane
        self.ip = host_ip()
        self.logs = self.workdir / "logs"
        self.pod_logs = self.workdir / "pod-logs"
        self.socket = self.workdir / "containerd" / "containerd.sock"
        self.procs: dict[str, subprocess.Popen] = {}
        self._lock: int | None = None
        self._before: dict[str, set[str]] = {}

    # -- configuration ----------------------------------------------------
    def _write(self, relative: str, content: str | dict) -> Path:
        path = self.workdir / relative
        path.parent.mkdir(parents=True, exist_ok=True)
        text = content if isinstance(content, str) else yaml.safe_dump(content, sort_keys=False)
        path.write_text(text)
        return path

    def _containerd_config(self) -> Path:
        state = self.workdir / "containerd"
        cri = "io.containerd.grpc.v1.cri"
        return self._write(
            "containerd/config.toml",
            f"""version = 2
root = "{containerd_root()}"
state = "{state / "state"}"
[grpc]
  address = "{self.socket}"
[plugins."{cri}"]
  sandbox_image = "{PAUSE_IMAGE}"
  # This VM lacks CAP_SYS_RESOURCE: without this every sandbox fails to start.
  restrict_oom_score_adj = true
  [plugins."{cri}".containerd]
    snapshotter = "overlayfs"
    default_runtime_name = "runc"
    [plugins."{cri}".containerd.runtimes.runc]
      runtime_type = "io.containerd.runc.v2"
      [plugins."{cri}".containerd.runtimes.runc.options]
        SystemdCgroup = false
  [plugins."{cri}".cni]
    bin_dir = "{CNI_BIN}"
    conf_dir = "{self.workdir / "cni" / "net.d"}"
""",
        )

    def _cni_config(self) -> None:
        bridge = {
            "type": "bridge",
            "bridge": BRIDGE,
            "isGateway": True,
            "ipMasq": True,
            "hairpinMode": True,  # a pod reaches itself through its Service's ClusterIP
            "ipam": {
                "type": "host-local",
                "ranges": [[{"subnet": POD_CIDR}]],
                "routes": [{"dst": "0.0.0.0/0"}],
                "dataDir": str(self.workdir / "cni" / "ipam"),
            },
        }
        portmap = {"type": "portmap", "capabilities": {"portMappings": True}}
        conflist = {"cniVersion": "1.0.0", "name": CNI_NETWORK, "plugins": [bridge, portmap]}
        self._write("cni/net.d/10-lmforge.conflist", json.dumps(conflist, indent=2))

    def _kubelet_config(self, port: int) -> Path:
        crt, key = self.cp.kubelet_cert(NAME, self.ip)
        config = {
            "apiVersion": "kubelet.config.k8s.io/v1beta1",
            "kind": "KubeletConfiguration",
            # This VM's cgroups are v1.
            "failCgroupV1": False,
            "cgroupDriver": "cgroupfs",
            "containerRuntimeEndpoint": f"unix://{self.socket}",
            "address": self.ip,
            "port": port,
            "readOnlyPort": 0,
            "healthzPort": 0,
            "tlsCertFile": str(crt),
            "tlsPrivateKeyFile": str(key),
            "authentication": {
                "anonymous": {"enabled": False},
                "webhook": {"enabled": True},
                "x509": {"clientCAFile": str(self.cp.ca_cert)},
            },
            "authorization": {"mode": "Webhook"},
            "clusterDNS": [CLUSTER_DNS],
            "clusterDomain": "cluster.local",
            "resolvConf": "",  # pods get cluster DNS only: nothing leaves this machine
            "podLogsDir": str(self.pod_logs),
            "failSwapOn": False,
            # Images cannot be pulled again here: never collect them; evict only when nearly full.
            "imageGCHighThresholdPercent": 100,
            "imageGCLowThresholdPercent": 99,
            "evictionHard": {
                "memory.available": "200Mi",
                "nodefs.available": "1%",
                "imagefs.available": "1%",
                "nodefs.inodesFree": "1%",
            },
            "serializeImagePulls": False,
            "shutdownGracePeriod": "0s",
        }
        return self._write("kubelet/config.yaml", config)

    def _kube_proxy_config(self, kubeconfig: Path) -> Path:
        config = {
            "apiVersion": "kubeproxy.config.k8s.io/v1alpha1",
            "kind": "KubeProxyConfiguration",
            "clientConnection": {"kubeconfig": str(kubeconfig)},
            "hostnameOverride": NAME,
            "mode": "iptables",
            "clusterCIDR": POD_CIDR,
            "healthzBindAddress": f"127.0.0.1:{free_port()}",
            "metricsBindAddress": f"127.0.0.1:{free_port()}",
            # Leave the host's conntrack and route_localnet sysctls alone.
            "conntrack": {
                "maxPerCore": 0,
                "min": 0,
                "tcpEstablishedTimeout": "0s",
                "tcpCloseWaitTimeout": "0s",
            },
            "iptables": {"localhostNodePorts": False, "syncPeriod": "10s", "minSyncPeriod": "0s"},
        }
        return self._write("kube-proxy/config.yaml", config)

    def _cluster_dns(self, port: int) -> Path:
        """CoreDNS on this machine's address, behind the Service kube-system/kube-dns."""
        kubeconfig = self.cp.write_kubeconfig("coredns", "system:coredns")
        self.cp.kubectl("apply", "-f", "-", input=COREDNS_RBAC)
        ports = [("dns", "UDP"), ("dns-tcp", "TCP")]
        service = {
            "apiVersion": "v1",
            "kind": "Service",
            "metadata": {"name": "kube-dns", "namespace": "kube-system"},
            "spec": {
                "clusterIP": CLUSTER_DNS,
                "ports": [
                    {"name": n, "protocol": p, "port": 53, "targetPort": port} for n, p in ports
                ],
            },
        }
        slice_ = {
            "apiVersion": "discovery.k8s.io/v1",
            "kind": "EndpointSlice",
            "metadata": {
                "name": "kube-dns-host",
                "namespace": "kube-system",
                "labels": {
                    "kubernetes.io/service-name": "kube-dns",
                    "endpointslice.kubernetes.io/managed-by": "lmforge-test-node",
                },
            },
            "addressType": "IPv4",
            "endpoints": [{"addresses": [self.ip], "conditions": {"ready": True}}],
            "ports": [{"name": n, "protocol": p, "port": port} for n, p in ports],
        }
        document = {"apiVersion": "v1", "kind": "List", "items": [service, slice_]}
        self.cp.kubectl("apply", "-f", "-", input=json.dumps(document))
        return self._write(
            "coredns/Corefile",
            f""".:{port} {{
    bind {self.ip}
    errors
    kubernetes cluster.local in-addr.arpa ip6.arpa {{
        kubeconfig {kubeconfig} lmforge
        pods insecure
        fallthrough in-addr.arpa ip6.arpa
    }}
    cache 5
}}
""",
        )

    # -- processes --------------------------------------------------------
    def _spawn(self, name: str, *args: str | Path, binary: Path | None = None) -> None:
        command = [str(binary or self.bin_dir / name), *map(str, args)]
        self.procs[name] = spawn(command, self.logs / f"{name}.log")

    def _wait(self, what: str, check, timeout: float) -> None:
        deadline = time.monotonic() + timeout
        while not check():
            for name, p in self.procs.items():
                if p.poll() is not None:
                    raise RuntimeError(f"{name} exited with {p.returncode}; see {self.logs}")
            if time.monotonic() > deadline:
                raise TimeoutError(f"node: {what} not ready after {timeout}s; logs in {self.logs}")
            time.sleep(0.2)

    def ctr(self, *args: str, check: bool = True) -> str:
        command = ["ctr", "--address", str(self.socket), "-n", "k8s.io", *args]
        return subprocess.run(command, check=check, capture_output=True, text=True).stdout

    def start(self, timeout: float = 90) -> Node:
        self._lock = os.open(LOCK, os.O_CREAT | os.O_RDWR)
        try:
            fcntl.flock(self._lock, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            raise RuntimeError(f"another test node runs on this machine ({LOCK})") from None
        self._before = {"chains": _iptables_chains(), "netns": _netns(), "cgroups": _kubepods()}
        try:
            self._start(timeout)
        except BaseException:
            self.stop()
            raise
        return self

    def _start(self, timeout: float) -> None:
        self._cni_config()
        self._spawn("containerd", "--config", self._containerd_config(), binary=Path("containerd"))
        self._wait("containerd", lambda: not subprocess.run(
            ["ctr", "--address", str(self.socket), "version"], capture_output=True).returncode,
            timeout)  # fmt: skip
        missing = [i for i in IMAGES if i not in self.ctr("images", "ls", "-q").split()]
        if missing:
            raise RuntimeError(f"containerd has no {missing}: run images/build.sh")
        self._remove_containers()  # left by a node that was killed

        dns_port = free_port()
        self._spawn("coredns", "-conf", self._cluster_dns(dns_port))
        proxy = self.cp.write_kubeconfig("kube-proxy", "system:kube-proxy")
        self._spawn("kube-proxy", "--config", self._kube_proxy_config(proxy))
        kubeconfig = self.cp.write_kubeconfig(f"node-{NAME}", f"system:node:{NAME}",
                                              ("system:nodes",))  # fmt: skip
        self._spawn(
            "kubelet", "--config", self._kubelet_config(free_port()),
            "--kubeconfig", kubeconfig, "--root-dir", self.workdir / "kubelet",
            "--hostname-override", NAME, "--node-ip", self.ip,
            "--node-labels", "lmforge.dev/test-node=true",
        )  # fmt: skip
        self._wait("Node Ready", self._ready, timeout)

    def _ready(self) -> bool:
        done = self.cp.kubectl("get", "node", NAME, "-o", "json", check=False)
        if done.returncode:
            return False
        conditions = json.loads(done.stdout)["status"].get("conditions", [])
        return any(c["type"] == "Ready" and c["status"] == "True" for c in conditions)

    def stop(self) -> None:
        """Pods first (so the kubelet tears their sandboxes down through CNI), then the
        daemons; then whatever a crash left: containers, mounts, netns, cgroups, rules."""
        if "kubelet" in self.procs and self.procs["kubelet"].poll() is None:
            self.cp.kubectl("delete", "pods", "--all", "--all-namespaces", "--grace-period=0",
                            "--force", "--wait=false", check=False)  # fmt: skip
            deadline = time.monotonic() + 30
            while self._running_containers() and time.monotonic() < deadline:
                time.sleep(0.5)
        for name in ("kubelet", "kube-proxy", "coredns"):
            self._terminate(name)
        if self._before:
            config = self.workdir / "kube-proxy" / "config.yaml"
            subprocess.run([str(self.bin_dir / "kube-proxy"), "--cleanup", "--config", str(config)],
                           capture_output=True)  # fmt: skip
        if "containerd" in self.procs:
            self._remove_containers()
            self._terminate("containerd")
        self._sweep()
        if self._lock is not None:
            os.close(self._lock)
            self._lock = None

    def _terminate(self, name: str) -> None:
        p = self.procs.pop(name, None)
        if p is not None:
            terminate(p)

    def kill(self, container_id: str) -> None:
        """SIGKILL a container (a pod status's containerID, containerd://<id>)."""
        self.ctr("tasks", "kill", "-s", "SIGKILL", container_id.removeprefix("containerd://"))

    def _running_containers(self) -> list[str]:
        lines = self.ctr("tasks", "ls", check=False).splitlines()[1:]
        return [line.split()[0] for line in lines if "RUNNING" in line]

    def _remove_containers(self) -> None:
        for task in self._running_containers():
            self.ctr("tasks", "kill", "-s", "SIGKILL", task, check=False)
        for container in self.ctr("containers", "ls", "-q", check=False).split():
            self.ctr("tasks", "rm", "-f", container, check=False)
            self.ctr("containers", "rm", container, check=False)

    def _sweep(self) -> None:
        if not self._before:
            return
        mounts = [m for m in _mounts() if m.startswith(str(self.workdir))]
        for mount in sorted(mounts, key=len, reverse=True):
            subprocess.run(["umount", "-l", mount], capture_output=True)
        for netns in _netns() - self._before["netns"]:
            subprocess.run(["ip", "netns", "delete", netns], capture_output=True)
        subprocess.run(["ip", "link", "delete", BRIDGE], capture_output=True)
        for table in ("nat", "filter", "mangle"):
            new = _iptables_chains(table) - self._before["chains"]
            _iptables_remove(table, {c for c in new if c.startswith(("CNI-", "KUBE-"))})
        for cgroup in sorted(
            _kubepods() - self._before["cgroups"], key=lambda p: len(p.parts), reverse=True
        ):
            with contextlib.suppress(OSError):
                cgroup.rmdir()
        self._before = {}


def _mounts() -> list[str]:
    with open("/proc/self/mounts") as f:
        return [line.split()[1] for line in f]


def _netns() -> set[str]:
    run = Path("/var/run/netns")
    return {p.name for p in run.iterdir()} if run.is_dir() else set()


def _kubepods() -> set[Path]:
    """Every cgroup under each v1 hierarchy's `kubepods` (the kubelet's, with cgroupfs)."""
    found: set[Path] = set()
    for top in CGROUP.glob("*/kubepods"):
        found |= {top, *(p for p in top.rglob("*") if p.is_dir())}
    return found


def _iptables_chains(table: str | None = None) -> set[str]:
    tables = [table] if table else ["nat", "filter", "mangle"]
    names: set[str] = set()
    for t in tables:
        out = subprocess.run(["iptables-save", "-t", t], capture_output=True, text=True).stdout
        names |= set(re.findall(r"^:(\S+)", out, re.M))
    return names


def _iptables_remove(table: str, chains: set[str]) -> None:
    """Delete every rule that jumps to one of `chains`, then the chains."""
    out = subprocess.run(["iptables-save", "-t", table], capture_output=True, text=True).stdout
    for rule in re.findall(r"^-A (.*)$", out, re.M):
        words = shlex.split(rule)
        if words[0] not in chains and any(
            words[i + 1] in chains for i, w in enumerate(words[:-1]) if w in ("-j", "-g")
        ):
            subprocess.run(["iptables", "-t", table, "-D", *words], capture_output=True)
    for chain in chains:
        subprocess.run(["iptables", "-t", table, "-F", chain], capture_output=True)
    for chain in chains:
        subprocess.run(["iptables", "-t", table, "-X", chain], capture_output=True)
