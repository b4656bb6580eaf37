"""A Deployment as an apps/v1 Deployment of `lmforge serve` pods behind a Service (and an HPA when
autoscaling is set), and its status from that Deployment's.

The pod template carries the model's digest, so a new model (or any change of the config) is a
new template: Kubernetes rolls it out, replacing pods as the new ones become ready. Nothing is
rendered while the model or the Evaluation gate is not ready, so a failed gate leaves whatever
was rolled out before in place.
"""

from __future__ import annotations

import datetime
import hashlib
import json
from typing import Any

from ..api import conditions as c
from ..api.deployment import Deployment
from .inputs import Dependencies
from .names import Owner, RenderError, labels, metadata
from .pods import CONFIG_FILE, Defaults, StorageSettings, config_map, container, environment, pod
from .status import set_condition, timestamp

SERVE = "serve"
PORT = 8000
KEYS_DIR = "/etc/lmforge/api-keys"
DIGEST_ANNOTATION = "lmforge.dev/model-digest"
GATE = "spec.evaluationRef"


def server_name(name: str) -> str:
    return f"{name}-serve"


def config_name(name: str) -> str:
    return f"{name}-serve-config"


def serve_config(deployment: Deployment, model_uri: str, store: StorageSettings) -> dict:
    """The server's ServeConfig, with the same fields `lmforge run` writes."""
    spec = deployment.spec
    if spec.runtime == "onnx" and spec.quantization != "none":
        raise RenderError(
            "spec.quantization", "int8 is the native runtime's; runtime onnx runs the fp32 graph"
        )
    feedback = spec.feedback.uri or f"{deployment.artifact_uri(store.uri)}/feedback"
    return {
        "modelUri": model_uri,
        "servedModelName": deployment.metadata.name,
        "endpointUrl": store.endpoint_url,
        "apiKeysDir": KEYS_DIR if spec.auth else None,
        "rateLimit": spec.rate_limit.wire(),
        "limits": spec.limits.wire(),
        "safety": spec.safety.wire(),
        "feedbackUri": feedback if spec.feedback.enabled else None,
        "logPrompts": spec.log_prompts,
        "quantization": spec.quantization,
        "runtime": spec.runtime,
    }


def outputs(endpoint: str | None, config: dict[str, Any]) -> list[dict[str, Any]]:
    """status.lineage.outputs: the endpoint, and the preference feedback it records (what a
    RewardModel or FineTune's spec.preferences.deploymentRef reads)."""
    found = [{"uri": endpoint}]
    if config.get("feedbackUri"):
        found.append({"uri": f"{config['feedbackUri']}/preferences", "kind": "Feedback"})
    return found


def model_digest(model: dict[str, Any], config: dict[str, Any]) -> str:
    """Changes when the model (its recorded digest, else its URI) or the server config does."""
    text = json.dumps(
        {"model": model.get("digest") or model["uri"], "config": config}, sort_keys=True
    )
    return "sha256:" + hashlib.sha256(text.encode()).hexdigest()


