"""The one-pod-per-attempt decision (Dataset, Evaluation): failed pods stay, the next attempt is
a new pod; helpers (Ray workers) live only while their main pod does."""

import dataclasses

import pytest

from lmforge.operator.api import conditions
from lmforge.operator.api.common import RunPolicy
from lmforge.operator.api.dataset import DatasetStatus
from lmforge.operator.render.dataset import DATASET
from lmforge.operator.render.job import JOB
from lmforge.operator.render.observe import PodState
from lmforge.operator.stages.dataset import DatasetStage

from ..conftest import EVALUATION

RAY = """
apiVersion: lmforge.dev/v1alpha1
kind: Dataset
metadata: {name: corpus, namespace: team-a}
spec:
  sources: [{uri: "s3://raw/*.txt"}]
  resources: {nodes: 2}
  engine: {type: ray}
  storage: {uri: "s3://bucket"}
"""

STARTED = {"phase": "Running", "startTime": "2026-11-01T11:00:00Z"}


def main(attempt=0, phase="Running", **fields):
    return PodState(f"corpus-data-{attempt}", "data", 0, attempt, phase, **fields)


def helper(attempt=0, phase="Running"):
    return PodState(f"corpus-data-{attempt}-ray-1", "ray-worker", 1, attempt, phase)


def condition(status, type_):
    return next(x for x in status["conditions"] if x["type"] == type_)


class Stage(DatasetStage):
    """The Dataset's stage with another finish, to see what the decision does with it."""

    def __init__(self, finish):
        self.finish = finish


@pytest.fixture
def decide(observed, resource, owner):
    """One pass over a Ray Dataset of a head and one worker; its status as the API's dict."""

    def run(finish=lambda status, events: None, **fields):
        o = observed(status=DatasetStatus, **fields)
        decision = DATASET.decide(o, owner("Dataset", "corpus"), resource(RAY), Stage(finish))
        return dataclasses.replace(decision, status=decision.status.wire())

    return run


def test_creates_the_first_attempt(decide):
    plan = decide()
    assert (
        plan.create == ("corpus-data-0", "corpus-data-0-ray-1")
        and plan.status["phase"] == "Pending"
    )


def test_a_failure_starts_a_new_attempt_and_keeps_the_failed_pod(decide):
    pods = (main(0, "Failed", exit_code=1, reason="Error"), helper(0))
    plan = decide(previous=STARTED, pods=pods)
    assert plan.attempt == 1 and plan.create == ("corpus-data-1", "corpus-data-1-ray-1")
    assert plan.delete == ("corpus-data-0-ray-1",)
    assert condition(plan.status, conditions.RUNNING)["reason"] == conditions.RESTARTING


def test_the_attempt_is_the_newest_pod(decide):
    pods = (main(0, "Failed", exit_code=1), main(1, "Running"), helper(1))
    plan = decide(previous=STARTED, pods=pods)
    assert plan.status["phase"] == "Running" and plan.create == () and plan.delete == ()


def test_backoff_limit(decide):
    pods = (main(0, "Failed", exit_code=1), main(1, "Failed", exit_code=1))
    previous = {**STARTED, "restarts": 1, "failures": 1}
    plan = decide(previous=previous, pods=pods, run_policy=RunPolicy(backoffLimit=1))
    assert plan.status["phase"] == "Failed" and plan.create == ()
    assert condition(plan.status, conditions.FAILED)["reason"] == conditions.BACKOFF_LIMIT_EXCEEDED


def test_a_restart_recorded_before_its_pod_exists_is_not_counted_again(decide):
    previous = {**STARTED, "phase": "Pending", "restarts": 1, "failures": 1}
    plan = decide(previous=previous, pods=(main(0, "Failed", exit_code=1),))
    assert plan.attempt == 1 and plan.create == ("corpus-data-1", "corpus-data-1-ray-1")
    assert plan.status["failures"] == 1 and plan.status["restarts"] == 1


def test_success_records_results_and_frees_the_helpers(decide):
    seen = []

    def finish(status, events):
        seen.append(events)
        status.tokens = 42

    events = ({"event": "done", "tokens": 42},)
    plan = decide(finish, previous=STARTED, pods=(main(0, "Succeeded"), helper(0)), events=events)
    assert plan.status["phase"] == "Succeeded" and plan.status["tokens"] == 42
    assert seen == [list(events)] and plan.delete == ("corpus-data-0-ray-1",)


def test_a_gate_fails_a_succeeded_pod(decide):
    def finish(status, events):
        return "ppl.perplexity = 80 is above the maximum 50"

    plan = decide(finish, previous=STARTED, pods=(main(0, "Succeeded"),))
    assert plan.status["phase"] == "Failed"
    assert condition(plan.status, conditions.FAILED)["reason"] == conditions.GATE_FAILED
    assert (
        condition(plan.status, conditions.FAILED)["message"]
        == "ppl.perplexity = 80 is above the maximum 50"
    )


def test_a_lost_main_pod_is_a_failure(decide):
    plan = decide(previous=STARTED, pods=(helper(0),))
    assert (
        plan.attempt == 1
        and "corpus-data-0 disappeared" in condition(plan.status, conditions.RUNNING)["message"]
    )


def test_resume_recreates_the_same_attempt(decide):
    plan = decide(previous={"phase": "Suspended"}, pods=(main(0, "Failed", exit_code=1),))
    # the newest attempt failed before the suspension: resuming retries it as attempt 1
    assert plan.attempt == 1
    plan = decide(previous={"phase": "Suspended"}, pods=())
    assert plan.attempt == 0 and plan.create == ("corpus-data-0", "corpus-data-0-ray-1")


def test_one_pod_runs_the_job(rendering, resource):
    ev = resource(EVALUATION)
    r = rendering(ev, INPUTS)
    lasting, (pod,) = JOB.children(r, 2)
    assert [o["metadata"]["name"] for o in lasting] == ["check-eval-config"]
    assert lasting[0]["data"]["config.json"] == r.description.config_json()
    assert pod["metadata"]["name"] == "check-eval-2"
    command = pod["spec"]["containers"][0]["command"]
    assert command == ["python", "-m", "lmforge.jobs.eval", "--config", "/etc/lmforge/config.json"]
    assert pod["spec"]["containers"][0]["name"] == "eval"


INPUTS = {"spec.modelRef": "s3://m", "spec.tasks[0].datasetRef": "s3://d"}
