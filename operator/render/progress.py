"""The jobs' JSON-lines events (start, step, validation, checkpoint, resume, preempted, done), read
from a pod's log or termination message, into status fields."""

from __future__ import annotations

import datetime
import json
from typing import Any

MARKER = '{"event"'


def parse_events(text: str) -> list[dict[str, Any]]:
    """Every event line in `text`, in order. Other output (warnings, tracebacks, a line cut by a
    log tail) is skipped: a progress reader must never fail on what else a job prints."""
    found = []
    for line in text.splitlines():
        start = line.find(MARKER)
        if start < 0:
            continue
        try:
            event = json.loads(line[start:])
        except json.JSONDecodeError:
            continue
        if isinstance(event, dict):
            found.append(event)
    return found


def latest(events: list[dict[str, Any]], kind: str) -> dict[str, Any] | None:
    return next((e for e in reversed(events) if e.get("event") == kind), None)


def timestamp(seconds: float) -> str:
    moment = datetime.datetime.fromtimestamp(seconds, datetime.UTC)
    return moment.strftime("%Y-%m-%dT%H:%M:%SZ")


def _position(status: dict[str, Any], step: int, total: int | None) -> None:
    status["step"] = step
    if total is not None:
        status["totalSteps"] = total
    if status.get("totalSteps"):
        status["progress"] = f"{step}/{status['totalSteps']}"


def apply_training_events(status: dict[str, Any], events: list[dict[str, Any]]) -> dict[str, Any]:
    """`status` (not changed) with the training figures the events report, later events winning:
    the fields the local runner sets, so both backends report alike."""
    out = dict(status)
    for event in events:
        kind = event.get("event")
        if kind == "step":
            _position(out, event["step"], event.get("totalSteps"))
            for field in ("loss", "tokens", "tokensPerSecond"):
                if event.get(field) is not None:
                    out[field] = event[field]
        elif kind == "validation" and event.get("loss") is not None:
            out["validationLoss"] = event["loss"]
            for field in ("accuracy", "reward"):
                if event.get(field) is not None:
                    out[field] = event[field]
            if event.get("referenceMargin") is not None:  # dpo
                out["margin"] = round(event["margin"] - event["referenceMargin"], 6)
        elif kind in ("start", "resume"):
            _position(out, event.get("step", 0), event.get("totalSteps"))
        elif kind == "checkpoint":
            out["lastCheckpoint"] = {"step": event["step"], "uri": event["uri"]}
            if event.get("time"):
                out["lastCheckpoint"]["time"] = timestamp(event["time"])
            out["lineage"] = {**(out.get("lineage") or {}), "parentCheckpoint": event["uri"]}
    return out
