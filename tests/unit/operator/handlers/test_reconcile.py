"""Reconcile passes against the in-memory API: what a kind's handlers create, how status
follows the pods, and that a pass run twice does nothing the second time."""

import json

import kopf
import pytest

from lmforge.operator.handlers import reconcile

DATASET = """
apiVersion: lmforge.dev/v1alpha1
kind: Dataset
metadata: {name: corpus}
spec:
  sources: [{uri: "s3://raw/*.txt"}]
  storage: {uri: "s3://bucket"}
"""

PRETRAIN = """
apiVersion: lmforge.dev/v1alpha1
kind: PretrainJob
metadata: {name: tiny}
spec:
  datasetRef: {name: corpus}
  model: {preset: tiny}
  training: {steps: 20}
  resources: {nodes: 2}
  runPolicy: {backoffLimit: 1}
  storage: {uri: "s3://bucket", secretName: creds}
"""

EVALUATION = """
apiVersion: lmforge.dev/v1alpha1
kind: Evaluation
metadata: {name: check}
spec:
  modelRef: {kind: PretrainJob, name: tiny}
  tasks: [{name: ppl, type: perplexity, datasetRef: {name: corpus}}]
  storage: {uri: "s3://bucket"}
"""

BUILT = {
    "phase": "Succeeded",
    "lineage": {"outputs": [{"uri": "s3://bucket/dataset/corpus", "digest": "sha256:d"}]},
}


def run(kind, name):
    reconcile.run(kind, "team-a", name)


def condition(status, type_):
    return next((x for x in status.get("conditions", []) if x["type"] == type_), {})


def test_pretrainjob_waits_for_its_dataset(cluster, events):
    cluster.add(PRETRAIN)
    run("PretrainJob", "tiny")
    status = cluster.status("pretrainjobs", "tiny")
    assert status["phase"] == "Waiting" and cluster.pods() == {}
    # The storage Secret is not looked up (the operator may not read Secrets): its pods say so.
    assert (
        condition(status, "Waiting")["message"]
        == "spec.datasetRef: Dataset/corpus does not exist yet"
    )
    assert events == [("tiny", "Normal", "Waiting", condition(status, "Waiting")["message"])]


def test_pretrainjob_lifecycle(cluster, events):
    cluster.add(DATASET, status=BUILT)
    job = cluster.add(PRETRAIN)
    run("PretrainJob", "tiny")
    assert sorted(cluster.pods()) == ["tiny-worker-0", "tiny-worker-1"]
    config = json.loads(
        cluster.objects[("ConfigMap", "team-a", "tiny-config")]["data"]["config.json"]
    )
    assert config["datasetUri"] == "s3://bucket/dataset/corpus"
    assert ("Service", "team-a", "tiny-workers") in cluster.objects
    status = cluster.status("pretrainjobs", "tiny")
    assert status["phase"] == "Pending"
    assert status["lineage"]["inputs"][0]["digest"] == "sha256:d"

    # running, with progress in worker 0's log
    for name in cluster.pods():
        cluster.set_pod(name, "Running", running={})
    cluster.logs["tiny-worker-0"] = "\n".join(
        [
            json.dumps(
                {
                    "event": "step",
                    "step": 4,
                    "totalSteps": 20,
                    "loss": 5.0,
                    "tokens": 4,
                    "tokensPerSecond": 2.0,
                }
            ),
            json.dumps(
                {
                    "event": "checkpoint",
                    "step": 4,
                    "uri": "s3://bucket/pretrainjob/tiny/checkpoints/step-4",
                    "time": 1.0,
                }
            ),
        ]
    )
    run("PretrainJob", "tiny")
    status = cluster.status("pretrainjobs", "tiny")
    assert (status["phase"], status["progress"], status["loss"]) == ("Running", "4/20", 5.0)
    assert status["lastCheckpoint"]["step"] == 4
    assert [e[2] for e in events] == ["Created", "Running", "Checkpoint"]

    # nothing changed: the second pass patches nothing and posts nothing
    patches, posted = len(cluster.status_patches), len(events)
    run("PretrainJob", "tiny")
    assert (len(cluster.status_patches), len(events)) == (patches, posted)

    # a worker fails: the gang goes, with restarts counted
    cluster.set_pod("tiny-worker-1", "Failed", terminated={"exitCode": 137, "reason": "OOMKilled"})
    run("PretrainJob", "tiny")
    assert cluster.status("pretrainjobs", "tiny")["restarts"] == 1 and cluster.pods() == {}
    assert events[-1][1:3] == ("Warning", "Restarting")
    assert {grace for kind, _, grace in cluster.deleted} == {30}

    # the next pass recreates it as attempt 1
    run("PretrainJob", "tiny")
    pods = cluster.pods()
    assert {p["metadata"]["labels"]["lmforge.dev/attempt"] for p in pods.values()} == {"1"}

    # all succeed
    for name in pods:
        cluster.set_pod(name, "Succeeded", terminated={"exitCode": 0, "reason": "Completed"})
    run("PretrainJob", "tiny")
    status = cluster.status("pretrainjobs", "tiny")
    assert status["phase"] == "Succeeded" and condition(status, "Succeeded")["status"] == "True"
    assert (
        job["metadata"]["uid"] == pods["tiny-worker-0-1"]["metadata"]["ownerReferences"][0]["uid"]
    )


