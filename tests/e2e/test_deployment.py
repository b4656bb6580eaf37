"""Post-training and a Deployment on the operator: SFT of a PretrainJob's model; from it a
RewardModel, DPO, and GRPO against that RewardModel; then a Deployment that waits while its
Evaluation gate has failed (nothing rolls out, the reason in status), and one whose gate passed,
which becomes Available and answers a chat request from the official `openai` client.

The test node has no kube-proxy (ClusterIPs do not route), so the client pod talks to the
server pod's IP; the Service is checked as an object."""

from __future__ import annotations

import json

import openai
import pytest
import s3fs
from cluster import python_pod
from e2e_support import (
    TRAIN_SECONDS,
    condition,
    dataset,
    events,
    pretrainjob,
    read,
    storage,
    wait_for,
    wait_phase,
)
from kubeapi import Api

SERVER_SECONDS = 180


def finetune(name: str, examples: str, store: dict) -> dict:
    """SFT of the PretrainJob's model: 2 worker pods x 1 process, a few steps."""
    return {
        "apiVersion": "lmforge.dev/v1alpha1",
        "kind": "FineTune",
        "metadata": {"name": name},
        "spec": {
            "baseModel": {"pretrainJobRef": {"name": "base"}},
            "method": "sft",
            "data": {"uri": examples, "validationFraction": 0.25},
            "training": {"steps": 4, "globalBatchTokens": 128, "microBatch": 1,
                         "checkpoint": {"everySteps": 2}},
            "resources": {"nodes": 2, "processesPerNode": 1, "cpu": "900m", "memory": "1Gi"},
            "storage": store,
        },
    }  # fmt: skip


def post_training(kind: str, name: str, store: dict, **spec) -> dict:
    """A RewardModel or FineTune from the SFT model: 1 pod x 1 process, a few steps."""
    return {
        "apiVersion": "lmforge.dev/v1alpha1",
        "kind": kind,
        "metadata": {"name": name},
        "spec": {
            "baseModel": {"fineTuneRef": {"name": "sft"}},
            "training": {"steps": 3, "globalBatchTokens": 64, "microBatch": 1,
                         "checkpoint": {"everySteps": 2}, "validation": {"batches": 1}},
            "resources": {"cpu": "500m", "memory": "1Gi"},
            "storage": store,
            **spec,
        },
    }  # fmt: skip


def evaluation(name: str, store: dict, max_perplexity: float, model: dict) -> dict:
    return {
        "apiVersion": "lmforge.dev/v1alpha1",
        "kind": "Evaluation",
        "metadata": {"name": name},
        "spec": {
            "modelRef": model,
            "tasks": [{"name": "ppl", "type": "perplexity", "datasetRef": {"name": "corpus"},
                       "maxExamples": 8}],
            "thresholds": [{"metric": "ppl.perplexity", "max": max_perplexity}],
            "resources": {"cpu": "500m", "memory": "1Gi"},
            "storage": store,
        },
    }  # fmt: skip


def deployment(name: str, gate: str, store: dict, model: dict) -> dict:
    return {
        "apiVersion": "lmforge.dev/v1alpha1",
        "kind": "Deployment",
        "metadata": {"name": name},
        "spec": {
            "modelRef": model,
            "evaluationRef": {"name": gate},
            "resources": {"cpu": "500m", "memory": "1Gi"},
            "storage": store,
        },
    }


