"""The gang decision: create, run, restart together, fail, succeed, suspend, expire, clean up.

Each case is one pass: what was observed in, the plan (status, deletions, creations) out."""

import dataclasses
import json
from typing import NamedTuple

import pytest

from lmforge.operator.api import conditions
from lmforge.operator.api.common import Lineage, RunPolicy
from lmforge.operator.render import names
from lmforge.operator.render.gang import GANG
from lmforge.operator.render.observe import Admission, PodState
from lmforge.operator.render.pods import Defaults
from lmforge.operator.stages import STAGES
from lmforge.operator.stages.base import SpecError
from lmforge.operator.stages.inputs import Dependencies

from ..conftest import NOW

DATASET_URI = "s3://bucket/team-a/dataset/corpus"
WORKERS = ("tiny-worker-0", "tiny-worker-1", "tiny-worker-2")
STARTED = {"phase": "Running", "startTime": "2026-11-01T11:00:00Z"}


def worker(index, phase="Running", attempt=0, **fields):
    return PodState(f"tiny-worker-{index}", "worker", index, attempt, phase, **fields)


def gang(*phases, attempt=0):
    return tuple(worker(i, p, attempt) for i, p in enumerate(phases))


OOM = {"exit_code": 137, "reason": "OOMKilled"}


def condition(status, type_):
    return next((x for x in status.get("conditions", []) if x["type"] == type_), None)


@pytest.fixture
def decide(observed, resource, owner):
    """One pass over the 3-worker PretrainJob `tiny`; the decision's status as the API's dict."""

    def run(**fields):
        decision = GANG.decide(observed(**fields), owner(), resource(), STAGES["PretrainJob"])
        return dataclasses.replace(decision, status=decision.status.wire())

    return run


def test_a_new_run_creates_the_whole_gang(decide):
    plan = decide(lineage=Lineage(image="img"))
    assert plan.create == WORKERS and plan.delete == () and plan.attempt == 0
    assert plan.status["phase"] == "Pending" and plan.status["startTime"] == "2026-11-01T12:00:00Z"
    assert (
        plan.status["lineage"] == {"inputs": [], "outputs": [], "image": "img"}
        and plan.status["observedGeneration"] == 1
    )


def test_waits_for_references_naming_them(decide):
    deps = Dependencies(["spec.datasetRef: Dataset/corpus is Running"], [], {})
    plan = decide(dependencies=deps)
    assert plan.status["phase"] == "Waiting" and plan.create == ()
    waiting = condition(plan.status, conditions.WAITING)
    assert (waiting["status"], waiting["reason"]) == ("True", conditions.DEPENDENCY_NOT_READY)
    assert waiting["message"] == "spec.datasetRef: Dataset/corpus is Running"


def test_ready_references_end_the_wait(decide):
    waiting = {
        "phase": "Waiting",
        "conditions": [
            {"type": "Waiting", "status": "True", "reason": "DependencyNotReady", "message": "x"}
        ],
    }
    plan = decide(previous=waiting)
    assert (
        condition(plan.status, conditions.WAITING)["status"] == "False" and plan.create == WORKERS
    )


def test_a_failed_reference_fails_the_run(decide):
    deps = Dependencies([], ["spec.datasetRef: Dataset/corpus failed: no documents"], {})
    plan = decide(dependencies=deps)
    assert plan.status["phase"] == "Failed" and plan.create == ()
    assert condition(plan.status, conditions.FAILED)["reason"] == conditions.DEPENDENCY_FAILED


@pytest.mark.parametrize(
    ("phases", "phase", "running", "create"),
    [
        (("Running", "Running", "Running"), "Running", "True", ()),
        (("Running", "Pending", "Running"), "Pending", "False", ()),
        (("Pending", "Pending"), "Pending", "False", ("tiny-worker-2",)),  # creation was cut short
    ],
)
def test_running_when_every_worker_runs(decide, phases, phase, running, create):
    plan = decide(previous={"phase": "Pending"}, pods=gang(*phases))
    assert plan.status["phase"] == phase and plan.create == create
    assert condition(plan.status, conditions.RUNNING)["status"] == running


