"""One pod on the test node: its sandbox, volumes, containers, restarts, status and deletion.

A thread per pod runs a level-triggered loop: look at the processes, start what is due, write
status if it changed.  Init containers run one after another, then the containers together.
"""

from __future__ import annotations

import contextlib
import logging
import os
import shlex
import signal
import subprocess
import threading
import time
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import TYPE_CHECKING

import podspec
from kubeapi import STRATEGIC, ApiError
from podnet import Sandbox, in_pod
from podspec import API_PORT, GATEWAY, ConfigError

if TYPE_CHECKING:
    from node import Node

TICK = 0.2
BACKOFF_START, BACKOFF_MAX = 1.0, 30.0  # the kubelet's are 10 s and 5 min: too slow for tests
CONFIG_RETRY = 2.0
NO_STATE = {"waiting": None, "running": None, "terminated": None}  # patch nulls clear the others
RESOLV_CONF = (
    "# lmforge test node: names resolve through /etc/hosts only; this server does not exist,\n"
    "# so other lookups fail at once inside the pod's network namespace.\n"
    "nameserver 127.0.0.1\noptions timeout:1 attempts:1\n"
)
log = logging.getLogger("node")


def now() -> str:
    return datetime.now(UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


@dataclass
class Container:
    spec: dict
    init: bool = False
    proc: subprocess.Popen | None = None
    runs: int = 0
    state: dict = field(default_factory=lambda: {"waiting": {"reason": "ContainerCreating"}})
    last_state: dict = field(default_factory=dict)
    next_start: float = 0.0
    backoff: float = BACKOFF_START
    done: bool = False  # terminated and not going to be restarted

    @property
    def name(self) -> str:
        return self.spec["name"]

    @property
    def exit_code(self) -> int | None:
        return self.state.get("terminated", {}).get("exitCode")

    def status(self) -> dict:
        running = "running" in self.state
        status = {
            "name": self.name,
            "image": self.spec.get("image", ""),
            "imageID": "",
            "ready": running and not self.init,
            "started": running,
            "restartCount": max(self.runs - 1, 0),
            "state": {**NO_STATE, **self.state},
            "lastState": {**NO_STATE, **self.last_state},
        }
        if self.runs:
            status["containerID"] = f"process://{self.name}-{self.runs}"
        return status


class PodWorker:
    def __init__(self, node: Node, pod: dict):
        self.node, self.pod = node, pod
        meta, spec = pod["metadata"], pod["spec"]
        self.namespace, self.name, self.uid = meta["namespace"], meta["name"], meta["uid"]
        self.dir = node.workdir / "pods" / f"{self.namespace}_{self.name}_{self.uid}"
        self.init = [Container(c, init=True) for c in spec.get("initContainers") or []]
        self.main = [Container(c) for c in spec["containers"]]
        self.wake = threading.Event()
        self.deleting = bool(meta.get("deletionTimestamp"))
        self.gone = False  # the pod object no longer exists
        self.sandbox: Sandbox | None = None
        self.ip = ""
        self.hosts_text = ""
        self.hosts_lock = threading.Lock()
        self.start_time = now()
        self.conditions: dict[str, dict] = {}
        self.reported: dict | None = None
        self.thread = threading.Thread(target=self.run, name=f"{self.namespace}/{self.name}")
        self.thread.daemon = True

    # -- called from the node's threads --------------------------------------------------------
    def start(self) -> None:
        self.thread.start()

    @property
    def running(self) -> bool:
        return bool(self.ip) and self.thread.is_alive()

    def update(self, pod: dict) -> None:
        self.pod = pod
        if pod["metadata"].get("deletionTimestamp"):
            self.deleting = True
            if not self.thread.is_alive() and pod["metadata"].get("deletionGracePeriodSeconds"):
                self.node.delete_now(pod)
        self.wake.set()

    def vanish(self) -> None:
        self.gone = self.deleting = True
        self.wake.set()

    def kill(self) -> None:
        for c in self.init + self.main:
            if c.proc:
                _signal(c.proc, signal.SIGKILL)

    def write_hosts(self) -> None:
        """Called by this pod's thread once, then by the node's DNS thread."""
        with self.hosts_lock:
            text = podspec.hosts_file(self.pod, self.ip, self.node.services, self.node.slices)
            if text == self.hosts_text:
                return
            # In place: the file is bind-mounted by inode, so a rename would not be seen.
            fd = os.open(self.dir / "etc/hosts", os.O_WRONLY | os.O_CREAT, 0o644)
            try:
                os.pwrite(fd, text.encode(), 0)
                os.ftruncate(fd, len(text.encode()))
            finally:
                os.close(fd)
            self.hosts_text = text

    # -- the pod's own thread ------------------------------------------------------------------
    def run(self) -> None:
        try:
            self._report()
            (self.dir / "etc").mkdir(parents=True, exist_ok=True)
            (self.dir / "etc/resolv.conf").write_text(RESOLV_CONF)
            hostname = (self.pod["spec"].get("hostname") or self.name)[:63]
            self.sandbox = self.node.net.sandbox(hostname)
            self.ip = self.sandbox.ip
            self.write_hosts()
            volumes = self._prepare()
            if volumes is not None and all(self._run_group([c], volumes) for c in self.init):
                self._run_group(self.main, volumes)
        except Exception:
            log.exception("pod %s/%s: node error", self.namespace, self.name)
        finally:
            self._terminate()
            if self.sandbox:
                self.node.net.release(self.sandbox)
            self._report()
            if self.deleting and not self.gone:
                self.node.delete_now(self.pod)
            log.info("pod %s/%s: done (%s)", self.namespace, self.name, self._phase())

    def _prepare(self) -> dict[str, Path] | None:
        """Write the pod's volumes, retrying while a ConfigMap or Secret is missing."""
        while not self.deleting:
            try:
                return self._volumes()
            except (ConfigError, ApiError, OSError) as e:
                for c in self.init + self.main:
                    c.state = {
                        "waiting": {"reason": "CreateContainerConfigError", "message": str(e)}
                    }
                self._report()
                self.wake.wait(CONFIG_RETRY)
                self.wake.clear()
        return None

    def _volumes(self) -> dict[str, Path]:
        paths = {}
        for volume in self.pod["spec"].get("volumes") or []:
            name = volume["name"]
            if "hostPath" in volume:
                paths[name] = Path(volume["hostPath"]["path"])
                if volume["hostPath"].get("type") == "DirectoryOrCreate":
                    paths[name].mkdir(parents=True, exist_ok=True)
                continue
            path = paths[name] = self.dir / "volumes" / name
            path.mkdir(parents=True, exist_ok=True)
            if "emptyDir" in volume:
                continue
            if not {"configMap", "secret", "downwardAPI", "projected"} & volume.keys():
                raise ConfigError(
                    f"volume {name!r}: the test node supports emptyDir, hostPath, configMap, "
                    "secret, downwardAPI and projected volumes"
                )
            files = podspec.volume_files(volume, self.pod, self.ip, self.node.fetch, self._token)
            for relative, (content, mode) in files.items():
                target = path / relative
                target.parent.mkdir(parents=True, exist_ok=True)
                target.write_bytes(content)
                target.chmod(mode)
        return paths

    def _token(self, audience: str | None, seconds: int) -> str:
        spec = {
            "expirationSeconds": seconds,
            "boundObjectRef": {
                "apiVersion": "v1",
                "kind": "Pod",
                "name": self.name,
                "uid": self.uid,
            },
        }
        if audience:
            spec["audiences"] = [audience]
        account = self.pod["spec"].get("serviceAccountName") or "default"
        path = f"/api/v1/namespaces/{self.namespace}/serviceaccounts/{account}/token"
        return self.node.api.request("POST", path, {"spec": spec})["status"]["token"]

    def _run_group(self, group: list[Container], volumes: dict[str, Path]) -> bool:
        """Run containers until each has finished for good; True if all exited 0."""
        while not self.deleting:
            for c in group:
                if c.proc and c.proc.poll() is not None:
                    self._exited(c)
                if not c.proc and not c.done and time.monotonic() >= c.next_start:
                    self._start(c, volumes)
            self._report()
            if all(c.done for c in group):
                return all(c.exit_code == 0 for c in group)
            self.wake.wait(TICK)
            self.wake.clear()
        return False

    def _base_env(self) -> dict[str, str]:
        api = f"tcp://{GATEWAY}:{API_PORT}"
        return {
            "PATH": self.node.path,
            "HOME": os.environ.get("HOME", "/root"),
            "LANG": "C.UTF-8",
            "HOSTNAME": (self.pod["spec"].get("hostname") or self.name)[:63],
            "KUBERNETES_SERVICE_HOST": GATEWAY,
            "KUBERNETES_SERVICE_PORT": str(API_PORT),
            "KUBERNETES_SERVICE_PORT_HTTPS": str(API_PORT),
            "KUBERNETES_PORT": api,
            f"KUBERNETES_PORT_{API_PORT}_TCP": api,
        }

    def _start(self, c: Container, volumes: dict[str, Path]) -> None:
        try:
            env = podspec.container_env(
                c.spec, self.pod, self.ip, self.node.fetch, self._base_env()
            )
            if not c.spec.get("command"):
                raise ConfigError(
                    f"container {c.name!r} has no command: the test node runs command + args "
                    "with the local Python environment and knows no image entrypoints"
                )
            argv = [podspec.expand(a, env) for a in c.spec["command"] + (c.spec.get("args") or [])]
            script = self._mount_script(c, volumes)
        except (ConfigError, ApiError, OSError) as e:
            c.state = {"waiting": {"reason": "CreateContainerConfigError", "message": str(e)}}
            c.next_start = time.monotonic() + CONFIG_RETRY
            return
        logfile = self.dir / "logs" / c.name / f"{c.runs}.log"
        logfile.parent.mkdir(parents=True, exist_ok=True)
        assert self.sandbox
        command = ["setpriv", "--pdeathsig", "KILL", *in_pod(self.sandbox)]
        command += ["unshare", "--mount", "--propagation", "private", "bash", "-c", script, "sh"]
        with open(logfile, "ab") as out:
            c.proc = subprocess.Popen(
                command + argv,
                env=env,
                stdin=subprocess.DEVNULL,
                stdout=out,
                stderr=subprocess.STDOUT,
                start_new_session=True,  # its own process group, signalled as a whole
            )
        c.runs += 1
        c.state = {"running": {"startedAt": now()}}

    def _mount_script(self, c: Container, volumes: dict[str, Path]) -> str:
        """Bash run inside the container's new mount namespace, before exec of its command.

        Every source is opened before anything is mounted, and mounted through /proc/self/fd:
        a volume mounted over a folder that holds the node's files (an emptyDir at /tmp, where
        the node's workdir often is) must not hide the sources of the mounts after it. The
        descriptors are closed before the command runs.
        """
        q = shlex.quote
        binds = [
            (self.dir / "etc/hosts", "/etc/hosts", False),
            (self.dir / "etc/resolv.conf", "/etc/resolv.conf", False),
        ]
        for mount in sorted(c.spec.get("volumeMounts") or [], key=lambda m: m["mountPath"]):
            if mount["name"] not in volumes:
                raise ConfigError(f"container {c.name!r}: no volume named {mount['name']!r}")
            source = volumes[mount["name"]] / mount.get("subPath", "")
            binds.append((source, mount["mountPath"], bool(mount.get("readOnly"))))
        volume_targets = [Path(target) for _, target, _ in binds]
        for keep in self.node.image_paths:  # the image's files stay visible over a volume
            if any(keep != t and keep.is_relative_to(t) for t in volume_targets):
                binds.append((keep, str(keep), False))
        lines = ["set -e"]
        # Folders and files by descriptor; anything else (a hostPath socket or FIFO, which an
        # open would refuse or block on) by path, as before.
        opened = [source.is_dir() or source.is_file() for source, _, _ in binds]
        lines += [
            f"exec {{fd{i}}}<{q(str(source))}"
            for i, (source, _, _) in enumerate(binds)
            if opened[i]
        ]
        workdir = c.spec.get("workingDir")
        if not workdir:  # the pod's own folder: entered before a volume can hide it
            default = q(str(self.dir / "work"))
            lines += [f"mkdir -p {default}", f"cd {default}"]
        for i, (source, target, read_only) in enumerate(binds):
            target = q(target)
            if source.is_file():
                lines.append(f'mkdir -p "$(dirname {target})"; [ -e {target} ] || touch {target}')
            else:
                lines.append(f"mkdir -p {target}")
            if opened[i]:
                lines.append(f'mount --no-canonicalize --bind "/proc/self/fd/$fd{i}" {target}')
                lines.append(f"exec {{fd{i}}}<&-")
            else:
                lines.append(f"mount --bind {q(str(source))} {target}")
            if read_only:
                lines.append(f"mount --no-canonicalize -o remount,bind,ro {target}")
        if workdir:  # in the container's view, volumes included
            lines += [f"mkdir -p {q(workdir)}", f"cd {q(workdir)}"]
        lines.append('exec "$@"')
        return "\n".join(lines)

    def _exited(self, c: Container) -> None:
        assert c.proc
        code = c.proc.returncode
        _signal(c.proc, signal.SIGKILL)  # what the container left behind goes with it
        c.proc = None
        terminated = {
            "exitCode": 128 - code if code < 0 else code,
            "reason": "Completed" if code == 0 else "Error",
            "startedAt": c.state.get("running", {}).get("startedAt"),
            "finishedAt": now(),
            "containerID": f"process://{c.name}-{c.runs}",
        }
        if code < 0:
            terminated["signal"] = -code
        policy = self.pod["spec"].get("restartPolicy", "Always")
        restart = (policy == "Always" and not c.init) or (policy != "Never" and code != 0)
        if restart and not self.deleting:
            c.last_state = {"terminated": terminated}
            message = f"back-off {c.backoff:g}s restarting failed container={c.name}"
            c.state = {"waiting": {"reason": "CrashLoopBackOff", "message": message}}
            c.next_start = time.monotonic() + c.backoff
            c.backoff = min(2 * c.backoff, BACKOFF_MAX)
        else:
            c.state = {"terminated": terminated}
            c.done = True
        log.info("pod %s/%s: container %s exited %s", self.namespace, self.name, c.name, code)

    def _terminate(self) -> None:
        """SIGTERM, the grace period, SIGKILL; then every container is finished."""
        running = [c for c in self.init + self.main if c.proc]
        grace = 0
        if self.deleting and not self.gone:
            grace = self.pod["metadata"].get("deletionGracePeriodSeconds", 30)
        for c in running:
            _signal(c.proc, signal.SIGTERM)
        deadline = time.monotonic() + grace
        while any(c.proc.poll() is None for c in running) and time.monotonic() < deadline:
            if self.gone:
                break
            time.sleep(TICK)
        for c in running:
            _signal(c.proc, signal.SIGKILL)
            c.proc.wait()
            self._exited(c)
        for c in self.init + self.main:
            c.done = True

    # -- status --------------------------------------------------------------------------------
    def _phase(self) -> str:
        if any(c.done and c.exit_code != 0 for c in self.init):
            return "Failed"
        if not all(c.done for c in self.init):
            return "Pending"
        if all(c.done for c in self.main):
            return "Succeeded" if all(c.exit_code == 0 for c in self.main) else "Failed"
        return "Pending" if any(c.runs == 0 for c in self.main) else "Running"

    def _condition(self, kind: str, true: bool, reason: str = "") -> dict:
        status = "True" if true else "False"
        old = self.conditions.get(kind)
        if not old or old["status"] != status:
            old = self.conditions[kind] = {
                "type": kind,
                "status": status,
                "lastProbeTime": None,
                "lastTransitionTime": now(),
            }
        old["reason"] = None if true else reason
        return old

    def _status(self) -> dict:
        phase = self._phase()
        terminal = phase in ("Succeeded", "Failed")
        ready = phase == "Running" and all("running" in c.state for c in self.main)
        why = "PodCompleted" if terminal else "ContainersNotReady"
        status = {
            "phase": phase,
            "conditions": [
                self._condition("PodReadyToStartContainers", bool(self.ip) and not terminal),
                self._condition(
                    "Initialized", all(c.done for c in self.init), "ContainersNotInitialized"
                ),
                self._condition("ContainersReady", ready, why),
                self._condition("Ready", ready, why),
            ],
            "hostIP": GATEWAY,
            "hostIPs": [{"ip": GATEWAY}],
            "startTime": self.start_time,
            "containerStatuses": [c.status() for c in self.main],
        }
        if self.init:
            status["initContainerStatuses"] = [c.status() for c in self.init]
        if self.ip:
            status |= {"podIP": self.ip, "podIPs": [{"ip": self.ip}]}
        return status

    def _report(self) -> None:
        """Patch status if it changed since the last successful write."""
        status = self._status()
        if status == self.reported or self.gone:
            return
        path = f"/api/v1/namespaces/{self.namespace}/pods/{self.name}/status"
        try:
            # The uid makes the patch fail on a new pod that took this one's name.
            body = {"metadata": {"uid": self.uid}, "status": status}
            self.node.api.request("PATCH", path, body, STRATEGIC)
            self.reported = status
        except ApiError as e:
            if e.status in (404, 409):
                self.vanish()
            else:
                log.warning("pod %s/%s: status not written: %s", self.namespace, self.name, e)
        except OSError as e:
            log.warning("pod %s/%s: status not written: %s", self.namespace, self.name, e)


def _signal(proc: subprocess.Popen, sig: int) -> None:
    with contextlib.suppress(ProcessLookupError):
        os.killpg(proc.pid, sig)
