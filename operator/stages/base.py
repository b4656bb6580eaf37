"""A stage: what one kind does, described once for both backends.

`Stage.describe()` turns a resource whose references are ready into a `Description`: its job's
typed config, its lineage, and the job it runs. The operator renders a description as pods
(operator/render); `lmforge run` runs it as local processes (operator/local). While the job runs
and when it ends, `progress()` and `finish()` turn the job's events into the status both
backends write. Nothing here does I/O or reads the clock.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any, ClassVar, NamedTuple

from lmforge.operator.api.base import Model
from lmforge.operator.api.common import Artifact, Lineage, Status, Storage
from lmforge.operator.api.resource import Resource

Inputs = Mapping[str, Artifact]
"""Field of each reference (spec.datasetRef, spec.tasks[0].datasetRef, ...) -> its output."""


class SpecError(ValueError):
    """The spec cannot run as written; `field` names where, the message says what to do."""

    def __init__(self, field: str, message: str):
        super().__init__(f"{field}: {message}")
        self.field = field


class Store(NamedTuple):
    """spec.storage with the backend's defaults filled in."""

    uri: str
    secret_name: str | None = None
    endpoint_url: str | None = None


def storage(spec: Storage, default: Store | None) -> Store:
    """Where a resource stores its outputs: its own spec.storage, else the backend's default (the
    operator's helm values, the state folder of `lmforge run`)."""
    uri = spec.uri or (default.uri if default else None)
    if not uri:
        raise SpecError(
            "spec.storage.uri",
            "is unset and the operator has no default storage (helm value storage.uri):"
            " set one of them",
        )
    return Store(
        uri,
        spec.secret_name or (default.secret_name if default else None),
        spec.endpoint_url or (default.endpoint_url if default else None),
    )


JOB_IMAGE = "ghcr.io/lmforge/lmforge-trainer:0.1.0"
"""The job image (data, training, evaluation) when neither spec.resources.image nor the
installation sets one."""
GRACE_SECONDS = 300
"""How long a stopped job has to write a checkpoint (a pod's terminationGracePeriodSeconds)."""
RENDEZVOUS_PORT = 29500
"""Where a gang's nodes meet, on its first node (worker 0's pod, or torchx's first replica)."""
SHUTDOWN_MARGIN_SECONDS = 15
"""torchrun's workers get the grace period minus this to checkpoint; torchrun itself needs the
rest to exit before the kubelet's SIGKILL."""


class Rendezvous(NamedTuple):
    """Where the ranks of a multi-node gang meet, and this node's place in it."""

    node_rank: int
    address: str
    port: int
    shutdown_seconds: int
    """How long torchrun gives its workers after SIGTERM before it kills them."""
    timeout_seconds: int = 600
    """How long the nodes wait for each other (runPolicy.rendezvousTimeoutSeconds)."""
    min_nodes: int | None = None
    """Elastic (resources.minNodes): torchrun's c10d rendezvous, between min_nodes and nodes."""
    local_address: str = ""
    """Elastic: this node's DNS name, which orders the ranks (worker 0 holds rank 0)."""
    run_id: str = ""
    """Elastic: the rendezvous' name, the same for every node of one attempt."""


ELASTIC_RESTARTS = 100
"""How often an elastic gang's torchrun restarts its workers: once per change of membership
(a node lost or back) and per failure of the code, which the operator does not see."""
LAST_CALL_SECONDS = 15
"""Once minNodes have met, how long an elastic rendezvous waits for more before it goes on."""


@dataclass(frozen=True)
class Description:
    """A resource ready to run: everything either backend needs to launch it and report on it."""

    config: Model
    """The job's typed config (operator/api/jobs.py), written as JSON for it to read."""
    lineage: Lineage
    """Inputs and outputs, recorded in status as soon as the job is launched."""
    module: str
    """The job: `python -m <module> --config <file>`."""
    ranks: tuple[int, int] | None = None
    """(nodes, processes per node) under torchrun; None: one plain process."""

    def config_json(self) -> str:
        return self.config.model_dump_json(by_alias=True, exclude_none=True, indent=2)


def command(
    description: Description,
    config_path: str,
    python: str = "python",
    rendezvous: Rendezvous | None = None,
) -> list[str]:
    """The argv that launches a description's job: a plain process, or torchrun with every rank
    on this machine (standalone) or with this node's ranks of a multi-node gang (`rendezvous`).
    A fixed gang's torchrun never restarts workers itself: the backend restarts the whole gang;
    an elastic one's does, whenever the gang's membership changes."""
    job = ["-m", description.module, "--config", config_path]
    if description.ranks is None:
        return [python, *job]
    nodes, per_node = description.ranks
    torchrun = [python, "-m", "torch.distributed.run"]
    if rendezvous is None:
        return [*torchrun, "--standalone", f"--nproc-per-node={nodes * per_node}", *job]
    if rendezvous.min_nodes:
        conf = (
            f"join_timeout={rendezvous.timeout_seconds},last_call_timeout={LAST_CALL_SECONDS},"
            f"is_host={int(rendezvous.node_rank == 0)}"
        )
        return [
            *torchrun,
            f"--nnodes={rendezvous.min_nodes}:{nodes}",
            f"--nproc-per-node={per_node}",
            # c10d: the nodes meet at worker 0, which holds the store; ranks follow the local
            # addresses' order. A lost node restarts the others' workers with fewer ranks, a
            # node that joins restarts them with more; each resumes from the last checkpoint.
            "--rdzv-backend=c10d",
            f"--rdzv-endpoint={rendezvous.address}:{rendezvous.port}",
            f"--rdzv-id={rendezvous.run_id}",
            f"--rdzv-conf={conf}",
            f"--local-addr={rendezvous.local_address}",
            f"--max-restarts={ELASTIC_RESTARTS}",
            f"--shutdown-timeout={rendezvous.shutdown_seconds}",
            *job,
        ]
    return [
        *torchrun,
        f"--nnodes={nodes}",
        f"--nproc-per-node={per_node}",
        f"--node-rank={rendezvous.node_rank}",
        # static: every pod knows its rank, and a failure restarts the whole gang.
        "--rdzv-backend=static",
        f"--master-addr={rendezvous.address}",
        f"--master-port={rendezvous.port}",
        f"--rdzv-conf=timeout={rendezvous.timeout_seconds}",
        "--max-restarts=0",
        f"--shutdown-timeout={rendezvous.shutdown_seconds}",
        *job,
    ]


class Stage:
    """One kind's behaviour. Subclasses set the class attributes and `describe`."""

    kind: ClassVar[str]
    role: ClassVar[str]
    """Names the job: its pods (<name>-<role>-<attempt>), its container, its local log file."""
    serves: ClassVar[bool] = False
    """A server, which runs until it is stopped (and is ready rather than done), not a job."""

    def describe(self, resource: Resource, inputs: Inputs, store: Store) -> Description:
        """The resource ready to run, from the outputs of its references (all ready). Raises
        SpecError when the spec cannot run."""
        raise NotImplementedError

    def progress(self, status: Status, events: list[dict[str, Any]]) -> None:
        """Figures the job reports while it runs (every event read so far, oldest first)."""

    def finish(self, status: Status, events: list[dict[str, Any]]) -> str | None:
        """Record what the job reported once it exited successfully; a message when that result
        fails the resource (an Evaluation's thresholds), else None."""
        return None


def artifact(inputs: Inputs, field: str, kind: str, name: str) -> Artifact:
    """A referenced output as an input of lineage: its URI and digest, and what made it."""
    found = inputs[field]
    return Artifact(uri=found.uri, digest=found.digest, kind=kind, name=name)