def test_a_waiting_reason_is_shown(decide):
    pods = (worker(0), worker(1, "Pending", waiting="ErrImagePull: not found"), worker(2))
    plan = decide(previous={"phase": "Pending"}, pods=pods)
    assert (
        condition(plan.status, conditions.RUNNING)["message"]
        == "tiny-worker-1: ErrImagePull: not found"
    )


def test_one_failed_worker_restarts_the_whole_gang(decide):
    pods = (worker(0), worker(1, "Failed", **OOM), worker(2))
    plan = decide(previous=STARTED, pods=pods)
    assert plan.status["restarts"] == 1 and plan.attempt == 1
    assert set(plan.delete) == set(WORKERS) and plan.create == ()
    assert plan.grace_seconds == 30  # the others cannot checkpoint without their peer
    running = condition(plan.status, conditions.RUNNING)
    assert running["reason"] == conditions.RESTARTING
    assert running["message"] == (
        "tiny-worker-1 ran out of memory (OOMKilled): raise spec.resources.memory:"
        " restarting all 3 workers (failure 1 of 3 allowed)"
    )
    assert plan.status["failures"] == 1


PREEMPTED = {"exit_code": 143, "reason": "Error"}


def test_the_worker_that_failed_first_is_named(decide):
    """A killed worker-1 makes worker-0's torchrun exit 1 moments later: worker-1 is the cause."""
    at = "2026-11-01T11:59:00Z"
    peer = worker(0, "Failed", exit_code=1, reason="Error", finished_at=at)
    killed = worker(1, "Failed", exit_code=137, reason="Error", finished_at=at)
    plan = decide(previous=STARTED, pods=(peer, killed, worker(2)))
    assert "tiny-worker-1 exited with 137" in condition(plan.status, conditions.RUNNING)["message"]
    later = worker(1, "Failed", exit_code=1, reason="Error", finished_at="2026-11-01T11:59:01Z")
    plan = decide(previous=STARTED, pods=(later, peer, worker(2)))
    assert "tiny-worker-0 exited with 1" in condition(plan.status, conditions.RUNNING)["message"]


def test_a_preemption_restarts_without_using_the_budget(decide):
    previous = {**STARTED, "restarts": 4, "failures": 3}  # the budget is spent
    pods = (*gang("Running", "Running", attempt=4), worker(2, "Failed", 4, **PREEMPTED))
    plan = decide(previous=previous, pods=pods)
    assert plan.attempt == 5 and plan.status["restarts"] == 5 and plan.status["failures"] == 3
    message = condition(plan.status, conditions.RUNNING)["message"]
    assert message.endswith("(not counted: runPolicy.failurePolicy.preempted is Ignore)")


@pytest.mark.parametrize(
    ("policy", "failures", "phase"),
    [({"preempted": "Count"}, 1, "Pending"), ({"preempted": "FailJob"}, 0, "Failed")],
)
def test_the_failure_policy_decides_per_class(decide, policy, failures, phase):
    pods = (worker(0), worker(1, "Failed", **PREEMPTED), worker(2))
    run_policy = RunPolicy(failurePolicy=policy)
    plan = decide(previous=STARTED, pods=pods, run_policy=run_policy)
    assert plan.status["phase"] == phase and plan.status.get("failures", 0) == failures
    if phase == "Failed":
        assert condition(plan.status, conditions.FAILED)["reason"] == conditions.PREEMPTED


def test_a_gang_kueue_preempts_restarts_and_waits_for_its_pods_to_end(decide):
    previous = {**STARTED, "failures": 3}
    leaving = tuple(worker(i, "Running", 0, terminating=True, disrupted=True) for i in range(3))
    plan = decide(previous=previous, pods=leaving)
    assert plan.attempt == 1 and plan.status["failures"] == 3  # not counted
    assert plan.delete == () and plan.create == ()  # they checkpoint with their full grace
    running = condition(plan.status, conditions.RUNNING)
    assert running["message"].startswith("tiny-worker-0 was preempted")


