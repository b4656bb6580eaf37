"""The gang decision: create, run, restart together, fail, succeed, suspend, expire, clean up.

Each case is one pass: what was observed in, the plan (status, deletions, creations) out."""

import pytest

from lmforge.operator.api import conditions as c
from lmforge.operator.api import conditions as r
from lmforge.operator.api.common import RunPolicy
from lmforge.operator.render.gang import decide_gang
from lmforge.operator.render.inputs import Dependencies
from lmforge.operator.render.observe import PodState

WORKERS = ("tiny-worker-0", "tiny-worker-1", "tiny-worker-2")
STARTED = {"phase": "Running", "startTime": "2026-11-01T11:00:00Z"}


def worker(index, phase="Running", attempt=0, **fields):
    return PodState(f"tiny-worker-{index}", "worker", index, attempt, phase, **fields)


def gang(*phases, attempt=0):
    return tuple(worker(i, p, attempt) for i, p in enumerate(phases))


OOM = {"exit_code": 137, "reason": "OOMKilled"}


def condition(status, type_):
    return next((x for x in status.get("conditions", []) if x["type"] == type_), None)


def decide(observed, **fields):
    return decide_gang(observed(**fields), "tiny", 3)


def test_a_new_run_creates_the_whole_gang(observed):
    plan = decide(observed, lineage={"image": "img"})
    assert plan.create == WORKERS and plan.delete == () and plan.attempt == 0
    assert plan.status["phase"] == "Pending" and plan.status["startTime"] == "2026-11-01T12:00:00Z"
    assert plan.status["lineage"] == {"image": "img"} and plan.status["observedGeneration"] == 1


def test_waits_for_references_naming_them(observed):
    deps = Dependencies(["spec.datasetRef: Dataset/corpus is Running"], [], {})
    plan = decide(observed, dependencies=deps)
    assert plan.status["phase"] == "Waiting" and plan.create == ()
    waiting = condition(plan.status, c.WAITING)
    assert (waiting["status"], waiting["reason"]) == ("True", c.DEPENDENCY_NOT_READY)
    assert waiting["message"] == "spec.datasetRef: Dataset/corpus is Running"


def test_ready_references_end_the_wait(observed):
    waiting = {
        "phase": "Waiting",
        "conditions": [
            {"type": "Waiting", "status": "True", "reason": "DependencyNotReady", "message": "x"}
        ],
    }
    plan = decide(observed, previous=waiting)
    assert condition(plan.status, c.WAITING)["status"] == "False" and plan.create == WORKERS


def test_a_failed_reference_fails_the_run(observed):
    deps = Dependencies([], ["spec.datasetRef: Dataset/corpus failed: no documents"], {})
    plan = decide(observed, dependencies=deps)
    assert plan.status["phase"] == "Failed" and plan.create == ()
    assert condition(plan.status, c.FAILED)["reason"] == c.DEPENDENCY_FAILED


@pytest.mark.parametrize(
    ("phases", "phase", "running", "create"),
    [
        (("Running", "Running", "Running"), "Running", "True", ()),
        (("Running", "Pending", "Running"), "Pending", "False", ()),
        (("Pending", "Pending"), "Pending", "False", ("tiny-worker-2",)),  # creation was cut short
    ],
)
def test_running_when_every_worker_runs(observed, phases, phase, running, create):
    plan = decide(observed, previous={"phase": "Pending"}, pods=gang(*phases))
    assert plan.status["phase"] == phase and plan.create == create
    assert condition(plan.status, c.RUNNING)["status"] == running


def test_a_waiting_reason_is_shown(observed):
    pods = (worker(0), worker(1, "Pending", waiting="ErrImagePull: not found"), worker(2))
    plan = decide(observed, previous={"phase": "Pending"}, pods=pods)
    assert condition(plan.status, c.RUNNING)["message"] == "tiny-worker-1: ErrImagePull: not found"


def test_one_failed_worker_restarts_the_whole_gang(observed):
    pods = (worker(0), worker(1, "Failed", **OOM), worker(2))
    plan = decide(observed, previous=STARTED, pods=pods)
    assert plan.status["restarts"] == 1 and plan.attempt == 1
    assert set(plan.delete) == set(WORKERS) and plan.create == ()
    assert plan.grace_seconds == 30  # the others cannot checkpoint without their peer
    running = condition(plan.status, c.RUNNING)
    assert running["reason"] == r.RESTARTING
    assert running["message"] == (
        "tiny-worker-1 ran out of memory (OOMKilled): raise spec.resources.memory:"
        " restarting all 3 workers (1 of 3)"
    )


def test_the_next_attempt_waits_for_the_old_pods_to_go(observed):
    previous = {**STARTED, "restarts": 1, "phase": "Pending"}
    terminating = tuple(worker(i, "Running", 0, terminating=True) for i in range(3))
    assert decide(observed, previous=previous, pods=terminating).create == ()
    plan = decide(observed, previous=previous, pods=())
    assert plan.create == WORKERS and plan.attempt == 1


