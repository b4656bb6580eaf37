"""A training-type resource as a gang: N worker pods running torchrun, a headless Service for
rendezvous, and the job's config as a ConfigMap.

PretrainJob, FineTune and RewardModel build their configs here and share `gang()`, which knows
nothing about what is trained.
"""

from __future__ import annotations

from typing import Any, NamedTuple

from ..api.finetune import FineTune
from ..api.pretrainjob import PretrainJob
from ..api.references import references
from ..api.rewardmodel import RewardModel
from ..api.training import TrainingWorkload
from .names import Owner, RenderError, check_child_name, metadata
from .pods import (
    CONFIG_FILE,
    SCRATCH_DIR,
    Defaults,
    StorageSettings,
    config_map,
    container,
    environment,
    grace_seconds,
    headless_service,
    pod,
)

WORKER = "worker"
RENDEZVOUS = "rendezvous"
CONFIG = "config"
RENDEZVOUS_PORT = 29500
SHUTDOWN_MARGIN_SECONDS = 15
"""torchrun's workers get the grace period minus this to checkpoint; torchrun itself needs the
rest to exit before the kubelet's SIGKILL."""


def worker_name(name: str, index: int) -> str:
    return f"{name}-worker-{index}"


def service_name(name: str) -> str:
    return f"{name}-workers"


def config_name(name: str) -> str:
    return f"{name}-config"


def worker_address(owner: Owner, index: int) -> str:
    """The DNS name the headless Service gives a worker (hostname + subdomain)."""
    return f"{worker_name(owner.name, index)}.{service_name(owner.name)}.{owner.namespace}.svc"


def pretrain_config(job: PretrainJob, dataset_uri: str, store: StorageSettings) -> dict[str, Any]:
    """The trainer's TrainConfig, with the same fields the local runner writes."""
    spec = job.spec
    return {
        "architecture": spec.model.wire(),
        "datasetUri": dataset_uri,
        **_run(job, store),
    }


def _run(job: PretrainJob | FineTune | RewardModel, store: StorageSettings) -> dict[str, Any]:
    """What every training config has: name, schedule, outputs and the gang's shape."""
    spec, artifact = job.spec, job.artifact_uri(store.uri)
    return {
        "name": job.metadata.name,
        "training": spec.training.wire(),
        "outputUri": f"{artifact}/model",
        "checkpointUri": spec.training.checkpoint.uri or f"{artifact}/checkpoints",
        "nodes": spec.resources.nodes,
        "processesPerNode": spec.resources.processes_per_node,
        "endpointUrl": store.endpoint_url,
        # Rank 0 also prints every event to stdout, which is what the operator reads.
        "progressPath": f"{SCRATCH_DIR}/progress.jsonl",
    }


def finetune_inputs(job: FineTune | RewardModel, outputs: dict[str, dict]) -> dict | None:
    """What a FineTune or RewardModel reads, by spec field (spec.baseModel, spec.data,
    spec.preferences, spec.dpo.reference): {"uri"}, and for a referenced resource its kind, name
    and digest. `outputs` is field -> output of each ready reference (render/inputs.resolve);
    None while one is not ready."""
    found = {}
    for ref in references(job):
        if ref.field not in outputs:
            return None
        output = outputs[ref.field]
        where = ref.field.rsplit(".", 1)[0] if ref.field.count(".") > 1 else ref.field
        found[where] = {"uri": output["uri"], "kind": ref.kind, "name": ref.name}
        found[where] |= {"digest": output["digest"]} if output.get("digest") else {}
    spec = job.spec
    sources = {"spec.baseModel": spec.base_model, "spec.preferences": spec.preferences}
    if job.kind == "FineTune":
        sources |= {"spec.data": spec.data, "spec.dpo.reference": spec.dpo.reference,
                    "spec.prompts": spec.prompts}  # fmt: skip
    found |= {f: {"uri": s.uri} for f, s in sources.items() if s is not None and s.uri}
    used = {
        "sft": ("spec.data",),
        "dpo": ("spec.preferences", "spec.dpo.reference"),
        "ppo": ("spec.prompts", "spec.rewardModelRef"),
        "grpo": ("spec.prompts", "spec.rewardModelRef"),
    }.get(getattr(spec, "method", None), ("spec.preferences",))
    return {f: i for f, i in found.items() if f == "spec.baseModel" or f in used}


