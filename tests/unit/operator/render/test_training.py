"""The training gang: worker pods, rendezvous Service and config, from a PretrainJob."""

import json

import pytest

from lmforge.jobs.train.config import TrainConfig
from lmforge.operator.render import names, training
from lmforge.operator.render.names import RenderError
from lmforge.operator.render.pods import Defaults, storage


def render(job, owner, defaults, attempt=0, traceparent=None):
    store = storage(job.spec.storage, defaults)
    config = training.pretrain_config(job, "s3://bucket/team-a/dataset/corpus", store)
    return training.gang(owner(), job.spec, config, attempt, defaults, store, traceparent)


def command_of(pod):
    return pod["spec"]["containers"][0]["command"]


def test_config_is_what_the_trainer_reads(resource, defaults):
    job = resource()
    config = training.pretrain_config(job, "s3://d/corpus", storage(job.spec.storage, defaults))
    parsed = TrainConfig.model_validate(config)
    assert parsed.checkpoint_uri == "s3://bucket/team-a/pretrainjob/tiny/checkpoints"
    assert parsed.output_uri == "s3://bucket/team-a/pretrainjob/tiny/model"
    assert (parsed.nodes, parsed.processes_per_node) == (3, 2)
    assert parsed.endpoint_url == "http://s3:9000"


def test_config_map_holds_the_config_as_json(resource, owner, defaults):
    gang = render(resource(), owner, defaults)
    assert gang.config_map["metadata"]["name"] == "tiny-config"
    config = json.loads(gang.config_map["data"]["config.json"])
    assert config["datasetUri"] == "s3://bucket/team-a/dataset/corpus"


@pytest.mark.parametrize("nodes", [1, 3])
def test_one_pod_per_node_with_deterministic_names(resource, owner, defaults, nodes):
    gang = render(resource(resources={"nodes": nodes}), owner, defaults, attempt=2)
    assert [p["metadata"]["name"] for p in gang.pods] == [f"tiny-worker-{i}" for i in range(nodes)]
    for index, pod in enumerate(gang.pods):
        labels = pod["metadata"]["labels"]
        assert labels[names.INDEX] == str(index) and labels[names.ATTEMPT] == "2"
        assert labels[names.ROLE] == "worker" and labels[names.KIND] == "PretrainJob"
        assert pod["spec"]["hostname"] == f"tiny-worker-{index}"
        assert pod["spec"]["subdomain"] == "tiny-workers"
        assert pod["spec"]["restartPolicy"] == "Never"


@pytest.mark.parametrize("index", [0, 2])
def test_torchrun_rendezvous_at_worker_zero(resource, owner, defaults, index):
    command = command_of(render(resource(), owner, defaults).pods[index])
    assert command[:3] == ["python", "-m", "torch.distributed.run"]
    assert "--nnodes=3" in command and "--nproc-per-node=2" in command
    assert f"--node-rank={index}" in command
    assert "--master-addr=tiny-worker-0.tiny-workers.team-a.svc" in command
    assert "--master-port=29500" in command and "--max-restarts=0" in command
    assert command[-4:] == ["-m", "lmforge.jobs.train", "--config", "/etc/lmforge/config.json"]


@pytest.mark.parametrize(
    ("overlay", "grace", "timeout"),
    [(None, 300, 285), ({"spec": {"terminationGracePeriodSeconds": 900}}, 900, 885)],
)
def test_grace_period_leaves_time_for_a_checkpoint(
    resource, owner, defaults, overlay, grace, timeout
):
    job = resource(resources={"nodes": 1, "podTemplate": overlay} if overlay else {"nodes": 1})
    pod = render(job, owner, defaults).pods[0]
    assert pod["spec"]["terminationGracePeriodSeconds"] == grace
    assert f"--shutdown-timeout={timeout}" in command_of(pod)


def test_headless_service_selects_the_workers(resource, owner, defaults):
    gang = render(resource(), owner, defaults)
    spec = gang.service["spec"]
    assert gang.service["metadata"]["name"] == "tiny-workers"
    assert spec["clusterIP"] == "None" and spec["publishNotReadyAddresses"] is True
    assert spec["ports"][0]["port"] == 29500
    for pod in gang.pods:
        assert spec["selector"].items() <= pod["metadata"]["labels"].items()


