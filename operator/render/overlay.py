"""spec.resources.podTemplate: a pod template merged into every pod the operator renders.

Strategic-merge-like, the way `kubectl patch` treats a pod: objects merge key by key, lists of
named things merge by their key (containers and env by name, volumeMounts by mountPath), other
lists are appended (volumes, tolerations) and scalars are replaced. What keeps the gang working
is the operator's and cannot be overridden: the lmforge.dev labels (selectors), restartPolicy
(the operator restarts the gang), hostname and subdomain (rendezvous DNS).
"""

from __future__ import annotations

import copy
from typing import Any

from lmforge.operator.render.names import PREFIX
from lmforge.operator.stages.base import SpecError

PROTECTED = frozenset({"restartPolicy", "hostname", "subdomain"})

# list field -> the key that identifies an item (None: the overlay's items are appended)
LISTS: dict[str, str | None] = {
    "containers": "name",
    "initContainers": "name",
    "env": "name",
    "envFrom": None,
    "ports": "containerPort",
    "volumeMounts": "mountPath",
    "volumes": "name",
    "tolerations": None,
    "imagePullSecrets": "name",
}

FIELD = "spec.resources.podTemplate"


def merge_pod_template(pod: dict[str, Any], overlay: dict[str, Any] | None) -> dict[str, Any]:
    """`pod` with `overlay` (a pod template: metadata and/or spec) merged in; neither is changed."""
    if not overlay:
        return pod
    unknown = sorted(set(overlay) - {"metadata", "spec"})
    if unknown:
        raise SpecError(FIELD, f"a pod template has metadata and spec; remove {unknown}")
    out = copy.deepcopy(pod)
    meta = overlay.get("metadata") or {}
    for key in ("labels", "annotations"):
        theirs = {k: v for k, v in (meta.get(key) or {}).items() if not k.startswith(PREFIX)}
        if theirs:
            out["metadata"][key] = {**theirs, **out["metadata"].get(key, {})}
    spec = {k: v for k, v in (overlay.get("spec") or {}).items() if k not in PROTECTED}
    out["spec"] = _merge(out["spec"], spec)
    return out


def _merge(base: Any, overlay: Any) -> Any:
    if not (isinstance(base, dict) and isinstance(overlay, dict)):
        return copy.deepcopy(overlay)
    merged = dict(base)
    for key, value in overlay.items():
        if key in LISTS and isinstance(base.get(key), list) and isinstance(value, list):
            merged[key] = _merge_list(base[key], value, LISTS[key])
        elif key in base:
            merged[key] = _merge(base[key], value)
        else:
            merged[key] = copy.deepcopy(value)
    return merged


def _merge_list(base: list, overlay: list, key: str | None) -> list:
    if key is None:
        return base + copy.deepcopy(overlay)
    out = list(base)
    where = {item.get(key): i for i, item in enumerate(out) if isinstance(item, dict)}
    for item in overlay:
        if isinstance(item, dict) and item.get(key) in where:
            out[where[item[key]]] = _merge(out[where[item[key]]], item)
        else:
            out.append(copy.deepcopy(item))
    return out