def test_pods_of_an_older_attempt_are_deleted_first(observed):
    previous = {**STARTED, "restarts": 1, "phase": "Pending"}
    plan = decide(
        observed, previous=previous, pods=(worker(0, "Running", 0), worker(1, "Failed", 0, **OOM))
    )
    assert plan.delete == ("tiny-worker-0", "tiny-worker-1") and plan.create == ()
    assert plan.status["restarts"] == 1  # already counted: not counted again


def test_a_worker_that_disappeared_restarts_the_gang(observed):
    plan = decide(observed, previous=STARTED, pods=(worker(0), worker(2)))
    assert plan.status["restarts"] == 1
    assert "tiny-worker-1 disappeared" in condition(plan.status, c.RUNNING)["message"]


def test_backoff_limit_ends_it(observed):
    previous = {**STARTED, "restarts": 2}
    pods = (*gang("Running", "Running", attempt=2), worker(2, "Failed", 2, **OOM))
    plan = decide(observed, previous=previous, pods=pods, run_policy=RunPolicy(backoffLimit=2))
    assert plan.status["phase"] == "Failed" and plan.status["restarts"] == 2
    assert plan.delete == ("tiny-worker-0", "tiny-worker-1")  # the failed pod stays, with its logs
    failed = condition(plan.status, c.FAILED)
    assert failed["reason"] == r.BACKOFF_LIMIT_EXCEEDED
    assert failed["message"].endswith(
        "all 3 workers was restarted 2 times, the limit in runPolicy.backoffLimit"
    )


def test_a_configuration_error_is_not_retried(observed):
    pods = (worker(0, "Failed", exit_code=2, reason="Error"), worker(1), worker(2))
    plan = decide(observed, previous=STARTED, pods=pods)
    assert plan.status["phase"] == "Failed" and plan.status.get("restarts", 0) == 0
    assert condition(plan.status, c.FAILED)["reason"] == r.CONFIG_ERROR


def test_success_when_every_worker_succeeded(observed):
    plan = decide(observed, previous=STARTED, pods=gang("Succeeded", "Succeeded", "Succeeded"))
    assert plan.status["phase"] == "Succeeded" and plan.status["completionTime"]
    assert condition(plan.status, c.SUCCEEDED)["status"] == "True" and plan.delete == ()


def test_suspend_deletes_the_pods_with_their_grace_period(observed):
    plan = decide(
        observed,
        previous=STARTED,
        pods=gang("Running", "Running", "Running"),
        run_policy=RunPolicy(suspend=True),
    )
    assert plan.status["phase"] == "Suspended" and set(plan.delete) == set(WORKERS)
    assert plan.grace_seconds is None  # the full grace period: the gang checkpoints on SIGTERM
    assert condition(plan.status, r.SUSPENDED)["status"] == "True"


def test_resume_recreates_the_gang_without_counting_a_restart(observed):
    suspended = {"phase": "Suspended", "startTime": "2026-11-01T08:00:00Z"}
    plan = decide(
        observed, previous=suspended, pods=(), run_policy=RunPolicy(activeDeadlineSeconds=60)
    )
    assert plan.create == WORKERS and plan.status.get("restarts", 0) == 0
    assert plan.status["startTime"] == "2026-11-01T12:00:00Z"  # the deadline counts from here
    assert condition(plan.status, r.SUSPENDED)["reason"] == r.RESUMED


def test_deadline(observed):
    plan = decide(
        observed,
        previous=STARTED,
        pods=gang("Running", "Running", "Running"),
        run_policy=RunPolicy(activeDeadlineSeconds=3600),
    )
    assert plan.status["phase"] == "Failed" and set(plan.delete) == set(WORKERS)
    assert (
        condition(plan.status, c.FAILED)["message"]
        == "ran longer than runPolicy.activeDeadlineSeconds (3600 s)"
    )


@pytest.mark.parametrize(("ttl", "cleanup"), [(None, False), (7200, False), (3600, True)])
def test_finished_runs_are_final_and_expire(observed, ttl, cleanup):
    done = {"phase": "Succeeded", "completionTime": "2026-11-01T11:00:00Z"}
    plan = decide(
        observed,
        previous=done,
        pods=gang("Succeeded", "Succeeded", "Succeeded"),
        run_policy=RunPolicy(ttlSecondsAfterFinished=ttl),
    )
    assert plan.cleanup == cleanup and plan.create == () and plan.delete == ()
    assert plan.status == {**done, "observedGeneration": 1}


def test_progress_goes_into_status(observed):
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
    plan = decide(
        observed, previous=STARTED, pods=gang("Running", "Running", "Running"), events=events
    )
    assert (plan.status["step"], plan.status["progress"], plan.status["loss"]) == (7, "7/20", 3.5)


def test_the_same_observation_gives_the_same_plan(observed):
    fields = dict(previous=STARTED, pods=(worker(0), worker(1, "Failed", **OOM), worker(2)))
    assert decide(observed, **fields) == decide(observed, **fields)
