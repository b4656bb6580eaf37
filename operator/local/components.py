"""torchx components: `torchx run -s <scheduler> lmforge.operator.local.components:stage
--file FILE --name NAME` launches a resource's job outside the operator (docs/torchx.md).

The resource is described as `lmforge run` describes it, its references read from the outputs
`lmforge run` recorded in its state folder, and its config written there; the AppDef is the
one `lmforge run` gives torchx's local scheduler, with a replica per node for the others.
"""

# No `from __future__ import annotations`: torchx reads the component's parameter types.
from pathlib import Path

from torchx import specs

from lmforge.operator.local.state import State
from lmforge.operator.stages import STAGES
from lmforge.operator.stages.appdef import appdef
from lmforge.operator.stages.base import JOB_IMAGE, Store, storage
from lmforge.operator.stages.inputs import resolve
from lmforge.operator.validate import validate


def stage(file: str, name: str, state: str = ".lmforge", image: str = JOB_IMAGE) -> specs.AppDef:
    """An lmforge resource's job (Dataset, PretrainJob, FineTune, RewardModel, Evaluation).

    Args:
        file: the resource file, or a folder of them
        name: the resource's metadata.name
        state: the `lmforge run` state folder: the outputs of its references, and where its
            config is written (a folder every replica can read)
        image: the container image, where spec.resources.image is unset
    """
    located, problems = validate(Path(file))
    if problems:
        raise ValueError("; ".join(str(p) for p in problems))
    matches = [r for _, r in located if r.metadata.name == name and not STAGES[r.kind].serves]
    if len(matches) != 1:
        raise ValueError(f"{file} has {len(matches)} jobs named {name}: give the name of one")
    (resource,) = matches
    local = State(Path(state))
    found = {(r.kind, r.name): local.get(r.kind, r.name) for r in resource.references()}
    deps = resolve(resource, found)
    if not deps.ready:
        raise ValueError(
            f"{resource.kind}/{name} reads what is not ready in {state}: "
            + "; ".join(deps.failed + deps.waiting)
            + " (`lmforge run` its references first)"
        )
    store = storage(resource.spec.storage, Store(local.storage))
    description = STAGES[resource.kind].describe(resource, deps.outputs, store)
    folder = local.root / "runs" / resource.kind.lower() / name
    folder.mkdir(parents=True, exist_ok=True)
    config = folder / "config.json"
    config.write_text(description.config_json())
    resources = resource.spec.resources.model_copy(
        update={"image": resource.spec.resources.image or image}
    )
    role = STAGES[resource.kind].role
    return appdef(description, str(config.resolve()), name=name, role=role, resources=resources)
