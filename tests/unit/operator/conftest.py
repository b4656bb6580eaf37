"""Resources, owners, defaults and observations for the stage and renderer tests: plain values,
no cluster."""

import datetime

import pytest
import yaml

from lmforge.operator.api import parse
from lmforge.operator.api.common import Artifact, RunPolicy, TrainingStatus
from lmforge.operator.render.names import Owner
from lmforge.operator.render.pods import Defaults, Rendering
from lmforge.operator.render.status import Observed
from lmforge.operator.stages import STAGES
from lmforge.operator.stages.base import storage
from lmforge.operator.stages.inputs import Dependencies

PRETRAIN = """
apiVersion: lmforge.dev/v1alpha1
kind: PretrainJob
metadata: {name: tiny, namespace: team-a}
spec:
  datasetRef: {name: corpus}
  model: {preset: tiny}
  training: {steps: 20, globalBatchTokens: 4096, microBatch: 4}
  resources: {nodes: 3, processesPerNode: 2, cpu: "4", memory: 8Gi}
  storage: {uri: "s3://bucket/team-a", secretName: s3-credentials, endpointUrl: "http://s3:9000"}
"""

DATASET = """
apiVersion: lmforge.dev/v1alpha1
kind: Dataset
metadata: {name: corpus, namespace: team-a}
spec:
  sources: [{uri: "s3://raw/*.jsonl", format: jsonl}]
  resources: {nodes: 3}
  storage: {uri: "s3://bucket/team-a", endpointUrl: "http://s3:9000"}
"""

EVALUATION = """
apiVersion: lmforge.dev/v1alpha1
kind: Evaluation
metadata: {name: check, namespace: team-a}
spec:
  modelRef: {kind: PretrainJob, name: tiny}
  tasks: [{name: ppl, type: perplexity, datasetRef: {name: corpus}}]
  thresholds: [{metric: ppl.perplexity, max: 50}]
  storage: {uri: "s3://bucket"}
"""

DEPLOYMENT = """
apiVersion: lmforge.dev/v1alpha1
kind: Deployment
metadata: {name: chat, namespace: team-a}
spec:
  modelRef: {kind: FineTune, name: tuned}
  evaluationRef: {name: gate}
  replicas: 2
  storage: {uri: "s3://bucket", secretName: s3-credentials}
"""

NOW = datetime.datetime(2026, 11, 1, 12, 0, 0, tzinfo=datetime.UTC)


@pytest.fixture
def resource():
    """A parsed resource from YAML text, with keys of `spec` replaced by `overrides`."""

    def make(text: str = PRETRAIN, **overrides):
        document = yaml.safe_load(text)
        document["spec"].update(overrides)
        return parse(document)

    return make


@pytest.fixture
def owner():
    def make(kind: str = "PretrainJob", name: str = "tiny") -> Owner:
        return Owner("lmforge.dev/v1alpha1", kind, name, "team-a", f"uid-{name}")

    return make


@pytest.fixture
def defaults() -> Defaults:
    return Defaults(image="registry.local/lmforge-trainer:test", storage_uri="s3://default")


@pytest.fixture
def rendering(owner, defaults):
    """What the operator renders a resource from: its description, given the outputs of its
    references (field -> URI, or an Artifact)."""

    def make(resource, outputs=None, defaults=defaults, traceparent=None) -> Rendering:
        stage = STAGES[resource.kind]
        store = storage(resource.spec.storage, defaults.store)
        found = {
            field: out if isinstance(out, Artifact) else Artifact(uri=out)
            for field, out in (outputs or {}).items()
        }
        described = stage.describe(resource, found, store)
        who = owner(resource.kind, resource.metadata.name)
        return Rendering(who, resource, stage.role, described, defaults, store, traceparent)

    return make


@pytest.fixture
def observed():
    """An Observed with everything ready unless overridden; `previous` given as the API's dict
    and read with `status` (the kind's Status model)."""

    def make(status=TrainingStatus, previous=None, **fields) -> Observed:
        values = dict(
            previous=status.model_validate(previous or {}),
            generation=1,
            run_policy=RunPolicy(),
            dependencies=Dependencies([], [], {}),
            pods=(),
            now=NOW,
        )
        values.update(fields)
        return Observed(**values)

    return make
