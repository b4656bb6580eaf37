"""A Dataset as pods: the job's one pod (engine local), or, for engine ray, a Ray head that runs
the job plus spec.resources.nodes - 1 Ray workers that join it; with workers, the head offers no
CPUs to Ray (as KubeRay's examples set it), so the work runs on them and the head stays free for
the driver and Ray's control plane. A KubeRay RayJob (or RayCluster) can replace the hand-made
Ray pods where those CRDs are installed; that is a later step.
"""

from __future__ import annotations

from typing import Any

from lmforge.operator.api.dataset import Dataset
from lmforge.operator.render.job import Job, config_name, main_pod_name
from lmforge.operator.render.names import Owner, check_child_name, metadata
from lmforge.operator.render.pods import Children, Rendering, headless_service, pod

RAY_WORKER = "ray-worker"
RAY_PORT = 6379


def ray_worker_name(name: str, attempt: int, index: int) -> str:
    return f"{name}-data-{attempt}-ray-{index}"


def service_name(name: str) -> str:
    """Selects the attempt's main pod, the Ray head: workers join `<this>.<ns>.svc:6379`."""
    return f"{name}-data"


def _ray_workers(dataset: Dataset) -> int:
    return dataset.spec.resources.nodes - 1 if dataset.spec.engine.type == "ray" else 0


class DatasetJob(Job):
    def check(self, owner: Owner, dataset: Dataset) -> None:
        """For engine ray: SpecError naming metadata.name when a child's name would be invalid."""
        if dataset.spec.engine.type == "ray":
            check_child_name(service_name(owner.name), "Ray head Service")
        if _ray_workers(dataset):
            last = ray_worker_name(owner.name, 0, _ray_workers(dataset))
            check_child_name(last, "last Ray worker pod")

    def pod_names(self, owner: Owner, dataset: Dataset, role: str, attempt: int) -> list[str]:
        workers = [
            ray_worker_name(owner.name, attempt, i) for i in range(1, _ray_workers(dataset) + 1)
        ]
        return [main_pod_name(owner.name, role, attempt), *workers]

    def children(self, r: Rendering, attempt: int) -> Children:
        """(objects that live as long as the Dataset, pods of attempt `attempt`, main first)."""
        self.check(r.owner, r.resource)
        lasting, pods = super().children(r, attempt)
        if r.resource.spec.engine.type == "ray":
            ports = {"gcs": RAY_PORT}
            service = headless_service(
                r.owner, service_name(r.owner.name), "ray-head", r.role, ports
            )
            lasting.append(service)
            pods += [self.ray_worker(r, attempt, i) for i in range(1, _ray_workers(r.resource) + 1)]
        return lasting, pods

    def main_pod(self, r: Rendering, attempt: int) -> dict[str, Any]:
        """For engine ray, the main pod starts a Ray head and runs the job as its driver."""
        body = super().main_pod(r, attempt)
        if r.resource.spec.engine.type == "ray":
            job = body["spec"]["containers"][0]
            head = (
                f"ray start --head --port={RAY_PORT} --disable-usage-stats"
                " --include-dashboard=false"
            )
            if _ray_workers(r.resource):
                head += " --num-cpus=0"
            job["command"] = ["sh", "-c", f'{head} && exec "$@"', "sh", *job["command"]]
            job["env"].append({"name": "RAY_ADDRESS", "value": f"127.0.0.1:{RAY_PORT}"})
        return body

    def ray_worker(self, r: Rendering, attempt: int, index: int) -> dict[str, Any]:
        head = f"{service_name(r.owner.name)}.{r.owner.namespace}.svc:{RAY_PORT}"
        # The head may not resolve or listen yet; `ray start --block` returns when it goes away.
        join = f"until ray start --address={head} --block --disable-usage-stats; do sleep 5; done"
        worker = r.container("ray", ["sh", "-c", join])
        name = ray_worker_name(r.owner.name, attempt, index)
        meta = metadata(r.owner, name, RAY_WORKER, attempt=attempt, index=index)
        return pod(meta, [worker], config_name(r.owner.name, r.role), r.resources, r.defaults)


DATASET = DatasetJob()