def test_gated_pods_make_the_run_queued_with_kueues_reason(decide):
    waiting = Admission(False, "Pending", "insufficient quota for cpu in flavor default")
    gated = tuple(worker(i, "Pending", 1, gated=True) for i in range(3))
    previous = {**STARTED, "phase": "Pending", "restarts": 1}
    plan = decide(previous=previous, pods=gated, admission=waiting)
    assert plan.status["phase"] == "Queued" and plan.create == ()
    queued = condition(plan.status, conditions.QUEUED)
    assert (queued["status"], queued["reason"], queued["message"]) == (
        "True",
        "Pending",
        "insufficient quota for cpu in flavor default",
    )
    admitted = gang("Running", "Running", "Running", attempt=1)
    plan = decide(previous=plan.status, pods=admitted, admission=waiting._replace(admitted=True))
    assert plan.status["phase"] == "Running"
    assert condition(plan.status, conditions.QUEUED)["reason"] == conditions.ADMITTED


def test_a_gang_that_reports_nothing_for_too_long_is_restarted(decide):
    quiet = [{"event": "step", "step": 7, "time": NOW.timestamp() - 400}]
    policy = RunPolicy(progressTimeoutSeconds=300)
    plan = decide(previous=STARTED, pods=gang("Running", "Running", "Running"), events=quiet,
                  run_policy=policy)  # fmt: skip
    assert plan.attempt == 1 and set(plan.delete) == set(WORKERS) and plan.status["failures"] == 1
    running = condition(plan.status, conditions.RUNNING)
    assert running["message"].startswith(
        "no progress reported for 400 s (last at step 7), longer than"
        " runPolicy.progressTimeoutSeconds (300)"
    )
    recent = [{"event": "step", "step": 7, "time": NOW.timestamp() - 200}]
    plan = decide(previous=STARTED, pods=gang("Running", "Running", "Running"), events=recent,
                  run_policy=policy)  # fmt: skip
    assert plan.attempt == 0 and plan.delete == ()
    plan = decide(previous=STARTED, pods=gang("Running", "Running", "Running"), events=quiet)
    assert plan.attempt == 0  # no progressTimeoutSeconds: never


def test_the_next_attempt_waits_for_the_old_pods_to_go(decide):
    previous = {**STARTED, "restarts": 1, "phase": "Pending"}
    terminating = tuple(worker(i, "Running", 0, terminating=True) for i in range(3))
    assert decide(previous=previous, pods=terminating).create == ()
    plan = decide(previous=previous, pods=())
    assert plan.create == tuple(f"{w}-1" for w in WORKERS) and plan.attempt == 1
    # Kueue keeps a group's ended pods (its finalizer) until replacements exist: names differ
    ended = tuple(worker(i, "Failed", 0, terminating=True, exit_code=143) for i in range(3))
    assert decide(previous=previous, pods=ended).create == plan.create


def test_pods_of_an_older_attempt_are_deleted_first(decide):
    previous = {**STARTED, "restarts": 1, "phase": "Pending"}
    plan = decide(previous=previous, pods=(worker(0, "Running", 0), worker(1, "Failed", 0, **OOM)))
    assert plan.delete == ("tiny-worker-0", "tiny-worker-1") and plan.create == ()
    assert plan.status["restarts"] == 1  # already counted: not counted again


def test_a_worker_that_disappeared_restarts_the_gang(decide):
    plan = decide(previous=STARTED, pods=(worker(0), worker(2)))
    assert plan.status["restarts"] == 1
    assert "tiny-worker-1 disappeared" in condition(plan.status, conditions.RUNNING)["message"]


def test_backoff_limit_ends_it(decide):
    previous = {**STARTED, "restarts": 2, "failures": 2}
    pods = (*gang("Running", "Running", attempt=2), worker(2, "Failed", 2, **OOM))
    plan = decide(previous=previous, pods=pods, run_policy=RunPolicy(backoffLimit=2))
    assert plan.status["phase"] == "Failed" and plan.status["restarts"] == 2
    assert plan.delete == ("tiny-worker-0", "tiny-worker-1")  # the failed pod stays, with its logs
    failed = condition(plan.status, conditions.FAILED)
    assert failed["reason"] == conditions.BACKOFF_LIMIT_EXCEEDED
    assert failed["message"].endswith(
        "all 3 workers failed 3 times, more than runPolicy.backoffLimit (2) allows"
    )


def test_a_configuration_error_is_not_retried(decide):
    pods = (worker(0, "Failed", exit_code=2, reason="Error"), worker(1), worker(2))
    plan = decide(previous=STARTED, pods=pods)
    assert plan.status["phase"] == "Failed" and plan.status.get("restarts", 0) == 0
    assert condition(plan.status, conditions.FAILED)["reason"] == conditions.CONFIG_ERROR


