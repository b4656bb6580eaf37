"""What a job tells whoever launched it: one JSON event per line on stdout, `error: ...` on
stderr when it refuses its input, and its exit status.

Every job prints `{"event": <name>, "time": <seconds>, ...}` lines among whatever else it prints.
The operator reads them from the pod's log and termination message, `lmforge run` from the job's
log file, and both turn them into status the same way (operator/stages). A job's last event is
`done`, with its summary; Dataset and Evaluation jobs also write it to the termination message,
which reaches the pod's status where its log cannot be read.
"""

from __future__ import annotations

import json
import sys
import time
from enum import IntEnum
from typing import Any

START = "start"
RESUME = "resume"
STEP = "step"
VALIDATION = "validation"
CHECKPOINT = "checkpoint"
PREEMPTED = "preempted"
ROLLBACK = "rollback"
"""The divergence guard skipped too many steps in a row: back to the checkpoint at `step`."""
PROGRESS = "progress"
"""A job's share of its work done: `done` of `total` (the data job's files, then its splits)."""
DONE = "done"

ERROR_PREFIX = "error: "
TERMINATION_LOG = "/dev/termination-log"
_TERMINATION_BYTES = 4000
"""The kubelet keeps 4096 bytes of a termination message."""
_MARKER = '{"event"'


class Exit(IntEnum):
    """A job's exit status, which tells its backend whether another attempt can help."""

    DONE = 0
    FAILED = 1
    """Anything unexpected: another attempt may succeed."""
    CONFIG_ERROR = 2
    """The configuration or the input cannot work (the error line says why): never retried."""
    TIMED_OUT = 3
    """A collective did not complete within runPolicy.collectiveTimeoutSeconds."""
    PREEMPTED = 143
    """Stopped by SIGTERM after writing a checkpoint, as a process killed by SIGTERM exits."""


def line(kind: str, **fields: Any) -> str:
    return json.dumps({"event": kind, "time": round(time.time(), 3), **fields})


def emit(kind: str, **fields: Any) -> None:
    print(line(kind, **fields), flush=True)


def finish(**summary: Any) -> None:
    """The `done` event on stdout and in the termination message; there, without `sources` when
    the whole would not fit."""
    text = line(DONE, **summary)
    print(text, flush=True)
    if len(text) > _TERMINATION_BYTES:
        text = line(DONE, **{k: v for k, v in summary.items() if k != "sources"})
    try:
        with open(TERMINATION_LOG, "w") as out:
            out.write(text)
    except OSError:  # not in a pod
        pass


def error(message: str) -> None:
    """A refusal, on stderr, in the form the backends quote in a Failed condition."""
    print(f"{ERROR_PREFIX}{message}", file=sys.stderr, flush=True)


def parse(text: str) -> list[dict[str, Any]]:
    """Every event in `text`, in order. Other output (warnings, tracebacks, a line cut by a log
    tail) is skipped: a reader must never fail on what else a job prints."""
    found = []
    for text_line in text.splitlines():
        start = text_line.find(_MARKER)
        if start < 0:
            continue
        try:
            event = json.loads(text_line[start:])
        except json.JSONDecodeError:
            continue
        if isinstance(event, dict):
            found.append(event)
    return found


def latest(events: list[dict[str, Any]], kind: str) -> dict[str, Any] | None:
    return next((e for e in reversed(events) if e.get("event") == kind), None)


def last_error(text: str) -> str | None:
    """The last error line a job printed, without its prefix."""
    found = [t for t in text.splitlines() if t.lstrip().startswith(ERROR_PREFIX)]
    return found[-1].strip().removeprefix(ERROR_PREFIX).strip() if found else None
