"""An in-memory stand-in for operator/kube.py, so the handlers' passes run without a cluster.

It keeps objects as the API server returns them (dicts) and answers the same questions; the
pods' phases are whatever a test sets, since nothing runs them. The real API is exercised by the
integration tests against a real control plane.
"""

import copy
import itertools

import kopf
import pytest
import yaml

from lmforge.operator.api import KINDS
from lmforge.operator.handlers import reconcile
from lmforge.operator.handlers.settings import Settings
from lmforge.operator.kube import OwnershipError, controller_of
from lmforge.operator.render.pods import Defaults

_uids = itertools.count(1)


def merge(target, patch):
    for key, value in patch.items():
        if value is None:
            target.pop(key, None)
        elif isinstance(value, dict) and isinstance(target.get(key), dict):
            merge(target[key], value)
        else:
            target[key] = copy.deepcopy(value)


class FakeKube:
    def __init__(self):
        self.objects = {}  # (kind or plural, namespace, name) -> object
        self.logs = {}  # pod name -> log text
        self.crds = set()
        self.status_patches = []
        self.deleted = []

    # what a test does

    def add(self, text_or_obj, status=None):
        obj = yaml.safe_load(text_or_obj) if isinstance(text_or_obj, str) else text_or_obj
        meta = obj["metadata"]
        meta.setdefault("namespace", "team-a")
        meta.setdefault("uid", f"uid-{next(_uids)}")
        meta.setdefault("generation", 1)
        if status is not None:
            obj["status"] = status
        plural = KINDS[obj["kind"]].plural
        self.objects[(plural, meta["namespace"], meta["name"])] = obj
        return obj

    def pods(self):
        return {n: o for (k, _, n), o in self.objects.items() if k == "Pod"}

    def set_pod(self, name, phase, **container_state):
        pod = self.pods()[name]
        status = {"phase": phase}
        if container_state:
            status["containerStatuses"] = [{"name": "c", "state": container_state}]
        pod["status"] = status

    def status(self, plural, name):
        return self.objects[(plural, "team-a", name)].get("status", {})

    # operator/kube.py's interface

    def get(self, plural, namespace, name):
        return copy.deepcopy(self.objects.get((plural, namespace, name)))

    def patch_status(self, plural, namespace, name, patch):
        self.status_patches.append((name, patch))
        merge(self.objects[(plural, namespace, name)].setdefault("status", {}), patch)

    def list(self, kind, namespace, selector):
        terms = dict(term.split("=") for term in selector.split(","))
        return [
            copy.deepcopy(o)
            for (k, ns, _), o in self.objects.items()
            if k == kind
            and ns == namespace
            and terms.items() <= (o["metadata"].get("labels") or {}).items()
        ]

    def ensure(self, obj, update_data=False):
        meta = obj["metadata"]
        key = (obj["kind"], meta["namespace"], meta["name"])
        existing = self.objects.get(key)
        if existing is None:
            self.objects[key] = copy.deepcopy(obj)
            return "created"
        controller = controller_of(existing)
        if controller and controller["uid"] != meta["ownerReferences"][0]["uid"]:
            raise OwnershipError(f"{obj['kind']} {meta['name']} is managed by someone else")
        if update_data and existing.get("data") != obj.get("data"):
            existing["data"] = obj["data"]
            return "updated"
        return "exists"

    def delete(self, kind, namespace, name, grace=None):
        self.deleted.append((kind, name, grace))
        kind = kind.split(".")[0]  # another project's kind.group is stored by its kind
        return self.objects.pop((kind, namespace, name), None) is not None

    def delete_children(self, namespace, selector):
        count = 0
        for kind in ("Pod", "Service", "ConfigMap"):
            for obj in self.list(kind, namespace, selector):
                count += self.delete(kind, namespace, obj["metadata"]["name"])
        return count

    def pod_log(self, namespace, name, container, tail_lines):
        return self.logs.get(name)

    def read(self, kind, namespace, name):
        return copy.deepcopy(self.objects.get((kind, namespace, name)))

    def annotate(self, kind, namespace, name, annotations):
        meta = self.objects[(kind, namespace, name)]["metadata"]
        meta["annotations"] = {**meta.get("annotations", {}), **annotations}

    def has_crd(self, name):
        return name in self.crds


@pytest.fixture
def cluster(monkeypatch):
    fake = FakeKube()
    reconcile.use(fake)
    settings = Settings(defaults=Defaults(image="img:test"))
    monkeypatch.setattr(reconcile, "SETTINGS", settings)
    monkeypatch.setattr(reconcile, "_resolved", {})  # auto settings: looked up anew
    yield fake
    reconcile.use(None)


@pytest.fixture
def events(monkeypatch):
    """Kubernetes events the handlers post, as (object name, type, reason, message)."""
    posted = []

    def record(obj, *, type, reason, message=""):
        posted.append((obj["metadata"]["name"], type, reason, message))

    monkeypatch.setattr(kopf, "event", record)
    return posted
