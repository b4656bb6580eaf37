"""What the e2e tests share: the tiny Dataset and PretrainJob, reading and waiting on the API,
a recorder of every version of the objects a test watches, and the bucket's listing."""

from __future__ import annotations

import os
import threading
import time
from collections.abc import Callable
from typing import Any

import pytest
import s3fs
from kubeapi import Api, ApiError

from lmforge.operator.api import KINDS

GROUP = "/apis/lmforge.dev/v1alpha1"
PLURALS = {kind: model.plural for kind, model in KINDS.items()}
SEQUENCE = 33
TRAIN_SECONDS = 300  # a gang's start, 12 tiny steps and the export, on a busy 2-core machine
FINALIZER = "lmforge.dev/finalizer"


def unavailable(reason: str) -> None:
    """Skip, except in CI (CI=true), where the e2e tier must run: fail there."""
    if os.environ.get("CI") == "true":
        pytest.fail(f"e2e tier cannot run: {reason}", pytrace=False)
    pytest.skip(reason)


def storage(bucket: str, endpoint: str, secret: str) -> dict[str, str]:
    return {"uri": f"{bucket}/lmforge", "secretName": secret, "endpointUrl": endpoint}


def dataset(name: str, store: dict[str, str]) -> dict[str, Any]:
    """Two standard-library packages, no quality filter, a 400-token vocabulary: seconds."""
    return {
        "apiVersion": "lmforge.dev/v1alpha1",
        "kind": "Dataset",
        "metadata": {"name": name},
        "spec": {
            "sources": [{"uri": "stdlib://json/*.py"}, {"uri": "stdlib://email/*.py"}],
            "filters": {"quality": {"enabled": False}},
            "tokenizer": {"train": {"vocabSize": 400}},
            "packing": {"sequenceLength": SEQUENCE},
            "split": {"validationFraction": 0.1},
            "engine": {"workers": 1},
            "resources": {"cpu": "900m", "memory": "1Gi"},
            "storage": store,
        },
    }


def pretrainjob(
    name: str, dataset_name: str, store: dict[str, str], steps: int = 12
) -> dict[str, Any]:
    """2 worker pods x 1 process (gloo), the unit tests' tiny shape, a checkpoint every 3 steps."""
    return {
        "apiVersion": "lmforge.dev/v1alpha1",
        "kind": "PretrainJob",
        "metadata": {"name": name},
        "spec": {
            "datasetRef": {"name": dataset_name},
            "model": {"layers": 2, "dModel": 64, "heads": 4, "kvHeads": 2, "contextLength": 32},
            "training": {
                "steps": steps,
                "globalBatchTokens": SEQUENCE * 16,
                "microBatch": 4,
                "schedule": {"warmupSteps": 2},
                "optimizer": {"lr": 0.003},
                "checkpoint": {"everySteps": 3, "keep": 2},
                "validation": {"everySteps": 6, "batches": 2},
            },
            "resources": {"nodes": 2, "processesPerNode": 1, "cpu": "900m", "memory": "1Gi"},
            "runPolicy": {"backoffLimit": 2},
            "storage": store,
        },
    }


# ----- the API -----


def path(kind: str, namespace: str, name: str = "") -> str:
    if kind in PLURALS:
        base = f"{GROUP}/namespaces/{namespace}/{PLURALS[kind]}"
    else:
        base = f"/api/v1/namespaces/{namespace}/{kind.lower()}s"
    return f"{base}/{name}" if name else base


def read(api: Api, kind: str, namespace: str, name: str) -> dict[str, Any] | None:
    try:
        return api.get(path(kind, namespace, name))
    except ApiError as error:
        if error.status == 404:
            return None
        raise


def children(api: Api, namespace: str, owner: str) -> dict[str, list[dict]]:
    """Pods, Services and ConfigMaps labelled as `owner`'s."""
    selector = f"lmforge.dev/name={owner}"
    return {
        kind: api.get(path(kind, namespace), labelSelector=selector)["items"]
        for kind in ("Pod", "Service", "ConfigMap")
    }


def wait_for(what: str, check: Callable[[], Any], timeout: float, every: float = 0.5) -> Any:
    """Poll `check` until it returns something true; that value."""
    deadline = time.monotonic() + timeout
    while True:
        value = check()
        if value:
            return value
        if time.monotonic() > deadline:
            raise AssertionError(f"not after {timeout:.0f}s: {what}")
        time.sleep(every)


