"""One reconcile pass, the same for every kind: read the resource, resolve its references, observe
its pods and progress, decide (pure, in operator/render), then carry the plan out: patch status
once if it changed, post events, delete pods, create what is missing.

kopf calls `run()` from create, resume and update handlers and from a timer; passes for one
object never overlap (a lock per object), and each reads the object afresh, so a pass never
decides on a status older than the one the previous pass wrote.
"""

from __future__ import annotations

import datetime
import logging
import threading
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import kopf
import urllib3
from kubernetes.client.rest import ApiException

from ..api import KINDS
from ..api import conditions as c
from ..api.base import GROUP, VERSION
from ..api.conditions import RESTARTING
from ..api.references import references
from ..api.resource import Resource
from ..kube import Kube, OwnershipError
from ..render.inputs import Dependencies, resolve
from ..render.names import TRACEPARENT_ANNOTATION, Owner, RenderError, selector
from ..render.observe import PodState, observe
from ..render.pods import StorageSettings, storage
from ..render.progress import parse_events
from ..render.status import (
    TERMINAL,
    Observed,
    Plan,
    condition,
    fail,
    status_patch,
    transition_events,
)
from ..validate import errors
from . import telemetry
from .settings import SETTINGS, Settings

log = logging.getLogger(__name__)

PLURALS = {kind: model.plural for kind, model in KINDS.items()}
Children = tuple[list[dict[str, Any]], list[dict[str, Any]]]


@dataclass(frozen=True)
class Work:
    """What a kind contributes to one pass, built from the parsed resource and its references."""

    decide: Callable[[Observed], Plan]
    render: Callable[[int], Children] | None
    """attempt -> (objects that last, pods of that attempt); None until references resolve."""
    log_source: Callable[[tuple[PodState, ...], dict[str, Any]], tuple[PodState, str] | None]
    """(pods, previous status) -> the pod and container whose log has the progress events."""
    lineage: dict[str, Any] | None = None


Build = Callable[[Resource, Owner, Dependencies, StorageSettings, Settings, str | None], Work]


@dataclass(frozen=True)
class Kind:
    kind: str
    build: Build | None = None
    reconcile: Callable[[Kube, Kind, dict[str, Any], str | None], None] | None = None
    """A pass of its own, for a kind that owns no job pods (Deployment); else the job pass."""

    def __post_init__(self) -> None:
        if (self.build is None) == (self.reconcile is None):
            raise TypeError(f"Kind {self.kind}: give exactly one of build (a job) or reconcile")

    @property
    def plural(self) -> str:
        return PLURALS[self.kind]


_kube: Kube | None = None
_locks: dict[tuple[str, str, str], threading.Lock] = {}
_locks_guard = threading.Lock()


def register(kind: Kind) -> None:
    """kopf's handlers for a kind: a pass on create, on resume (operator start) and on a spec
    change; and a timer, because pods, progress and deadlines change without the resource
    changing. The timer's first pass waits an interval, so that a new resource's first pass is
    its create handler's alone (benchmarks/operator_scale.py)."""
    singular = kind.kind.lower()

    def reconcile(namespace: str, name: str, **_: Any) -> None:
        run(kind, namespace, name)

    where = (GROUP, VERSION, kind.plural)
    on = f"reconcile_{singular}"  # the handler ids kopf keeps in annotations
    kopf.on.create(*where, id=on)(reconcile)
    kopf.on.resume(*where, id=on)(reconcile)
    kopf.on.update(*where, field="spec", id=on)(reconcile)
    every = SETTINGS.interval_seconds
    kopf.timer(*where, id=f"follow_{singular}", interval=every, initial_delay=every)(reconcile)


def kube() -> Kube:
    global _kube
    if _kube is None:
        _kube = Kube()
    return _kube


def use(api: Kube | None) -> None:
    """Talk to the API through `api` (tests pass an in-memory one); None: the real one, lazily."""
    global _kube
    _kube = api


def _lock(key: tuple[str, str, str]) -> threading.Lock:
    with _locks_guard:
        return _locks.setdefault(key, threading.Lock())


def run(kind: Kind, namespace: str, name: str) -> None:
    """One pass for one object. Transient trouble becomes kopf.TemporaryError (retried after a
    delay), an invalid spec kopf.PermanentError after a Failed condition names the field."""
    with _lock((kind.kind, namespace, name)):
        api = kube()
        try:
            obj = api.get(kind.plural, namespace, name)
            if obj is None or obj["metadata"].get("deletionTimestamp"):
                return  # gone or going: the garbage collector deletes the children
            parent = (obj["metadata"].get("annotations") or {}).get(TRACEPARENT_ANNOTATION)
            with telemetry.reconcile_span(kind.kind, namespace, name, parent):
                one_pass = kind.reconcile or _pass
                one_pass(api, kind, obj, telemetry.current_traceparent(parent))
        except ApiException as error:
            message = f"Kubernetes API: {error.status} {error.reason}"
            raise kopf.TemporaryError(message, delay=SETTINGS.retry_seconds) from error
        except (OwnershipError, urllib3.exceptions.HTTPError) as error:
            raise kopf.TemporaryError(str(error), delay=SETTINGS.retry_seconds) from error


def parse(obj: dict[str, Any]) -> Resource:
    """The typed resource; a RenderError naming the field(s) when the spec is invalid."""
    meta = obj["metadata"]
    document = {
        "apiVersion": obj["apiVersion"],
        "kind": obj["kind"],
        "metadata": {
            k: meta[k] for k in ("name", "namespace", "labels", "annotations") if k in meta
        },
        "spec": obj.get("spec") or {},
    }
    resource, found = errors(document)
    if resource is None:
        (field, first), rest = found[0], found[1:]
        raise RenderError(field, "; ".join([first, *(f"{p}: {text}" for p, text in rest)]))
    return resource


