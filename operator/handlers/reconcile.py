"""One reconcile pass, the same for every kind that runs a job: read the resource, resolve its
references, describe it (operator/stages), observe its pods and the events of the one that
reports them, decide (pure, in operator/render), then carry the decision out: patch status once
if it changed, post events, delete pods, create what is missing.

kopf calls `run()` from create, resume and update handlers and from a timer; passes for one
object never overlap (a lock per object), and each reads the object afresh, so a pass never
decides on a status older than the one the previous pass wrote.
"""

from __future__ import annotations

import dataclasses
import datetime
import logging
import threading
from collections.abc import Callable
from typing import Any

import kopf
import urllib3
from kubernetes.client.rest import ApiException

from lmforge.operator.api import KINDS, conditions
from lmforge.operator.api.base import GROUP, VERSION
from lmforge.operator.api.common import Lineage, Status
from lmforge.operator.api.events import parse as parse_events
from lmforge.operator.api.resource import Resource
from lmforge.operator.handlers import telemetry
from lmforge.operator.handlers.settings import SETTINGS
from lmforge.operator.kube import Kube, OwnershipError
from lmforge.operator.render import Renderer, renderer_for, scheduling
from lmforge.operator.render.dataset import RAY_CLUSTER_CRD
from lmforge.operator.render.names import TRACEPARENT_ANNOTATION, Owner, selector
from lmforge.operator.render.observe import Admission, PodState, admission, observe
from lmforge.operator.render.pods import Defaults, Rendering
from lmforge.operator.render.status import (
    TERMINAL,
    Decision,
    Observed,
    status_patch,
    transition_events,
)
from lmforge.operator.stages import STAGES
from lmforge.operator.stages.base import Description, SpecError, storage
from lmforge.operator.stages.inputs import Dependencies, resolve
from lmforge.operator.validate import errors

log = logging.getLogger(__name__)

Pass = Callable[[Kube, str, dict[str, Any], str | None], None]
"""One pass over one object: (api, kind, the object as read, the trace context for its pods)."""

_kube: Kube | None = None
_locks: dict[tuple[str, str, str], threading.Lock] = {}
_locks_guard = threading.Lock()


def register(kind: str, one_pass: Pass) -> None:
    """kopf's handlers for a kind: a pass on create, on resume (operator start) and on a spec
    change; and a timer, because pods, progress and deadlines change without the resource
    changing. The timer's first pass waits an interval, so that a new resource's first pass is
    its create handler's alone (benchmarks/operator_scale.py)."""
    singular = kind.lower()

    def reconcile(namespace: str, name: str, **_: Any) -> None:
        run(kind, namespace, name, one_pass)

    where = (GROUP, VERSION, KINDS[kind].plural)
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


def run(kind: str, namespace: str, name: str, one_pass: Pass | None = None) -> None:
    """One pass for one object. Transient trouble becomes kopf.TemporaryError (retried after a
    delay), an invalid spec kopf.PermanentError after a Failed condition names the field."""
    with _lock((kind, namespace, name)):
        api = kube()
        try:
            obj = api.get(KINDS[kind].plural, namespace, name)
            if obj is None or obj["metadata"].get("deletionTimestamp"):
                return  # gone or going: the garbage collector deletes the children
            parent = (obj["metadata"].get("annotations") or {}).get(TRACEPARENT_ANNOTATION)
            with telemetry.reconcile_span(kind, namespace, name, parent):
                (one_pass or job_pass)(api, kind, obj, telemetry.current_traceparent(parent))
        except ApiException as error:
            message = f"Kubernetes API: {error.status} {error.reason}"
            raise kopf.TemporaryError(message, delay=SETTINGS.retry_seconds) from error
        except (OwnershipError, urllib3.exceptions.HTTPError) as error:
            raise kopf.TemporaryError(str(error), delay=SETTINGS.retry_seconds) from error


def parse(obj: dict[str, Any]) -> Resource:
    """The typed resource; a SpecError naming the field(s) when the spec is invalid."""
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
        raise SpecError(field, "; ".join([first, *(f"{p}: {text}" for p, text in rest)]))
    return resource


def status_of(obj: dict[str, Any]) -> Status:
    """The object's status as its kind's Status model."""
    return KINDS[obj["kind"]].status_class().model_validate(obj.get("status") or {})


