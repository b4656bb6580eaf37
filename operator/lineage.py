"""`lmforge lineage`: what a resource was built from, and everything built from a source.

Both read only status.lineage (inputs and outputs by URI, with digests) of the resources run here
(the state folder of `lmforge run`) or in a cluster (--kube): an input is produced by the resource
that lists the same URI among its outputs, so the tree needs no other bookkeeping.
"""

from __future__ import annotations

import fnmatch
from collections.abc import Iterable
from typing import Any

Obj = dict[str, Any]


def key(obj: Obj) -> str:
    return f"{obj['kind']}/{obj['metadata']['name']}"


def _lineage(obj: Obj) -> Obj:
    return (obj.get("status") or {}).get("lineage") or {}


def _producers(objects: Iterable[Obj]) -> dict[str, Obj]:
    return {out["uri"]: obj for obj in objects for out in _lineage(obj).get("outputs", [])}


def _artifact(item: Obj) -> str:
    digest = item.get("digest")
    return item["uri"] + (f"  {digest[:19]}" if digest else "")


def tree(objects: list[Obj], kind: str, name: str) -> str:
    """The resource, then what it was built from, recursively, as an indented tree."""
    by_key = {key(o): o for o in objects}
    root = by_key.get(f"{kind}/{name}")
    if root is None:
        raise LookupError(f"{kind}/{name} not found")
    producers = _producers(objects)
    lines: list[str] = []

    def visit(obj: Obj, depth: int, seen: frozenset[str]) -> None:
        lineage, pad = _lineage(obj), "  " * depth
        phase = (obj.get("status") or {}).get("phase") or "Unknown"
        lines.append(f"{pad}{key(obj)} ({phase})")
        for out in lineage.get("outputs", []):
            lines.append(f"{pad}  -> {_artifact(out)}")
        for label in ("image", "codeVersion", "parentCheckpoint"):
            if lineage.get(label):
                lines.append(f"{pad}  {label}: {lineage[label]}")
        for item in lineage.get("inputs", []):
            parent = producers.get(item["uri"])
            if parent is not None and key(parent) not in seen:
                visit(parent, depth + 1, seen | {key(parent)})
            else:
                lines.append(f"{pad}  <- {_artifact(item)}")

    visit(root, 0, frozenset({key(root)}))
    return "\n".join(lines)


def matches(uri: str, source: str) -> bool:
    """The same URI, a URI under the source folder, or a source glob the URI fits (either way:
    a Dataset records its source patterns, e.g. stdlib://**/*.py)."""
    folder = source.rstrip("/") + "/"
    return (
        uri == source
        or uri.startswith(folder)
        or fnmatch.fnmatchcase(uri, source)
        or fnmatch.fnmatchcase(source, uri)
    )


def built_from(objects: list[Obj], source: str) -> list[tuple[Obj, str]]:
    """Every resource whose inputs include the source, then every resource built from theirs,
    nearest first, each with what it was built from (the source or another resource)."""
    found: dict[str, tuple[Obj, str]] = {}
    frontier = {
        key(o): (o, source) for o in objects if any(matches(i["uri"], source) for i in _inputs(o))
    }
    while frontier:
        found |= dict(sorted(frontier.items()))
        producers = _producers(o for o, _ in frontier.values())
        frontier = {}
        for o in objects:
            via = {key(producers[i["uri"]]) for i in _inputs(o) if i["uri"] in producers}
            if key(o) not in found and via:
                frontier[key(o)] = (o, ", ".join(sorted(via)))
    return list(found.values())


def _inputs(obj: Obj) -> list[Obj]:
    return _lineage(obj).get("inputs", [])


def from_cluster(namespace: str | None) -> list[Obj]:
    """Every lmforge resource in the namespace (all namespaces when None), from the cluster of
    the current kubeconfig context (or the pod's service account)."""
    from kubernetes import client, config  # the operator extra

    from lmforge.operator.api import KINDS
    from lmforge.operator.api.base import GROUP, VERSION

    try:
        config.load_kube_config()
    except config.ConfigException:
        config.load_incluster_config()
    api = client.CustomObjectsApi()
    objects = []
    for cls in KINDS.values():
        if namespace:
            listed = api.list_namespaced_custom_object(GROUP, VERSION, namespace, cls.plural)
        else:
            listed = api.list_cluster_custom_object(GROUP, VERSION, cls.plural)
        objects += listed["items"]
    return objects
