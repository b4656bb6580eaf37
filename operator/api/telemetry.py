"""OpenTelemetry export, the same for the operator, the trainer and the server: traces and metrics
over OTLP/HTTP to OTEL_EXPORTER_OTLP_ENDPOINT. Without that variable, or without the SDK,
nothing is installed and every span and instrument stays a no-op."""

from __future__ import annotations

import logging
import os

from opentelemetry import metrics, trace

log = logging.getLogger(__name__)


def setup(service: str, **attributes: str) -> bool:
    """Install the SDK's OTLP exporters as the global providers; whether it did."""
    if not os.environ.get("OTEL_EXPORTER_OTLP_ENDPOINT"):
        return False
    try:
        from opentelemetry.exporter.otlp.proto.http.metric_exporter import OTLPMetricExporter
        from opentelemetry.exporter.otlp.proto.http.trace_exporter import OTLPSpanExporter
        from opentelemetry.sdk.metrics import MeterProvider
        from opentelemetry.sdk.metrics.export import PeriodicExportingMetricReader
        from opentelemetry.sdk.resources import Resource
        from opentelemetry.sdk.trace import TracerProvider
        from opentelemetry.sdk.trace.export import BatchSpanProcessor
    except ImportError as error:
        log.warning("OTEL_EXPORTER_OTLP_ENDPOINT is set but the SDK is missing (%s)", error)
        return False
    resource = Resource.create({"service.name": service, **attributes})
    traces = TracerProvider(resource=resource)
    traces.add_span_processor(BatchSpanProcessor(OTLPSpanExporter()))
    trace.set_tracer_provider(traces)
    reader = PeriodicExportingMetricReader(OTLPMetricExporter())
    metrics.set_meter_provider(MeterProvider(resource=resource, metric_readers=[reader]))
    return True


def shutdown() -> None:
    """Export what is pending (a job's last figures) before the process ends."""
    for provider in (metrics.get_meter_provider(), trace.get_tracer_provider()):
        if hasattr(provider, "shutdown"):
            provider.shutdown()