def test_success_when_every_worker_succeeded(decide):
    plan = decide(previous=STARTED, pods=gang("Succeeded", "Succeeded", "Succeeded"))
    assert plan.status["phase"] == "Succeeded" and plan.status["completionTime"]
    assert condition(plan.status, conditions.SUCCEEDED)["status"] == "True" and plan.delete == ()


def test_suspend_deletes_the_pods_with_their_grace_period(decide):
    plan = decide(
        previous=STARTED,
        pods=gang("Running", "Running", "Running"),
        run_policy=RunPolicy(suspend=True),
    )
    assert plan.status["phase"] == "Suspended" and set(plan.delete) == set(WORKERS)
    assert plan.grace_seconds is None  # the full grace period: the gang checkpoints on SIGTERM
    assert condition(plan.status, conditions.SUSPENDED)["status"] == "True"


def test_resume_recreates_the_gang_without_counting_a_restart(decide):
    suspended = {"phase": "Suspended", "startTime": "2026-11-01T08:00:00Z"}
    plan = decide(previous=suspended, pods=(), run_policy=RunPolicy(activeDeadlineSeconds=60))
    assert plan.create == WORKERS and plan.status.get("restarts", 0) == 0
    assert plan.status["startTime"] == "2026-11-01T12:00:00Z"  # the deadline counts from here
    assert condition(plan.status, conditions.SUSPENDED)["reason"] == conditions.RESUMED


def test_deadline(decide):
    plan = decide(
        previous=STARTED,
        pods=gang("Running", "Running", "Running"),
        run_policy=RunPolicy(activeDeadlineSeconds=3600),
    )
    assert plan.status["phase"] == "Failed" and set(plan.delete) == set(WORKERS)
    assert (
        condition(plan.status, conditions.FAILED)["message"]
        == "ran longer than runPolicy.activeDeadlineSeconds (3600 s)"
    )


@pytest.mark.parametrize(("ttl", "cleanup"), [(None, False), (7200, False), (3600, True)])
def test_finished_runs_are_final_and_expire(decide, ttl, cleanup):
    done = {"phase": "Succeeded", "completionTime": "2026-11-01T11:00:00Z"}
    plan = decide(
        previous=done,
        pods=gang("Succeeded", "Succeeded", "Succeeded"),
        run_policy=RunPolicy(ttlSecondsAfterFinished=ttl),
    )
    assert plan.cleanup == cleanup and plan.create == () and plan.delete == ()
    assert plan.status == {**done, "observedGeneration": 1}


def test_progress_goes_into_status(decide):
    events = (
        {
            "event": "step",
            "step": 7,
            "totalSteps": 20,
            "loss": 3.5,
            "tokens": 7,
            "tokensPerSecond": 9.0,
        },
    )
    plan = decide(previous=STARTED, pods=gang("Running", "Running", "Running"), events=events)
    assert (plan.status["step"], plan.status["progress"], plan.status["loss"]) == (7, "7/20", 3.5)


def test_a_pass_leaves_what_it_observed_alone(observed, resource, owner):
    seen = observed(previous=STARTED, pods=gang("Running", "Running", "Running"))
    before = seen.previous.wire()
    events = ({"event": "step", "step": 7, "totalSteps": 20, "loss": 3.5},)
    decision = GANG.decide(
        dataclasses.replace(seen, events=events), owner(), resource(), STAGES["PretrainJob"]
    )
    assert decision.status.step == 7 and seen.previous.wire() == before


def test_the_same_observation_gives_the_same_plan(decide):
    fields = dict(previous=STARTED, pods=(worker(0), worker(1, "Failed", **OOM), worker(2)))
    assert decide(**fields) == decide(**fields)


# ----- the gang's pods -----


ELASTIC = {"nodes": 3, "minNodes": 1, "processesPerNode": 2, "cpu": "4", "memory": "8Gi"}


@pytest.fixture
def elastic(observed, resource, owner):
    """One pass over `tiny` as an elastic gang: 1 to 3 workers."""

    def run(**fields):
        job = resource(resources=ELASTIC)
        decision = GANG.decide(observed(**fields), owner(), job, STAGES["PretrainJob"])
        return dataclasses.replace(decision, status=decision.status.wire())

    return run


