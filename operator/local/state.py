"""The local runner's state: one JSON object per resource, shaped like the API object (apiVersion,
kind, metadata, spec, status), so `lmforge get` and `describe` read it as kubectl reads objects,
and a stage resolves its references from it as the operator does from the API."""

from __future__ import annotations

import datetime
import json
import os
from pathlib import Path
from typing import Any

from lmforge.operator.api.common import Status, timestamp
from lmforge.operator.api.resource import Resource

DIGEST = "lmforge.dev/spec-digest"


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

    def put(self, resource: Resource, digest: str, status: Status) -> dict[str, Any]:
        previous = self.get(resource.kind, resource.metadata.name) or {}
        created = previous.get("metadata", {}).get("creationTimestamp")
        obj = resource.model_dump(by_alias=True, exclude_none=True, mode="json")
        obj["metadata"] |= {
            "creationTimestamp": created or timestamp(datetime.datetime.now(datetime.UTC)),
            "annotations": {**obj["metadata"].get("annotations", {}), DIGEST: digest},
        }
        obj["status"] = status.wire()
        path = self.path(resource.kind, resource.metadata.name)
        path.parent.mkdir(parents=True, exist_ok=True)
        temporary = path.with_suffix(".tmp")
        temporary.write_text(json.dumps(obj, indent=2))
        os.replace(temporary, path)  # a crash never leaves half a state file
        return obj

    def all(self, kind: str | None = None) -> list[dict[str, Any]]:
        pattern = f"{kind.lower()}/*.json" if kind else "*/*.json"
        return [json.loads(p.read_text()) for p in sorted(self.objects.glob(pattern))]
