"""A Dataset as pods: one pod (engine local), or a Ray head and workers (engine ray)."""

import pytest

from lmforge.operator.render.dataset import DATASET
from lmforge.operator.stages.base import SpecError

from ..conftest import DATASET as DATASET_SPEC


def render(resource, rendering, engine="local", attempt=0):
    return DATASET.children(rendering(resource(DATASET_SPEC, engine={"type": engine})), attempt)


def test_local_engine_is_one_pod_running_the_data_job(resource, rendering):
    lasting, pods = render(resource, rendering, attempt=1)
    assert [o["kind"] for o in lasting] == ["ConfigMap"]
    assert lasting[0]["metadata"]["name"] == "corpus-data-config"
    (pod,) = pods
    assert pod["metadata"]["name"] == "corpus-data-1"
    command = pod["spec"]["containers"][0]["command"]
    assert command == ["python", "-m", "lmforge.jobs.data", "--config", "/etc/lmforge/config.json"]


def test_ray_engine_is_a_head_and_workers(resource, rendering):
    lasting, pods = render(resource, rendering, engine="ray")
    assert [o["kind"] for o in lasting] == ["ConfigMap", "Service"]
    assert [p["metadata"]["name"] for p in pods] == [
        "corpus-data-0",
        "corpus-data-0-ray-1",
        "corpus-data-0-ray-2",
    ]
    head, worker = pods[0]["spec"]["containers"][0], pods[1]["spec"]["containers"][0]
    assert head["command"][:2] == ["sh", "-c"] and "ray start --head" in head["command"][2]
    assert "--num-cpus=0" in head["command"][2]  # the workers do the work
    assert head["command"][3:] == [
        "sh",
        "python",
        "-m",
        "lmforge.jobs.data",
        "--config",
        "/etc/lmforge/config.json",
    ]
    assert {"name": "RAY_ADDRESS", "value": "127.0.0.1:6379"} in head["env"]
    assert "--address=corpus-data.team-a.svc:6379" in worker["command"][2]
    selector = lasting[1]["spec"]["selector"]
    assert selector.items() <= pods[0]["metadata"]["labels"].items()
    assert not selector.items() <= pods[1]["metadata"]["labels"].items()


def test_a_ray_head_alone_does_the_work(resource, rendering):
    dataset = resource(DATASET_SPEC, engine={"type": "ray"}, resources={"nodes": 1})
    _, (head,) = DATASET.children(rendering(dataset), 0)
    command = head["spec"]["containers"][0]["command"][2]
    assert "ray start --head" in command and "--num-cpus" not in command


def test_ray_children_names_are_checked(resource, owner):
    dataset = resource(DATASET_SPEC, engine={"type": "ray"})
    with pytest.raises(SpecError) as refused:
        DATASET.check(owner("Dataset", "a" * 60), dataset)
    assert refused.value.field == "metadata.name"
    DATASET.check(owner("Dataset", "a" * 60), resource(DATASET_SPEC))  # no Service, no hostname
