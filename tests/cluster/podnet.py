"""The test node's pod network: one network namespace per pod, all on a bridge that lives in a
network namespace of the node's own.

    node netns (held by a `sleep`)         pod netns (held by the pod's pause `sleep`)
      cbr0 10.244.0.1/24  <-- veth -->       eth0 10.244.0.N/24, lo

Nothing is created in the host's network namespace, so concurrent test sessions cannot clash,
nothing is left behind when the node dies (the namespaces go with their last process), and pods
can reach nothing but each other and the addresses the node forwards: a listening socket on
10.244.0.1:<port> inside the node netns, spliced to a loopback address of the host (the API
server, the S3 server).  There is no default route, so anything else (ClusterIPs, the internet)
fails at once with "Network is unreachable".
"""

from __future__ import annotations

import contextlib
import ctypes
import itertools
import socket
import subprocess
import threading
import time
from dataclasses import dataclass

from podspec import GATEWAY

BRIDGE = "cbr0"
PREFIX = "10.244.0."
PREFIX_LEN = 24
CLONE_NEWNET = 0x40000000
_libc = ctypes.CDLL(None, use_errno=True)


def holder(*unshare: str, hostname: str | None = None) -> subprocess.Popen:
    """A `sleep` in new namespaces, killed if the thread that started it exits (PDEATHSIG)."""
    script = 'hostname "$1" && exec sleep infinity' if hostname else "exec sleep infinity"
    proc = subprocess.Popen(
        ["setpriv", "--pdeathsig", "KILL", "unshare", *unshare, "sh", "-c", script, "sh"]
        + ([hostname] if hostname else []),
        stdin=subprocess.DEVNULL,
        start_new_session=True,
    )
    # The namespaces exist once the shell has exec'd sleep.
    deadline = time.monotonic() + 10
    while _comm(proc.pid) != "sleep":
        if proc.poll() is not None or time.monotonic() > deadline:
            proc.kill()
            raise RuntimeError(f"namespace holder `unshare {' '.join(unshare)}` did not start")
        time.sleep(0.01)
    return proc


def _comm(pid: int) -> str:
    try:
        with open(f"/proc/{pid}/comm") as f:
            return f.read().strip()
    except OSError:
        return ""


def ip(netns: str, commands: list[str]) -> None:
    """Run `ip` commands (one per line, `ip -batch` syntax) inside a network namespace."""
    done = subprocess.run(
        ["nsenter", f"--net={netns}", "ip", "-batch", "-"],
        input="\n".join(commands) + "\n",
        capture_output=True,
        text=True,
    )
    if done.returncode:
        raise RuntimeError(f"ip in {netns}: {done.stderr.strip()}\ncommands: {commands}")


@dataclass
class Sandbox:
    """A pod's network and UTS namespaces, held by a pause process."""

    pause: subprocess.Popen
    ip: str

    @property
    def pid(self) -> int:
        return self.pause.pid


class PodNetwork:
    def __init__(self):
        self._holder = holder("--net")
        self.netns = f"/proc/{self._holder.pid}/ns/net"
        ip(
            self.netns,
            [
                f"link add {BRIDGE} type bridge",
                f"addr add {GATEWAY}/{PREFIX_LEN} dev {BRIDGE}",
                f"link set {BRIDGE} up",
                "link set lo up",
            ],
        )
        self._lock = threading.Lock()
        self._in_use: set[str] = set()
        self._next = 2
        self._veths = itertools.count()

    def _allocate(self) -> str:
        # Round robin, so a released address is not reused while peers may still cache it.
        with self._lock:
            for _ in range(253):
                n, self._next = self._next, 2 if self._next >= 254 else self._next + 1
                address = PREFIX + str(n)
                if address not in self._in_use:
                    self._in_use.add(address)
                    return address
        raise RuntimeError(f"pod network {PREFIX}0/{PREFIX_LEN} is full")

    def sandbox(self, hostname: str) -> Sandbox:
        """New namespaces for a pod, with its own address on the bridge and its hostname."""
        address = self._allocate()
        pause = None
        try:
            pause = holder("--net", "--uts", hostname=hostname)
            veth = f"veth{next(self._veths)}"
            ip(
                self.netns,
                [
                    f"link add {veth} type veth peer name eth0 netns {pause.pid}",
                    f"link set {veth} master {BRIDGE} up",
                ],
            )
            pod_netns = f"/proc/{pause.pid}/ns/net"
            ip(
                pod_netns,
                [f"addr add {address}/{PREFIX_LEN} dev eth0", "link set eth0 up", "link set lo up"],
            )
            return Sandbox(pause, address)
        except BaseException:
            if pause:
                pause.kill()
                pause.wait()
            self.release_address(address)
            raise

    def release(self, sandbox: Sandbox) -> None:
        """Drop a pod's namespaces; its veth goes with them once its last process has exited."""
        sandbox.pause.kill()
        sandbox.pause.wait()
        self.release_address(sandbox.ip)

    def release_address(self, address: str) -> None:
        with self._lock:
            self._in_use.discard(address)

    def forward(self, port: int, target: tuple[str, int]) -> None:
        """Accept on GATEWAY:port inside the node netns and splice each connection to `target`."""
        listener = _listen_in(self.netns, (GATEWAY, port))
        threading.Thread(
            target=_accept, args=(listener, target), name=f"forward-{port}", daemon=True
        ).start()

    def close(self) -> None:
        self._holder.kill()
        self._holder.wait()


def _listen_in(netns: str, address: tuple[str, int]) -> socket.socket:
    # setns(CLONE_NEWNET) changes only the calling thread, and a socket keeps the namespace it
    # was made in: so a short-lived thread makes the socket, and everything else stays outside.
    made: dict[str, object] = {}

    def make() -> None:
        try:
            with open(netns) as ns:
                if _libc.setns(ns.fileno(), CLONE_NEWNET):
                    raise OSError(ctypes.get_errno(), f"setns({netns})")
            made["socket"] = socket.create_server(address)
        except BaseException as e:
            made["error"] = e

    thread = threading.Thread(target=make)
    thread.start()
    thread.join()
    if "error" in made:
        raise RuntimeError(f"cannot listen on {address} in {netns}: {made['error']}")
    return made["socket"]  # type: ignore[return-value]


def _accept(listener: socket.socket, target: tuple[str, int]) -> None:
    while True:
        conn, _ = listener.accept()
        threading.Thread(target=_splice, args=(conn, target), daemon=True).start()


def _splice(conn: socket.socket, target: tuple[str, int]) -> None:
    try:
        upstream = socket.create_connection(target, timeout=10)
    except OSError:
        conn.close()
        return
    upstream.settimeout(None)
    back = threading.Thread(target=_pump, args=(upstream, conn), daemon=True)
    back.start()
    _pump(conn, upstream)
    back.join()
    conn.close()
    upstream.close()


def _pump(source: socket.socket, sink: socket.socket) -> None:
    with contextlib.suppress(OSError):
        while data := source.recv(65536):
            sink.sendall(data)
    with contextlib.suppress(OSError):
        sink.shutdown(socket.SHUT_WR)


def in_pod(sandbox: Sandbox) -> list[str]:
    """The argv prefix that runs a command in a pod's network and UTS namespaces."""
    return [
        "nsenter",
        f"--net=/proc/{sandbox.pid}/ns/net",
        f"--uts=/proc/{sandbox.pid}/ns/uts",
    ]
