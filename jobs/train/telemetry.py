"""Progress out of the trainer: a JSON-lines file the operator and the local runner read, stdout,
and OpenTelemetry metrics over OTLP when OTEL_EXPORTER_OTLP_ENDPOINT is set."""

from __future__ import annotations

import json
import os
import sys
import time
from typing import Any, ClassVar, TextIO


class Telemetry:
    """Rank 0 reports; the other ranks' calls do nothing."""

    def __init__(self, rank: int, progress_path: str | None, job: str):
        self.enabled = rank == 0
        self.file: TextIO | None = None
        self.meter = None
        if not self.enabled:
            return
        if progress_path:
            os.makedirs(os.path.dirname(os.path.abspath(progress_path)), exist_ok=True)
            self.file = open(progress_path, "a", buffering=1)  # noqa: SIM115 - lives with the job
        if os.environ.get("OTEL_EXPORTER_OTLP_ENDPOINT"):
            self.meter = _Meter(job)

    def event(self, kind: str, **fields: Any) -> None:
        if not self.enabled:
            return
        line = json.dumps({"event": kind, "time": round(time.time(), 3), **fields})
        if self.file:
            self.file.write(line + "\n")
        print(line, file=sys.stdout, flush=True)
        if self.meter and kind == "step":
            self.meter.record(fields)

    def close(self) -> None:
        if self.file:
            self.file.close()
        if self.meter:
            self.meter.shutdown()


class _Meter:
    """Gauges for the last step's figures, exported periodically by the OTLP exporter."""

    # progress field -> metric name (OpenTelemetry names are case-insensitive: snake_case)
    NAMES: ClassVar = {
        "loss": "loss",
        "lr": "lr",
        "gradNorm": "grad_norm",
        "mfu": "mfu",
        "tokensPerSecond": "tokens_per_second",
        "stepSeconds": "step_seconds",
    }

    def __init__(self, job: str):
        from opentelemetry.exporter.otlp.proto.http.metric_exporter import OTLPMetricExporter
        from opentelemetry.sdk.metrics import MeterProvider
        from opentelemetry.sdk.metrics.export import PeriodicExportingMetricReader
        from opentelemetry.sdk.resources import Resource

        reader = PeriodicExportingMetricReader(OTLPMetricExporter())
        resource = Resource.create({"service.name": "lmforge-trainer", "lmforge.job": job})
        self.provider = MeterProvider(metric_readers=[reader], resource=resource)
        meter = self.provider.get_meter("lmforge.train")
        self.gauges = {
            field: meter.create_gauge(f"lmforge.train.{name}") for field, name in self.NAMES.items()
        }

    def record(self, fields: dict[str, Any]) -> None:
        for name, gauge in self.gauges.items():
            if fields.get(name) is not None:
                gauge.set(fields[name])

    def shutdown(self) -> None:
        self.provider.shutdown()