def job_pass(api: Kube, kind: str, obj: dict[str, Any], traceparent: str | None) -> None:
    installed = defaults(api)
    stage, renderer = STAGES[kind], renderer_for(kind, installed)
    owner = Owner.of(obj)
    try:
        resource = parse(obj)
        store = storage(resource.spec.storage, SETTINGS.defaults.store)
        renderer.check(owner, resource)
    except SpecError as error:
        record_invalid(api, obj, error)
        return
    previous = _forget_invalid(status_of(obj))
    deps = dependencies(api, resource, owner.namespace, previous)
    description = None
    if deps.ready and previous.phase not in TERMINAL:
        try:
            description = stage.describe(resource, deps.outputs, store)
        except SpecError as error:
            record_invalid(api, obj, error)
            return
    pods = tuple(observe(p) for p in api.list("Pod", owner.namespace, selector(owner)))
    source = renderer.reporter(pods, previous, stage) if previous.phase not in TERMINAL else None
    observed = Observed(
        previous=previous,
        generation=obj["metadata"].get("generation", 1),
        run_policy=resource.spec.run_policy,
        dependencies=deps,
        pods=pods,
        now=_now(),
        events=_events(api, source, owner.namespace),
        lineage=_lineage(description, resource),
        admission=_admission(api, owner, resource, previous),
    )
    rendering = description and Rendering(
        owner, resource, stage.role, description, installed, store, traceparent
    )
    decision = renderer.decide(observed, owner, resource, stage)
    _apply(api, obj, owner, rendering, renderer, decision)


_resolved: dict[str, str] = {}
"""The installation's auto settings, as found: looked up once per process."""


def defaults(api: Kube) -> Defaults:
    """The installation's defaults, each auto resolved once: gangScheduler to the first gang
    scheduler whose PodGroup CRD is installed, else none; rayClusters to kuberay when KubeRay's
    RayCluster CRD is installed, else pods."""
    d = SETTINGS.defaults

    def resolve(setting: str, value: str, find: Callable[[], str]) -> str:
        if value == "auto" and setting not in _resolved:
            _resolved[setting] = find()
            log.info("%s: %s", setting, _resolved[setting])
        return _resolved[setting] if value == "auto" else value

    crds = scheduling.POD_GROUP_CRDS.items()
    gang = resolve("gangScheduler", d.gang_scheduler,
                   lambda: next((s for s, crd in crds if api.has_crd(crd)), "none"))  # fmt: skip
    ray = resolve("rayClusters", d.ray_clusters,
                  lambda: "kuberay" if api.has_crd(RAY_CLUSTER_CRD) else "pods")  # fmt: skip
    return dataclasses.replace(d, gang_scheduler=gang, ray_clusters=ray)


def _admission(api: Kube, owner: Owner, resource: Resource, previous: Status) -> Admission | None:
    """Kueue's word on the pods' group, where the resource names a queue."""
    if scheduling.queue(resource) is None or previous.phase in TERMINAL:
        return None
    workload = api.read(scheduling.WORKLOAD, owner.namespace, scheduling.group_name(owner))
    return admission(workload)


def _lineage(description: Description | None, resource: Resource) -> Lineage | None:
    """The description's lineage with the image the pods run."""
    if description is None:
        return None
    image = resource.spec.resources.image or SETTINGS.defaults.image
    return description.lineage.model_copy(update={"image": image})


def _forget_invalid(status: Status) -> Status:
    """A spec that failed validation and now passes starts over: nothing ran."""
    failed = status.condition(conditions.FAILED)
    if not failed or failed.reason != conditions.INVALID_SPEC or status.phase != "Failed":
        return status
    kept = [c for c in status.conditions if c.type not in (conditions.FAILED, conditions.RUNNING)]
    return status.model_copy(update={"phase": None, "completion_time": None, "conditions": kept})


