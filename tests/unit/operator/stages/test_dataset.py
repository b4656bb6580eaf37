"""A Dataset described: the data job's config, its lineage, and its `done` event into status."""

import pytest

from lmforge.operator.api.common import Lineage
from lmforge.operator.api.dataset import DatasetStatus
from lmforge.operator.api.jobs import DataConfig
from lmforge.operator.stages import STAGES
from lmforge.operator.stages.base import storage

from ..conftest import DATASET


def describe(dataset, defaults):
    return STAGES["Dataset"].describe(dataset, {}, storage(dataset.spec.storage, defaults.store))


def test_config_is_what_the_job_reads(resource, defaults):
    description = describe(resource(DATASET), defaults)
    parsed = DataConfig.model_validate_json(description.config_json())
    assert parsed.spec.storage.endpoint_url == "http://s3:9000"
    assert parsed.name == "corpus" and parsed.output_uri == "s3://bucket/team-a/dataset/corpus"
    assert description.module == "lmforge.jobs.data" and description.ranks is None


def test_lineage_before_the_job_has_run(resource, defaults):
    lineage = describe(resource(DATASET), defaults).lineage.wire()
    assert lineage["inputs"] == [{"uri": "s3://raw/*.jsonl"}]
    assert lineage["outputs"] == [{"uri": "s3://bucket/team-a/dataset/corpus", "kind": "Dataset"}]


@pytest.mark.parametrize(
    ("summary", "expected"),
    [
        (None, {"manifestUri": "s3://o/manifest.json"}),
        (
            {"documentsOut": 5, "tokens": 900, "shards": 2, "tokenizerDigest": "sha256:t"},
            {
                "manifestUri": "s3://o/manifest.json",
                "documentsOut": 5,
                "tokens": 900,
                "shards": 2,
                "tokenizerDigest": "sha256:t",
            },
        ),
    ],
)
def test_finish_records_the_figures_it_has(summary, expected):
    status = DatasetStatus(lineage=Lineage(outputs=[{"uri": "s3://o", "kind": "Dataset"}]))
    events = [{"event": "done", **summary}] if summary else []
    assert STAGES["Dataset"].finish(status, events) is None
    assert {k: v for k, v in status.wire().items() if k != "lineage"} == expected


def test_finish_records_the_digests_of_what_was_read():
    status = DatasetStatus(
        lineage=Lineage(
            inputs=[{"uri": "s3://raw/*.jsonl"}],
            outputs=[{"uri": "s3://o", "kind": "Dataset"}],
            image="img",
        )
    )
    done = {
        "event": "done",
        "sources": [{"uri": "s3://raw/*.jsonl", "digest": "sha256:s"}],
        "configDigest": "sha256:c",
        "lmforgeVersion": "0.1.0",
    }
    STAGES["Dataset"].finish(status, [done])
    lineage = status.lineage.wire()
    assert lineage["inputs"] == [{"uri": "s3://raw/*.jsonl", "digest": "sha256:s"}]
    assert lineage["outputs"][0]["digest"] == "sha256:c" and lineage["codeVersion"] == "0.1.0"
    assert lineage["image"] == "img"
