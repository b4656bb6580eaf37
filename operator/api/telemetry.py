"""OpenTelemetry export, the same for the operator, the trainer and the server: traces and metrics
over OTLP/HTTP to OTEL_EXPORTER_OTLP_ENDPOINT, and the operator's metrics for Prometheus to
scrape. Without either, or without the SDK, nothing is installed and every span and instrument
stays a no-op."""

from __future__ import annotations

import logging
import os

from opentelemetry import metrics, trace

log = logging.getLogger(__name__)


def setup(service: str, prometheus_port: int | None = None, **attributes: str) -> bool:
    """Install the SDK's providers: OTLP exporters when OTEL_EXPORTER_OTLP_ENDPOINT is set, and
    with `prometheus_port` the metrics also on http://0.0.0.0:PORT/metrics (the operator's); whether
    anything is exported."""
    otlp = bool(os.environ.get("OTEL_EXPORTER_OTLP_ENDPOINT"))
    if not otlp and prometheus_port is None:
        return False
    try:
        from opentelemetry.sdk.metrics import MeterProvider
        from opentelemetry.sdk.metrics.export import MetricReader, PeriodicExportingMetricReader
        from opentelemetry.sdk.resources import Resource
        from opentelemetry.sdk.trace import TracerProvider
        from opentelemetry.sdk.trace.export import BatchSpanProcessor
    except ImportError as error:
        log.warning("telemetry is configured but the OpenTelemetry SDK is missing (%s)", error)
        return False
    resource = Resource.create({"service.name": service, **attributes})
    readers: list[MetricReader] = []
    if otlp:
        from opentelemetry.exporter.otlp.proto.http.metric_exporter import OTLPMetricExporter
        from opentelemetry.exporter.otlp.proto.http.trace_exporter import OTLPSpanExporter

        traces = TracerProvider(resource=resource)
        traces.add_span_processor(BatchSpanProcessor(OTLPSpanExporter()))
        trace.set_tracer_provider(traces)
        readers.append(PeriodicExportingMetricReader(OTLPMetricExporter()))
    if prometheus_port is not None:
        from opentelemetry.exporter.prometheus import PrometheusMetricReader
        from prometheus_client import start_http_server

        start_http_server(prometheus_port)
        readers.append(PrometheusMetricReader())
    metrics.set_meter_provider(MeterProvider(resource=resource, metric_readers=readers))
    return True


def shutdown() -> None:
    """Export what is pending (a job's last figures) before the process ends."""
    for provider in (metrics.get_meter_provider(), trace.get_tracer_provider()):
        if hasattr(provider, "shutdown"):
            provider.shutdown()
