"""A Deployment as an apps/v1 Deployment of `lmforge serve` pods behind a Service (and an HPA when
autoscaling is set), and its status from that Deployment's.

The pod template carries the model's digest, so a new model (or any change of the config) is a
new template: Kubernetes rolls it out, replacing pods as the new ones become ready. Nothing is
rendered while the model or the Evaluation gate is not ready, so a failed gate leaves whatever
was rolled out before in place.
"""

from __future__ import annotations

import datetime
from typing import Any

from lmforge.operator.api import conditions
from lmforge.operator.api.common import timestamp
from lmforge.operator.api.deployment import Deployment, DeploymentStatus
from lmforge.operator.render.names import Owner, labels, metadata
from lmforge.operator.render.pods import CONFIG_FILE, Rendering, config_map, pod
from lmforge.operator.stages.base import command
from lmforge.operator.stages.inputs import Dependencies

SERVE = "serve"
PORT = 8000
KEYS_DIR = "/etc/lmforge/api-keys"
DIGEST_ANNOTATION = "lmforge.dev/model-digest"
GATE = "spec.evaluationRef"


def server_name(name: str) -> str:
    return f"{name}-serve"


def config_name(name: str) -> str:
    return f"{name}-serve-config"


def endpoint(owner: Owner) -> str:
    return f"http://{owner.name}.{owner.namespace}.svc:{PORT}/v1"


def children(r: Rendering, digest: str) -> list[dict[str, Any]]:
    """The ConfigMap, the apps/v1 Deployment, the Service, a NetworkPolicy, a
    PodDisruptionBudget and, with autoscaling, the HPA."""
    spec, name = r.resource.spec, r.owner.name
    config = r.description.config
    if spec.auth:  # the Secret's keys, mounted as files
        config = config.model_copy(update={"api_keys_dir": KEYS_DIR})
    text = config.model_dump_json(by_alias=True, exclude_none=True, indent=2)
    out = [config_map(r.owner, config_name(name), "config", text), _server(r, digest)]
    out.append(
        {
            "apiVersion": "v1",
            "kind": "Service",
            "metadata": metadata(r.owner, name, SERVE),
            "spec": {
                "selector": labels(r.owner, SERVE),
                "ports": [{"name": "http", "port": PORT, "targetPort": "http"}],
            },
        }
    )
    out += [_network_policy(r.owner), _disruption_budget(r.owner)]
    if spec.autoscaling:
        out.append(_autoscaler(r.owner, r.resource))
    return out


def _network_policy(owner: Owner) -> dict[str, Any]:
    """The servers accept connections on the API port only (from anywhere: the clients are the
    users'); where the network plugin enforces NetworkPolicy, nothing else reaches them."""
    return {
        "apiVersion": "networking.k8s.io/v1",
        "kind": "NetworkPolicy",
        "metadata": metadata(owner, server_name(owner.name), SERVE),
        "spec": {
            "podSelector": {"matchLabels": labels(owner, SERVE)},
            "policyTypes": ["Ingress"],
            "ingress": [{"ports": [{"protocol": "TCP", "port": PORT}]}],
        },
    }


def _disruption_budget(owner: Owner) -> dict[str, Any]:
    """A drain or an eviction takes one server at a time. Rendered at every replica count (the
    HPA changes it under us): with one replica it still lets a drain finish."""
    return {
        "apiVersion": "policy/v1",
        "kind": "PodDisruptionBudget",
        "metadata": metadata(owner, server_name(owner.name), SERVE),
        "spec": {"selector": {"matchLabels": labels(owner, SERVE)}, "maxUnavailable": 1},
    }


