"""A Dataset as pods: the job's one pod (engine local), or, for engine ray, a Ray head that runs
the job plus spec.resources.nodes - 1 Ray workers that join it; with workers, the head offers no
CPUs to Ray (as KubeRay's examples set it), so the work runs on them and the head stays free for
the driver and Ray's control plane.

Where KubeRay is installed (Defaults.ray_clusters), the head and the workers are a RayCluster
instead: KubeRay makes their pods, replaces a dead one and serves the head's Service, and the
job's pod joins the cluster as a node that offers no CPUs and runs the driver, so the job's
logs, events, retries and status stay the same as on the operator's own Ray pods. The cluster
lasts across attempts (a new driver joins it) and is deleted when the Dataset finishes. A
Dataset queued through Kueue keeps the operator's own pods, which Kueue admits as one group.
"""

from __future__ import annotations

import copy
from typing import Any

from lmforge.operator.api.dataset import Dataset
from lmforge.operator.render import scheduling
from lmforge.operator.render.job import Job, config_name, main_pod_name
from lmforge.operator.render.names import MANAGED_BY, OPERATOR, Owner, check_child_name, metadata
from lmforge.operator.render.pods import Children, Rendering, headless_service, pod
from lmforge.operator.render.status import TERMINAL, Decision, Observed
from lmforge.operator.stages.base import Stage

RAY_WORKER = "ray-worker"
RAY_PORT = 6379
RAY_CLUSTER = "RayCluster.ray.io"
RAY_CLUSTER_CRD = "rayclusters.ray.io"
JOIN_SECONDS = 600
"""How long the job's pod waits for the RayCluster's head before it fails the attempt."""
# KubeRay's own probes call the dashboard agent with wget, which the job image has neither of:
# a Ray node is alive and ready while its raylet's socket exists.
RAYLET_UP = {"exec": {"command": ["test", "-S", "/tmp/ray/session_latest/sockets/raylet"]},
             "initialDelaySeconds": 10, "periodSeconds": 10, "failureThreshold": 30}  # fmt: skip


def ray_worker_name(name: str, attempt: int, index: int) -> str:
    return f"{name}-data-{attempt}-ray-{index}"


def service_name(name: str) -> str:
    """Selects the attempt's main pod, the Ray head: workers join `<this>.<ns>.svc:6379`."""
    return f"{name}-data"


def ray_cluster_name(name: str) -> str:
    """The Dataset's RayCluster; KubeRay names its head's Service `<this>-head-svc`."""
    return f"{name}-ray"


def _ray_workers(dataset: Dataset) -> int:
    return dataset.spec.resources.nodes - 1 if dataset.spec.engine.type == "ray" else 0


