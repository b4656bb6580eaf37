"""An Evaluation as one pod per attempt; its results and gate in status."""

import json

import pytest

from lmforge.jobs.eval.config import EvalConfig
from lmforge.operator.api import conditions as c
from lmforge.operator.render import evaluation, jobscripts
from lmforge.operator.render.pods import storage

EVALUATION = """
apiVersion: lmforge.dev/v1alpha1
kind: Evaluation
metadata: {name: check, namespace: team-a}
spec:
  modelRef: {kind: PretrainJob, name: tiny}
  tasks: [{name: ppl, type: perplexity, datasetRef: {name: corpus}}]
  thresholds: [{metric: ppl.perplexity, max: 50}]
  storage: {uri: "s3://bucket"}
"""


def test_config_and_pod(resource, owner, defaults):
    ev = resource(EVALUATION)
    store = storage(ev.spec.storage, defaults)
    config = evaluation.evaluation_config(ev, "s3://m", {"ppl": "s3://d"}, store)
    assert EvalConfig.model_validate(config).task_uris == {"ppl": "s3://d"}
    lasting, (pod,) = evaluation.children(
        owner("Evaluation", "check"), ev, config, 2, defaults, store
    )
    assert json.loads(lasting[0]["data"]["config.json"]) == config
    assert pod["metadata"]["name"] == "check-eval-2"
    command = pod["spec"]["containers"][0]["command"]
    assert command == [
        "python",
        "-c",
        jobscripts.EVALUATION,
        "/etc/lmforge/config.json",
        "/var/run/lmforge/results.json",
        "s3://bucket/evaluation/check/results.json",
    ]


@pytest.mark.parametrize(
    ("summary", "passed", "gate"),
    [
        ({"results": {"ppl.perplexity": 12.3456789}, "passed": True, "missed": []}, True, None),
        (
            {
                "results": {"ppl.perplexity": 80.0},
                "passed": False,
                "missed": ["ppl.perplexity = 80 is above the maximum 50"],
            },
            False,
            c.GATE_FAILED,
        ),
        (None, None, None),
    ],
)
def test_finish(summary, passed, gate):
    status = {}
    failure = evaluation.finish(status, summary)
    assert status.get("passed") == passed
    assert (failure.reason if failure else None) == gate
    if summary:
        assert status["summary"].startswith("ppl.perplexity=")
    else:
        assert "results not read" in status["summary"]
    if gate:
        assert "above the maximum 50" in failure.message and not failure.retryable
