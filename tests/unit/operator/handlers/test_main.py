"""The operator process: kopf's tuning, the handlers registered, and the layering kept."""

import ast
import logging
import os
import subprocess
import sys

import kopf

from lmforge.operator import main
from lmforge.operator.api import KINDS as ALL

KINDS = tuple(k.plural for k in ALL.values())


def test_kopf_keeps_its_state_in_annotations():
    settings = kopf.OperatorSettings()
    main.configure(settings=settings, logger=logging.getLogger("test"))
    assert isinstance(settings.persistence.progress_storage, kopf.AnnotationsProgressStorage)
    assert isinstance(settings.persistence.diffbase_storage, kopf.AnnotationsDiffBaseStorage)
    assert settings.persistence.finalizer == "lmforge.dev/finalizer"
    assert settings.posting.level == logging.WARNING


def test_every_kind_has_its_handlers():
    registry = kopf.get_default_registry()
    changing = {(h.selector.any_name, h.reason) for h in registry._changing._handlers}
    timers = {h.selector.any_name for h in registry._spawning._handlers}
    for plural in KINDS:
        assert {(plural, "create"), (plural, None), (plural, "update")} <= changing
    assert timers == set(KINDS) and len(KINDS) == 6


def loaded_after(statement):
    code = f"import sys; {statement}; print(sorted({{m.split('.')[0] for m in sys.modules}}))"
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    return set(ast.literal_eval(done.stdout))


def test_the_operator_never_imports_torch():
    assert not loaded_after("import lmforge.operator.main") & {"torch", "numpy", "jobs"}


def test_renderers_and_descriptions_do_not_talk_to_the_api():
    modules = "dataset, deployment, gang, job, names, observe, overlay, pods, status"
    loaded = loaded_after(
        f"import lmforge.operator.stages; from lmforge.operator.render import {modules}"
    )
    assert not loaded & {"kopf", "kubernetes", "urllib3", "aiohttp"}


def test_the_operator_serves_its_metrics_for_prometheus():
    """LMFORGE_METRICS_PORT: reconcile passes (and their errors) on /metrics, with no OTLP
    endpoint; in a process of its own, since OpenTelemetry's providers are set once."""
    code = """
import socket, urllib.request
from lmforge.operator.api import telemetry
from lmforge.operator.handlers.telemetry import reconcile_span
with socket.socket() as s:
    s.bind(("127.0.0.1", 0))
    port = s.getsockname()[1]
assert telemetry.setup("lmforge-operator", port)
with reconcile_span("PretrainJob", "team-a", "tiny", None):
    pass
try:
    with reconcile_span("Dataset", "team-a", "corpus", None):
        raise KeyError("boom")
except KeyError:
    pass
print(urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics").read().decode())
"""
    env = {k: v for k, v in os.environ.items() if not k.startswith("OTEL_")}
    done = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, check=True, env=env
    )
    lines = done.stdout.splitlines()
    count = [x for x in lines if x.startswith("lmforge_operator_reconcile_duration_seconds_count")]
    assert len(count) == 2 and all(x.endswith(" 1.0") for x in count), count
    errors = [x for x in lines if x.startswith("lmforge_operator_reconcile_errors_total")]
    assert errors and 'error_type="KeyError"' in errors[0] and errors[0].endswith(" 1.0"), errors
