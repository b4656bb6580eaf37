"""The status patch, the events a status change deserves, expiry and deadlines."""

import datetime

import pytest

from lmforge.operator.api.common import RunPolicy, TrainingStatus
from lmforge.operator.render.status import (
    Event,
    deadline_exceeded,
    status_patch,
    transition_events,
    ttl_expired,
)

T0 = datetime.datetime(2026, 11, 1, 12, 0, 0, tzinfo=datetime.UTC)
T1 = T0 + datetime.timedelta(minutes=5)


@pytest.mark.parametrize(
    ("old", "new", "patch"),
    [
        ({"phase": "Running"}, {"phase": "Running"}, None),
        ({}, {"phase": "Pending"}, {"phase": "Pending"}),
        ({"phase": "Running", "loss": 1.0}, {"phase": "Running"}, {"loss": None}),
        (
            {"lineage": {"image": "a", "parentCheckpoint": "x"}},
            {"lineage": {"image": "a", "parentCheckpoint": "y"}},
            {"lineage": {"parentCheckpoint": "y"}},
        ),
        (
            {"conditions": [{"type": "A"}]},
            {"conditions": [{"type": "A"}, {"type": "B"}]},
            {"conditions": [{"type": "A"}, {"type": "B"}]},
        ),
    ],
)
def test_status_patch(old, new, patch):
    assert status_patch(old, new) == patch


def cond(type_, status, reason, message=""):
    return {"type": type_, "status": status, "reason": reason, "message": message}


@pytest.mark.parametrize(
    ("old", "new", "events"),
    [
        ({"phase": "Running"}, {"phase": "Running"}, []),
        (
            {"phase": "Pending"},
            {
                "phase": "Running",
                "conditions": [cond("Running", "True", "Started", "2 workers running")],
            },
            [Event("Normal", "Running", "2 workers running")],
        ),
        (
            {"phase": "Running"},
            {"phase": "Failed", "conditions": [cond("Failed", "True", "OOMKilled", "w1 ran out")]},
            [Event("Warning", "OOMKilled", "w1 ran out")],
        ),
        (
            {"phase": "Running", "restarts": 0},
            {
                "phase": "Pending",
                "restarts": 1,
                "conditions": [cond("Running", "False", "Restarting", "w1 lost: restarting")],
            },
            [Event("Warning", "Restarting", "w1 lost: restarting")],
        ),
        (
            {"phase": "Running"},
            {"phase": "Running", "lastCheckpoint": {"step": 5, "uri": "s3://c/step-5"}},
            [Event("Normal", "Checkpoint", "step 5 saved to s3://c/step-5")],
        ),
        (
            {"phase": None},
            {
                "phase": "Waiting",
                "conditions": [cond("Waiting", "True", "DependencyNotReady", "spec.datasetRef: x")],
            },
            [Event("Normal", "Waiting", "spec.datasetRef: x")],
        ),
    ],
)
def test_transition_events(old, new, events):
    read = TrainingStatus.model_validate
    assert transition_events(read(old), read(new)) == events


@pytest.mark.parametrize(
    ("policy", "status", "now", "expired", "exceeded"),
    [
        (
            RunPolicy(),
            {"startTime": "2026-11-01T12:00:00Z", "completionTime": "2026-11-01T12:00:00Z"},
            T1,
            False,
            False,
        ),
        (
            RunPolicy(ttlSecondsAfterFinished=300, activeDeadlineSeconds=300),
            {"startTime": "2026-11-01T12:00:00Z", "completionTime": "2026-11-01T12:00:00Z"},
            T1,
            True,
            True,
        ),
        (
            RunPolicy(ttlSecondsAfterFinished=301, activeDeadlineSeconds=301),
            {"startTime": "2026-11-01T12:00:00Z", "completionTime": "2026-11-01T12:00:00Z"},
            T1,
            False,
            False,
        ),
        (RunPolicy(ttlSecondsAfterFinished=0, activeDeadlineSeconds=1), {}, T1, False, False),
    ],
)
def test_ttl_and_deadline(policy, status, now, expired, exceeded):
    status = TrainingStatus.model_validate(status)
    assert ttl_expired(status, policy, now) == expired
    assert deadline_exceeded(status, policy, now) == exceeded
