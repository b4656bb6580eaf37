"""The local runner's state: one JSON object per resource, shaped like the API object (apiVersion,
kind, metadata, spec, status), so `lmforge get` and `describe` read it as kubectl reads objects."""

from __future__ import annotations

import datetime
import json
import os
from pathlib import Path
from typing import Any

from ..api.resource import Resource

DIGEST = "lmforge.dev/spec-digest"


def now() -> str:
    return datetime.datetime.now(datetime.UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


class State:
    def __init__(self, root: Path):
        self.root = root.resolve()
        self.objects = root / "state"
        self.storage = (root / "storage").resolve().as_uri()

    def path(self, kind: str, name: str) -> Path:
        return self.objects / kind.lower() / f"{name}.json"

    def get(self, kind: str, name: str) -> dict[str, Any] | None:
        path = self.path(kind, name)
        return json.loads(path.read_text()) if path.exists() else None

    def put(self, resource: Resource, digest: str, status: dict[str, Any]) -> dict[str, Any]:
        previous = self.get(resource.kind, resource.metadata.name) or {}
        created = previous.get("metadata", {}).get("creationTimestamp", now())
        obj = resource.model_dump(by_alias=True, exclude_none=True, mode="json")
        obj["metadata"] |= {
            "creationTimestamp": created,
            "annotations": {**obj["metadata"].get("annotations", {}), DIGEST: digest},
        }
        obj["status"] = status
        path = self.path(resource.kind, resource.metadata.name)
        path.parent.mkdir(parents=True, exist_ok=True)
        temporary = path.with_suffix(".tmp")
        temporary.write_text(json.dumps(obj, indent=2))
        os.replace(temporary, path)  # a crash never leaves half a state file
        return obj

    def all(self, kind: str | None = None) -> list[dict[str, Any]]:
        pattern = f"{kind.lower()}/*.json" if kind else "*/*.json"
        return [json.loads(p.read_text()) for p in sorted(self.objects.glob(pattern))]


def set_condition(status: dict[str, Any], type_: str, value: bool, reason: str, message: str = ""):
    """Add or update a condition; lastTransitionTime moves only when its status changes."""
    conditions = status.setdefault("conditions", [])
    text = "True" if value else "False"
    for condition in conditions:
        if condition["type"] == type_:
            if condition["status"] != text:
                condition["lastTransitionTime"] = now()
            condition.update(status=text, reason=reason, message=message)
            return
    conditions.append(
        {
            "type": type_,
            "status": text,
            "reason": reason,
            "message": message,
            "lastTransitionTime": now(),
        }
    )
