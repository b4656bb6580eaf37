"""A Deployment described: the server's config, what it records, and the digest that rolls it."""

import pytest

from lmforge.operator.api.common import Artifact
from lmforge.operator.stages import STAGES
from lmforge.operator.stages.base import SpecError, storage
from lmforge.operator.stages.deployment import model_digest, served

from ..conftest import DEPLOYMENT

MODEL = Artifact(uri="s3://bucket/finetune/tuned/model", digest="sha256:aaa")


def describe(deployment, defaults, model=MODEL):
    store = storage(deployment.spec.storage, defaults.store)
    return STAGES["Deployment"].describe(deployment, {"spec.modelRef": model}, store)


def test_config_lineage_and_digest(resource, defaults):
    description = describe(resource(DEPLOYMENT), defaults)
    config = description.config
    assert (config.model_uri, config.served_model_name) == (MODEL.uri, "chat")
    assert config.feedback_uri == "s3://bucket/deployment/chat/feedback"
    assert description.module == "lmforge.jobs.serve"
    lineage = served(description, "http://chat.team-a.svc:8000/v1").wire()
    assert lineage == {
        "inputs": [{"uri": MODEL.uri, "digest": "sha256:aaa", "kind": "FineTune", "name": "tuned"}],
        "outputs": [
            {"uri": "http://chat.team-a.svc:8000/v1"},
            {"uri": "s3://bucket/deployment/chat/feedback/preferences", "kind": "Feedback"},
        ],
    }
    digest = model_digest(description)
    assert digest == model_digest(describe(resource(DEPLOYMENT), defaults))
    assert digest != model_digest(
        describe(resource(DEPLOYMENT, replicas=3, logPrompts=True), defaults)
    )
    other = MODEL.model_copy(update={"digest": "sha256:bbb"})
    assert digest != model_digest(describe(resource(DEPLOYMENT), defaults, other))


def test_without_feedback_nothing_is_recorded(resource, defaults):
    description = describe(resource(DEPLOYMENT, feedback={"enabled": False}), defaults)
    assert description.config.feedback_uri is None and description.lineage.outputs == []


def test_onnx_runtime_with_int8_is_refused_naming_the_field(resource, defaults):
    with pytest.raises(SpecError) as refused:
        describe(resource(DEPLOYMENT, runtime="onnx", quantization="int8"), defaults)
    assert refused.value.field == "spec.quantization" and "fp32 graph" in str(refused.value)
    for runtime, quantization in (("onnx", "none"), ("native", "int8")):
        config = describe(
            resource(DEPLOYMENT, runtime=runtime, quantization=quantization), defaults
        ).config
        assert (config.runtime, config.quantization) == (runtime, quantization)
