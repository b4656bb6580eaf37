"""A described job (operator/stages) as a torchx AppDef: the same module, config and torchrun
command its pods run, for torchx's schedulers (local, Slurm, Kubernetes, ...). `lmforge run`
launches training with torchx's local scheduler, and `torchx run` launches any stage through
the component in operator/local/components.py (docs/torchx.md). Not imported by the operator,
whose image has no torchx."""

from __future__ import annotations

import re
import shlex

from torchx import specs

from lmforge.operator.api.common import PodResources
from lmforge.operator.stages.base import (
    GRACE_SECONDS,
    JOB_IMAGE,
    RENDEZVOUS_PORT,
    SHUTDOWN_MARGIN_SECONDS,
    Description,
    Rendezvous,
    command,
)

_SCALES = {"m": 1e-3, "": 1, "k": 1e3, "M": 1e6, "G": 1e9, "T": 1e12, "P": 1e15, "E": 1e18,
           **{f"{p}i": 2 ** (10 * i) for i, p in enumerate("KMGTPE", 1)}}  # fmt: skip


def appdef(
    description: Description,
    config_path: str,
    *,
    name: str,
    role: str,
    resources: PodResources | None = None,
    python: str = "python",
    one_machine: bool = False,
    env: dict[str, str] | None = None,
) -> specs.AppDef:
    """One role of `nodes` replicas, each torchrun with its node's ranks, meeting at the first
    replica's host; with `one_machine`, one replica with every rank (as `lmforge run` runs
    them). A job without ranks is one plain process. Without `resources` (a local run, where
    torchx ignores them), the role asks for nothing in particular."""
    nodes = description.ranks[0] if description.ranks else 1
    if nodes == 1 or one_machine:
        argv, replicas = command(description, config_path, python), 1
    else:
        # Each scheduler names the first replica's host in an environment variable of its own
        # (rank0_env), which a shell reads; replica_id is each replica's node rank.
        meeting = Rendezvous(
            node_rank=specs.macros.replica_id,  # type: ignore[arg-type]: a macro, substituted
            address=f"$${{{specs.macros.rank0_env}:=localhost}}",
            port=RENDEZVOUS_PORT,
            shutdown_seconds=GRACE_SECONDS - SHUTDOWN_MARGIN_SECONDS,
        )
        argv, replicas = command(description, config_path, python, meeting), nodes
    if replicas > 1:
        line = " ".join(a if "$" in a else shlex.quote(a) for a in argv)
        entrypoint, args = "bash", ["-c", line]
    else:
        entrypoint, args = argv[0], argv[1:]
    worker = specs.Role(
        name=role,
        image=(resources and resources.image) or JOB_IMAGE,
        entrypoint=entrypoint,
        args=args,
        env=env or {},
        num_replicas=replicas,
        resource=_resource(resources) if resources else specs.NULL_RESOURCE,
        port_map={"rendezvous": RENDEZVOUS_PORT} if replicas > 1 else {},
    )
    return specs.AppDef(name=name, roles=[worker])


def _resource(resources: PodResources) -> specs.Resource:
    return specs.Resource(
        cpu=max(1, round(_amount(resources.cpu))),
        gpu=resources.gpus,
        memMB=round(_amount(resources.memory) / 2**20),
    )


def _amount(quantity: str) -> float:
    """A Kubernetes quantity (the schema checked its form): "500m" -> 0.5, "2Gi" -> 2**31,
    "1e3" -> 1000."""
    number, suffix = re.fullmatch(r"\+?([0-9.]+)(.*)", quantity).groups()
    if suffix in _SCALES:
        return float(number) * _SCALES[suffix]
    return float(number + suffix)  # a decimal exponent
