"""The trainer's JSON lines into status, the same fields the local runner sets."""

import json

from lmforge.operator.render.progress import apply_training_events, latest, parse_events

LOG = "\n".join(
    [
        "INFO starting",
        json.dumps({"event": "start", "time": 1.0, "step": 0, "totalSteps": 20}),
        "[rank0]: "
        + json.dumps(
            {
                "event": "step",
                "time": 2.0,
                "step": 5,
                "totalSteps": 20,
                "loss": 7.5,
                "tokens": 20480,
                "tokensPerSecond": 1000.0,
            }
        ),
        '{"event": "step", "step": 6',  # cut by the log tail
        json.dumps(
            {"event": "checkpoint", "time": 1793534400.0, "step": 5, "uri": "s3://c/step-5"}
        ),
        json.dumps({"event": "done", "step": 20, "output": "s3://m"}),
    ]
)


def test_parse_skips_what_is_not_an_event():
    events = parse_events(LOG)
    assert [e["event"] for e in events] == ["start", "step", "checkpoint", "done"]
    assert latest(events, "done")["output"] == "s3://m"
    assert latest(events, "validation") is None


def test_apply_training_events():
    status = apply_training_events({"restarts": 1}, parse_events(LOG))
    assert status == {
        "restarts": 1,
        "step": 5,
        "totalSteps": 20,
        "progress": "5/20",
        "loss": 7.5,
        "tokens": 20480,
        "tokensPerSecond": 1000.0,
        "lastCheckpoint": {"step": 5, "uri": "s3://c/step-5", "time": "2026-11-01T12:00:00Z"},
        "lineage": {"parentCheckpoint": "s3://c/step-5"},
    }


def test_resume_moves_the_step_back():
    before = {"step": 9, "totalSteps": 20, "progress": "9/20"}
    after = apply_training_events(before, [{"event": "resume", "step": 5, "uri": "s3://c/step-5"}])
    assert (after["step"], after["progress"]) == (5, "5/20")
    assert before["step"] == 9
