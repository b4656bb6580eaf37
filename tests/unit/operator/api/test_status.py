"""Status as both backends write it: conditions, transitions, what goes on the wire, and the
check on every assignment."""

import datetime

import pytest
from pydantic import ValidationError

from lmforge.operator.api.common import TrainingStatus
from lmforge.operator.api.deployment import DeploymentStatus

T0 = datetime.datetime(2026, 11, 1, 12, 0, 0, tzinfo=datetime.UTC)
T1 = T0 + datetime.timedelta(minutes=5)


def test_transition_time_moves_only_when_the_status_flips():
    status = TrainingStatus(observed_generation=3)
    status.set_condition("Running", True, "Started", "a", T0)
    status.set_condition("Running", True, "Started", "b", T1)
    (running,) = status.wire()["conditions"]
    assert running == {
        "type": "Running",
        "status": "True",
        "reason": "Started",
        "message": "b",
        "lastTransitionTime": "2026-11-01T12:00:00Z",
        "observedGeneration": 3,
    }
    status.set_condition("Running", False, "Completed", "", T1)
    assert status.wire()["conditions"][0]["lastTransitionTime"] == "2026-11-01T12:05:00Z"


def test_a_condition_keeps_its_place():
    status = TrainingStatus()
    for type_ in ("Waiting", "Running", "Failed"):
        status.set_condition(type_, True, "R", "", T0)
    status.set_condition("Running", False, "R", "", T1)
    assert [c.type for c in status.conditions] == ["Waiting", "Running", "Failed"]


def test_fail_and_succeed_keep_the_first_completion_time():
    status = TrainingStatus()
    status.fail("OOMKilled", "w1 ran out", T0)
    status.fail("OOMKilled", "w1 ran out", T1)
    wire = status.wire()
    assert wire["phase"] == "Failed" and wire["completionTime"] == "2026-11-01T12:00:00Z"
    assert [(c["type"], c["status"]) for c in wire["conditions"]] == [
        ("Running", "False"),
        ("Failed", "True"),
    ]
    done = TrainingStatus()
    done.succeed("all 2 workers finished", T1)
    assert done.is_true("Succeeded") and not done.is_true("Running")


def test_the_wire_leaves_out_what_is_still_at_its_default():
    status = TrainingStatus(phase="Running")
    assert status.wire() == {"phase": "Running"}  # no restarts: 0, no conditions: []
    status.restarts = 1
    assert status.wire() == {"phase": "Running", "restarts": 1}


def test_assignments_are_checked():
    with pytest.raises(ValidationError):
        DeploymentStatus().phase = "Succeeded"  # a server is Available, never Succeeded
    with pytest.raises(ValidationError):
        TrainingStatus().step = "five"