class DatasetJob(Job):
    def __init__(self, kuberay: bool = False):
        self.kuberay = kuberay
        """Ray workers as a KubeRay RayCluster rather than pods of the operator's own."""

    def on_kuberay(self, dataset: Dataset) -> bool:
        """With workers; and not through a Kueue queue, which admits the pods of an attempt as
        one group (KubeRay's pods would bypass its quota)."""
        return self.kuberay and _ray_workers(dataset) > 0 and scheduling.queue(dataset) is None

    def check(self, owner: Owner, dataset: Dataset) -> None:
        """For engine ray: SpecError naming metadata.name when a child's name would be invalid."""
        if self.on_kuberay(dataset):
            head = f"{ray_cluster_name(owner.name)}-head-svc"
            check_child_name(head, "RayCluster's head Service")
            return
        if dataset.spec.engine.type == "ray":
            check_child_name(service_name(owner.name), "Ray head Service")
        if _ray_workers(dataset):
            last = ray_worker_name(owner.name, 0, _ray_workers(dataset))
            check_child_name(last, "last Ray worker pod")

    def pod_names(self, owner: Owner, dataset: Dataset, role: str, attempt: int) -> list[str]:
        count = 0 if self.on_kuberay(dataset) else _ray_workers(dataset)
        workers = [ray_worker_name(owner.name, attempt, i) for i in range(1, count + 1)]
        return [main_pod_name(owner.name, role, attempt), *workers]

    def children(self, r: Rendering, attempt: int) -> Children:
        """(objects that live as long as the Dataset, pods of attempt `attempt`, main first)."""
        self.check(r.owner, r.resource)
        lasting, pods = super().children(r, attempt)
        if self.on_kuberay(r.resource):
            lasting.append(self.ray_cluster(r))
        elif r.resource.spec.engine.type == "ray":
            ports = {"gcs": RAY_PORT}
            service = headless_service(
                r.owner, service_name(r.owner.name), "ray-head", r.role, ports
            )
            lasting.append(service)
            pods += [self.ray_worker(r, attempt, i) for i in range(1, _ray_workers(r.resource) + 1)]
        return lasting, pods

    def main_pod(self, r: Rendering, attempt: int) -> dict[str, Any]:
        """For engine ray, the main pod starts a Ray head, or joins the RayCluster's, and runs
        the job as its driver."""
        body = super().main_pod(r, attempt)
        if r.resource.spec.engine.type != "ray":
            return body
        job = body["spec"]["containers"][0]
        if self.on_kuberay(r.resource):
            head = f"{ray_cluster_name(r.owner.name)}-head-svc.{r.owner.namespace}.svc:{RAY_PORT}"
            cluster = ray_cluster_name(r.owner.name)
            join = f"ray start --address={head} --num-cpus=0 --disable-usage-stats"
            gave_up = (
                f"echo 'the Ray head {head} did not answer in {JOIN_SECONDS} s: is the KubeRay"
                f" operator running? kubectl describe raycluster {cluster}' >&2; exit 1"
            )
            start = (
                f"t=$(date +%s); until {join}; do"
                f" [ $(($(date +%s) - t)) -lt {JOIN_SECONDS} ] || {{ {gave_up}; }}; sleep 5; done"
            )
        else:
            head = f"127.0.0.1:{RAY_PORT}"
            start = (
                f"ray start --head --port={RAY_PORT} --disable-usage-stats"
                " --include-dashboard=false"
            )
            if _ray_workers(r.resource):
                start += " --num-cpus=0"
        job["command"] = ["sh", "-c", f'{start} && exec "$@"', "sh", *job["command"]]
        job["env"].append({"name": "RAY_ADDRESS", "value": head})
        return body

    def ray_worker(self, r: Rendering, attempt: int, index: int) -> dict[str, Any]:
        head = f"{service_name(r.owner.name)}.{r.owner.namespace}.svc:{RAY_PORT}"
        # The head may not resolve or listen yet; `ray start --block` returns when it goes away.
        join = f"until ray start --address={head} --block --disable-usage-stats; do sleep 5; done"
        worker = r.container("ray", ["sh", "-c", join])
        name = ray_worker_name(r.owner.name, attempt, index)
        meta = metadata(r.owner, name, RAY_WORKER, attempt=attempt, index=index)
        return pod(meta, [worker], config_name(r.owner.name, r.role), r.resources, r.defaults)

    def ray_cluster(self, r: Rendering) -> dict[str, Any]:
        """A head offering Ray no CPUs and nodes - 1 workers, each pod like the job's (image,
        resources, placement, credentials, overlay). Their pods carry KubeRay's labels (ray.io/
        cluster), not the Dataset's: KubeRay manages them, the operator's pod logic does not."""

        def template() -> dict[str, Any]:
            ray = r.container("ray", [])
            del ray["command"]  # KubeRay's: ray start with the group's rayStartParams
            ray["env"].append({"name": "RAY_USAGE_STATS_ENABLED", "value": "0"})
            ray["readinessProbe"] = ray["livenessProbe"] = copy.deepcopy(RAYLET_UP)
            meta = {"labels": {MANAGED_BY: OPERATOR}}
            body = pod(meta, [ray], config_name(r.owner.name, r.role), r.resources, r.defaults)
            del body["spec"]["restartPolicy"]  # KubeRay's: a Ray node restarts in place
            return {"metadata": body["metadata"], "spec": body["spec"]}

        workers = _ray_workers(r.resource)
        name = ray_cluster_name(r.owner.name)
        return {
            "apiVersion": "ray.io/v1",
            "kind": "RayCluster",
            "metadata": metadata(r.owner, name, "ray-cluster"),
            "spec": {
                "headGroupSpec": {
                    "rayStartParams": {"num-cpus": "0", "include-dashboard": "false"},
                    "template": template(),
                },
                "workerGroupSpecs": [
                    {
                        "groupName": "workers",
                        "replicas": workers,
                        "minReplicas": workers,
                        "maxReplicas": workers,
                        "rayStartParams": {},
                        "template": template(),
                    }
                ],
            },
        }

    def decide(self, o: Observed, owner: Owner, resource: Any, stage: Stage) -> Decision:
        """Job's decision; the RayCluster goes when the Dataset finishes."""
        decision = super().decide(o, owner, resource, stage)
        ended = decision.status.phase in TERMINAL and o.previous.phase not in TERMINAL
        if ended and self.on_kuberay(resource):
            decision.remove = ((RAY_CLUSTER, ray_cluster_name(owner.name)),)
        return decision


DATASET = DatasetJob()
KUBERAY_DATASET = DatasetJob(kuberay=True)
