"""The parts every job pod shares: image, resources, placement, config volume, credentials,
trace context, and the installation's defaults they fall back on."""

from __future__ import annotations

import copy
from dataclasses import dataclass
from typing import Any, Literal

from lmforge.operator.api.common import PodResources
from lmforge.operator.api.resource import Resource
from lmforge.operator.render.names import Owner, labels, metadata
from lmforge.operator.render.overlay import merge_pod_template
from lmforge.operator.stages.base import GRACE_SECONDS, JOB_IMAGE, Description, Store

GangScheduler = Literal["auto", "none", "volcano", "coscheduling"]
"""Which PodGroup the pods of an attempt get (render/scheduling.py); Kueue needs none. auto:
whichever one's CRD the operator finds at startup (handlers/reconcile.py resolves it)."""
RayClusters = Literal["auto", "kuberay", "pods"]
"""What a Dataset with engine ray and workers runs on (render/dataset.py): a KubeRay RayCluster,
or Ray pods of the operator's own; auto: KubeRay's when its CRD is installed."""

CONFIG_DIR = "/etc/lmforge"
CONFIG_FILE = f"{CONFIG_DIR}/config.json"


@dataclass(frozen=True)
class Defaults:
    """What the installation decides (helm values, passed to the operator as environment)."""

    image: str = JOB_IMAGE
    """The job image (data, training, evaluation) when spec.resources.image is unset."""
    serve_image: str = "ghcr.io/lmforge/lmforge-serve:0.1.0"
    """The server image of Deployments when spec.resources.image is unset."""
    storage_uri: str | None = None
    storage_secret: str | None = None
    endpoint_url: str | None = None
    termination_grace_seconds: int = GRACE_SECONDS
    """Long enough for a worker to write a checkpoint after SIGTERM (preemption, drain)."""
    service_account: str | None = None
    otlp_endpoint: str | None = None
    """Passed to job pods as OTEL_EXPORTER_OTLP_ENDPOINT (the trainer exports metrics there)."""
    gang_scheduler: GangScheduler = "auto"
    scheduler_name: str | None = None
    """The pods' schedulerName with a gang scheduler, if not its usual one."""
    ray_clusters: RayClusters = "auto"
    nccl: tuple[tuple[str, str], ...] = ()
    """NCCL environment variables for training pods (the chart's jobs.nccl); a spec's
    training.parallelism.nccl wins over them (the trainer sets its own before it starts)."""

    @property
    def store(self) -> Store:
        """The storage of a resource whose spec.storage sets nothing."""
        return Store(self.storage_uri or "", self.storage_secret, self.endpoint_url)


Children = tuple[list[dict[str, Any]], list[dict[str, Any]]]
"""(objects that live as long as the resource, the pods of one attempt)."""


@dataclass(frozen=True)
class Rendering:
    """What every child of one resource is rendered from."""

    owner: Owner
    resource: Resource
    role: str
    """The stage's: names the main pods and their container."""
    description: Description
    defaults: Defaults
    store: Store
    traceparent: str | None = None
    """The W3C trace context of the pass, for the pods' own spans."""

    @property
    def resources(self) -> PodResources:
        return self.resource.spec.resources

    def container(self, name: str, command: list[str]) -> dict[str, Any]:
        env = environment(self.owner, self.defaults, self.traceparent)
        return container(name, command, self.resources, env, self.store, self.defaults)

    def config_map(self, name: str) -> dict[str, Any]:
        return config_map(self.owner, name, "config", self.description.config_json())


# Pod Security "restricted" (what a namespace with pod-security.kubernetes.io/enforce=restricted
# admits): non-root, no privilege escalation, no capabilities, the runtime's seccomp profile.
# UID/GID 1000 is the lmforge user of the job and serve images; a podTemplate may override them.
POD_SECURITY = {
    "runAsNonRoot": True,
    "runAsUser": 1000,
    "runAsGroup": 1000,
    "fsGroup": 1000,
    "seccompProfile": {"type": "RuntimeDefault"},
}
CONTAINER_SECURITY = {"allowPrivilegeEscalation": False, "capabilities": {"drop": ["ALL"]}}


def grace_seconds(resources: PodResources, defaults: Defaults) -> int:
    """The pod's terminationGracePeriodSeconds: the overlay's when it sets one."""
    overlay = (resources.pod_template or {}).get("spec") or {}
    return int(overlay.get("terminationGracePeriodSeconds", defaults.termination_grace_seconds))


