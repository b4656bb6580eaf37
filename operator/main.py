"""The operator process: every kind's handlers, and kopf's tuning in one startup hook.

    kopf run -m lmforge.operator.main --all-namespaces --standalone \\
        --liveness=http://0.0.0.0:8080/healthz

or `python -m lmforge.operator.main [--namespace NS ...]`, which runs the same with those flags.
"""

from __future__ import annotations

import argparse
import logging
import os
import sys
from typing import Any

import kopf

from lmforge.operator.api.telemetry import setup as export_telemetry
from lmforge.operator.handlers.deployment import server_pass
from lmforge.operator.handlers.reconcile import job_pass, register
from lmforge.operator.handlers.settings import SETTINGS
from lmforge.operator.stages import STAGES

PREFIX = "lmforge.dev"

for _kind, _stage in STAGES.items():
    register(_kind, server_pass if _stage.serves else job_pass)


@kopf.on.startup()
def configure(settings: kopf.OperatorSettings, logger: logging.Logger, **_: Any) -> None:
    # The CRDs' status schema is structural: kopf's own status fields would be pruned, so its
    # handler progress and last-handled spec live in annotations instead.
    settings.persistence.progress_storage = kopf.AnnotationsProgressStorage(prefix=PREFIX)
    settings.persistence.diffbase_storage = kopf.AnnotationsDiffBaseStorage(
        prefix=PREFIX, key="last-handled-configuration"
    )
    settings.persistence.finalizer = f"{PREFIX}/finalizer"
    # Events for what the handlers decide are posted explicitly; kopf's own only for trouble.
    settings.posting.level = logging.WARNING
    # A watch that silently stalls must not stall the operator: reconnect every few minutes.
    settings.watching.server_timeout = 300
    settings.watching.client_timeout = 330
    settings.watching.connect_timeout = 30
    # The timers' first pass waits an interval (see handlers/): a new resource's first pass is
    # its create handler's, not both at once (benchmarks/operator_scale.py).
    # Sync handlers run in this pool; each pass is a handful of API calls.
    settings.execution.max_workers = 16
    settings.networking.request_timeout = 60
    # kopf logs every timer pass at INFO: a line per resource per interval. Keep its warnings;
    # --verbose and --debug (DEBUG) still show everything.
    objects = logging.getLogger("kopf.objects")
    if objects.getEffectiveLevel() == logging.INFO:
        objects.setLevel(logging.WARNING)
    exporting = export_telemetry("lmforge-operator", SETTINGS.metrics_port)
    logger.info(
        "lmforge operator: reconcile every %ss, job image %s, default storage %s, OTLP %s,"
        " metrics on port %s",
        SETTINGS.interval_seconds,
        SETTINGS.defaults.image,
        SETTINGS.defaults.storage_uri or "(none: every resource must set spec.storage.uri)",
        "on" if exporting and os.environ.get("OTEL_EXPORTER_OTLP_ENDPOINT") else "off",
        SETTINGS.metrics_port or "(none)",
    )


@kopf.on.probe(id="reconcileInterval")
def report_interval(**_: Any) -> float:
    """What /healthz reports besides liveness (kopf serves it with --liveness)."""
    return SETTINGS.interval_seconds


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m lmforge.operator.main")
    parser.add_argument(
        "-n",
        "--namespace",
        action="append",
        default=[],
        help="watch this namespace (repeatable); all namespaces when none",
    )
    parser.add_argument(
        "--liveness",
        default="http://0.0.0.0:8080/healthz",
        help="kopf's liveness endpoint, also used as readiness",
    )
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s %(levelname)s %(message)s")
    kopf.run(
        standalone=True,
        clusterwide=not args.namespace,
        namespaces=args.namespace,
        liveness_endpoint=args.liveness,
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
