"""References resolved: ready outputs, what a resource waits for, what failed."""

import pytest

from lmforge.operator.api.common import Artifact
from lmforge.operator.stages.inputs import resolve

from ..conftest import EVALUATION

DONE = {
    "status": {"phase": "Succeeded", "lineage": {"outputs": [{"uri": "s3://d", "digest": "x"}]}}
}


@pytest.mark.parametrize(
    ("found", "waiting", "failed", "outputs"),
    [
        ({}, ["spec.datasetRef: Dataset/corpus does not exist yet"], [], {}),
        (
            {("Dataset", "corpus"): {"status": {"phase": "Running"}}},
            ["spec.datasetRef: Dataset/corpus is Running"],
            [],
            {},
        ),
        ({("Dataset", "corpus"): {}}, ["spec.datasetRef: Dataset/corpus is not started"], [], {}),
        (
            {
                ("Dataset", "corpus"): {
                    "status": {
                        "phase": "Failed",
                        "conditions": [
                            {
                                "type": "Failed",
                                "status": "True",
                                "reason": "JobFailed",
                                "message": "no documents",
                            }
                        ],
                    }
                }
            },
            [],
            ["spec.datasetRef: Dataset/corpus failed: no documents"],
            {},
        ),
        (
            {("Dataset", "corpus"): {"status": {"phase": "Succeeded"}}},
            [],
            [
                "spec.datasetRef: Dataset/corpus is Succeeded but records no output in status.lineage.outputs"
            ],
            {},
        ),
        (
            {("Dataset", "corpus"): DONE},
            [],
            [],
            {"spec.datasetRef": Artifact(uri="s3://d", digest="x")},
        ),
    ],
)
def test_pretrainjob_dataset(resource, found, waiting, failed, outputs):
    deps = resolve(resource(), found)
    assert (deps.waiting, deps.failed, deps.outputs) == (waiting, failed, outputs)
    assert deps.ready == (not waiting and not failed)


def test_every_reference_of_an_evaluation(resource):
    deps = resolve(resource(EVALUATION), {("Dataset", "corpus"): DONE})
    assert deps.waiting == ["spec.modelRef: PretrainJob/tiny does not exist yet"]
    assert list(deps.outputs) == ["spec.tasks[0].datasetRef"]