def test_every_child_is_controlled_by_the_resource(resource, owner, defaults):
    gang = render(resource(), owner, defaults)
    for child in [gang.config_map, gang.service, *gang.pods]:
        (ref,) = child["metadata"]["ownerReferences"]
        assert ref["uid"] == "uid-tiny" and ref["controller"] is True
        assert child["metadata"]["namespace"] == "team-a"


@pytest.mark.parametrize(
    ("gpus", "expected"),
    [
        (0, {"cpu": "4", "memory": "8Gi"}),
        (2, {"cpu": "4", "memory": "8Gi", "nvidia.com/gpu": "2"}),
    ],
)
def test_resources_are_requests_and_limits(resource, owner, defaults, gpus, expected):
    job = resource(
        resources={"nodes": 1, "processesPerNode": 1, "gpus": gpus, "cpu": "4", "memory": "8Gi"}
    )
    pod = render(job, owner, defaults).pods[0]
    container = pod["spec"]["containers"][0]
    assert container["resources"] == {"requests": expected, "limits": expected}
    shm = [v for v in pod["spec"]["volumes"] if v["name"] == "dshm"]
    assert bool(shm) == bool(gpus)


def test_credentials_only_by_secret_reference(resource, owner, defaults):
    gang = render(resource(), owner, defaults)
    container = gang.pods[0]["spec"]["containers"][0]
    assert container["envFrom"] == [{"secretRef": {"name": "s3-credentials"}}]
    assert not any("AWS" in e["name"] for e in container["env"])


def test_no_secret_no_env_from(resource, owner):
    job = resource(storage={"uri": "file:///shared"})
    gang = render(job, owner, Defaults())
    assert "envFrom" not in gang.pods[0]["spec"]["containers"][0]


@pytest.mark.parametrize(
    "traceparent", [None, "00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01"]
)
def test_traceparent_passed_when_given(resource, owner, defaults, traceparent):
    env = render(resource(), owner, defaults, traceparent=traceparent).pods[0]["spec"][
        "containers"
    ][0]["env"]
    values = {e["name"]: e["value"] for e in env}
    assert values.get("TRACEPARENT") == traceparent


def test_placement_and_image(resource, owner, defaults):
    job = resource(
        resources={
            "nodes": 1,
            "image": "my/trainer:1",
            "nodeSelector": {"pool": "gpu"},
            "tolerations": [
                {"key": "nvidia.com/gpu", "operator": "Exists", "effect": "NoSchedule"}
            ],
        }
    )
    spec = render(job, owner, defaults).pods[0]["spec"]
    assert spec["nodeSelector"] == {"pool": "gpu"}
    assert spec["tolerations"] == [
        {"key": "nvidia.com/gpu", "operator": "Exists", "effect": "NoSchedule"}
    ]
    assert spec["containers"][0]["image"] == "my/trainer:1"


def test_default_image(resource, owner, defaults):
    spec = render(resource(), owner, defaults).pods[0]["spec"]
    assert spec["containers"][0]["image"] == "registry.local/lmforge-trainer:test"


@pytest.mark.parametrize(
    ("name", "nodes", "ok"),
    [
        ("a" * 54, 1, True),
        ("a" * 55, 1, False),
        ("a" * 53, 11, True),
        ("a" * 54, 11, False),
        ("9lives", 1, False),
    ],
)
def test_names_that_cannot_be_hostnames_are_refused(name, nodes, ok):
    if ok:
        training.check_names(name, nodes)
        return
    with pytest.raises(RenderError) as error:
        training.check_names(name, nodes)
    assert error.value.field == "metadata.name"


def test_storage_unset_everywhere_names_the_field(resource):
    job = resource(storage={})
    with pytest.raises(RenderError, match=r"^spec\.storage\.uri: is unset"):
        storage(job.spec.storage, Defaults())


def test_storage_falls_back_on_the_installation(resource):
    job = resource(storage={})
    found = storage(job.spec.storage, Defaults(storage_uri="s3://d", storage_secret="creds"))
    assert found == ("s3://d", "creds", None)


def test_lineage_names_dataset_and_model(resource, defaults):
    job = resource()
    config = training.pretrain_config(job, "s3://d/corpus", storage(job.spec.storage, defaults))
    lineage = training.pretrain_lineage(config, "corpus", "sha256:abc", "img")
    assert lineage["inputs"] == [
        {"uri": "s3://d/corpus", "kind": "Dataset", "name": "corpus", "digest": "sha256:abc"}
    ]
    assert lineage["outputs"] == [{"uri": config["outputUri"], "kind": "Model"}]
