"""Deployment (lmdeploy): serve a model over an OpenAI-compatible API."""

from __future__ import annotations

from typing import ClassVar, Literal

from pydantic import Field

from lmforge.operator.api.base import NAME_PATTERN, URI_PATTERN, LocalRef, Model, Reference, Rule
from lmforge.operator.api.common import ModelRef, PodResources, Status, Storage
from lmforge.operator.api.resource import SERVER_NAMES, Column, Resource


class Autoscaling(Model):
    """A HorizontalPodAutoscaler on CPU utilization."""

    min_replicas: int = Field(default=1, ge=1)
    max_replicas: int = Field(default=4, ge=1, le=1000)
    target_cpu_utilization: int = Field(default=70, ge=1, le=100)
    """Percent of the CPU request."""

    rules = (
        Rule("self.minReplicas <= self.maxReplicas", "must not exceed maxReplicas", ".minReplicas"),
    )


class Auth(Model):
    """API keys. Each key of the Secret's data is a key name, each value the API key itself."""

    secret_name: str = Field(pattern=NAME_PATTERN, max_length=253)


class RateLimit(Model):
    """Per API key; excess requests get 429 with Retry-After."""

    requests_per_minute: int | None = Field(default=None, ge=1)
    tokens_per_minute: int | None = Field(default=None, ge=1)


class Limits(Model):
    """Requests beyond these get a 4xx error that says which limit."""

    max_request_bytes: int = Field(default=1_048_576, ge=1024)
    max_prompt_tokens: int | None = Field(default=None, ge=1)
    """The model's context length minus maxTokens when unset."""
    max_tokens: int = Field(default=512, ge=1)
    """Largest max_tokens a request may ask for."""


class Safety(Model):
    """An output filter: completions matching a word or pattern are redacted or refused."""

    words: list[str] = Field(default_factory=list, max_length=100_000)
    patterns: list[str] = Field(default_factory=list, max_length=1024)
    action: Literal["redact", "refuse"] = "redact"


class Feedback(Model):
    """POST /v1/feedback stores ratings and preferences as a dataset a RewardModel can read."""

    enabled: bool = True
    uri: str | None = Field(default=None, pattern=URI_PATTERN)
    """<storage.uri>/deployment/<name>/feedback when unset."""


class DeploymentSpec(Model):
    model_ref: ModelRef
    """Changing it rolls out the new model."""
    evaluation_ref: LocalRef | None = None
    """An Evaluation that must have Passed before this model is rolled out."""
    replicas: int = Field(default=1, ge=0, le=1000)
    autoscaling: Autoscaling | None = None
    """Set to scale between minReplicas and maxReplicas; replicas is then ignored."""
    runtime: Literal["native", "onnx"] = "native"
    """native: PyTorch; onnx: the exported graph on onnxruntime."""
    quantization: Literal["none", "int8"] = "none"
    auth: Auth | None = None
    """Without it the API is open to anyone who can reach the Service."""
    rate_limit: RateLimit = Field(default_factory=RateLimit)
    limits: Limits = Field(default_factory=Limits)
    safety: Safety = Field(default_factory=Safety)
    feedback: Feedback = Field(default_factory=Feedback)
    resources: PodResources = Field(default_factory=PodResources)
    storage: Storage = Field(default_factory=Storage)
    log_prompts: bool = False
    """Record prompts and completions in the audit log; metadata only when false."""


class DeploymentStatus(Status):
    phase: Literal["Pending", "Waiting", "Progressing", "Available", "Failed"] | None = None
    replicas: int | None = None
    ready_replicas: int | None = None
    endpoint: str | None = None
    """Base URL of the OpenAI-compatible API inside the cluster."""
    model_digest: str | None = None


class Deployment(Resource):
    """A model served over an OpenAI-compatible HTTP API (short name lmdeploy)."""

    kind: Literal["Deployment"] = "Deployment"
    spec: DeploymentSpec
    status: DeploymentStatus | None = None

    rules: ClassVar = SERVER_NAMES
    plural: ClassVar = "deployments"
    short_names: ClassVar = ("lmdeploy",)
    columns: ClassVar = (
        Column("Model", ".spec.modelRef.name"),
        Column("Phase", ".status.phase"),
        Column("Ready", ".status.readyReplicas", "integer"),
        Column("Endpoint", ".status.endpoint", priority=1),
    )
    ready_phase: ClassVar = "Available"

    def references(self) -> list[Reference]:
        model, gate = self.spec.model_ref, self.spec.evaluation_ref
        refs = [Reference("spec.modelRef", model.kind, model.name)]
        if gate:
            refs.append(Reference("spec.evaluationRef", "Evaluation", gate.name))
        return refs