def test_restarts_stop_at_the_backoff_limit(cluster, events):
    cluster.add(DATASET, status=BUILT)
    cluster.add(
        PRETRAIN,
        status={
            "phase": "Pending",
            "restarts": 1,
            "failures": 1,
            "startTime": "2026-01-01T00:00:00Z",
        },
    )
    run("PretrainJob", "tiny")  # creates attempt 1
    cluster.set_pod("tiny-worker-0-1", "Running", running={})
    cluster.set_pod("tiny-worker-1-1", "Failed", terminated={"exitCode": 1, "reason": "Error"})
    run("PretrainJob", "tiny")
    status = cluster.status("pretrainjobs", "tiny")
    assert (
        status["phase"] == "Failed"
        and condition(status, "Failed")["reason"] == "BackoffLimitExceeded"
    )
    assert list(cluster.pods()) == ["tiny-worker-1-1"]  # the failed one is kept for its logs
    assert events[-1][1:3] == ("Warning", "BackoffLimitExceeded")


def test_a_gang_gets_a_pod_group_where_volcano_is_installed(cluster, events):
    cluster.crds.add("podgroups.scheduling.volcano.sh")
    cluster.add(DATASET, status=BUILT)
    cluster.add(PRETRAIN)
    run("PretrainJob", "tiny")
    group = cluster.objects[("PodGroup", "team-a", "tiny")]
    assert group["apiVersion"] == "scheduling.volcano.sh/v1beta1"
    assert group["spec"]["minMember"] == 2
    assert {p["spec"]["schedulerName"] for p in cluster.pods().values()} == {"volcano"}


QUEUED = PRETRAIN.replace("backoffLimit: 1}", "backoffLimit: 1, schedulingPolicy: {queue: q}}")
PENDING = {"conditions": [{"type": "QuotaReserved", "status": "False", "reason": "Pending",
                           "message": "couldn't assign flavors: insufficient quota for cpu"}]}  # fmt: skip


def test_a_queued_gang_says_why_and_a_failed_one_frees_its_quota(cluster, events):
    cluster.add(DATASET, status=BUILT)
    cluster.add(QUEUED, status={"phase": "Pending", "restarts": 1, "failures": 1})
    run("PretrainJob", "tiny")
    pods = cluster.pods()
    assert {p["metadata"]["labels"]["kueue.x-k8s.io/pod-group-name"] for p in pods.values()} == {
        "tiny"
    }
    for pod in pods.values():  # as Kueue's webhook leaves them
        pod["spec"]["schedulingGates"] = [{"name": "kueue.x-k8s.io/admission"}]
    cluster.objects[("Workload.kueue.x-k8s.io", "team-a", "tiny")] = {"status": PENDING}
    run("PretrainJob", "tiny")
    status = cluster.status("pretrainjobs", "tiny")
    assert status["phase"] == "Queued"
    assert condition(status, "Queued") | {"lastTransitionTime": None} == {
        "type": "Queued", "status": "True", "reason": "Pending",
        "message": "couldn't assign flavors: insufficient quota for cpu",
        "lastTransitionTime": None, "observedGeneration": 1,
    }  # fmt: skip
    assert events[-1][1:3] == ("Normal", "Queued")
    cluster.set_pod("tiny-worker-0-1", "Failed", terminated={"exitCode": 1, "reason": "Error"})
    run("PretrainJob", "tiny")  # the budget is spent: Failed, and Kueue may let the group go
    assert cluster.status("pretrainjobs", "tiny")["phase"] == "Failed"
    annotations = [p["metadata"].get("annotations", {}) for p in cluster.pods().values()]
    assert all(a["kueue.x-k8s.io/retriable-in-group"] == "false" for a in annotations)


