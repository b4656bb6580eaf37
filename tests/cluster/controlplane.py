"""A real single-node Kubernetes control plane for integration tests.

etcd, kube-apiserver, kube-controller-manager and kube-scheduler run as local
processes with free ports (the API server on every address, so that pods reach it
through the `kubernetes` Service at this machine's address); certificates, keys,
kubeconfigs, data and logs live in ``workdir``.  Binaries come from
``tests/cluster/build.sh``.

    with ControlPlane(workdir, bin_dir) as cp:
        subprocess.run(["kubectl", "--kubeconfig", cp.kubeconfig, "get", "ns"])

    python tests/cluster/controlplane.py up [--workdir DIR]
"""

from __future__ import annotations

import base64
import contextlib
import ctypes
import os
import re
import signal
import socket
import ssl
import subprocess
import sys
import tempfile
import time
import urllib.error
import urllib.request
from pathlib import Path

import yaml

HERE = Path(__file__).resolve().parent
K8S_VERSION = "v1.35.4"
SERVICE_CIDR = "10.96.0.0/16"
SA_ISSUER = "https://kubernetes.default.svc.cluster.local"


def cache_dir() -> Path:
    """Where build.sh and images/build.sh keep what they build."""
    return Path(os.environ.get("LMFORGE_CACHE") or Path.home() / ".cache" / "lmforge")


def default_bin_dir() -> Path:
    return cache_dir() / "bin" / f"k8s-{K8S_VERSION}"


def build() -> Path:
    """Run build.sh (seconds when cached) and return the bin dir."""
    out = subprocess.run(
        ["bash", str(HERE / "build.sh")], check=True, stdout=subprocess.PIPE, text=True
    ).stdout
    return Path(out.strip().splitlines()[-1])


def host_ip() -> str:
    """This machine's address on its default route: where pods reach the API server (through
    the `kubernetes` Service), the kubelet, CoreDNS and the tests' S3 server."""
    out = subprocess.run(["ip", "-4", "route", "get", "1.1.1.1"], capture_output=True, text=True)
    found = re.search(r"\bsrc (\S+)", out.stdout)
    if not found:
        out = subprocess.run(["ip", "-4", "-o", "addr", "show", "scope", "global"],
                             capture_output=True, text=True)  # fmt: skip
        found = re.search(r"inet (\S+)/", out.stdout)
    if not found:
        raise RuntimeError("no IPv4 address besides loopback: the test node needs one")
    return found[1]


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _openssl(*args: str) -> None:
    subprocess.run(["openssl", *args], check=True, capture_output=True)


def die_with_parent() -> None:
    # Children get SIGKILL if the test process dies without calling stop().
    ctypes.CDLL(None, use_errno=True).prctl(1, int(signal.SIGKILL))  # PR_SET_PDEATHSIG


def spawn(command: list[str], log: Path) -> subprocess.Popen:
    """Start a daemon of the test cluster in its own session, its output appended to `log`."""
    log.parent.mkdir(parents=True, exist_ok=True)
    with open(log, "ab") as out:
        return subprocess.Popen(
            command, stdin=subprocess.DEVNULL, stdout=out, stderr=subprocess.STDOUT,
            start_new_session=True, preexec_fn=die_with_parent,
        )  # fmt: skip


def terminate(p: subprocess.Popen, grace: float = 10) -> None:
    """SIGTERM the daemon's process group, and SIGKILL it after `grace` seconds."""
    for sig, wait in ((signal.SIGTERM, grace), (signal.SIGKILL, 5)):
        with contextlib.suppress(ProcessLookupError):
            os.killpg(p.pid, sig)
        with contextlib.suppress(subprocess.TimeoutExpired):
            p.wait(wait)
            return