def _pass(api: Kube, kind: Kind, obj: dict[str, Any], traceparent: str | None) -> None:
    meta = obj["metadata"]
    try:
        resource = parse(obj)
        store = storage(resource.spec.storage, SETTINGS.defaults)
    except RenderError as error:
        record_invalid(api, kind, obj, error)
        return
    previous = _forget_invalid(obj.get("status") or {})
    owner = Owner.of(obj)
    deps = dependencies(api, resource, owner.namespace, store, previous)
    try:
        work = kind.build(resource, owner, deps, store, SETTINGS, traceparent)
    except RenderError as error:
        record_invalid(api, kind, obj, error)
        return
    pods = tuple(observe(p) for p in api.list("Pod", owner.namespace, selector(owner)))
    observed = Observed(
        previous=previous,
        generation=meta.get("generation", 1),
        run_policy=resource.spec.run_policy,
        dependencies=deps,
        pods=pods,
        now=_now(),
        events=_progress(api, work, pods, previous, owner.namespace),
        lineage=work.lineage,
    )
    _apply(api, kind, obj, owner, work, work.decide(observed))


def _forget_invalid(status: dict[str, Any]) -> dict[str, Any]:
    """A spec that failed validation and now passes starts over: nothing ran."""
    failed = condition(status, c.FAILED) or {}
    if failed.get("reason") != c.INVALID_SPEC or status.get("phase") != "Failed":
        return status
    kept = [x for x in status.get("conditions", []) if x["type"] not in (c.FAILED, c.RUNNING)]
    cleared = {k: v for k, v in status.items() if k not in ("phase", "completionTime")}
    return {**cleared, "conditions": kept}


def record_invalid(api: Kube, kind: Kind, obj: dict[str, Any], error: RenderError) -> None:
    """A Failed condition naming the field, recorded once; then kopf stops retrying."""
    previous = obj.get("status") or {}
    failed = condition(previous, c.FAILED) or {}
    if failed.get("reason") == c.INVALID_SPEC and failed.get("message") == str(error):
        return  # an earlier pass recorded it: nothing to do until the spec changes
    status = {**previous, "observedGeneration": obj["metadata"].get("generation", 1)}
    fail(status, c.INVALID_SPEC, str(error), _now())
    meta, patch = obj["metadata"], status_patch(previous, status)
    if patch:
        api.patch_status(kind.plural, meta["namespace"], meta["name"], patch)
    kopf.event(obj, type="Warning", reason=c.INVALID_SPEC, message=str(error))
    raise kopf.PermanentError(str(error)) from error


def dependencies(
    api: Kube, resource: Resource, namespace: str, store: StorageSettings, previous: dict
) -> Dependencies:
    if previous.get("phase") in TERMINAL:
        return Dependencies([], [], {})  # a finished resource never runs again
    found = {
        (r.kind, r.name): api.get(PLURALS[r.kind], namespace, r.name) for r in references(resource)
    }
    deps = resolve(resource, found)
    if store.secret_name and not api.secret_exists(namespace, store.secret_name):
        where = "spec.storage.secretName" if resource.spec.storage.secret_name else "storage"
        deps.waiting.append(f"{where}: Secret {store.secret_name} does not exist yet")
    return deps


def _progress(
    api: Kube, work: Work, pods: tuple[PodState, ...], previous: dict, namespace: str
) -> tuple[dict[str, Any], ...]:
    """Events from the termination message and the log tail of the pod that reports progress."""
    if previous.get("phase") in TERMINAL:
        return ()
    source = work.log_source(pods, previous)
    if source is None:
        return ()
    pod, container = source
    text = None
    if pod.phase != "Pending":
        text = api.pod_log(namespace, pod.name, container, SETTINGS.log_tail_lines)
    return tuple(parse_events(pod.message) + parse_events(text or ""))


def _apply(
    api: Kube, kind: Kind, obj: dict[str, Any], owner: Owner, work: Work, plan: Plan
) -> None:
    # Status first: it records the decision (a restart's new attempt), so a crash before the
    # deletions below leaves a state the next pass completes rather than repeats.
    previous = obj.get("status") or {}
    patch = status_patch(previous, plan.status)
    if patch:
        api.patch_status(kind.plural, owner.namespace, owner.name, patch)
    for event in transition_events(previous, plan.status):
        kopf.event(obj, type=event.type, reason=event.reason, message=event.message)
        if event.reason == RESTARTING:
            telemetry.RESTARTS.add(1, {"lmforge.kind": kind.kind})
    for name in plan.delete:
        api.delete("Pod", owner.namespace, name, plan.grace_seconds)
    if plan.create:
        _create(api, work, plan)
    if plan.cleanup and api.delete_children(owner.namespace, selector(owner)):
        message = "runPolicy.ttlSecondsAfterFinished has passed: child objects deleted"
        kopf.event(obj, type="Normal", reason="CleanedUp", message=message)


def _create(api: Kube, work: Work, plan: Plan) -> None:
    if work.render is None:
        log.info("not creating %s: references unresolved", ", ".join(plan.create))
        return
    lasting, pods = work.render(plan.attempt)
    for child in lasting:  # the config follows the spec at every (re)start of the pods
        api.ensure(child, update_data=True)
    for pod in pods:
        if pod["metadata"]["name"] in plan.create:
            api.ensure(pod)


def _now() -> datetime.datetime:
    return datetime.datetime.now(datetime.UTC)