def test_finetune_gate_blocks_rollout_and_a_passing_one_serves_chat(
    cluster, namespace, s3, s3_endpoint, operator
):
    """PretrainJob -> FineTune (sft) -> RewardModel, FineTune (dpo), FineTune (grpo);
    FineTune (sft) -> Evaluation -> Deployment, and a failing gate."""
    api = Api(cluster.kubeconfig)
    store = storage(s3.bucket, s3.endpoint, s3.secret)
    files = {
        "sft": [{"prompt": f"def f{i}():", "response": f"    return {i}"} for i in range(8)],
        "preferences": [{"prompt": f"def f{i}():", "chosen": f"    return {i}",
                         "rejected": "    pass"} for i in range(8)],
        "prompts": [{"prompt": f"def f{i}():"} for i in range(8)],
    }  # fmt: skip
    for name, rows in files.items():
        text = "".join(json.dumps(r) + "\n" for r in rows)
        s3fs.S3FileSystem(endpoint_url=s3_endpoint).pipe(f"{s3.bucket}/{name}.jsonl", text.encode())
    examples, preferences = f"{s3.bucket}/sft.jsonl", {"uri": f"{s3.bucket}/preferences.jsonl",
                                                       "validationFraction": 0.25}  # fmt: skip
    base, tuned = {"kind": "PretrainJob", "name": "base"}, {"kind": "FineTune", "name": "sft"}
    cluster.apply(
        dataset("corpus", store), pretrainjob("base", "corpus", store, steps=6),
        finetune("sft", examples, store),
        post_training("RewardModel", "rm", store, preferences=preferences),
        post_training("FineTune", "dpo", store, method="dpo", preferences=preferences),
        post_training("FineTune", "grpo", store, method="grpo", rewardModelRef={"name": "rm"},
                      prompts={"uri": f"{s3.bucket}/prompts.jsonl", "validationFraction": 0.25},
                      rl={"samplesPerPrompt": 2, "maxNewTokens": 4}),
        evaluation("strict", store, 1.0, base), evaluation("lenient", store, 1e9, tuned),
        deployment("blocked", "strict", store, base), deployment("chat", "lenient", store, tuned),
        namespace=namespace,
    )  # fmt: skip

    # The strict gate fails: its Deployment waits with the reason and rolls nothing out.
    wait_phase(api, "Evaluation", namespace, "strict", "Failed", TRAIN_SECONDS)

    def blocked() -> dict | None:
        obj = read(api, "Deployment", namespace, "blocked")
        waiting = condition(obj, "Waiting") if obj and obj.get("status") else None
        return obj if waiting and waiting["reason"] == "ThresholdsNotMet" else None

    obj = wait_for("the blocked Deployment's gate condition", blocked, 60)
    assert obj["status"]["phase"] == "Waiting"
    assert "spec.evaluationRef: Evaluation/strict failed" in condition(obj, "Waiting")["message"]
    assert cluster("get", "deployments.apps", "-n", namespace, "-o", "name").stdout.split() in (
        [],
        ["deployment.apps/chat-serve"],
    )

    # The FineTune ran from the PretrainJob's model; the lenient gate scores it and passes.
    tuned_status = wait_phase(api, "FineTune", namespace, "sft", "Succeeded", TRAIN_SECONDS)
    assert tuned_status["status"]["progress"] == "4/4"
    assert tuned_status["status"]["lineage"]["inputs"][0]["kind"] == "PretrainJob"
    # The lenient gate passes: the server rolls out and becomes Available.
    ready = wait_phase(api, "Deployment", namespace, "chat", "Available", SERVER_SECONDS)
    status = ready["status"]
    assert status["readyReplicas"] == 1 and status["modelDigest"].startswith("sha256:")
    assert status["endpoint"] == f"http://chat.{namespace}.svc:8000/v1"
    assert status["lineage"]["inputs"][0]["kind"] == "FineTune"
    service = cluster.get("service", "chat", "-n", namespace)
    assert service["spec"]["ports"][0]["port"] == 8000
    assert [e["reason"] for e in events(api, namespace, "Deployment", "chat")][-1] == "Available"
    assert read(api, "Deployment", namespace, "blocked")["status"]["phase"] == "Waiting"

    # The openai client asks the server for a chat completion through the Service's ClusterIP
    # (kube-proxy's rules route it to the server pod); and a pod asks at the status's endpoint,
    # the Service's DNS name, which cluster DNS resolves to that ClusterIP.
    ip = service["spec"]["clusterIP"]
    assert ip.startswith("10.96.")
    client = openai.OpenAI(base_url=f"http://{ip}:8000/v1", api_key="-", max_retries=5)
    answer = client.chat.completions.create(
        model="chat", messages=[{"role": "user", "content": "def"}], max_tokens=8
    )
    assert answer.choices[0].message.role == "assistant"
    assert 1 <= answer.usage.completion_tokens <= 8
    code = f"""
        import json, urllib.request
        request = urllib.request.Request(
            {status["endpoint"]!r} + "/chat/completions",
            data=json.dumps({{"model": "chat", "max_tokens": 4,
                             "messages": [{{"role": "user", "content": "def"}}]}}).encode(),
            headers={{"Content-Type": "application/json"}})
        print(json.load(urllib.request.urlopen(request, timeout=60))["usage"]["completion_tokens"])
    """
    cluster.apply(python_pod("ask", code), namespace=namespace)
    cluster.wait("pod/ask", "jsonpath={.status.phase}=Succeeded", namespace, SERVER_SECONDS)
    assert 1 <= int(cluster.logs(namespace, "ask").split()[-1]) <= 4

    # From the SFT model: a reward model, DPO, and GRPO scored by that reward model.
    rm = wait_phase(api, "RewardModel", namespace, "rm", "Succeeded", TRAIN_SECONDS)["status"]
    assert rm["progress"] == "3/3" and 0 <= rm["accuracy"] <= 1
    assert rm["lineage"]["inputs"][0]["kind"] == "FineTune"
    dpo = wait_phase(api, "FineTune", namespace, "dpo", "Succeeded", TRAIN_SECONDS)["status"]
    assert dpo["progress"] == "3/3" and "margin" in dpo and "accuracy" in dpo
    grpo = wait_phase(api, "FineTune", namespace, "grpo", "Succeeded", TRAIN_SECONDS)["status"]
    assert grpo["progress"] == "3/3" and isinstance(grpo["reward"], float)
    (scorer,) = [i for i in grpo["lineage"]["inputs"] if i.get("kind") == "RewardModel"]
    assert scorer["name"] == "rm" and scorer["uri"] == rm["lineage"]["outputs"][0]["uri"]

    # A new model for the Deployment rolls the server: a new pod template (its model digest),
    # then Available again, serving the DPO model.
    served = cluster.get("deployments.apps", "chat-serve", "-n", namespace)
    before = served["spec"]["template"]["metadata"]["annotations"]["lmforge.dev/model-digest"]
    change = {"spec": {"modelRef": {"kind": "FineTune", "name": "dpo"}, "evaluationRef": None}}
    cluster("patch", "deployments.lmforge.dev", "chat", "-n", namespace, "--type=merge",
            "-p", json.dumps(change))  # fmt: skip

    def rolled() -> dict | None:
        status = (read(api, "Deployment", namespace, "chat") or {}).get("status") or {}
        new = status.get("modelDigest") not in (None, before)
        return status if new and status.get("phase") == "Available" else None

    status = wait_for("the Deployment rolled to the DPO model", rolled, SERVER_SECONDS)
    assert status["lineage"]["inputs"][0]["name"] == "dpo" and status["readyReplicas"] == 1
    served = cluster.get("deployments.apps", "chat-serve", "-n", namespace)
    template = served["spec"]["template"]["metadata"]["annotations"]
    assert template["lmforge.dev/model-digest"] == status["modelDigest"] != before
    assert served["metadata"]["generation"] >= 2


