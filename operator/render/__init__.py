"""Pure renderers: a stage's description in, child manifests out; what one pass observed in, the
next status and what to do out.

Nothing here does I/O, imports kopf or a Kubernetes client, or reads the clock: the handlers pass
`now` in. Every function is tested on plain objects, table-driven, without a cluster.
`RENDERERS` says how the operator runs each kind that runs a job: the shape of its pods and the
decision for them (a Deployment's server is render/deployment.py).
"""

from __future__ import annotations

from typing import Any, Protocol

from lmforge.operator.api.common import Status
from lmforge.operator.render.dataset import DATASET, KUBERAY_DATASET
from lmforge.operator.render.gang import GANG
from lmforge.operator.render.job import JOB
from lmforge.operator.render.names import Owner
from lmforge.operator.render.observe import PodState
from lmforge.operator.render.pods import Children, Defaults, Rendering
from lmforge.operator.render.status import Decision, Observed
from lmforge.operator.stages.base import Stage


class Renderer(Protocol):
    """How the pods of one shape (a gang, one job pod per attempt) are rendered and decided."""

    def check(self, owner: Owner, resource: Any) -> None:
        """SpecError when a child's name would be invalid."""

    def children(self, r: Rendering, attempt: int) -> Children:
        """Objects that last, and the pods of attempt `attempt`."""

    def reporter(
        self, pods: tuple[PodState, ...], previous: Status, stage: Stage
    ) -> tuple[PodState, str] | None:
        """The pod and container whose log has the job's events."""

    def decide(self, o: Observed, owner: Owner, resource: Any, stage: Stage) -> Decision: ...


RENDERERS: dict[str, Renderer] = {
    "Dataset": DATASET,
    "PretrainJob": GANG,
    "FineTune": GANG,
    "RewardModel": GANG,
    "Evaluation": JOB,
}


def renderer_for(kind: str, defaults: Defaults) -> Renderer:
    """RENDERERS[kind], except that a Dataset runs its Ray workers on a KubeRay RayCluster
    where the installation says so."""
    if kind == "Dataset" and defaults.ray_clusters == "kuberay":
        return KUBERAY_DATASET
    return RENDERERS[kind]
