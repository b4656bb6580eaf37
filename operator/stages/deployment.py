"""Deployment: `lmforge serve` over the model, answering the OpenAI API until it is stopped, and
recording the preference feedback it collects where a RewardModel or FineTune can read it."""

from __future__ import annotations

import hashlib
import json

from lmforge.operator.api.common import Artifact, Lineage
from lmforge.operator.api.deployment import Deployment
from lmforge.operator.api.jobs import ServeConfig
from lmforge.operator.stages.base import Description, Inputs, SpecError, Stage, Store, artifact


class DeploymentStage(Stage):
    kind = "Deployment"
    role = "serve"
    serves = True

    def describe(self, deployment: Deployment, inputs: Inputs, store: Store) -> Description:
        spec = deployment.spec
        if spec.runtime == "onnx" and spec.quantization != "none":
            raise SpecError(
                "spec.quantization",
                "int8 is the native runtime's; runtime onnx runs the fp32 graph",
            )
        model = artifact(inputs, "spec.modelRef", spec.model_ref.kind, spec.model_ref.name)
        feedback = spec.feedback.uri or f"{deployment.artifact_uri(store.uri)}/feedback"
        config = ServeConfig(
            model_uri=model.uri,
            served_model_name=deployment.metadata.name,
            endpoint_url=store.endpoint_url,
            rate_limit=spec.rate_limit,
            limits=spec.limits,
            safety=spec.safety,
            feedback_uri=feedback if spec.feedback.enabled else None,
            log_prompts=spec.log_prompts,
            quantization=spec.quantization,
            runtime=spec.runtime,
        )
        # What a RewardModel or FineTune's spec.preferences.deploymentRef reads.
        recorded = [Artifact(uri=f"{feedback}/preferences", kind="Feedback")]
        lineage = Lineage(inputs=[model], outputs=recorded if spec.feedback.enabled else [])
        return Description(config, lineage, "lmforge.jobs.serve")


def served(description: Description, endpoint: str) -> Lineage:
    """The lineage of a server that answers at `endpoint`: the endpoint is its first output."""
    lineage = description.lineage
    return lineage.model_copy(update={"outputs": [Artifact(uri=endpoint), *lineage.outputs]})


def model_digest(description: Description) -> str:
    """Changes when the model (its recorded digest, else its URI) or the server config does: a
    new digest is a new rollout."""
    model = description.lineage.inputs[0]
    identity = {"model": model.digest or model.uri, "config": description.config.wire()}
    return "sha256:" + hashlib.sha256(json.dumps(identity, sort_keys=True).encode()).hexdigest()