def compute_resources(resources: PodResources) -> dict[str, dict[str, str]]:
    # requests == limits: Guaranteed QoS, the last class the kubelet evicts under pressure.
    quantities = {"cpu": resources.cpu, "memory": resources.memory}
    if resources.gpus:
        quantities["nvidia.com/gpu"] = str(resources.gpus)
    return {"requests": dict(quantities), "limits": dict(quantities)}


def environment(owner: Owner, defaults: Defaults, traceparent: str | None) -> list[dict]:
    env = [
        {"name": "PYTHONUNBUFFERED", "value": "1"},  # progress lines reach the log at once
        {
            "name": "OTEL_RESOURCE_ATTRIBUTES",
            "value": f"k8s.namespace.name={owner.namespace},lmforge.kind={owner.kind},"
            f"lmforge.name={owner.name}",
        },
    ]
    if defaults.otlp_endpoint:
        env.append({"name": "OTEL_EXPORTER_OTLP_ENDPOINT", "value": defaults.otlp_endpoint})
    if traceparent:
        env.append({"name": "TRACEPARENT", "value": traceparent})
    return env


def container(
    name: str,
    command: list[str],
    resources: PodResources,
    env: list[dict],
    store: Store,
    defaults: Defaults,
) -> dict[str, Any]:
    out: dict[str, Any] = {
        "name": name,
        "image": resources.image or defaults.image,
        "command": command,
        "env": env,
        "resources": compute_resources(resources),
        "securityContext": copy.deepcopy(CONTAINER_SECURITY),
        "volumeMounts": [{"name": "config", "mountPath": CONFIG_DIR, "readOnly": True}],
        # The log's tail becomes the termination message when a job fails: the reason for the
        # failure reaches the pod's status even where logs are gone.
        "terminationMessagePolicy": "FallbackToLogsOnError",
    }
    if store.secret_name:  # credentials as env from the Secret: never in the spec or config
        out["envFrom"] = [{"secretRef": {"name": store.secret_name}}]
    return out


def pod(
    meta: dict[str, Any],
    containers: list[dict],
    config_map: str,
    resources: PodResources,
    defaults: Defaults,
    volumes: tuple[dict[str, Any], ...] = (),
    **spec_fields: Any,
) -> dict[str, Any]:
    """A pod with the config volume, placement and the user's overlay merged in last."""
    spec: dict[str, Any] = {
        "restartPolicy": "Never",  # the operator restarts the whole gang, never one container
        "terminationGracePeriodSeconds": grace_seconds(resources, defaults),
        "enableServiceLinks": False,
        "automountServiceAccountToken": False,  # jobs do not talk to the API server
        "securityContext": copy.deepcopy(POD_SECURITY),
        "containers": containers,
        "volumes": [{"name": "config", "configMap": {"name": config_map}}, *volumes],
        **spec_fields,
    }
    if resources.node_selector:
        spec["nodeSelector"] = dict(resources.node_selector)
    if resources.tolerations:
        spec["tolerations"] = [t.wire() for t in resources.tolerations]
    if defaults.service_account:
        spec["serviceAccountName"] = defaults.service_account
    body = {"apiVersion": "v1", "kind": "Pod", "metadata": meta, "spec": spec}
    return merge_pod_template(body, resources.pod_template)


def config_map(owner: Owner, name: str, role: str, config_json: str) -> dict[str, Any]:
    """The job's config, mounted at CONFIG_FILE."""
    return {
        "apiVersion": "v1",
        "kind": "ConfigMap",
        "metadata": metadata(owner, name, role),
        "data": {"config.json": config_json},
    }


def headless_service(
    owner: Owner, name: str, role: str, selected_role: str, ports: dict[str, int]
) -> dict[str, Any]:
    """A Service without a cluster IP: DNS names for the pods it selects, ready or not."""
    return {
        "apiVersion": "v1",
        "kind": "Service",
        "metadata": metadata(owner, name, role),
        "spec": {
            "clusterIP": "None",
            # Rendezvous happens before any pod is Ready: every pod needs its DNS name at once.
            "publishNotReadyAddresses": True,
            "selector": labels(owner, selected_role),
            "ports": [
                {"name": port_name, "port": port, "targetPort": port, "protocol": "TCP"}
                for port_name, port in ports.items()
            ],
        },
    }
