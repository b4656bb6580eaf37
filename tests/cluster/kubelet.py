"""The test node's kubelet API: the part the API server calls for `kubectl logs` (pods/log).

    GET /containerLogs/<namespace>/<pod>/<container>?tailLines=&limitBytes=&previous=&follow=
    GET /healthz

HTTPS on a loopback address of this machine (the API server runs in the host's network
namespace, the pods do not), with a serving certificate from the cluster CA. Clients must
present a certificate from the same CA (the API server's --kubelet-client-certificate), and each
request is authorized as the kubelet does with webhook authorization: a SubjectAccessReview for
the certificate's user and groups on `nodes/proxy` of this node, cached for a minute.

The logs are the files the node writes: `pods/<ns>_<pod>_<uid>/logs/<container>/<run>.log`, the
current run's or (previous=true) the one before. tailLines and limitBytes are honoured, follow
streams until the container's process ends; timestamps, sinceSeconds and sinceTime are not (the
node keeps no time per line), so those requests get the plain log.
"""

from __future__ import annotations

import logging
import ssl
import threading
import time
import urllib.parse
from collections import deque
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import TYPE_CHECKING

from kubeapi import ApiError

if TYPE_CHECKING:
    from node import Node
    from podworker import PodWorker

AUTHORIZED_SECONDS, DENIED_SECONDS = 60.0, 10.0
FOLLOW_POLL = 0.2
log = logging.getLogger("node")


class LogError(Exception):
    def __init__(self, status: int, message: str):
        super().__init__(message)
        self.status = status


def tail(data: bytes, lines: int) -> bytes:
    """The last `lines` lines of `data` (a final line without a newline counts)."""
    if lines <= 0:
        return b""
    kept = deque(data.splitlines(keepends=True), maxlen=lines)
    return b"".join(kept)


def log_file(worker: PodWorker, container: str, previous: bool) -> Path:
    """The file of the container's current run, or of the run before it; LogError (400, the
    kubelet's wording) when there is none."""
    found = next((c for c in worker.init + worker.main if c.name == container), None)
    if found is None:
        names = " ".join(c.name for c in worker.main)
        raise LogError(
            400,
            f'container "{container}" in pod "{worker.name}" is not valid; choose one of: [{names}]',
        )
    runs = found.runs
    if previous:
        if runs < 2:
            raise LogError(
                400,
                f'previous terminated container "{container}" in pod "{worker.name}" not found',
            )
        return worker.dir / "logs" / container / f"{runs - 2}.log"
    if runs == 0:
        reason = (found.state.get("waiting") or {}).get("reason", "ContainerCreating")
        raise LogError(
            400, f'container "{container}" in pod "{worker.name}" is waiting to start: {reason}'
        )
    return worker.dir / "logs" / container / f"{runs - 1}.log"


class KubeletServer:
    """Serves on (host, port) until the process exits; port 0 picks a free one."""

    def __init__(self, node: Node, host: str, port: int, cert: str, key: str, client_ca: str):
        self.node = node
        context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
        context.load_cert_chain(cert, key)
        context.load_verify_locations(client_ca)
        context.verify_mode = ssl.CERT_REQUIRED  # only clients with a cert from the cluster CA
        self.httpd = ThreadingHTTPServer((host, port), _handler(self))
        self.httpd.daemon_threads = True
        self.httpd.socket = context.wrap_socket(self.httpd.socket, server_side=True)
        self.host, self.port = self.httpd.server_address[:2]
        self._decisions: dict[tuple, tuple[bool, float]] = {}
        self._lock = threading.Lock()

    def start(self) -> None:
        threading.Thread(target=self.httpd.serve_forever, name="kubelet", daemon=True).start()
        log.info("kubelet API on https://%s:%s", self.host, self.port)

    # -- authorization -------------------------------------------------------------------------
    def authorized(self, user: str, groups: tuple[str, ...]) -> bool:
        """A SubjectAccessReview: may `user` get nodes/proxy of this node? Cached."""
        key = (user, groups)
        with self._lock:
            decision = self._decisions.get(key)
        if decision and decision[1] > time.monotonic():
            return decision[0]
        review = {
            "apiVersion": "authorization.k8s.io/v1",
            "kind": "SubjectAccessReview",
            "spec": {
                "user": user,
                "groups": list(groups),
                "resourceAttributes": {
                    "verb": "get",
                    "resource": "nodes",
                    "subresource": "proxy",
                    "name": self.node.name,
                },
            },
        }
        path = "/apis/authorization.k8s.io/v1/subjectaccessreviews"
        allowed = bool(self.node.api.request("POST", path, review)["status"].get("allowed"))
        ttl = AUTHORIZED_SECONDS if allowed else DENIED_SECONDS
        with self._lock:
            self._decisions[key] = (allowed, time.monotonic() + ttl)
        return allowed

    # -- logs ----------------------------------------------------------------------------------
    def worker(self, namespace: str, pod: str) -> PodWorker:
        found = [
            w
            for w in list(self.node.workers.values())
            if w.namespace == namespace and w.name == pod and not w.gone
        ]
        if not found:
            raise LogError(404, f'pod "{pod}" in namespace "{namespace}" is not on this node')
        return max(found, key=lambda w: w.start_time)


