"""Progress out of the trainer: its events on stdout (operator/api/events.py), which the operator
reads from the pod's log and `lmforge run` from the job's, and OpenTelemetry gauges over OTLP when
OTEL_EXPORTER_OTLP_ENDPOINT is set."""

from __future__ import annotations

from typing import Any, ClassVar

from opentelemetry import metrics

from lmforge.operator.api import events, telemetry


class Telemetry:
    """Rank 0 reports; the other ranks' calls do nothing."""

    # step field -> metric name (OpenTelemetry names are case-insensitive: snake_case)
    GAUGES: ClassVar = {
        "loss": "loss",
        "lr": "lr",
        "gradNorm": "grad_norm",
        "mfu": "mfu",
        "tokensPerSecond": "tokens_per_second",
        "stepSeconds": "step_seconds",
        "peakMemoryMiB": "peak_memory_mib",
        "gpuUtilization": "gpu_utilization",
    }

    def __init__(self, rank: int, job: str):
        self.enabled = rank == 0
        self.gauges = {}
        if self.enabled and telemetry.setup("lmforge-trainer", **{"lmforge.job": job}):
            meter = metrics.get_meter("lmforge.train")
            self.gauges = {
                field: meter.create_gauge(f"lmforge.train.{name}")
                for field, name in self.GAUGES.items()
            }

    def event(self, kind: str, **fields: Any) -> None:
        if not self.enabled:
            return
        events.emit(kind, **fields)
        if kind == events.STEP:
            for name, gauge in self.gauges.items():
                if fields.get(name) is not None:
                    gauge.set(fields[name])

    def close(self) -> None:
        if self.gauges:
            telemetry.shutdown()