def children(
    owner: Owner,
    deployment: Deployment,
    config: dict[str, Any],
    digest: str,
    defaults: Defaults,
    store: StorageSettings,
) -> list[dict[str, Any]]:
    """The ConfigMap, the apps/v1 Deployment, the Service and, with autoscaling, the HPA."""
    spec, name = deployment.spec, owner.name
    command = [
        "python",
        "-m",
        "lmforge.jobs.serve",
        "--config",
        CONFIG_FILE,
        "--host",
        "0.0.0.0",
        "--port",
        str(PORT),
    ]
    env = environment(owner, defaults, None)
    serve = container(SERVE, command, spec.resources, env, store, defaults)
    serve["image"] = spec.resources.image or defaults.serve_image
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
    meta = metadata(owner, server_name(name), SERVE)
    template = pod(meta, [serve], config_name(name), spec.resources, defaults, volumes)
    template["spec"]["restartPolicy"] = "Always"  # a server, not a job
    template_meta = {"labels": labels(owner, SERVE), "annotations": {DIGEST_ANNOTATION: digest}}
    apps: dict[str, Any] = {
        "apiVersion": "apps/v1",
        "kind": "Deployment",
        "metadata": meta,
        "spec": {
            "selector": {"matchLabels": labels(owner, SERVE)},
            "strategy": {
                "type": "RollingUpdate",
                "rollingUpdate": {"maxUnavailable": 0, "maxSurge": 1},
            },
            "template": {"metadata": template_meta, "spec": template["spec"]},
        },
    }
    if spec.autoscaling is None:
        apps["spec"]["replicas"] = spec.replicas
    service = {
        "apiVersion": "v1",
        "kind": "Service",
        "metadata": metadata(owner, name, SERVE),
        "spec": {
            "selector": labels(owner, SERVE),
            "ports": [{"name": "http", "port": PORT, "targetPort": "http"}],
        },
    }
    out = [config_map(owner, config_name(name), "config", config), apps, service]
    if spec.autoscaling:
        a = spec.autoscaling
        metric = {
            "type": "Resource",
            "resource": {
                "name": "cpu",
                "target": {"type": "Utilization", "averageUtilization": a.target_cpu_utilization},
            },
        }
        out.append(
            {
                "apiVersion": "autoscaling/v2",
                "kind": "HorizontalPodAutoscaler",
                "metadata": metadata(owner, server_name(name), SERVE),
                "spec": {
                    "scaleTargetRef": {
                        "apiVersion": "apps/v1",
                        "kind": "Deployment",
                        "name": server_name(name),
                    },
                    "minReplicas": a.min_replicas,
                    "maxReplicas": a.max_replicas,
                    "metrics": [metric],
                },
            }
        )
    return out


def endpoint(owner: Owner) -> str:
    return f"http://{owner.name}.{owner.namespace}.svc:{PORT}/v1"


def decide(
    previous: dict[str, Any],
    generation: int,
    deps: Dependencies,
    served: dict[str, Any] | None,
    digest: str | None,
    owner: Owner,
    now: datetime.datetime,
) -> tuple[dict[str, Any], bool]:
    """(the new status, whether to apply the children). `served` is the apps/v1 Deployment as
    read, None when there is none."""
    status = {**previous, "observedGeneration": generation}
    status.setdefault("startTime", timestamp(now))
    gate = [m for m in deps.failed if m.startswith(GATE)]
    model = [m for m in deps.failed if not m.startswith(GATE)]
    if model:
        status["phase"] = "Failed"
        set_condition(status, c.FAILED, True, c.DEPENDENCY_FAILED, "; ".join(model), now)
        return status, False
    set_condition(status, c.FAILED, False, c.DEPENDENCIES_READY, "", now)
    if gate or deps.waiting:
        # Nothing new rolls out; what serves already keeps serving.
        reason = c.GATE_FAILED if gate else c.DEPENDENCY_NOT_READY
        message = "; ".join(gate or deps.waiting)
        if gate:
            message += ": no rollout until the Evaluation passes"
        set_condition(status, c.WAITING, True, reason, message, now)
        status["phase"] = "Available" if _ready(served, status) else "Waiting"
        return status, False
    set_condition(status, c.WAITING, False, c.DEPENDENCIES_READY, "", now)
    status["modelDigest"] = digest
    status["endpoint"] = endpoint(owner)
    rolled = served is not None and _template_digest(served) == digest
    status["phase"] = "Available" if rolled and _ready(served, status) else "Progressing"
    return status, True


def _template_digest(served: dict[str, Any]) -> str | None:
    template = served["spec"]["template"]["metadata"]
    return (template.get("annotations") or {}).get(DIGEST_ANNOTATION)


def _ready(served: dict[str, Any] | None, status: dict[str, Any]) -> bool:
    """Every wanted replica is updated and ready; also copies the counts into status."""
    if served is None:
        return False
    observed = served.get("status") or {}
    wanted = served["spec"].get("replicas", 1)
    status["replicas"] = observed.get("replicas", 0)
    status["readyReplicas"] = observed.get("readyReplicas", 0)
    current = observed.get("observedGeneration", 0) >= served["metadata"].get("generation", 1)
    updated = observed.get("updatedReplicas", 0) >= wanted
    return current and updated and status["readyReplicas"] >= wanted
