"""An Evaluation described: the job's config, its lineage, and its results and gate in status."""

import pytest

from lmforge.operator.api.common import Artifact
from lmforge.operator.api.evaluation import EvaluationStatus
from lmforge.operator.api.jobs import EvalConfig
from lmforge.operator.stages import STAGES
from lmforge.operator.stages.base import storage

from ..conftest import EVALUATION

INPUTS = {
    "spec.modelRef": Artifact(uri="s3://m", digest="sha256:m"),
    "spec.tasks[0].datasetRef": Artifact(uri="s3://d", digest="sha256:d"),
}


def test_config_and_lineage(resource, defaults):
    ev = resource(EVALUATION)
    description = STAGES["Evaluation"].describe(
        ev, INPUTS, storage(ev.spec.storage, defaults.store)
    )
    config = EvalConfig.model_validate_json(description.config_json())
    assert config.task_uris == {"ppl": "s3://d"} and config.model_uri == "s3://m"
    assert config.results_uri == "s3://bucket/evaluation/check/results.json"
    assert description.module == "lmforge.jobs.eval" and description.ranks is None
    assert description.lineage.wire() == {
        "inputs": [
            {"uri": "s3://m", "digest": "sha256:m", "kind": "PretrainJob", "name": "tiny"},
            {"uri": "s3://d", "kind": "Dataset"},
        ],
        "outputs": [{"uri": "s3://bucket/evaluation/check/results.json"}],
    }


@pytest.mark.parametrize(
    ("summary", "passed", "missed"),
    [
        ({"results": {"ppl.perplexity": 12.3456789}, "passed": True, "missed": []}, True, None),
        (
            {
                "results": {"ppl.perplexity": 80.0},
                "passed": False,
                "missed": ["ppl.perplexity = 80 is above the maximum 50"],
            },
            False,
            "ppl.perplexity = 80 is above the maximum 50",
        ),
        (None, None, None),
    ],
)
def test_finish(summary, passed, missed):
    status = EvaluationStatus()
    events = [{"event": "done", **summary}] if summary else []
    assert STAGES["Evaluation"].finish(status, events) == missed
    assert status.passed == passed
    if summary:
        assert status.summary.startswith("ppl.perplexity=")
        assert status.results == {"ppl.perplexity": round(summary["results"]["ppl.perplexity"], 6)}
    else:
        assert "results not read" in status.summary
