"""PretrainJob, FineTune and RewardModel described: the trainer's config from the spec and its
references, the lineage, and the trainer's events into status."""

import json

import pytest

from lmforge.operator.api.common import Artifact, TrainingStatus
from lmforge.operator.api.events import latest, parse
from lmforge.operator.api.finetune import FineTuneStatus
from lmforge.operator.api.jobs import PretrainConfig, read_train_config
from lmforge.operator.stages import STAGES
from lmforge.operator.stages.base import SpecError, Store, storage

DATASET = Artifact(uri="s3://d/corpus", digest="sha256:abc")

FINETUNE = """
apiVersion: lmforge.dev/v1alpha1
kind: FineTune
metadata: {name: chat, namespace: team-a}
spec:
  baseModel: {pretrainJobRef: {name: tiny}}
  method: sft
  data: {uri: "s3://rows/sft.jsonl", validationFraction: 0.2}
  preferences: {uri: "s3://rows/prefs.jsonl"}
  training: {steps: 5}
  storage: {uri: "s3://bucket"}
"""

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


def describe(job, inputs, defaults):
    return STAGES[job.kind].describe(job, inputs, storage(job.spec.storage, defaults.store))


def test_config_is_what_the_trainer_reads(resource, defaults):
    description = describe(resource(), {"spec.datasetRef": DATASET}, defaults)
    parsed = read_train_config(description.config_json())
    assert isinstance(parsed, PretrainConfig)
    assert parsed.checkpoint_uri == "s3://bucket/team-a/pretrainjob/tiny/checkpoints"
    assert parsed.output_uri == "s3://bucket/team-a/pretrainjob/tiny/model"
    assert (parsed.nodes, parsed.processes_per_node) == (3, 2)
    assert parsed.endpoint_url == "http://s3:9000"
    assert parsed.dataset_uri == "s3://d/corpus"
    assert description.module == "lmforge.jobs.train" and description.ranks == (3, 2)


def test_lineage_names_dataset_and_model(resource, defaults):
    lineage = describe(resource(), {"spec.datasetRef": DATASET}, defaults).lineage.wire()
    assert lineage["inputs"] == [
        {"uri": "s3://d/corpus", "kind": "Dataset", "name": "corpus", "digest": "sha256:abc"}
    ]
    assert lineage["outputs"] == [
        {"uri": "s3://bucket/team-a/pretrainjob/tiny/model", "kind": "Model"}
    ]


@pytest.mark.parametrize(
    ("method", "extra", "reads"),
    [
        ("sft", {}, {"examplesUri": "s3://rows/sft.jsonl", "validationFraction": 0.2}),
        (
            "dpo",
            {"dpo": {"beta": 0.5}},
            {"preferencesUri": "s3://rows/prefs.jsonl", "beta": 0.5, "validationFraction": 0.1},
        ),
    ],
)
def test_finetune_reads_what_its_method_needs(resource, defaults, method, extra, reads):
    job = resource(FINETUNE, method=method, **extra)
    base = Artifact(uri="s3://bucket/pretrainjob/tiny/model", digest="sha256:m")
    description = describe(job, {"spec.baseModel.pretrainJobRef": base}, defaults)
    config = json.loads(description.config_json())
    assert config["method"] == method and config["baseModelUri"] == base.uri
    assert reads.items() <= config.items()
    used = "spec.data" if method == "sft" else "spec.preferences"
    other = "preferencesUri" if method == "sft" else "examplesUri"
    assert other not in config  # only what its method reads
    inputs = [i.wire() for i in description.lineage.inputs]
    assert inputs[0] == {
        "uri": base.uri,
        "digest": "sha256:m",
        "kind": "PretrainJob",
        "name": "tiny",
    }
    assert inputs[1:] == [
        {"uri": job.spec.data.uri if used == "spec.data" else job.spec.preferences.uri}
    ]


def test_storage_unset_everywhere_names_the_field(resource):
    job = resource(storage={})
    with pytest.raises(SpecError, match=r"^spec\.storage\.uri: is unset"):
        storage(job.spec.storage, Store(""))


def test_storage_falls_back_on_the_backend(resource):
    job = resource(storage={})
    assert storage(job.spec.storage, Store("s3://d", "creds")) == ("s3://d", "creds", None)


def test_parse_skips_what_is_not_an_event():
    events = parse(LOG)
    assert [e["event"] for e in events] == ["start", "step", "checkpoint", "done"]
    assert latest(events, "done")["output"] == "s3://m"
    assert latest(events, "validation") is None


def test_events_into_status():
    status = TrainingStatus(restarts=1)
    STAGES["PretrainJob"].progress(status, parse(LOG))
    assert status.wire() == {
        "restarts": 1,
        "step": 5,
        "totalSteps": 20,
        "progress": "5/20",
        "percentComplete": 25,
        "loss": 7.5,
        "tokens": 20480,
        "tokensPerSecond": 1000.0,
        "lastCheckpoint": {"step": 5, "uri": "s3://c/step-5", "time": "2026-11-01T12:00:00Z"},
        "lineage": {"inputs": [], "outputs": [], "parentCheckpoint": "s3://c/step-5"},
    }


def test_the_eta_comes_from_this_attempts_step_rate():
    def step(n, time):
        return {"event": "step", "step": n, "totalSteps": 20, "time": time}

    first = [{"event": "start", "step": 0, "totalSteps": 20, "time": 0}, step(1, 10), step(2, 20)]
    # resumed at step 2 after a long restart: the rate is the new attempt's, 1 step per 5 s
    events = [*first, {"event": "resume", "step": 2, "time": 900}, step(3, 950), step(4, 955)]
    status = TrainingStatus()
    STAGES["PretrainJob"].progress(status, events)
    assert (status.percent_complete, status.eta_seconds, status.eta) == (20, 80, "1m20s")
    STAGES["PretrainJob"].progress(status, [step(20, 1000)])
    assert (status.percent_complete, status.eta_seconds, status.eta) == (100, 0, "0s")
    slow = [step(0, 0), step(1, 3725)]
    STAGES["PretrainJob"].progress(status, slow)
    assert (status.percent_complete, status.eta) == (5, "19h39m")


def test_resume_moves_the_step_back():
    status = TrainingStatus(step=9, total_steps=20, progress="9/20")
    STAGES["PretrainJob"].progress(status, [{"event": "resume", "step": 5, "uri": "s3://c/step-5"}])
    assert (status.step, status.progress) == (5, "5/20")


def test_dpo_validation_reports_the_margin_over_the_reference():
    status = FineTuneStatus()
    event = {
        "event": "validation",
        "loss": 0.6,
        "accuracy": 0.75,
        "margin": 3.0,
        "referenceMargin": 1.0,
    }
    STAGES["FineTune"].progress(status, [event])
    assert (status.validation_loss, status.accuracy, status.margin) == (0.6, 0.75, 2.0)
