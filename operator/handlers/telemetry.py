"""The operator's traces and metrics: a span per reconcile pass, and reconcile latency, errors and
gang restarts. Until operator/api/telemetry.py's `setup()` installs the SDK's exporters (with
OTEL_EXPORTER_OTLP_ENDPOINT set), every call here is a no-op."""

from __future__ import annotations

import time
from collections.abc import Iterator
from contextlib import contextmanager

from opentelemetry import metrics, trace
from opentelemetry.trace.propagation.tracecontext import TraceContextTextMapPropagator

_propagator = TraceContextTextMapPropagator()
tracer = trace.get_tracer("lmforge.operator")
_meter = metrics.get_meter("lmforge.operator")
RECONCILE_SECONDS = _meter.create_histogram(
    "lmforge.operator.reconcile.duration", unit="s", description="One reconcile pass"
)
RECONCILE_ERRORS = _meter.create_counter(
    "lmforge.operator.reconcile.errors", description="Reconcile passes that raised"
)
RESTARTS = _meter.create_counter(
    "lmforge.operator.restarts", description="Gangs and jobs restarted after a failure"
)


@contextmanager
def reconcile_span(kind: str, namespace: str, name: str, parent: str | None) -> Iterator[None]:
    """A span for one pass, child of the resource's lmforge.dev/traceparent annotation if any;
    its duration and failure also go to the metrics."""
    context = _propagator.extract({"traceparent": parent}) if parent else None
    attributes = {"lmforge.kind": kind, "k8s.namespace.name": namespace, "lmforge.name": name}
    started = time.perf_counter()
    with tracer.start_as_current_span(f"reconcile {kind}", context=context, attributes=attributes):
        try:
            yield
        except Exception as error:
            RECONCILE_ERRORS.add(1, {"lmforge.kind": kind, "error.type": type(error).__name__})
            raise
        finally:
            RECONCILE_SECONDS.record(time.perf_counter() - started, {"lmforge.kind": kind})


def current_traceparent(fallback: str | None) -> str | None:
    """The W3C traceparent of the current span, for the pods; `fallback` when tracing is off."""
    carrier: dict[str, str] = {}
    _propagator.inject(carrier)
    return carrier.get("traceparent", fallback)
