"""A small Kubernetes API client over urllib: JSON requests and watches, from a kubeconfig.

The test node needs a handful of calls (create, get, list, patch, delete, watch); the standard
library does them in a page, without a client library to pin and keep in step with the server.
"""

from __future__ import annotations

import base64
import contextlib
import json
import os
import ssl
import tempfile
import urllib.error
import urllib.parse
import urllib.request
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import yaml

MERGE = "application/merge-patch+json"
STRATEGIC = "application/strategic-merge-patch+json"


class ApiError(Exception):
    def __init__(self, status: int, method: str, path: str, message: str):
        super().__init__(f"{method} {path}: HTTP {status}: {message}")
        self.status = status


class Api:
    def __init__(self, kubeconfig: str | os.PathLike):
        config = yaml.safe_load(Path(kubeconfig).read_text())
        context = _named(config["contexts"], config["current-context"])["context"]
        cluster = _named(config["clusters"], context["cluster"])["cluster"]
        user = _named(config["users"], context["user"])["user"]
        self.server = cluster["server"].rstrip("/")
        ca = base64.b64decode(cluster["certificate-authority-data"]).decode()
        self.ssl = ssl.create_default_context(cadata=ca)
        # ssl wants the client certificate and key as files; keep them private and short-lived.
        with tempfile.TemporaryDirectory() as tmp:
            cert, key = Path(tmp, "client.crt"), Path(tmp, "client.key")
            cert.write_bytes(base64.b64decode(user["client-certificate-data"]))
            key.write_bytes(base64.b64decode(user["client-key-data"]))
            self.ssl.load_cert_chain(cert, key)

    def _open(self, method: str, path: str, body: Any, content_type: str, timeout: float):
        data = None if body is None else json.dumps(body).encode()
        request = urllib.request.Request(self.server + path, data=data, method=method)
        request.add_header("Accept", "application/json")
        if data is not None:
            request.add_header("Content-Type", content_type)
        try:
            return urllib.request.urlopen(request, context=self.ssl, timeout=timeout)
        except urllib.error.HTTPError as e:
            detail = e.read().decode(errors="replace")
            with contextlib.suppress(ValueError):
                detail = json.loads(detail).get("message", detail)
            raise ApiError(e.code, method, path, detail) from None

    def request(
        self,
        method: str,
        path: str,
        body: Any = None,
        content_type: str = "application/json",
        timeout: float = 30,
        **query: Any,
    ) -> dict:
        if query:
            path += "?" + urllib.parse.urlencode(query)
        with self._open(method, path, body, content_type, timeout) as response:
            return json.loads(response.read() or b"{}")

    def get(self, path: str, **query: Any) -> dict:
        return self.request("GET", path, **query)

    def watch(self, path: str, timeout: int = 60, **query: Any) -> Iterator[dict]:
        """Yield watch events until the server ends the watch (after about `timeout` seconds)."""
        query.update(watch="1", timeoutSeconds=str(timeout), allowWatchBookmarks="true")
        url = path + "?" + urllib.parse.urlencode(query)
        with self._open("GET", url, None, "", timeout + 30) as response:
            for line in response:
                if line.strip():
                    yield json.loads(line)


def _named(items: list[dict], name: str) -> dict:
    for item in items:
        if item["name"] == name:
            return item
    raise KeyError(f"kubeconfig: no entry named {name!r}")
