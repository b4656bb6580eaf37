"""A Dataset as pods: one pod (engine local), or a Ray head and workers (engine ray): pods of
its own, or a KubeRay RayCluster that the job's pod joins."""

import subprocess

import pytest

from lmforge.operator.render import dataset as dataset_render
from lmforge.operator.render.dataset import DATASET, KUBERAY_DATASET
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


def on_kuberay(resource, rendering, **resources):
    dataset = resource(DATASET_SPEC, engine={"type": "ray"}, resources=resources or {"nodes": 3})
    return KUBERAY_DATASET.children(rendering(dataset), 1)


def test_ray_workers_on_kuberay_are_a_raycluster_the_job_pod_joins(resource, rendering, owner):
    lasting, pods = on_kuberay(resource, rendering)
    assert [o["kind"] for o in lasting] == ["ConfigMap", "RayCluster"]
    assert [p["metadata"]["name"] for p in pods] == ["corpus-data-1"]
    dataset = resource(DATASET_SPEC, engine={"type": "ray"}, resources={"nodes": 3})
    assert KUBERAY_DATASET.pod_names(owner("Dataset", "corpus"), dataset, "data", 1) == [
        "corpus-data-1"
    ]
    job = pods[0]["spec"]["containers"][0]
    head = "corpus-ray-head-svc.team-a.svc:6379"
    assert f"ray start --address={head} --num-cpus=0" in job["command"][2]
    assert "--head" not in job["command"][2]
    assert {"name": "RAY_ADDRESS", "value": head} in job["env"]
    cluster = lasting[1]
    assert cluster["apiVersion"] == "ray.io/v1"
    assert cluster["metadata"]["name"] == "corpus-ray"
    assert cluster["metadata"]["ownerReferences"][0]["kind"] == "Dataset"
    spec = cluster["spec"]
    assert spec["headGroupSpec"]["rayStartParams"]["num-cpus"] == "0"  # the workers do the work
    (group,) = spec["workerGroupSpecs"]
    assert group["replicas"] == group["minReplicas"] == group["maxReplicas"] == 2
    for template in (spec["headGroupSpec"]["template"], group["template"]):
        (ray,) = template["spec"]["containers"]
        assert "command" not in ray  # KubeRay's ray start
        for key in ("image", "resources", "securityContext", "envFrom"):
            assert ray.get(key) == job.get(key), key
        assert template["spec"]["securityContext"] == pods[0]["spec"]["securityContext"]
        assert ray["readinessProbe"]["exec"]["command"][0] == "test"  # not KubeRay's wget
        assert "restartPolicy" not in template["spec"]
        # KubeRay's pods are not the Dataset's: its pod logic never deletes or counts them.
        assert "lmforge.dev/name" not in template["metadata"]["labels"]


def test_a_ray_head_alone_runs_in_the_job_pod_even_with_kuberay(resource, rendering):
    lasting, (head,) = on_kuberay(resource, rendering, nodes=1)
    assert [o["kind"] for o in lasting] == ["ConfigMap", "Service"]
    assert "ray start --head" in head["spec"]["containers"][0]["command"][2]


def test_a_queued_dataset_keeps_its_own_ray_pods_for_kueue_to_admit_together(resource, rendering):
    queued = {"schedulingPolicy": {"queue": "team"}}
    dataset = resource(DATASET_SPEC, engine={"type": "ray"}, runPolicy=queued)
    lasting, pods = KUBERAY_DATASET.children(rendering(dataset), 0)
    assert [o["kind"] for o in lasting] == ["ConfigMap", "Service"]
    assert len(pods) == 3


def test_raycluster_names_are_checked(resource, owner):
    dataset = resource(DATASET_SPEC, engine={"type": "ray"})
    with pytest.raises(SpecError, match="RayCluster's head Service"):
        KUBERAY_DATASET.check(owner("Dataset", "a" * 51), dataset)  # 64 characters


def fake_ray(tmp_path, succeed_after):
    """A `ray` that fails its first `succeed_after` calls, on PATH."""
    script = tmp_path / "ray"
    script.write_text(
        f"#!/bin/sh\nn=$(cat {tmp_path}/calls 2>/dev/null || echo 0); echo $((n+1)) >"
        f" {tmp_path}/calls\n[ $n -ge {succeed_after} ]\n"
    )
    script.chmod(0o755)
    return {"PATH": f"{tmp_path}:/usr/bin:/bin"}


def test_the_driver_joins_once_the_head_answers_and_gives_up_when_it_never_does(
    resource, rendering, tmp_path, monkeypatch
):
    (job,) = on_kuberay(resource, rendering)[1][0]["spec"]["containers"]
    shell = [*job["command"][:4], "echo", "driver ran"]
    joined = subprocess.run(shell, env=fake_ray(tmp_path, 1), capture_output=True, text=True,
                            timeout=30)  # fmt: skip
    assert (joined.returncode, joined.stdout) == (0, "driver ran\n")
    assert (tmp_path / "calls").read_text() == "2\n"  # one failed try, then joined

    monkeypatch.setattr(dataset_render, "JOIN_SECONDS", 0)
    (job,) = on_kuberay(resource, rendering)[1][0]["spec"]["containers"]
    (tmp_path / "calls").unlink()
    never = subprocess.run([*job["command"][:4], "echo", "driver ran"],
                           env=fake_ray(tmp_path, 99), capture_output=True, text=True,
                           timeout=30)  # fmt: skip
    assert never.returncode == 1 and never.stdout == ""
    assert "corpus-ray-head-svc.team-a.svc:6379 did not answer in 0 s" in never.stderr
    assert "kubectl describe raycluster corpus-ray" in never.stderr