def wait_phase(
    api: Api, kind: str, namespace: str, name: str, phase: str, timeout: float = TRAIN_SECONDS
) -> dict[str, Any]:
    """The object once status.phase is `phase`; fails at once if it Failed instead."""

    def check() -> dict[str, Any] | None:
        obj = read(api, kind, namespace, name)
        status = (obj or {}).get("status") or {}
        if status.get("phase") == "Failed" and phase != "Failed":
            raise AssertionError(f"{kind}/{name} failed: {status}")
        return obj if status.get("phase") == phase else None

    return wait_for(f"{kind}/{name} is {phase}", check, timeout)


def condition(obj: dict[str, Any], type_: str) -> dict[str, Any]:
    found = [c for c in (obj.get("status") or {}).get("conditions", []) if c["type"] == type_]
    return found[0] if found else {}


def events(api: Api, namespace: str, kind: str, name: str) -> list[dict[str, Any]]:
    """Events about one object, oldest first."""
    selector = f"involvedObject.kind={kind},involvedObject.name={name}"
    items = api.get(path("Event", namespace), fieldSelector=selector)["items"]

    def when(event: dict) -> tuple[str, int]:
        moment = event.get("firstTimestamp") or event.get("eventTime") or ""
        return moment[:19], int(event["metadata"]["resourceVersion"])

    return sorted(items, key=when)


def controller(obj: dict[str, Any]) -> dict[str, Any] | None:
    refs = obj["metadata"].get("ownerReferences") or []
    return next((r for r in refs if r.get("controller")), None)


# ----- recording what happens -----


class Recorder:
    """Every version of the objects at `path` (with `query`, e.g. a labelSelector) from now on,
    through a list and a watch in a thread: what happened between two polls is not lost."""

    def __init__(self, api: Api, path: str, on_event: Callable[[str, dict], None] | None = None,
                 **query: str):  # fmt: skip
        self.api, self.path, self.query, self.on_event = api, path, query, on_event
        self.seen: list[tuple[str, dict]] = []
        self.lock = threading.Lock()
        self.stopped = threading.Event()
        self.listed = threading.Event()
        self.thread = threading.Thread(target=self._run, daemon=True, name=f"record {path}")

    def __enter__(self) -> Recorder:
        self.thread.start()
        if not self.listed.wait(30):
            raise AssertionError(f"cannot list {self.path}")
        return self

    def __exit__(self, *exc) -> None:
        self.stopped.set()

    def _add(self, kind: str, obj: dict) -> None:
        with self.lock:
            self.seen.append((kind, obj))
        if self.on_event:
            self.on_event(kind, obj)

    def _run(self) -> None:
        version = None
        while not self.stopped.is_set():
            try:
                if version is None:
                    listing = self.api.get(self.path, **self.query)
                    for obj in listing["items"]:
                        self._add("LISTED", obj)
                    version = listing["metadata"]["resourceVersion"]
                    self.listed.set()
                for event in self.api.watch(
                    self.path, timeout=5, resourceVersion=version, **self.query
                ):
                    obj = event["object"]
                    if event["type"] == "ERROR":
                        version = None  # expired: list again
                        break
                    version = obj["metadata"]["resourceVersion"]
                    if event["type"] != "BOOKMARK":
                        self._add(event["type"], obj)
                    if self.stopped.is_set():
                        return
            except (ApiError, OSError, ValueError):
                time.sleep(0.5)

    def objects(self) -> list[dict]:
        with self.lock:
            return [obj for _, obj in self.seen]

    def uids(self, name: str | None = None) -> dict[str, set[str]]:
        """name -> every uid an object of that name had."""
        found: dict[str, set[str]] = {}
        for obj in self.objects():
            meta = obj["metadata"]
            if name is None or meta["name"] == name:
                found.setdefault(meta["name"], set()).add(meta["uid"])
        return found


# ----- the bucket -----


def model_weights(s3_endpoint: str, uri: str) -> dict[str, Any]:
    """The tensors of the model.safetensors under an s3:// model URI."""
    from safetensors.torch import load

    fs = s3fs.S3FileSystem(endpoint_url=s3_endpoint)
    fs.invalidate_cache()
    return load(fs.cat_file(f"{uri.removeprefix('s3://').rstrip('/')}/model.safetensors"))


def bucket_files(s3_endpoint: str, uri: str) -> list[str]:
    """Every key under an s3:// URI, relative to it, read from this machine's side of moto."""
    fs = s3fs.S3FileSystem(endpoint_url=s3_endpoint)
    fs.invalidate_cache()
    root = uri.removeprefix("s3://").rstrip("/")
    return sorted(key.removeprefix(root + "/") for key in fs.find(root))
