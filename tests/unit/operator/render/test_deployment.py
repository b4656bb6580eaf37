"""A Deployment as an apps/v1 Deployment + Service (+ HPA), its rollout keyed on the model, and
its status: waiting on the model, held by a failed gate, progressing, available."""

import json

from lmforge.operator.api import conditions
from lmforge.operator.api.common import Artifact
from lmforge.operator.api.deployment import DeploymentStatus
from lmforge.operator.api.jobs import ServeConfig
from lmforge.operator.render import deployment as render
from lmforge.operator.stages.deployment import model_digest
from lmforge.operator.stages.inputs import Dependencies

from ..conftest import DEPLOYMENT, NOW

MODEL = Artifact(uri="s3://bucket/finetune/tuned/model", digest="sha256:aaa")


def build(resource, rendering, model=MODEL, **spec):
    r = rendering(resource(DEPLOYMENT, **spec), {"spec.modelRef": model})
    digest = model_digest(r.description)
    return r.description.config, digest, render.children(r, digest)


def decide(previous, *args):
    """render.decide from and to the API's dicts."""
    status, roll = render.decide(DeploymentStatus.model_validate(previous), *args)
    return status.wire(), roll


def test_children_serve_the_model_and_roll_when_it_changes(resource, rendering, defaults):
    config, digest, (cm, apps, service, policy, budget) = build(resource, rendering)
    assert ServeConfig.model_validate_json(cm["data"]["config.json"]).model_uri == MODEL.uri
    assert config.feedback_uri == "s3://bucket/deployment/chat/feedback"
    assert apps["spec"]["replicas"] == 2
    template = apps["spec"]["template"]
    assert template["metadata"]["annotations"][render.DIGEST_ANNOTATION] == digest
    (server,) = template["spec"]["containers"]
    assert server["image"] == defaults.serve_image and template["spec"]["restartPolicy"] == "Always"
    assert server["command"][:3] == ["python", "-m", "lmforge.jobs.serve"]
    assert server["readinessProbe"]["httpGet"]["path"] == "/readyz"
    assert server["envFrom"] == [{"secretRef": {"name": "s3-credentials"}}]  # never in the spec
    pods = apps["spec"]["selector"]["matchLabels"]
    assert service["spec"]["selector"] == pods
    assert template["spec"]["automountServiceAccountToken"] is False  # no API access
    # Ingress on the API port only; one server at a time may be disrupted.
    assert policy["spec"]["podSelector"]["matchLabels"] == pods
    assert policy["spec"]["ingress"] == [{"ports": [{"protocol": "TCP", "port": render.PORT}]}]
    assert server["ports"] == [{"name": "http", "containerPort": render.PORT}]
    assert budget["spec"] == {"selector": {"matchLabels": pods}, "maxUnavailable": 1}
    _, other, _ = build(resource, rendering, MODEL.model_copy(update={"digest": "sha256:bbb"}))
    assert other != digest  # a new model is a new pod template: Kubernetes rolls it out


def test_autoscaling_and_api_keys(resource, rendering):
    _, _, children = build(
        resource, rendering, autoscaling={"maxReplicas": 5}, auth={"secretName": "keys"}
    )
    cm, apps, *_, hpa = children
    assert "replicas" not in apps["spec"] and hpa["spec"]["maxReplicas"] == 5
    assert hpa["spec"]["scaleTargetRef"]["name"] == "chat-serve"
    volumes = apps["spec"]["template"]["spec"]["volumes"]
    assert {"name": "api-keys", "secret": {"secretName": "keys"}} in volumes
    assert json.loads(cm["data"]["config.json"])["apiKeysDir"] == render.KEYS_DIR


def served(digest, ready, generation=1, observed=1):
    meta = {"generation": generation}
    template = {"metadata": {"annotations": {render.DIGEST_ANNOTATION: digest}}}
    status = {
        "observedGeneration": observed,
        "replicas": 1,
        "updatedReplicas": 1,
        "readyReplicas": ready,
    }
    return {"metadata": meta, "spec": {"replicas": 1, "template": template}, "status": status}


def test_status_waits_is_held_by_a_failed_gate_then_rolls_out(owner):
    o = owner("Deployment", "chat")
    waiting = Dependencies(["spec.modelRef: FineTune/tuned is Running"], [], {})
    status, roll = decide({}, 1, waiting, None, None, o, NOW)
    assert (status["phase"], roll) == ("Waiting", False)
    gate = Dependencies(
        [],
        ["spec.evaluationRef: Evaluation/gate failed: ppl.perplexity 90 > 50"],
        {"spec.modelRef": MODEL},
    )
    status, roll = decide({}, 1, gate, None, "sha256:x", o, NOW)
    assert (status["phase"], roll) == ("Waiting", False)
    held = next(x for x in status["conditions"] if x["type"] == conditions.WAITING)
    assert (
        held["reason"] == conditions.GATE_FAILED
        and "no rollout until the Evaluation passes" in held["message"]
    )
    # A model that is served already keeps serving while a new gate fails.
    status, roll = decide({}, 1, gate, served("sha256:old", 1), "sha256:x", o, NOW)
    assert (status["phase"], roll) == ("Available", False)
    ready = Dependencies([], [], {"spec.modelRef": MODEL})
    status, roll = decide({}, 1, ready, served("sha256:old", 1), "sha256:x", o, NOW)
    assert (status["phase"], roll, status["modelDigest"]) == ("Progressing", True, "sha256:x")
    status, _ = decide(status, 1, ready, served("sha256:x", 0), "sha256:x", o, NOW)
    assert status["phase"] == "Progressing"
    status, _ = decide(status, 1, ready, served("sha256:x", 1), "sha256:x", o, NOW)
    assert (status["phase"], status["readyReplicas"]) == ("Available", 1)
    assert status["endpoint"] == "http://chat.team-a.svc:8000/v1"
    failed = Dependencies([], ["spec.modelRef: FineTune/tuned failed: OOMKilled"], {})
    status, roll = decide(status, 2, failed, None, None, o, NOW)
    assert (status["phase"], roll) == ("Failed", False)