def test_an_elastic_gang_replaces_a_lost_worker_alone(elastic):
    # Evicted: deleted and replaced once gone; the others run on, nothing counted.
    evicted = worker(1, "Failed", reason="Evicted", message="The node was low on memory.")
    plan = elastic(previous=STARTED, pods=(worker(0), evicted, worker(2)))
    assert plan.delete == ("tiny-worker-1",) and plan.create == () and plan.attempt == 0
    assert plan.status["phase"] == "Running" and plan.status.get("restarts", 0) == 0
    assert plan.status.get("failures", 0) == 0
    assert condition(plan.status, conditions.RUNNING)["message"] == (
        "2/3 workers running (elastic: lost workers are replaced)"
    )
    # Deleted by someone (a drain): it goes with its grace period, then comes back.
    leaving = worker(1, terminating=True)
    assert elastic(previous=STARTED, pods=(worker(0), leaving, worker(2))).create == ()
    plan = elastic(previous=STARTED, pods=(worker(0), worker(2)))
    assert plan.create == ("tiny-worker-1",) and plan.status.get("restarts", 0) == 0
    # Its node stopped reporting.
    plan = elastic(previous=STARTED, pods=(worker(0), worker(1), worker(2, "Unknown")))
    assert plan.delete == ("tiny-worker-2",) and plan.attempt == 0


def test_an_elastic_gang_restarts_whole_for_worker_zero_or_its_own_failure(elastic):
    """Worker 0 holds the rendezvous and rank 0; code that fails is not the cluster's doing."""
    plan = elastic(previous=STARTED, pods=(worker(1), worker(2)))
    assert plan.attempt == 1 and plan.status["restarts"] == 1
    assert "tiny-worker-0 disappeared" in condition(plan.status, conditions.RUNNING)["message"]
    plan = elastic(previous=STARTED, pods=(worker(0), worker(1, "Failed", **OOM), worker(2)))
    assert plan.attempt == 1 and plan.status["failures"] == 1


def test_an_elastic_gang_succeeds_with_rank_zero(elastic):
    # The replacement never ran: not needed once rank 0 exported the model.
    pods = (worker(0, "Succeeded"), worker(1, "Pending"), worker(2, "Succeeded"))
    plan = elastic(previous=STARTED, pods=pods)
    assert plan.status["phase"] == "Succeeded" and plan.delete == ("tiny-worker-1",)
    still = (worker(0, "Succeeded"), worker(1), worker(2, "Succeeded"))
    assert elastic(previous=STARTED, pods=still).status["phase"] == "Running"


def test_an_elastic_gang_meets_with_c10d_between_min_and_max(render, resource):
    for index, pod in enumerate(render(resource(resources=ELASTIC), attempt=2).pods):
        command = command_of(pod)
        assert "--nnodes=1:3" in command and "--nproc-per-node=2" in command
        assert "--rdzv-backend=c10d" in command and "--rdzv-id=tiny-2" in command
        assert "--rdzv-endpoint=tiny-worker-0.tiny-workers.team-a.svc:29500" in command
        assert f"--local-addr=tiny-worker-{index}.tiny-workers.team-a.svc" in command
        conf = f"--rdzv-conf=join_timeout=600,last_call_timeout=15,is_host={int(index == 0)}"
        assert conf in command and "--max-restarts=100" in command
        assert not [a for a in command if a.startswith("--node-rank")]
        (trainer,) = pod["spec"]["containers"]
        assert {"name": "TORCH_DISABLE_SHARE_RDZV_TCP_STORE", "value": "1"} in trainer["env"]
    fixed = render(resource(), attempt=0).pods[0]["spec"]["containers"][0]
    assert "TORCH_DISABLE_SHARE_RDZV_TCP_STORE" not in {e["name"] for e in fixed["env"]}


class Children(NamedTuple):
    config_map: dict
    service: dict
    pods: list


@pytest.fixture
def render(rendering):
    """The gang of a training resource whose Dataset is built, for attempt `attempt`."""

    def make(job, attempt=0, traceparent=None, **where):
        r = rendering(job, {"spec.datasetRef": DATASET_URI}, traceparent=traceparent, **where)
        (config_map, service), pods = GANG.children(r, attempt)
        return Children(config_map, service, pods)

    return make


def command_of(pod):
    return pod["spec"]["containers"][0]["command"]


