"""FineTune (method sft, full or LoRA): the PretrainJob's gang of torchrun workers, started from
the base model; the other methods are refused with the field named until they land."""

from __future__ import annotations

from ..api.finetune import FineTune
from ..render import training
from ..render.gang import decide_gang
from ..render.inputs import Dependencies
from ..render.names import Owner
from ..render.pods import StorageSettings
from ..render.status import Observed, Plan
from .pretrainjob import worker_zero
from .reconcile import Children, Kind, Work, register
from .settings import Settings


def build(
    job: FineTune,
    owner: Owner,
    deps: Dependencies,
    store: StorageSettings,
    settings: Settings,
    traceparent: str | None,
) -> Work:
    spec = job.spec
    training.check_names(owner.name, spec.resources.nodes)

    def decide(observed: Observed) -> Plan:
        return decide_gang(observed, owner.name, spec.resources.nodes)

    field = next((f for f in deps.outputs if f.startswith("spec.baseModel")), None)
    if field is None and spec.base_model.uri is None:  # waiting for the base model
        return Work(decide, None, worker_zero)
    base = {"uri": spec.base_model.uri}
    if field:  # the referenced resource, and the artifact (and digest) it recorded
        kind = "PretrainJob" if field.endswith("pretrainJobRef") else "FineTune"
        ref = spec.base_model.pretrain_job_ref or spec.base_model.fine_tune_ref
        output = deps.outputs[field]
        base = {"uri": output["uri"], "kind": kind, "name": ref.name}
        base |= {"digest": output["digest"]} if output.get("digest") else {}
    config = training.finetune_config(job, base["uri"], store)  # RenderError: not sft yet
    image = spec.resources.image or settings.defaults.image
    lineage = {
        "inputs": [base, {"uri": spec.data.uri}],
        "outputs": [{"uri": config["outputUri"], "kind": "Model"}],
        "image": image,
    }

    def render(attempt: int) -> Children:
        gang = training.gang(owner, spec, config, attempt, settings.defaults, store, traceparent)
        return [gang.config_map, gang.service], gang.pods

    return Work(decide, render, worker_zero, lineage)


KIND = Kind("FineTune", build)


register(KIND)
