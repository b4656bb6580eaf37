"""A gang placed as one: Kueue's pod-group labels when a queue is named, a PodGroup where
Volcano or the coscheduling plugin is the gang scheduler, nothing otherwise."""

import dataclasses

import pytest
import yaml

from lmforge.operator.api import parse
from lmforge.operator.render import scheduling
from lmforge.operator.render.gang import GANG

from ..conftest import PRETRAIN

DATASET_URI = "s3://bucket/team-a/dataset/corpus"
QUEUED = {"schedulingPolicy": {"queue": "team-a", "priorityClass": "high"}}


@pytest.fixture
def placed(rendering, defaults):
    """The children of the 3-worker PretrainJob `tiny` (attempt 1) as the operator creates them."""

    def make(job, **installation):
        where = dataclasses.replace(defaults, **({"gang_scheduler": "none"} | installation))
        r = rendering(job, {"spec.datasetRef": DATASET_URI}, defaults=where)
        return scheduling.together(r, GANG.children(r, 1))

    return make


def test_without_a_queue_or_gang_scheduler_pods_are_left_as_they_are(placed, resource):
    lasting, pods = placed(resource())
    assert [c["kind"] for c in lasting] == ["ConfigMap", "Service"]
    for pod in pods:
        assert not any(k.startswith("kueue.x-k8s.io/") for k in pod["metadata"]["labels"])
        assert "annotations" not in pod["metadata"] and "schedulerName" not in pod["spec"]


def test_a_queue_makes_the_gang_one_kueue_pod_group(placed, resource):
    lasting, pods = placed(resource(runPolicy=QUEUED))
    assert len(lasting) == 2 and len(pods) == 3
    for pod in pods:
        labels = pod["metadata"]["labels"]
        assert labels[scheduling.QUEUE] == "team-a"
        assert labels[scheduling.PRIORITY] == "high"
        assert labels[scheduling.POD_GROUP] == "tiny"
        assert pod["metadata"]["annotations"] == {scheduling.POD_GROUP_COUNT: "3"}
        assert labels["lmforge.dev/attempt"] == "1"  # ours are kept


def test_the_standard_kueue_labels_on_the_resource_work_too(placed):
    document = yaml.safe_load(PRETRAIN)
    document["metadata"]["labels"] = {scheduling.QUEUE: "research"}
    _, pods = placed(parse(document))
    assert {p["metadata"]["labels"][scheduling.QUEUE] for p in pods} == {"research"}
    assert not any(scheduling.PRIORITY in p["metadata"]["labels"] for p in pods)


def test_volcano_gets_a_pod_group_with_the_whole_gangs_resources(placed, resource):
    lasting, pods = placed(resource(runPolicy=QUEUED), gang_scheduler="volcano")
    group = lasting[-1]
    assert (group["apiVersion"], group["kind"]) == ("scheduling.volcano.sh/v1beta1", "PodGroup")
    assert group["metadata"]["name"] == "tiny"
    assert group["metadata"]["ownerReferences"][0]["uid"] == "uid-tiny"
    assert group["spec"] == {
        "minMember": 3,
        "minResources": {"cpu": "12", "memory": "25769803776"},  # 3 x (4 cpus, 8Gi)
        "queue": "team-a",
        "priorityClassName": "high",
    }
    for pod in pods:
        assert pod["metadata"]["annotations"] == {scheduling.VOLCANO_GROUP: "tiny"}
        assert pod["spec"]["schedulerName"] == "volcano"
        assert scheduling.QUEUE not in pod["metadata"]["labels"]


def test_coscheduling_gets_its_pod_group_and_the_installations_scheduler(placed, resource):
    job = resource(resources={"nodes": 2, "processesPerNode": 1, "cpu": "500m", "gpus": 1})
    lasting, pods = placed(job, gang_scheduler="coscheduling", scheduler_name="gang")
    group = lasting[-1]
    assert group["apiVersion"] == "scheduling.x-k8s.io/v1alpha1"
    assert group["spec"] == {
        "minMember": 2,
        "minResources": {"cpu": "1", "memory": "4294967296", "nvidia.com/gpu": "2"},
    }
    for pod in pods:
        assert pod["metadata"]["labels"][scheduling.COSCHEDULING_GROUP] == "tiny"
        assert pod["spec"]["schedulerName"] == "gang"