class ControlPlane:
    def __init__(self, workdir: str | os.PathLike, bin_dir: str | os.PathLike | None = None):
        self.workdir = Path(workdir).resolve()
        self.bin_dir = Path(bin_dir) if bin_dir else default_bin_dir()
        self.pki = self.workdir / "pki"
        self.logs = self.workdir / "logs"
        self.kubeconfig = self.workdir / "admin.kubeconfig"
        self.etcd_port = free_port()
        self.port = free_port()
        self.ip = host_ip()
        self.server = f"https://127.0.0.1:{self.port}"
        self.ca_cert = self.pki / "ca.crt"
        self.procs: dict[str, subprocess.Popen] = {}
        self.start_seconds: float | None = None

    # -- certificates and kubeconfigs ------------------------------------
    def _key(self, name: str) -> Path:
        key = self.pki / f"{name}.key"
        if not key.exists():
            _openssl(
                "genpkey",
                "-algorithm",
                "EC",
                "-pkeyopt",
                "ec_paramgen_curve:P-256",
                "-out",
                str(key),
            )
        return key

    def issue_cert(
        self,
        name: str,
        cn: str,
        orgs: tuple[str, ...] = (),
        sans: tuple[str, ...] = (),
        server: bool = False,
    ) -> tuple[Path, Path]:
        """Return (cert, key) signed by the cluster CA, creating them if missing."""
        crt = self.pki / f"{name}.crt"
        key = self._key(name)
        if crt.exists():
            return crt, key
        subj = "".join(f"/O={o}" for o in orgs) + f"/CN={cn}"
        ext = self.pki / f"{name}.ext"
        lines = [
            "basicConstraints=CA:FALSE",
            "keyUsage=critical,digitalSignature,keyEncipherment",
            "extendedKeyUsage=" + ("serverAuth" if server else "clientAuth"),
        ]
        if sans:
            lines.append("subjectAltName=" + ",".join(sans))
        ext.write_text("\n".join(lines) + "\n")
        csr = self.pki / f"{name}.csr"
        _openssl("req", "-new", "-key", str(key), "-subj", subj, "-out", str(csr))
        _openssl(
            "x509",
            "-req",
            "-in",
            str(csr),
            "-CA",
            str(self.ca_cert),
            "-CAkey",
            str(self.pki / "ca.key"),
            "-CAcreateserial",
            "-days",
            "3650",
            "-sha256",
            "-extfile",
            str(ext),
            "-out",
            str(crt),
        )
        csr.unlink()
        ext.unlink()
        return crt, key

    def kubelet_cert(self, node: str, ip: str) -> tuple[Path, Path]:
        """A serving certificate for the kubelet API of node `node` at `ip`, where the API
        server reaches it (--kubelet-certificate-authority is the cluster CA)."""
        return self.issue_cert(
            f"kubelet-{node}",
            f"system:node:{node}",
            ("system:nodes",),
            sans=(f"IP:{ip}", f"DNS:{node}"),
            server=True,
        )

    def kubectl(self, *args: str, input: str | None = None, check: bool = True):
        command = [str(self.bin_dir / "kubectl"), "--kubeconfig", str(self.kubeconfig), *args]
        done = subprocess.run(command, input=input, capture_output=True, text=True, timeout=60)
        if check and done.returncode:
            raise RuntimeError(f"kubectl {' '.join(args)}: {done.stderr}")
        return done

    def write_kubeconfig(self, name: str, user: str, groups: tuple[str, ...] = ()) -> Path:
        """Write workdir/<name>.kubeconfig for a client cert with CN=user, O=groups."""
        crt, key = self.issue_cert(name, user, groups)
        b64 = lambda p: base64.b64encode(p.read_bytes()).decode()  # noqa: E731
        cfg = {
            "apiVersion": "v1",
            "kind": "Config",
            "current-context": "lmforge",
            "clusters": [
                {
                    "name": "lmforge",
                    "cluster": {
                        "server": self.server,
                        "certificate-authority-data": b64(self.ca_cert),
                    },
                }
            ],
            "users": [
                {
                    "name": user,
                    "user": {"client-certificate-data": b64(crt), "client-key-data": b64(key)},
                }
            ],
            "contexts": [{"name": "lmforge", "context": {"cluster": "lmforge", "user": user}}],
        }
        path = self.workdir / f"{name}.kubeconfig"
        path.write_text(yaml.safe_dump(cfg, sort_keys=False))
        return path

    def _pki(self) -> None:
        self.pki.mkdir(parents=True, exist_ok=True)
        if not self.ca_cert.exists():
            _openssl(
                "req",
                "-x509",
                "-new",
                "-key",
                str(self._key("ca")),
                "-subj",
                "/CN=lmforge-ca",
                "-addext",
                "basicConstraints=critical,CA:TRUE",
                "-addext",
                "keyUsage=critical,keyCertSign,cRLSign",
                "-days",
                "3650",
                "-sha256",
                "-out",
                str(self.ca_cert),
            )
        self.issue_cert(
            "apiserver",
            "kube-apiserver",
            server=True,
            sans=(
                "IP:127.0.0.1",
                "IP:10.96.0.1",  # the `kubernetes` Service
                f"IP:{self.ip}",  # its endpoint
                "DNS:localhost",
                "DNS:kubernetes",
                "DNS:kubernetes.default",
                "DNS:kubernetes.default.svc",
                "DNS:kubernetes.default.svc.cluster.local",
            ),
        )
        # The API server's client certificate for the kubelet API (pods/log): the user the test
        # node authorizes with a SubjectAccessReview, in system:masters as kubeadm once made it.
        self.issue_cert(
            "apiserver-kubelet-client", "kube-apiserver-kubelet-client", ("system:masters",)
        )
        sa = self._key("sa")
        sa_pub = self.pki / "sa.pub"
        if not sa_pub.exists():
            _openssl("pkey", "-in", str(sa), "-pubout", "-out", str(sa_pub))

    # -- processes --------------------------------------------------------
    def _spawn(self, name: str, *args: str) -> None:
        self.procs[name] = spawn([str(self.bin_dir / name), *args], self.logs / f"{name}.log")

    def _get(self, path: str, ctx: ssl.SSLContext) -> int:
        try:
            with urllib.request.urlopen(self.server + path, context=ctx, timeout=5) as r:
                return r.status
        except urllib.error.HTTPError as e:
            return e.code
        except OSError:
            return 0

    def _wait(self, what: str, check, timeout: float) -> None:
        deadline = time.monotonic() + timeout
        while not check():
            for name, p in self.procs.items():
                if p.poll() is not None:
                    raise RuntimeError(
                        f"{name} exited with {p.returncode}; see {self.logs}/{name}.log"
                    )
            if time.monotonic() > deadline:
                raise TimeoutError(
                    f"control plane: {what} not ready after {timeout}s; logs in {self.logs}"
                )
            time.sleep(0.2)

    def start(self, timeout: float = 120) -> ControlPlane:
        t0 = time.monotonic()
        try:
            self._start(timeout)
        except BaseException:
            self.stop()
            raise
        self.start_seconds = time.monotonic() - t0
        print(
            f"control plane ready in {self.start_seconds:.1f}s at {self.server} "
            f"(kubeconfig {self.kubeconfig})",
            file=sys.stderr,
        )
        return self

    def _spawn_etcd(self) -> None:
        etcd_url = f"http://127.0.0.1:{self.etcd_port}"
        peer_url = f"http://127.0.0.1:{free_port()}"
        self._spawn(
            "etcd",
            "--name=lmforge",
            f"--data-dir={self.workdir / 'etcd'}",
            f"--listen-client-urls={etcd_url}",
            f"--advertise-client-urls={etcd_url}",
            f"--listen-peer-urls={peer_url}",
            f"--initial-advertise-peer-urls={peer_url}",
            f"--initial-cluster=lmforge={peer_url}",
            "--unsafe-no-fsync",
            "--log-level=warn",
        )

    def _spawn_apiserver(self) -> None:
        pki = self.pki
        etcd_url = f"http://127.0.0.1:{self.etcd_port}"
        self._spawn(
            "kube-apiserver",
            "--bind-address=0.0.0.0",
            f"--advertise-address={self.ip}",
            f"--secure-port={self.port}",
            f"--etcd-servers={etcd_url}",
            f"--tls-cert-file={pki / 'apiserver.crt'}",
            f"--tls-private-key-file={pki / 'apiserver.key'}",
            f"--client-ca-file={self.ca_cert}",
            f"--service-account-issuer={SA_ISSUER}",
            f"--service-account-key-file={pki / 'sa.pub'}",
            f"--service-account-signing-key-file={pki / 'sa.key'}",
            f"--service-cluster-ip-range={SERVICE_CIDR}",
            "--authorization-mode=Node,RBAC",
            "--enable-admission-plugins=NodeRestriction",
            "--profiling=false",
            # pods/log, exec, port-forward go to the kubelet at the node's InternalIP; its
            # certificate is checked.
            f"--kubelet-client-certificate={pki / 'apiserver-kubelet-client.crt'}",
            f"--kubelet-client-key={pki / 'apiserver-kubelet-client.key'}",
            f"--kubelet-certificate-authority={self.ca_cert}",
            "--kubelet-preferred-address-types=InternalIP",
        )

    def _start(self, timeout: float) -> None:
        self.workdir.mkdir(parents=True, exist_ok=True)
        self._pki()
        pki = self.pki
        admin_crt, admin_key = self.issue_cert("admin", "kubernetes-admin", ("system:masters",))
        self.write_kubeconfig("admin", "kubernetes-admin", ("system:masters",))
        cm_kc = self.write_kubeconfig("controller-manager", "system:kube-controller-manager")
        sched_kc = self.write_kubeconfig("scheduler", "system:kube-scheduler")

        self._spawn_etcd()
        self._spawn_apiserver()

        ctx = ssl.create_default_context(cafile=str(self.ca_cert))
        ctx.load_cert_chain(str(admin_crt), str(admin_key))
        self._wait("kube-apiserver /readyz", lambda: self._get("/readyz", ctx) == 200, timeout)

        # Single instance: no leader election; no HTTPS endpoint (so no port clashes).
        common = ("--leader-elect=false", "--secure-port=0")
        self._spawn(
            "kube-controller-manager",
            f"--kubeconfig={cm_kc}",
            *common,
            "--use-service-account-credentials=true",
            f"--service-account-private-key-file={pki / 'sa.key'}",
            f"--root-ca-file={self.ca_cert}",
            f"--cluster-signing-cert-file={self.ca_cert}",
            f"--cluster-signing-key-file={pki / 'ca.key'}",
            f"--service-cluster-ip-range={SERVICE_CIDR}",
            f"--flex-volume-plugin-dir={self.workdir / 'flexvolume'}",
        )  # default is /usr/libexec
        self._spawn("kube-scheduler", f"--kubeconfig={sched_kc}", *common)

        sa = "/api/v1/namespaces/default/serviceaccounts/default"
        self._wait("default serviceaccount", lambda: self._get(sa, ctx) == 200, timeout)

    def stop(self, grace: float = 10) -> None:
        for name in reversed(list(self.procs)):
            terminate(self.procs[name], grace)
        self.procs.clear()

    def __enter__(self) -> ControlPlane:
        return self.start()

    def __exit__(self, *exc) -> None:
        self.stop()


def main(argv: list[str]) -> int:
    if argv[:1] != ["up"] or len(argv) not in (1, 3) or (len(argv) == 3 and argv[1] != "--workdir"):
        print("usage: controlplane.py up [--workdir DIR]", file=sys.stderr)
        return 2
    workdir = argv[2] if len(argv) == 3 else tempfile.mkdtemp(prefix="lmforge-cp-")
    cp = ControlPlane(workdir, build())
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(0))
    with cp:
        print(cp.kubeconfig, flush=True)
        print(
            f"export KUBECONFIG={cp.kubeconfig}; logs in {cp.logs}; Ctrl-C to stop", file=sys.stderr
        )
        with contextlib.suppress(KeyboardInterrupt):
            signal.pause()
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