def test_invalid_spec_is_recorded_once_naming_the_field(cluster, events):
    cluster.add(PRETRAIN.replace('storage: {uri: "s3://bucket", secretName: creds}', "storage: {}"))
    with pytest.raises(kopf.PermanentError, match=r"^spec\.storage\.uri: is unset"):
        run("PretrainJob", "tiny")
    status = cluster.status("pretrainjobs", "tiny")
    assert status["phase"] == "Failed" and condition(status, "Failed")["reason"] == "InvalidSpec"
    run("PretrainJob", "tiny")  # already recorded: quiet
    assert len(cluster.status_patches) == 1 and len(events) == 1


def test_a_child_owned_by_another_controller_is_left_alone(cluster, events):
    cluster.add(DATASET, status=BUILT)
    cluster.add(PRETRAIN)
    cluster.objects[("ConfigMap", "team-a", "tiny-config")] = {
        "kind": "ConfigMap",
        "metadata": {
            "name": "tiny-config",
            "ownerReferences": [{"uid": "other", "controller": True}],
        },
    }
    with pytest.raises(kopf.TemporaryError, match="managed by someone else"):
        run("PretrainJob", "tiny")
    assert cluster.pods() == {}


def test_dataset_summary_becomes_status_and_lineage(cluster, events):
    cluster.add(DATASET)
    run("Dataset", "corpus")
    assert list(cluster.pods()) == ["corpus-data-0"]
    done = {
        "event": "done",
        "output": "s3://bucket/dataset/corpus",
        "documentsOut": 3,
        "tokens": 99,
        "shards": 1,
        "tokenizerDigest": "sha256:t",
        "configDigest": "sha256:c",
        "sources": [{"uri": "s3://raw/*.txt", "digest": "sha256:s"}],
    }
    cluster.set_pod(
        "corpus-data-0",
        "Succeeded",
        terminated={"exitCode": 0, "reason": "Completed", "message": json.dumps(done)},
    )
    run("Dataset", "corpus")
    status = cluster.status("datasets", "corpus")
    assert (status["phase"], status["tokens"], status["shards"]) == ("Succeeded", 99, 1)
    assert status["lineage"]["outputs"] == [
        {"uri": "s3://bucket/dataset/corpus", "kind": "Dataset", "digest": "sha256:c"}
    ]
    assert status["lineage"]["inputs"] == [{"uri": "s3://raw/*.txt", "digest": "sha256:s"}]


@pytest.mark.parametrize("kuberay", [True, False])
def test_ray_workers_are_a_raycluster_where_kuberay_is_installed(cluster, events, kuberay):
    if kuberay:
        cluster.crds.add("rayclusters.ray.io")
    cluster.add(
        DATASET.replace("storage:", "engine: {type: ray}\n  resources: {nodes: 3}\n  storage:")
    )
    run("Dataset", "corpus")
    run("Dataset", "corpus")  # nothing more to create
    clusters = [n for (k, _, n) in cluster.objects if k == "RayCluster"]
    if not kuberay:
        assert clusters == [] and sorted(cluster.pods()) == [
            "corpus-data-0", "corpus-data-0-ray-1", "corpus-data-0-ray-2"]  # fmt: skip
        return
    assert clusters == ["corpus-ray"] and list(cluster.pods()) == ["corpus-data-0"]
    cluster.set_pod("corpus-data-0", "Failed", terminated={"exitCode": 1, "reason": "Error"})
    run("Dataset", "corpus")  # a new driver joins the same cluster
    assert sorted(cluster.pods()) == ["corpus-data-0", "corpus-data-1"]
    assert ("RayCluster", "team-a", "corpus-ray") in cluster.objects
    done = {"event": "done", "output": "s3://bucket/dataset/corpus", "configDigest": "sha256:c"}
    cluster.set_pod("corpus-data-1", "Succeeded",
                    terminated={"exitCode": 0, "reason": "Completed", "message": json.dumps(done)})  # fmt: skip
    run("Dataset", "corpus")
    assert cluster.status("datasets", "corpus")["phase"] == "Succeeded"
    assert ("RayCluster.ray.io", "corpus-ray", None) in cluster.deleted
    assert ("RayCluster", "team-a", "corpus-ray") not in cluster.objects


