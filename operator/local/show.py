"""`lmforge get` and `lmforge describe`: the state folder, printed as kubectl prints objects."""

from __future__ import annotations

import datetime
import json
from typing import Any

from lmforge.operator.api import KINDS
from lmforge.operator.api.resource import Resource


def _field(obj: dict[str, Any], json_path: str) -> Any:
    value: Any = obj
    for part in json_path.strip(".").split("."):
        value = value.get(part) if isinstance(value, dict) else None
    return value


def age(timestamp: str | None) -> str:
    if not timestamp:
        return "<unknown>"
    then = datetime.datetime.fromisoformat(timestamp.replace("Z", "+00:00"))
    seconds = int((datetime.datetime.now(datetime.UTC) - then).total_seconds())
    for unit, size in (("d", 86400), ("h", 3600), ("m", 60)):
        if seconds >= size:
            return f"{seconds // size}{unit}"
    return f"{seconds}s"


def table(objects: list[dict[str, Any]], kind: str) -> str:
    """kubectl's table: NAME, the kind's printer columns, AGE."""
    columns = [c for c in KINDS[kind].columns if c.priority == 0]
    rows = [["NAME", *(c.name.upper() for c in columns), "AGE"]]
    for obj in objects:
        cells = [obj["metadata"]["name"]]
        for column in columns:
            value = _field(obj, column.json_path)
            cells.append(
                "" if value is None else f"{value:.4g}" if isinstance(value, float) else str(value)
            )
        rows.append([*cells, age(obj["metadata"].get("creationTimestamp"))])
    widths = [max(len(r[i]) for r in rows) for i in range(len(rows[0]))]
    return "\n".join(
        "   ".join(c.ljust(w) for c, w in zip(r, widths, strict=True)).rstrip() for r in rows
    )


def describe(obj: dict[str, Any]) -> str:
    status, meta = obj.get("status", {}), obj["metadata"]
    lines = [
        f"Name:         {meta['name']}",
        f"Kind:         {obj['kind']}",
        f"API Version:  {obj['apiVersion']}",
        f"Created:      {meta.get('creationTimestamp')}",
        f"Spec digest:  {meta.get('annotations', {}).get('lmforge.dev/spec-digest')}",
        f"Phase:        {status.get('phase')}",
    ]
    figures = {k: v for k, v in status.items() if k not in ("phase", "conditions", "lineage")}
    if figures:
        lines.append("Status:")
        lines += [f"  {k}: {json.dumps(v)}" for k, v in figures.items()]
    lines.append("Conditions:")
    lines.append("  TYPE        STATUS  REASON              MESSAGE")
    for c in status.get("conditions", []):
        lines.append(f"  {c['type']:<11} {c['status']:<7} {c['reason']:<19} {c.get('message', '')}")
    lineage = status.get("lineage") or {}
    if lineage:
        lines.append("Lineage:")
        for direction in ("inputs", "outputs"):
            for item in lineage.get(direction, []):
                what = "/".join(x for x in (item.get("kind"), item.get("name")) if x)
                digest = f"  ({item['digest'][:19]}…)" if item.get("digest") else ""
                lines.append(f"  {direction[:-1]:<7} {what:<28} {item['uri']}{digest}")
        if lineage.get("parentCheckpoint"):
            lines.append(f"  checkpoint {lineage['parentCheckpoint']}")
    lines.append("Spec:")
    lines += ["  " + line for line in json.dumps(obj["spec"], indent=2).splitlines()]
    return "\n".join(lines)


def kind_named(text: str) -> str | None:
    """A kind from what a user types: Dataset, datasets, dataset, or a short name."""
    for name, cls in KINDS.items():
        cls: type[Resource]
        if text.lower() in (name.lower(), cls.plural, *cls.short_names):
            return name
    return None