def test_config_map_holds_the_config_as_json(render, resource):
    gang = render(resource())
    assert gang.config_map["metadata"]["name"] == "tiny-config"
    config = json.loads(gang.config_map["data"]["config.json"])
    assert config["datasetUri"] == "s3://bucket/team-a/dataset/corpus"


@pytest.mark.parametrize("nodes", [1, 3])
def test_one_pod_per_node_with_deterministic_names(render, resource, nodes):
    gang = render(resource(resources={"nodes": nodes}), attempt=2)
    assert [p["metadata"]["name"] for p in gang.pods] == [
        f"tiny-worker-{i}-2" for i in range(nodes)
    ]
    assert render(resource()).pods[0]["metadata"]["name"] == "tiny-worker-0"
    for index, pod in enumerate(gang.pods):
        labels = pod["metadata"]["labels"]
        assert labels[names.INDEX] == str(index) and labels[names.ATTEMPT] == "2"
        assert labels[names.ROLE] == "worker" and labels[names.KIND] == "PretrainJob"
        assert pod["spec"]["hostname"] == f"tiny-worker-{index}"
        assert pod["spec"]["subdomain"] == "tiny-workers"
        assert pod["spec"]["restartPolicy"] == "Never"


@pytest.mark.parametrize("index", [0, 2])
def test_torchrun_rendezvous_at_worker_zero(render, resource, index):
    command = command_of(render(resource()).pods[index])
    assert command[:3] == ["python", "-m", "torch.distributed.run"]
    assert "--nnodes=3" in command and "--nproc-per-node=2" in command
    assert f"--node-rank={index}" in command
    assert "--master-addr=tiny-worker-0.tiny-workers.team-a.svc" in command
    assert "--master-port=29500" in command and "--max-restarts=0" in command
    assert "--rdzv-conf=timeout=600" in command  # runPolicy.rendezvousTimeoutSeconds
    assert command[-4:] == ["-m", "lmforge.jobs.train", "--config", "/etc/lmforge/config.json"]


@pytest.mark.parametrize(
    ("overlay", "grace", "timeout"),
    [(None, 300, 285), ({"spec": {"terminationGracePeriodSeconds": 900}}, 900, 885)],
)
def test_grace_period_leaves_time_for_a_checkpoint(render, resource, overlay, grace, timeout):
    job = resource(resources={"nodes": 1, "podTemplate": overlay} if overlay else {"nodes": 1})
    pod = render(job).pods[0]
    assert pod["spec"]["terminationGracePeriodSeconds"] == grace
    assert f"--shutdown-timeout={timeout}" in command_of(pod)


def test_headless_service_selects_the_workers(render, resource):
    gang = render(resource())
    spec = gang.service["spec"]
    assert gang.service["metadata"]["name"] == "tiny-workers"
    assert spec["clusterIP"] == "None" and spec["publishNotReadyAddresses"] is True
    assert spec["ports"][0]["port"] == 29500
    for pod in gang.pods:
        assert spec["selector"].items() <= pod["metadata"]["labels"].items()


def test_every_child_is_controlled_by_the_resource(render, resource):
    gang = render(resource())
    for child in [gang.config_map, gang.service, *gang.pods]:
        (ref,) = child["metadata"]["ownerReferences"]
        assert ref["uid"] == "uid-tiny" and ref["controller"] is True
        assert child["metadata"]["namespace"] == "team-a"


@pytest.mark.parametrize(
    ("gpus", "expected"),
    [
        (0, {"cpu": "4", "memory": "8Gi"}),
        (2, {"cpu": "4", "memory": "8Gi", "nvidia.com/gpu": "2"}),
    ],
)
def test_resources_are_requests_and_limits(render, resource, gpus, expected):
    job = resource(
        resources={"nodes": 1, "processesPerNode": 1, "gpus": gpus, "cpu": "4", "memory": "8Gi"}
    )
    pod = render(job).pods[0]
    container = pod["spec"]["containers"][0]
    assert container["resources"] == {"requests": expected, "limits": expected}
    shm = [v for v in pod["spec"]["volumes"] if v["name"] == "dshm"]
    assert bool(shm) == bool(gpus)


