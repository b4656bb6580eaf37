"""The operator's settings, from its environment (the helm chart sets it), read once."""

from __future__ import annotations

import json
import os
from dataclasses import dataclass, field
from typing import get_args

from lmforge.operator.render.pods import Defaults, GangScheduler, RayClusters


def _int(name: str, default: int) -> int:
    value = os.environ.get(name)
    try:
        return int(value) if value else default
    except ValueError as error:
        raise ValueError(f"environment {name}={value!r}: expected a whole number") from error


def _float(name: str, default: float) -> float:
    value = os.environ.get(name)
    try:
        return float(value) if value else default
    except ValueError as error:
        raise ValueError(f"environment {name}={value!r}: expected a number of seconds") from error


def _choice(name: str, default: str, choices: object) -> str:
    value = os.environ.get(name) or default
    allowed = get_args(choices)
    if value not in allowed:
        raise ValueError(f"environment {name}={value!r}: expected one of {', '.join(allowed)}")
    return value


def _nccl(name: str) -> tuple[tuple[str, str], ...]:
    """A JSON object of NCCL_* variables (the chart's jobs.nccl), in key order."""
    text = os.environ.get(name) or "{}"
    try:
        found = json.loads(text)
    except json.JSONDecodeError as error:
        raise ValueError(f"environment {name}: not JSON ({error})") from error
    if not isinstance(found, dict) or not all(str(k).startswith("NCCL_") for k in found):
        raise ValueError(f"environment {name}={text!r}: expected an object of NCCL_* variables")
    return tuple(sorted((str(k), str(v)) for k, v in found.items()))


@dataclass(frozen=True)
class Settings:
    defaults: Defaults = field(default_factory=Defaults)
    interval_seconds: float = 10.0
    """How often each resource is reconciled (and its progress read) without any change."""
    retry_seconds: float = 15.0
    """The delay before a pass that failed for a transient reason runs again."""
    log_tail_lines: int = 200
    metrics_port: int | None = None
    """Where the operator serves its metrics for Prometheus (/metrics); none when unset."""

    @classmethod
    def from_env(cls) -> Settings:
        env = os.environ.get
        defaults = Defaults(
            image=env("LMFORGE_JOB_IMAGE") or Defaults.image,
            serve_image=env("LMFORGE_SERVE_IMAGE") or Defaults.serve_image,
            storage_uri=env("LMFORGE_STORAGE_URI") or None,
            storage_secret=env("LMFORGE_STORAGE_SECRET") or None,
            endpoint_url=env("LMFORGE_STORAGE_ENDPOINT_URL") or None,
            termination_grace_seconds=_int(
                "LMFORGE_TERMINATION_GRACE_SECONDS", Defaults.termination_grace_seconds
            ),
            service_account=env("LMFORGE_JOB_SERVICE_ACCOUNT") or None,
            otlp_endpoint=env("LMFORGE_JOB_OTLP_ENDPOINT") or None,
            gang_scheduler=_choice(
                "LMFORGE_GANG_SCHEDULER", Defaults.gang_scheduler, GangScheduler
            ),
            scheduler_name=env("LMFORGE_SCHEDULER_NAME") or None,
            ray_clusters=_choice("LMFORGE_RAY_CLUSTERS", Defaults.ray_clusters, RayClusters),
            nccl=_nccl("LMFORGE_JOB_NCCL"),
        )
        return cls(
            defaults=defaults,
            interval_seconds=_float("LMFORGE_RECONCILE_INTERVAL", cls.interval_seconds),
            retry_seconds=_float("LMFORGE_RETRY_DELAY", cls.retry_seconds),
            log_tail_lines=_int("LMFORGE_LOG_TAIL_LINES", cls.log_tail_lines),
            metrics_port=_int("LMFORGE_METRICS_PORT", 0) or None,
        )


SETTINGS = Settings.from_env()
