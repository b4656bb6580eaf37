"""How the pods of one attempt ask to be placed together: as a Kueue pod group (admitted all or
nothing against a queue's quota, in priority order), with a PodGroup for Volcano or the
coscheduling plugin (the scheduler binds all or none), or not at all.

Kueue needs nothing from the operator but labels: a queue named in the spec or on the resource
makes the pods one pod group, which Kueue's webhook gates until the group is admitted. A PodGroup
is only rendered where the installation has that scheduler (`Defaults.gang_scheduler`: the helm
value, or what the operator found installed at startup).
"""

from __future__ import annotations

from typing import Any, NamedTuple

from lmforge.operator.api.common import RunPolicy
from lmforge.operator.api.resource import Resource
from lmforge.operator.render.names import Owner, metadata
from lmforge.operator.render.pods import Children, GangScheduler, Rendering

QUEUE = "kueue.x-k8s.io/queue-name"
PRIORITY = "kueue.x-k8s.io/priority-class"
POD_GROUP = "kueue.x-k8s.io/pod-group-name"
POD_GROUP_COUNT = "kueue.x-k8s.io/pod-group-total-count"
NOT_RETRIABLE = {"kueue.x-k8s.io/retriable-in-group": "false"}
"""On a group's pods: its failed pods are final, Kueue finishes the Workload."""
WORKLOAD = "Workload.kueue.x-k8s.io"
"""operator/kube.py's name for Kueue's kind; a pod group's Workload is named after the group."""
VOLCANO_GROUP = "scheduling.k8s.io/group-name"
"""An annotation, for Volcano."""
COSCHEDULING_GROUP = "scheduling.x-k8s.io/pod-group"
"""A label, for the coscheduling plugin."""

POD_GROUP_CRDS: dict[str, str] = {
    "volcano": "podgroups.scheduling.volcano.sh",
    "coscheduling": "podgroups.scheduling.x-k8s.io",
}
"""The CRD that says a gang scheduler is installed, in the order the operator looks for them."""
SCHEDULER_NAMES: dict[str, str] = {
    "volcano": "volcano",
    "coscheduling": "scheduler-plugins-scheduler",
}
"""schedulerName of the pods, unless the installation names another (helm value)."""


class Placement(NamedTuple):
    """What one attempt's pods carry, and the PodGroup that lives with the resource."""

    labels: dict[str, str]
    annotations: dict[str, str]
    scheduler_name: str | None = None
    pod_group: dict[str, Any] | None = None


def queue(resource: Resource) -> str | None:
    """runPolicy.schedulingPolicy.queue, else the resource's Kueue label."""
    policy: RunPolicy = resource.spec.run_policy
    return policy.scheduling_policy.queue or resource.metadata.labels.get(QUEUE)


def priority_class(resource: Resource) -> str | None:
    policy: RunPolicy = resource.spec.run_policy
    return policy.scheduling_policy.priority_class or resource.metadata.labels.get(PRIORITY)


def group_name(owner: Owner) -> str:
    """The Kueue pod group (and its Workload), or the PodGroup, of the resource's pods."""
    return owner.name


def placement(
    owner: Owner,
    resource: Resource,
    pods: list[dict[str, Any]],
    scheduler: GangScheduler,
    scheduler_name: str | None = None,
) -> Placement:
    """How `pods` (one attempt, all of them) are placed as one."""
    name, where, priority = group_name(owner), queue(resource), priority_class(resource)
    if scheduler not in SCHEDULER_NAMES:  # none (auto is resolved before)
        if not where:
            return Placement({}, {})
        labels = {QUEUE: where, POD_GROUP: name} | ({PRIORITY: priority} if priority else {})
        return Placement(labels, {POD_GROUP_COUNT: str(len(pods))})
    spec: dict[str, Any] = {"minMember": len(pods), "minResources": _total(pods)}
    if scheduler == "volcano":
        api_version, tags = "scheduling.volcano.sh/v1beta1", ({}, {VOLCANO_GROUP: name})
        spec |= {"queue": where} if where else {}
        spec |= {"priorityClassName": priority} if priority else {}
    else:
        api_version, tags = "scheduling.x-k8s.io/v1alpha1", ({COSCHEDULING_GROUP: name}, {})
    pod_group = {"apiVersion": api_version, "kind": "PodGroup",
                 "metadata": metadata(owner, name, "pod-group"), "spec": spec}  # fmt: skip
    return Placement(*tags, scheduler_name or SCHEDULER_NAMES[scheduler], pod_group)


def _total(pods: list[dict[str, Any]]) -> dict[str, str]:
    """What the whole gang requests, summed over its pods' containers (the scheduler checks
    that much is free before it binds any)."""
    # Imported here: `kubernetes` loads its whole client, which the renderers otherwise never do.
    from kubernetes.utils.quantity import parse_quantity

    totals: dict[str, Any] = {}
    for pod in pods:
        for container in pod["spec"]["containers"]:
            for key, value in container["resources"].get("requests", {}).items():
                totals[key] = totals.get(key, 0) + parse_quantity(value)
    return {key: f"{value.normalize():f}" for key, value in sorted(totals.items())}


def together(r: Rendering, children: Children) -> Children:
    """A renderer's children with the pods placed as one (and the PodGroup, if any, lasting)."""
    lasting, pods = children
    d = r.defaults
    where = placement(r.owner, r.resource, pods, d.gang_scheduler, d.scheduler_name)
    for pod in pods:
        meta = pod["metadata"]
        meta["labels"] = {**meta.get("labels", {}), **where.labels}
        if where.annotations:
            meta["annotations"] = {**meta.get("annotations", {}), **where.annotations}
        if where.scheduler_name:
            pod["spec"]["schedulerName"] = where.scheduler_name
    return [*lasting, *([where.pod_group] if where.pod_group else [])], pods
