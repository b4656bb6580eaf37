"""The one-pod-per-attempt decision (Dataset, Evaluation): failed pods stay, the next attempt is
a new pod; helpers (Ray workers) live only while their main pod does."""

from lmforge.operator.api import conditions as c
from lmforge.operator.api import conditions as r
from lmforge.operator.api.common import RunPolicy
from lmforge.operator.render.job import decide_job
from lmforge.operator.render.observe import Failure, PodState

STARTED = {"phase": "Running", "startTime": "2026-11-01T11:00:00Z"}


def names(attempt):
    return [f"corpus-data-{attempt}", f"corpus-data-{attempt}-ray-1"]


def main(attempt=0, phase="Running", **fields):
    return PodState(f"corpus-data-{attempt}", "data", 0, attempt, phase, **fields)


def helper(attempt=0, phase="Running"):
    return PodState(f"corpus-data-{attempt}-ray-1", "ray-worker", 1, attempt, phase)


def condition(status, type_):
    return next(x for x in status["conditions"] if x["type"] == type_)


def decide(observed, finish=lambda status, events: None, **fields):
    return decide_job(observed(**fields), "data", names, finish)


def test_creates_the_first_attempt(observed):
    plan = decide(observed)
    assert (
        plan.create == ("corpus-data-0", "corpus-data-0-ray-1")
        and plan.status["phase"] == "Pending"
    )


def test_a_failure_starts_a_new_attempt_and_keeps_the_failed_pod(observed):
    pods = (main(0, "Failed", exit_code=1, reason="Error"), helper(0))
    plan = decide(observed, previous=STARTED, pods=pods)
    assert plan.attempt == 1 and plan.create == ("corpus-data-1", "corpus-data-1-ray-1")
    assert plan.delete == ("corpus-data-0-ray-1",)
    assert condition(plan.status, c.RUNNING)["reason"] == r.RESTARTING


def test_the_attempt_is_the_newest_pod(observed):
    pods = (main(0, "Failed", exit_code=1), main(1, "Running"), helper(1))
    plan = decide(observed, previous=STARTED, pods=pods)
    assert plan.status["phase"] == "Running" and plan.create == () and plan.delete == ()


def test_backoff_limit(observed):
    pods = (main(0, "Failed", exit_code=1), main(1, "Failed", exit_code=1))
    plan = decide(observed, previous=STARTED, pods=pods, run_policy=RunPolicy(backoffLimit=1))
    assert plan.status["phase"] == "Failed" and plan.create == ()
    assert condition(plan.status, c.FAILED)["reason"] == r.BACKOFF_LIMIT_EXCEEDED


def test_success_records_results_and_frees_the_helpers(observed):
    seen = []

    def finish(status, events):
        seen.append(events)
        status["tokens"] = 42

    events = ({"event": "done", "tokens": 42},)
    plan = decide(
        observed, finish, previous=STARTED, pods=(main(0, "Succeeded"), helper(0)), events=events
    )
    assert plan.status["phase"] == "Succeeded" and plan.status["tokens"] == 42
    assert seen == [list(events)] and plan.delete == ("corpus-data-0-ray-1",)


def test_a_gate_fails_a_succeeded_pod(observed):
    def finish(status, events):
        return Failure(c.GATE_FAILED, "ppl.perplexity = 80 is above the maximum 50", False)

    plan = decide(observed, finish, previous=STARTED, pods=(main(0, "Succeeded"),))
    assert plan.status["phase"] == "Failed"
    assert (
        condition(plan.status, c.FAILED)["message"] == "ppl.perplexity = 80 is above the maximum 50"
    )


def test_a_lost_main_pod_is_a_failure(observed):
    plan = decide(observed, previous=STARTED, pods=(helper(0),))
    assert (
        plan.attempt == 1
        and "corpus-data-0 disappeared" in condition(plan.status, c.RUNNING)["message"]
    )


def test_resume_recreates_the_same_attempt(observed):
    plan = decide(observed, previous={"phase": "Suspended"}, pods=(main(0, "Failed", exit_code=1),))
    # the newest attempt failed before the suspension: resuming retries it as attempt 1
    assert plan.attempt == 1
    plan = decide(observed, previous={"phase": "Suspended"}, pods=())
    assert plan.attempt == 0 and plan.create == ("corpus-data-0", "corpus-data-0-ray-1")