def _subject(certificate: dict) -> tuple[str, tuple[str, ...]]:
    """(CN, O...) of a peer certificate as ssl returns it: the user and groups, as the API
    server's x509 authenticator reads them."""
    user, groups = "", []
    for rdn in certificate.get("subject", ()):
        for key, value in rdn:
            if key == "commonName":
                user = value
            elif key == "organizationName":
                groups.append(value)
    return user, (*groups, "system:authenticated")


def _handler(server: KubeletServer) -> type[BaseHTTPRequestHandler]:
    class Handler(BaseHTTPRequestHandler):
        # HTTP/1.0: the body ends when the connection closes, which is what a followed log
        # needs, and what the API server's proxy accepts.
        protocol_version = "HTTP/1.0"

        def log_message(self, format: str, *args) -> None:
            log.debug("kubelet API: " + format, *args)

        def _reply(self, status: int, text: str) -> None:
            body = text.encode()
            self.send_response(status)
            self.send_header("Content-Type", "text/plain; charset=utf-8")
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)

        def do_GET(self) -> None:
            url = urllib.parse.urlsplit(self.path)
            parts = [urllib.parse.unquote(p) for p in url.path.strip("/").split("/")]
            if parts == ["healthz"]:
                self._reply(200, "ok")
                return
            user, groups = _subject(self.connection.getpeercert() or {})
            try:
                if not server.authorized(user, groups):
                    self._reply(403, f"Forbidden (user={user}, verb=get, resource=nodes, "
                                     "subresource=proxy)")  # fmt: skip
                    return
            except (ApiError, OSError) as error:
                self._reply(500, f"authorization failed: {error}")
                return
            if len(parts) != 4 or parts[0] != "containerLogs":
                self._reply(404, f"{url.path}: the test node serves only /containerLogs")
                return
            query = urllib.parse.parse_qs(url.query)
            try:
                self._logs(*parts[1:], query)
            except LogError as error:
                self._reply(error.status, str(error))
            except (BrokenPipeError, ConnectionResetError):
                pass  # the client went away (kubectl logs -f interrupted)

        def _logs(self, namespace: str, pod: str, container: str, query: dict) -> None:
            def flag(name: str) -> bool:
                return query.get(name, ["false"])[-1] in ("true", "1")

            def number(name: str) -> int | None:
                value = query.get(name, [None])[-1]
                if value is None:
                    return None
                if not value.lstrip("-").isdigit():
                    raise LogError(400, f"{name}: {value!r} is not a number")
                return int(value)

            worker = server.worker(namespace, pod)
            path = log_file(worker, container, flag("previous"))
            lines, limit = number("tailLines"), number("limitBytes")
            follow = flag("follow") and not flag("previous")
            try:
                data = path.read_bytes()
            except FileNotFoundError:
                data = b""
            offset = len(data)
            if lines is not None:
                data = tail(data, lines)
            sent = 0
            self.send_response(200)
            self.send_header("Content-Type", "text/plain; charset=utf-8")
            self.end_headers()

            def send(chunk: bytes) -> bool:
                nonlocal sent
                if limit is not None:
                    chunk = chunk[: max(limit - sent, 0)]
                if chunk:
                    self.wfile.write(chunk)
                    self.wfile.flush()
                    sent += len(chunk)
                return limit is None or sent < limit

            if not send(data) or not follow:
                return
            run = next(c for c in worker.init + worker.main if c.name == container)
            runs = run.runs
            with open(path, "rb") as stream:
                stream.seek(offset)
                while True:
                    alive = run.proc is not None and run.runs == runs and not worker.gone
                    chunk = stream.read()
                    if chunk and not send(chunk):
                        return
                    if not chunk and not alive:
                        return
                    if not chunk:
                        time.sleep(FOLLOW_POLL)

    return Handler