def test_ranks_cache_remote_shards_in_a_volume_of_their_cache_size(render, resource):
    training = {"steps": 20, "globalBatchTokens": 4096, "microBatch": 4,
                "data": {"cacheMiB": 512}}  # fmt: skip
    pod = render(resource(training=training)).pods[0]  # 2 processes per node
    (volume,) = [v for v in pod["spec"]["volumes"] if v["name"] == "shards"]
    assert volume == {"name": "shards", "emptyDir": {"sizeLimit": "1024Mi"}}
    container = pod["spec"]["containers"][0]
    (mount,) = [m for m in container["volumeMounts"] if m["name"] == "shards"]
    assert {"name": "LMFORGE_SHARD_CACHE", "value": mount["mountPath"]} in container["env"]


def test_credentials_only_by_secret_reference(render, resource):
    gang = render(resource())
    container = gang.pods[0]["spec"]["containers"][0]
    assert container["envFrom"] == [{"secretRef": {"name": "s3-credentials"}}]
    assert not any("AWS" in e["name"] for e in container["env"])


def test_no_secret_no_env_from(render, resource):
    job = resource(storage={"uri": "file:///shared"})
    gang = render(job, defaults=Defaults())
    assert "envFrom" not in gang.pods[0]["spec"]["containers"][0]


def test_the_charts_nccl_settings_reach_every_worker(render, resource, monkeypatch):
    from lmforge.operator.handlers.settings import Settings

    monkeypatch.setenv("LMFORGE_JOB_NCCL", '{"NCCL_SOCKET_IFNAME": "eth0", "NCCL_DEBUG": "WARN"}')
    gang = render(resource(resources={"nodes": 2}), defaults=Settings.from_env().defaults)
    for pod in gang.pods:
        env = {e["name"]: e.get("value") for e in pod["spec"]["containers"][0]["env"]}
        assert env["NCCL_SOCKET_IFNAME"] == "eth0" and env["NCCL_DEBUG"] == "WARN"
    monkeypatch.setenv("LMFORGE_JOB_NCCL", '{"SOCKET_IFNAME": "eth0"}')
    with pytest.raises(ValueError, match=r"LMFORGE_JOB_NCCL=.*an object of NCCL_"):
        Settings.from_env()


@pytest.mark.parametrize(
    "traceparent", [None, "00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01"]
)
def test_traceparent_passed_when_given(render, resource, traceparent):
    env = render(resource(), traceparent=traceparent).pods[0]["spec"]["containers"][0]["env"]
    values = {e["name"]: e["value"] for e in env}
    assert values.get("TRACEPARENT") == traceparent


def test_placement_and_image(render, resource):
    job = resource(
        resources={
            "nodes": 1,
            "image": "my/trainer:1",
            "nodeSelector": {"pool": "gpu"},
            "tolerations": [
                {"key": "nvidia.com/gpu", "operator": "Exists", "effect": "NoSchedule"}
            ],
        }
    )
    spec = render(job).pods[0]["spec"]
    assert spec["nodeSelector"] == {"pool": "gpu"}
    assert spec["tolerations"] == [
        {"key": "nvidia.com/gpu", "operator": "Exists", "effect": "NoSchedule"}
    ]
    assert spec["containers"][0]["image"] == "my/trainer:1"


def test_default_image(render, resource):
    spec = render(resource()).pods[0]["spec"]
    assert spec["containers"][0]["image"] == "registry.local/lmforge-trainer:test"


@pytest.mark.parametrize(
    ("name", "nodes", "ok"),
    [
        ("a" * 54, 1, True),
        ("a" * 55, 1, False),
        ("a" * 53, 11, True),
        ("a" * 54, 11, False),
        ("9lives", 1, False),
    ],
)
def test_names_that_cannot_be_hostnames_are_refused(resource, owner, name, nodes, ok):
    job = resource(resources={"nodes": nodes})
    if ok:
        GANG.check(owner(name=name), job)
        return
    with pytest.raises(SpecError) as error:
        GANG.check(owner(name=name), job)
    assert error.value.field == "metadata.name"


def test_an_elastic_gang_cannot_wait_in_a_kueue_queue(resource, owner):
    job = resource(resources=ELASTIC, runPolicy={"schedulingPolicy": {"queue": "team"}})
    with pytest.raises(SpecError, match=r"spec.resources.minNodes: an elastic gang cannot wait"):
        GANG.check(owner(), job)