def record_invalid(api: Kube, obj: dict[str, Any], error: SpecError) -> None:
    """A Failed condition naming the field, recorded once; then kopf stops retrying."""
    previous = status_of(obj)
    failed = previous.condition(conditions.FAILED)
    if failed and failed.reason == conditions.INVALID_SPEC and failed.message == str(error):
        return  # an earlier pass recorded it: nothing to do until the spec changes
    status = previous.model_copy(deep=True)
    status.observed_generation = obj["metadata"].get("generation", 1)
    status.fail(conditions.INVALID_SPEC, str(error), _now())
    patch_status(api, obj, status)
    kopf.event(obj, type="Warning", reason=conditions.INVALID_SPEC, message=str(error))
    raise kopf.PermanentError(str(error)) from error


def patch_status(api: Kube, obj: dict[str, Any], status: Status) -> None:
    """Write `status` as a merge patch of what differs from the object's, if anything does."""
    meta = obj["metadata"]
    patch = status_patch(obj.get("status") or {}, status.wire())
    if patch:
        api.patch_status(KINDS[obj["kind"]].plural, meta["namespace"], meta["name"], patch)


def dependencies(api: Kube, resource: Resource, namespace: str, previous: Status) -> Dependencies:
    if previous.phase in TERMINAL:
        return Dependencies([], [], {})  # a finished resource never runs again
    refs = resource.references()
    found = {(r.kind, r.name): api.get(KINDS[r.kind].plural, namespace, r.name) for r in refs}
    # A missing storage Secret is not checked here: the operator reads no Secrets (least
    # privilege); the pods wait with kubelet's reason (CreateContainerConfigError: secret ... not
    # found), which status shows.
    return resolve(resource, found)


def _events(
    api: Kube, source: tuple[PodState, str] | None, namespace: str
) -> tuple[dict[str, Any], ...]:
    """Events from the termination message and the log tail of the pod that reports them."""
    if source is None:
        return ()
    pod, container = source
    text = None
    if pod.phase != "Pending":
        text = api.pod_log(namespace, pod.name, container, SETTINGS.log_tail_lines)
    return tuple(parse_events(pod.message) + parse_events(text or ""))


def _apply(
    api: Kube,
    obj: dict[str, Any],
    owner: Owner,
    rendering: Rendering | None,
    renderer: Renderer,
    decision: Decision,
) -> None:
    # Status first: it records the decision (a restart's new attempt), so a crash before the
    # deletions below leaves a state the next pass completes rather than repeats.
    patch_status(api, obj, decision.status)
    for event in transition_events(status_of(obj), decision.status):
        kopf.event(obj, type=event.type, reason=event.reason, message=event.message)
        if event.reason == conditions.RESTARTING:
            telemetry.RESTARTS.add(1, {"lmforge.kind": obj["kind"]})
    if decision.status.phase == "Failed" and status_of(obj).phase != "Failed":
        _end_group(api, owner, parse(obj))
    for name in decision.delete:
        api.delete("Pod", owner.namespace, name, decision.grace_seconds)
    for kind, name in decision.remove:
        api.delete(kind, owner.namespace, name)
    if decision.create:
        _create(api, rendering, renderer, decision)
    if decision.cleanup and api.delete_children(owner.namespace, selector(owner)):
        message = "runPolicy.ttlSecondsAfterFinished has passed: child objects deleted"
        kopf.event(obj, type="Normal", reason="CleanedUp", message=message)


def _end_group(api: Kube, owner: Owner, resource: Resource) -> None:
    """A failed run's Kueue pod group: marked not to be replaced, so that Kueue finishes its
    Workload and frees the quota (it would otherwise wait for replacement pods)."""
    if scheduling.queue(resource) is None:
        return
    for pod in api.list("Pod", owner.namespace, selector(owner)):
        api.annotate("Pod", owner.namespace, pod["metadata"]["name"], scheduling.NOT_RETRIABLE)


def _create(api: Kube, rendering: Rendering | None, renderer: Renderer, decision: Decision) -> None:
    if rendering is None:
        log.info("not creating %s: references unresolved", ", ".join(decision.create))
        return
    lasting, pods = scheduling.together(rendering, renderer.children(rendering, decision.attempt))
    for child in lasting:  # the config follows the spec at every (re)start of the pods
        api.ensure(child, update_data=True)
    for pod in pods:
        if pod["metadata"]["name"] in decision.create:
            api.ensure(pod)


def _now() -> datetime.datetime:
    return datetime.datetime.now(datetime.UTC)
