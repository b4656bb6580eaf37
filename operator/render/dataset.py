"""A Dataset as pods: one pod running the data job (engine local), or, for engine ray, a Ray head
that runs the job plus spec.resources.nodes - 1 Ray workers that join it.

A pod's name carries its attempt (`<name>-data-<k>`): a failed attempt's pod stays, with its
logs, like a batch Job's, and the next attempt is a new pod. A KubeRay RayJob (or RayCluster)
can replace the hand-made Ray pods where those CRDs are installed; that is a later step.
"""

from __future__ import annotations

from typing import Any

from ..api.dataset import Dataset
from . import jobscripts
from .names import Owner, check_child_name, metadata
from .pods import (
    CONFIG_FILE,
    Defaults,
    StorageSettings,
    config_map,
    container,
    environment,
    headless_service,
    pod,
)

MAIN = "data"
RAY_WORKER = "ray-worker"
CONFIG = "config"
RAY_PORT = 6379


def main_pod_name(name: str, attempt: int) -> str:
    return f"{name}-data-{attempt}"


def ray_worker_name(name: str, attempt: int, index: int) -> str:
    return f"{name}-data-{attempt}-ray-{index}"


def service_name(name: str) -> str:
    """Selects the attempt's main pod, the Ray head: workers join `<this>.<ns>.svc:6379`."""
    return f"{name}-data"


def config_name(name: str) -> str:
    return f"{name}-data-config"


def output_uri(dataset: Dataset, store: StorageSettings) -> str:
    return dataset.spec.output.uri or dataset.artifact_uri(store.uri)


def dataset_config(dataset: Dataset, store: StorageSettings) -> dict[str, Any]:
    """The Dataset resource as the job reads it, with the storage the operator resolved."""
    spec = dataset.spec.wire()
    spec["storage"] = {"uri": store.uri}
    if store.endpoint_url:
        spec["storage"]["endpointUrl"] = store.endpoint_url
    meta = {"name": dataset.metadata.name}
    if dataset.metadata.namespace:
        meta["namespace"] = dataset.metadata.namespace
    return {"apiVersion": dataset.api_version, "kind": "Dataset", "metadata": meta, "spec": spec}


def _main_command(dataset: Dataset, store: StorageSettings) -> tuple[list[str], list[dict]]:
    args = ["--config", CONFIG_FILE, "--output", output_uri(dataset, store)]
    if dataset.spec.engine.type == "local":
        return ["python", "-c", jobscripts.DATA, *args], []
    head = (
        f"ray start --head --port={RAY_PORT} --disable-usage-stats --include-dashboard=false"
        ' && exec python -c "$LMFORGE_JOB" "$@"'
    )
    env = [
        {"name": "LMFORGE_JOB", "value": jobscripts.DATA},
        {"name": "RAY_ADDRESS", "value": f"127.0.0.1:{RAY_PORT}"},
    ]
    return ["sh", "-c", head, "sh", *args], env


def main_pod(
    owner: Owner,
    dataset: Dataset,
    attempt: int,
    defaults: Defaults,
    store: StorageSettings,
    traceparent: str | None = None,
) -> dict[str, Any]:
    res = dataset.spec.resources
    command, env = _main_command(dataset, store)
    job = container(
        MAIN, command, res, environment(owner, defaults, traceparent) + env, store, defaults
    )
    meta = metadata(owner, main_pod_name(owner.name, attempt), MAIN, attempt=attempt)
    return pod(meta, [job], config_name(owner.name), res, defaults)


def ray_worker(
    owner: Owner,
    dataset: Dataset,
    attempt: int,
    index: int,
    defaults: Defaults,
    store: StorageSettings,
) -> dict[str, Any]:
    res = dataset.spec.resources
    head = f"{service_name(owner.name)}.{owner.namespace}.svc:{RAY_PORT}"
    # The head may not resolve or listen yet; `ray start --block` returns when it goes away.
    join = f"until ray start --address={head} --block --disable-usage-stats; do sleep 5; done"
    worker = container(
        "ray", ["sh", "-c", join], res, environment(owner, defaults, None), store, defaults
    )
    meta = metadata(
        owner, ray_worker_name(owner.name, attempt, index), RAY_WORKER, attempt=attempt, index=index
    )
    return pod(meta, [worker], config_name(owner.name), res, defaults)


def check_names(name: str, attempt: int, nodes: int) -> None:
    """For engine ray: RenderError naming metadata.name when a child's name would be invalid
    (engine local has no Service or hostname, so any resource name will do)."""
    check_child_name(service_name(name), "Ray head Service")
    if nodes > 1:
        check_child_name(ray_worker_name(name, attempt, nodes - 1), "last Ray worker pod")


def children(
    owner: Owner,
    dataset: Dataset,
    attempt: int,
    defaults: Defaults,
    store: StorageSettings,
    traceparent: str | None = None,
) -> tuple[list[dict[str, Any]], list[dict[str, Any]]]:
    """(objects that live as long as the Dataset, pods of attempt `attempt`, main pod first)."""
    nodes = dataset.spec.resources.nodes if dataset.spec.engine.type == "ray" else 1
    if dataset.spec.engine.type == "ray":
        check_names(owner.name, attempt, nodes)
    lasting = [config_map(owner, config_name(owner.name), CONFIG, dataset_config(dataset, store))]
    pods = [main_pod(owner, dataset, attempt, defaults, store, traceparent)]
    if dataset.spec.engine.type == "ray":
        lasting.append(
            headless_service(owner, service_name(owner.name), "ray-head", MAIN, {"gcs": RAY_PORT})
        )
        pods += [ray_worker(owner, dataset, attempt, i, defaults, store) for i in range(1, nodes)]
    return lasting, pods


def lineage(dataset: Dataset, summary: dict[str, Any], output: str, image: str) -> dict[str, Any]:
    """Inputs and output of the dataset; digests once the job's `done` summary has them."""
    sources = summary.get("sources") or [{"uri": s.uri} for s in dataset.spec.sources]
    out: dict[str, Any] = {
        "inputs": [{k: s[k] for k in ("uri", "digest") if k in s} for s in sources],
        "outputs": [{"uri": output, "kind": "Dataset"}],
        "image": image,
    }
    if summary.get("configDigest"):
        out["outputs"][0]["digest"] = summary["configDigest"]
    if summary.get("lmforgeVersion"):
        out["codeVersion"] = summary["lmforgeVersion"]
    return out


def finish(status: dict[str, Any], summary: dict[str, Any] | None, output: str) -> None:
    """The figures of a built dataset, as the local runner records them; only the manifest's URI
    when the job's summary could not be read."""
    summary = summary or {}
    status["manifestUri"] = f"{output}/manifest.json"
    for field in ("documentsOut", "tokens", "shards", "tokenizerDigest"):
        if summary.get(field) is not None:
            status[field] = summary[field]