# Loaded by the server's Python at start (PYTHONPATH): the decoding step ends its thread, as a
# fault that no `except Exception` catches would.
FAULT = """
from lmforge.jobs.serve import engine

def _die(self):
    raise SystemExit("fault injected by the e2e test: the decoding thread ends")

engine.Engine._decode = _die
"""


def test_a_server_whose_engine_dies_turns_unready_and_is_restarted(
    cluster, namespace, s3, operator
):
    api = Api(cluster.kubeconfig)
    store = storage(s3.bucket, s3.endpoint, s3.secret)
    overlay = {"spec": {
        "containers": [{"name": "serve", "env": [{"name": "PYTHONPATH", "value": "/fault"}],
                        "volumeMounts": [{"name": "fault", "mountPath": "/fault"}]}],
        "volumes": [{"name": "fault", "configMap": {"name": "fault"}}],
    }}  # fmt: skip
    fragile = {
        "apiVersion": "lmforge.dev/v1alpha1",
        "kind": "Deployment",
        "metadata": {"name": "fragile"},
        "spec": {
            "modelRef": {"kind": "PretrainJob", "name": "base"},
            "resources": {"cpu": "500m", "memory": "1Gi", "podTemplate": overlay},
            "storage": store,
        },
    }
    fault = {"apiVersion": "v1", "kind": "ConfigMap", "metadata": {"name": "fault"},
             "data": {"sitecustomize.py": FAULT}}  # fmt: skip
    cluster.apply(
        fault, dataset("corpus", store), pretrainjob("base", "corpus", store, steps=6), fragile,
        namespace=namespace,
    )  # fmt: skip
    wait_phase(api, "Deployment", namespace, "fragile", "Available", TRAIN_SECONDS + SERVER_SECONDS)
    (pod,) = cluster.get("pods", "-n", namespace, "-l", "lmforge.dev/name=fragile")["items"]
    name = pod["metadata"]["name"]
    ip = cluster.get("service", "fragile", "-n", namespace)["spec"]["clusterIP"]

    # The first request ends the engine; the request itself never completes.
    client = openai.OpenAI(base_url=f"http://{ip}:8000/v1", api_key="-", max_retries=0, timeout=5)
    with pytest.raises(openai.APITimeoutError):
        client.completions.create(model="fragile", prompt="def", max_tokens=4)

    def status() -> dict:
        (container,) = cluster.get("pod", name, "-n", namespace)["status"]["containerStatuses"]
        return container

    # Readiness fails first (out of the Service), then liveness: the kubelet restarts it.
    wait_for("the server not ready", lambda: not status()["ready"], 30)
    restarted = wait_for("the liveness restart", lambda: status()["restartCount"] >= 1, 120)
    assert restarted
    cluster.wait(f"pod/{name}", "condition=Ready", namespace, SERVER_SECONDS)
    probes = [
        e["message"] for e in events(api, namespace, "Pod", name) if e["reason"] == "Unhealthy"
    ]
    assert any(m.startswith("Readiness probe failed") for m in probes), probes
    assert any(m.startswith("Liveness probe failed") for m in probes), probes
    killing = [
        e["message"] for e in events(api, namespace, "Pod", name) if e["reason"] == "Killing"
    ]
    assert any("failed liveness probe, will be restarted" in m for m in killing), killing