def test_evaluation_below_threshold_fails_the_gate(cluster, events):
    cluster.add(DATASET, status=BUILT)
    cluster.add(
        PRETRAIN, status={"phase": "Succeeded", "lineage": {"outputs": [{"uri": "s3://m"}]}}
    )
    cluster.add(EVALUATION)
    run("Evaluation", "check")
    config = json.loads(
        cluster.objects[("ConfigMap", "team-a", "check-eval-config")]["data"]["config.json"]
    )
    assert (config["modelUri"], config["taskUris"]) == (
        "s3://m",
        {"ppl": "s3://bucket/dataset/corpus"},
    )
    cluster.logs["check-eval-0"] = json.dumps(
        {
            "event": "done",
            "results": {"ppl.perplexity": 80.0},
            "passed": False,
            "missed": ["ppl.perplexity = 80 is above the maximum 50"],
        }
    )
    cluster.set_pod("check-eval-0", "Succeeded", terminated={"exitCode": 0, "reason": "Completed"})
    run("Evaluation", "check")
    status = cluster.status("evaluations", "check")
    assert status["phase"] == "Failed" and status["passed"] is False
    assert condition(status, "Failed")["reason"] == "ThresholdsNotMet"


def test_reward_model_trains_on_a_deployments_feedback(cluster, events):
    cluster.add("""
apiVersion: lmforge.dev/v1alpha1
kind: RewardModel
metadata: {name: rm}
spec:
  baseModel: {uri: "s3://bucket/base"}
  preferences: {deploymentRef: {name: chat}}
  loss: plackettLuce
  training: {steps: 3}
  storage: {uri: "s3://bucket"}
""")
    run("RewardModel", "rm")
    status = cluster.status("rewardmodels", "rm")
    assert status["phase"] == "Waiting" and cluster.pods() == {}
    assert (
        "spec.preferences.deploymentRef: Deployment/chat" in condition(status, "Waiting")["message"]
    )
    outputs = [{"uri": "http://chat"}, {"uri": "s3://bucket/fb/preferences", "kind": "Feedback"}]
    cluster.add(
        "apiVersion: lmforge.dev/v1alpha1\nkind: Deployment\nmetadata: {name: chat}\n"
        "spec: {modelRef: {kind: PretrainJob, name: tiny}}\n",
        status={"phase": "Available", "lineage": {"outputs": outputs}},
    )
    run("RewardModel", "rm")
    assert sorted(cluster.pods()) == ["rm-worker-0"]
    config = json.loads(
        cluster.objects[("ConfigMap", "team-a", "rm-config")]["data"]["config.json"]
    )
    assert config["method"] == "reward" and config["rankingLoss"] == "plackettLuce"
    assert (config["baseModelUri"], config["preferencesUri"]) == (
        "s3://bucket/base",
        "s3://bucket/fb/preferences",
    )
    inputs = cluster.status("rewardmodels", "rm")["lineage"]["inputs"]
    assert {"uri": "s3://bucket/fb/preferences", "kind": "Deployment", "name": "chat"} in inputs


def test_a_deleted_resource_is_left_to_the_garbage_collector(cluster, events):
    obj = cluster.add(DATASET)
    obj["metadata"]["deletionTimestamp"] = "2026-11-01T12:00:00Z"
    run("Dataset", "corpus")
    run("Dataset", "gone")
    assert cluster.pods() == {} and cluster.status_patches == []


FINETUNE = """
apiVersion: lmforge.dev/v1alpha1
kind: FineTune
metadata: {name: chat}
spec:
  baseModel: {pretrainJobRef: {name: tiny}}
  method: METHOD
  data: {uri: "s3://bucket/sft.jsonl"}
  preferences: {uri: "s3://bucket/prefs.jsonl"}
  lora: {rank: 4}
  training: {steps: 5}
  resources: {nodes: 2}
  storage: {uri: "s3://bucket"}
"""