def _server(r: Rendering, digest: str) -> dict[str, Any]:
    """The apps/v1 Deployment: `lmforge serve` behind readiness and liveness probes, rolled one
    new pod at a time, never below the replicas that serve."""
    spec, name = r.resource.spec, r.owner.name
    argv = [*command(r.description, CONFIG_FILE), "--host", "0.0.0.0", "--port", str(PORT)]
    serve = r.container(SERVE, argv)
    serve["image"] = spec.resources.image or r.defaults.serve_image
    serve["ports"] = [{"name": "http", "containerPort": PORT}]
    probe = {"httpGet": {"path": "/readyz", "port": "http"}, "periodSeconds": 5}
    serve["readinessProbe"] = probe
    serve["livenessProbe"] = {
        **probe,
        "httpGet": {"path": "/healthz", "port": "http"},
        "initialDelaySeconds": 30,
        "failureThreshold": 6,
    }
    volumes: tuple[dict[str, Any], ...] = ()
    if spec.auth:
        serve["volumeMounts"].append({"name": "api-keys", "mountPath": KEYS_DIR, "readOnly": True})
        volumes = ({"name": "api-keys", "secret": {"secretName": spec.auth.secret_name}},)
    meta = metadata(r.owner, server_name(name), SERVE)
    template = pod(meta, [serve], config_name(name), spec.resources, r.defaults, volumes)
    template["spec"]["restartPolicy"] = "Always"  # a server, not a job
    template_meta = {"labels": labels(r.owner, SERVE), "annotations": {DIGEST_ANNOTATION: digest}}
    apps: dict[str, Any] = {
        "apiVersion": "apps/v1",
        "kind": "Deployment",
        "metadata": meta,
        "spec": {
            "selector": {"matchLabels": labels(r.owner, SERVE)},
            "strategy": {
                "type": "RollingUpdate",
                "rollingUpdate": {"maxUnavailable": 0, "maxSurge": 1},
            },
            "template": {"metadata": template_meta, "spec": template["spec"]},
        },
    }
    if spec.autoscaling is None:
        apps["spec"]["replicas"] = spec.replicas
    return apps


def _autoscaler(owner: Owner, deployment: Deployment) -> dict[str, Any]:
    scaling = deployment.spec.autoscaling
    target = {"type": "Utilization", "averageUtilization": scaling.target_cpu_utilization}
    return {
        "apiVersion": "autoscaling/v2",
        "kind": "HorizontalPodAutoscaler",
        "metadata": metadata(owner, server_name(owner.name), SERVE),
        "spec": {
            "scaleTargetRef": {
                "apiVersion": "apps/v1",
                "kind": "Deployment",
                "name": server_name(owner.name),
            },
            "minReplicas": scaling.min_replicas,
            "maxReplicas": scaling.max_replicas,
            "metrics": [{"type": "Resource", "resource": {"name": "cpu", "target": target}}],
        },
    }


def decide(
    previous: DeploymentStatus,
    generation: int,
    deps: Dependencies,
    served: dict[str, Any] | None,
    digest: str | None,
    owner: Owner,
    now: datetime.datetime,
) -> tuple[DeploymentStatus, bool]:
    """(the new status, whether to apply the children). `served` is the apps/v1 Deployment as
    read, None when there is none."""
    status = previous.model_copy(deep=True)
    status.observed_generation = generation
    status.start_time = status.start_time or timestamp(now)
    gate = [m for m in deps.failed if m.startswith(GATE)]
    model = [m for m in deps.failed if not m.startswith(GATE)]
    if model:
        status.phase = "Failed"
        status.set_condition(
            conditions.FAILED, True, conditions.DEPENDENCY_FAILED, "; ".join(model), now
        )
        return status, False
    status.set_condition(conditions.FAILED, False, conditions.DEPENDENCIES_READY, "", now)
    if gate or deps.waiting:
        # Nothing new rolls out; what serves already keeps serving.
        reason = conditions.GATE_FAILED if gate else conditions.DEPENDENCY_NOT_READY
        message = "; ".join(gate or deps.waiting)
        if gate:
            message += ": no rollout until the Evaluation passes"
        status.set_condition(conditions.WAITING, True, reason, message, now)
        status.phase = "Available" if _ready(served, status) else "Waiting"
        return status, False
    status.set_condition(conditions.WAITING, False, conditions.DEPENDENCIES_READY, "", now)
    status.model_digest = digest
    status.endpoint = endpoint(owner)
    rolled = served is not None and _template_digest(served) == digest
    status.phase = "Available" if rolled and _ready(served, status) else "Progressing"
    return status, True


def _template_digest(served: dict[str, Any]) -> str | None:
    template = served["spec"]["template"]["metadata"]
    return (template.get("annotations") or {}).get(DIGEST_ANNOTATION)


def _ready(served: dict[str, Any] | None, status: DeploymentStatus) -> bool:
    """Every wanted replica is updated and ready; also copies the counts into status."""
    if served is None:
        return False
    observed = served.get("status") or {}
    wanted = served["spec"].get("replicas", 1)
    status.replicas = observed.get("replicas", 0)
    status.ready_replicas = observed.get("readyReplicas", 0)
    current = observed.get("observedGeneration", 0) >= served["metadata"].get("generation", 1)
    updated = observed.get("updatedReplicas", 0) >= wanted
    return current and updated and status.ready_replicas >= wanted