def finetune_config(
    job: FineTune | RewardModel, inputs: dict[str, dict], store: StorageSettings
) -> dict[str, Any]:
    """The trainer's TrainConfig for a FineTune (sft, dpo, grpo) or a RewardModel, as the local
    runner writes it too, from its inputs (finetune_inputs); the base model gives the
    architecture and the tokenizer."""
    spec = job.spec
    if job.kind == "RewardModel":
        method = {"method": "reward", "rankingLoss": spec.loss}
    elif spec.method == "sft":
        method = {"method": "sft", "examplesUri": inputs["spec.data"]["uri"],
                  "validationFraction": spec.data.validation_fraction}  # fmt: skip
    elif spec.method == "dpo":
        method = {"method": "dpo", "beta": spec.dpo.beta}
        if "spec.dpo.reference" in inputs:
            method["referenceUri"] = inputs["spec.dpo.reference"]["uri"]
    elif spec.method == "grpo":
        method = {
            "method": "grpo",
            "promptsUri": inputs["spec.prompts"]["uri"],
            "rewardModelUri": inputs["spec.rewardModelRef"]["uri"],
            "rl": spec.rl.wire(),
            "validationFraction": spec.prompts.validation_fraction,
        }
    else:
        raise RenderError(
            "spec.method",
            f"{spec.method} is not available in this version: use grpo (a group of replies per"
            " prompt takes the place of PPO's value model)",
        )
    if method["method"] in ("reward", "dpo"):
        method |= {"preferencesUri": inputs["spec.preferences"]["uri"],
                   "validationFraction": spec.preferences.validation_fraction}  # fmt: skip
    return {
        "baseModelUri": inputs["spec.baseModel"]["uri"],
        **method,
        **({"lora": spec.lora.wire()} if getattr(spec, "lora", None) else {}),
        **_run(job, store),
    }


def finetune_lineage(inputs: dict[str, dict], config: dict[str, Any], image: str | None) -> dict:
    return {
        "inputs": list(inputs.values()),
        "outputs": [{"uri": config["outputUri"], "kind": "Model"}],
        **({"image": image} if image else {}),
    }


def pretrain_lineage(
    config: dict[str, Any], dataset: str, dataset_digest: str | None, image: str
) -> dict[str, Any]:
    source = {"uri": config["datasetUri"], "kind": "Dataset", "name": dataset}
    if dataset_digest:
        source["digest"] = dataset_digest
    return {
        "inputs": [source],
        "outputs": [{"uri": config["outputUri"], "kind": "Model"}],
        "image": image,
    }


def torchrun(nodes: int, processes: int, index: int, master: str, grace: int) -> list[str]:
    return [
        "python",
        "-m",
        "torch.distributed.run",
        f"--nnodes={nodes}",
        f"--nproc-per-node={processes}",
        f"--node-rank={index}",
        # static: every pod knows its rank, and the operator restarts the whole gang on failure,
        # so torchrun must not restart workers by itself.
        "--rdzv-backend=static",
        f"--master-addr={master}",
        f"--master-port={RENDEZVOUS_PORT}",
        "--max-restarts=0",
        f"--shutdown-timeout={max(1, grace - SHUTDOWN_MARGIN_SECONDS)}",
        "-m",
        "lmforge.jobs.train",
        "--config",
        CONFIG_FILE,
    ]


def worker_pod(
    owner: Owner,
    spec: TrainingWorkload,
    index: int,
    attempt: int,
    defaults: Defaults,
    store: StorageSettings,
    traceparent: str | None,
) -> dict[str, Any]:
    res = spec.resources
    name = worker_name(owner.name, index)
    command = torchrun(
        res.nodes,
        res.processes_per_node,
        index,
        worker_address(owner, 0),
        grace_seconds(res, defaults),
    )
    trainer = container(
        "trainer", command, res, environment(owner, defaults, traceparent), store, defaults
    )
    trainer["ports"] = [{"name": RENDEZVOUS, "containerPort": RENDEZVOUS_PORT}]
    volumes = []
    if res.gpus:  # NCCL needs more shared memory than a container's default 64 MiB
        trainer["volumeMounts"].append({"name": "dshm", "mountPath": "/dev/shm"})
        volumes.append({"name": "dshm", "emptyDir": {"medium": "Memory"}})
    meta = metadata(owner, name, WORKER, index=index, attempt=attempt)
    return pod(
        meta,
        [trainer],
        config_name(owner.name),
        res,
        defaults,
        tuple(volumes),
        hostname=name,
        subdomain=service_name(owner.name),
    )


def check_names(name: str, nodes: int) -> None:
    """RenderError naming metadata.name when a child's name would not be a valid hostname."""
    check_child_name(worker_name(name, nodes - 1), "last worker pod")
    check_child_name(service_name(name), "rendezvous Service")


class Gang(NamedTuple):
    config_map: dict[str, Any]
    service: dict[str, Any]
    pods: list[dict[str, Any]]


def gang(
    owner: Owner,
    spec: TrainingWorkload,
    config: dict[str, Any],
    attempt: int,
    defaults: Defaults,
    store: StorageSettings,
    traceparent: str | None = None,
) -> Gang:
    """Every child of a training run, for gang attempt `attempt` (= status.restarts)."""
    check_names(owner.name, spec.resources.nodes)
    pods = [
        worker_pod(owner, spec, i, attempt, defaults, store, traceparent)
        for i in range(spec.resources.nodes)
    ]
    service = headless_service(
        owner, service_name(owner.name), RENDEZVOUS, WORKER, {RENDEZVOUS: RENDEZVOUS_PORT}
    )
    return Gang(config_map(owner, config_name(owner.name), CONFIG, config), service, pods)