def test_finetune_waits_for_its_base_model_then_runs_the_gang(cluster, events):
    cluster.add(FINETUNE.replace("METHOD", "sft"))
    run("FineTune", "chat")
    assert cluster.status("finetunes", "chat")["phase"] == "Waiting" and cluster.pods() == {}
    trained = {"phase": "Succeeded", "lineage": {"outputs": [{"uri": "s3://bucket/pt/model"}]}}
    cluster.add(PRETRAIN, status=trained)
    run("FineTune", "chat")
    assert sorted(cluster.pods()) == ["chat-worker-0", "chat-worker-1"]
    config = json.loads(
        cluster.objects[("ConfigMap", "team-a", "chat-config")]["data"]["config.json"]
    )
    assert (config["baseModelUri"], config["examplesUri"]) == (
        "s3://bucket/pt/model",
        "s3://bucket/sft.jsonl",
    )
    assert config["lora"]["rank"] == 4 and "architecture" not in config
    lineage = cluster.status("finetunes", "chat")["lineage"]
    assert lineage["inputs"][0] == {
        "uri": "s3://bucket/pt/model",
        "kind": "PretrainJob",
        "name": "tiny",
    }


def config_of(cluster, name: str) -> dict:
    return json.loads(
        cluster.objects[("ConfigMap", "team-a", f"{name}-config")]["data"]["config.json"]
    )


def test_dpo_reads_preferences_against_its_reference(cluster, events):
    trained = {"phase": "Succeeded", "lineage": {"outputs": [{"uri": "s3://bucket/pt/model"}]}}
    cluster.add(PRETRAIN, status=trained)
    spec = FINETUNE.replace("METHOD", "dpo").replace(
        "lora: {rank: 4}", "dpo: {beta: 0.2, reference: {fineTuneRef: {name: ref}}}"
    )
    cluster.add(spec)
    run("FineTune", "chat")
    assert cluster.status("finetunes", "chat")["phase"] == "Waiting"  # for spec.dpo.reference
    reference = {"phase": "Succeeded", "lineage": {"outputs": [{"uri": "s3://bucket/ref"}]}}
    cluster.add(
        FINETUNE.replace("METHOD", "sft").replace("name: chat", "name: ref"), status=reference
    )
    run("FineTune", "chat")
    config = config_of(cluster, "chat")
    assert {k: config[k] for k in ("method", "beta", "preferencesUri", "referenceUri")} == {
        "method": "dpo",
        "beta": 0.2,
        "preferencesUri": "s3://bucket/prefs.jsonl",
        "referenceUri": "s3://bucket/ref",
    }
    assert "examplesUri" not in config
    inputs = cluster.status("finetunes", "chat")["lineage"]["inputs"]
    assert [i["uri"] for i in inputs] == ["s3://bucket/pt/model", "s3://bucket/ref",
                                          "s3://bucket/prefs.jsonl"]  # fmt: skip


def test_grpo_reads_prompts_and_its_reward_model(cluster, events):
    trained = {"phase": "Succeeded", "lineage": {"outputs": [{"uri": "s3://bucket/pt/model"}]}}
    cluster.add(PRETRAIN, status=trained)
    cluster.add(
        "apiVersion: lmforge.dev/v1alpha1\nkind: RewardModel\nmetadata: {name: rm}\nspec:\n"
        "  baseModel: {uri: s3://m}\n  preferences: {uri: s3://p}\n",
        status={"phase": "Succeeded", "lineage": {"outputs": [{"uri": "s3://bucket/rm"}]}},
    )
    cluster.add(FINETUNE.replace("METHOD", "grpo").replace(
        "lora: {rank: 4}", 'rewardModelRef: {name: rm}\n  prompts: {uri: "s3://bucket/q.jsonl"}\n'
        "  rl: {samplesPerPrompt: 3}"))  # fmt: skip
    run("FineTune", "chat")
    config = config_of(cluster, "chat")
    assert (config["method"], config["promptsUri"], config["rewardModelUri"]) == (
        "grpo", "s3://bucket/q.jsonl", "s3://bucket/rm")  # fmt: skip
    assert config["rl"]["samplesPerPrompt"] == 3 and config["validationFraction"] == 0.1
