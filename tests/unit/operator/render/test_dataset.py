"""A Dataset as pods: one pod (engine local), or a Ray head and workers (engine ray)."""

import ast
import json

import pytest

from lmforge.operator.api.dataset import Dataset
from lmforge.operator.render import dataset, jobscripts
from lmforge.operator.render.pods import storage

DATASET = """
apiVersion: lmforge.dev/v1alpha1
kind: Dataset
metadata: {name: corpus, namespace: team-a}
spec:
  sources: [{uri: "s3://raw/*.jsonl", format: jsonl}]
  resources: {nodes: 3}
  storage: {uri: "s3://bucket/team-a", endpointUrl: "http://s3:9000"}
"""


def render(make, owner, defaults, engine="local", attempt=0):
    ds = make(DATASET, engine={"type": engine})
    store = storage(ds.spec.storage, defaults)
    return ds, dataset.children(owner("Dataset", "corpus"), ds, attempt, defaults, store)


def test_local_engine_is_one_pod_running_the_data_job(resource, owner, defaults):
    _, (lasting, pods) = render(resource, owner, defaults, attempt=1)
    assert [o["kind"] for o in lasting] == ["ConfigMap"]
    (pod,) = pods
    assert pod["metadata"]["name"] == "corpus-data-1"
    command = pod["spec"]["containers"][0]["command"]
    assert command[:3] == ["python", "-c", jobscripts.DATA]
    assert command[3:] == [
        "--config",
        "/etc/lmforge/config.json",
        "--output",
        "s3://bucket/team-a/dataset/corpus",
    ]


def test_config_is_the_dataset_the_job_reads(resource, owner, defaults):
    _, (lasting, _) = render(resource, owner, defaults)

    config = json.loads(lasting[0]["data"]["config.json"])
    parsed = Dataset.model_validate(config)
    assert parsed.spec.storage.endpoint_url == "http://s3:9000"
    assert parsed.metadata.name == "corpus"


def test_ray_engine_is_a_head_and_workers(resource, owner, defaults):
    _, (lasting, pods) = render(resource, owner, defaults, engine="ray")
    assert [o["kind"] for o in lasting] == ["ConfigMap", "Service"]
    assert [p["metadata"]["name"] for p in pods] == [
        "corpus-data-0",
        "corpus-data-0-ray-1",
        "corpus-data-0-ray-2",
    ]
    head, worker = pods[0]["spec"]["containers"][0], pods[1]["spec"]["containers"][0]
    assert head["command"][:2] == ["sh", "-c"] and "ray start --head" in head["command"][2]
    assert {"name": "RAY_ADDRESS", "value": "127.0.0.1:6379"} in head["env"]
    assert "--address=corpus-data.team-a.svc:6379" in worker["command"][2]
    selector = lasting[1]["spec"]["selector"]
    assert selector.items() <= pods[0]["metadata"]["labels"].items()
    assert not selector.items() <= pods[1]["metadata"]["labels"].items()


@pytest.mark.parametrize("script", [jobscripts.DATA, jobscripts.EVALUATION])
def test_job_scripts_are_python(script):
    ast.parse(script)


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
    status = {}
    dataset.finish(status, summary, "s3://o")
    assert status == expected


def test_lineage_from_summary_or_spec(resource):
    ds = resource(DATASET)
    bare = dataset.lineage(ds, {}, "s3://o", "img")
    assert bare["inputs"] == [{"uri": "s3://raw/*.jsonl"}]
    assert bare["outputs"] == [{"uri": "s3://o", "kind": "Dataset"}]
    full = dataset.lineage(
        ds,
        {
            "sources": [{"uri": "s3://raw/*.jsonl", "digest": "sha256:s"}],
            "configDigest": "sha256:c",
            "lmforgeVersion": "0.1.0",
        },
        "s3://o",
        "img",
    )
    assert full["inputs"] == [{"uri": "s3://raw/*.jsonl", "digest": "sha256:s"}]
    assert full["outputs"][0]["digest"] == "sha256:c" and full["codeVersion"] == "0.1.0"
