"""Parts shared by several kinds: where work runs, how it is retried, where it stores, status."""

from __future__ import annotations

import datetime
from typing import Any, Literal

from pydantic import ConfigDict, Field

from lmforge.operator.api import conditions as c
from lmforge.operator.api.base import (
    NAME_PATTERN,
    QUANTITY_PATTERN,
    URI_PATTERN,
    LocalRef,
    Model,
    Reference,
    Rule,
)
from lmforge.operator.api.conditions import COMPLETED, FAILED, RUNNING, SUCCEEDED


class Toleration(Model):
    """A pod toleration, as in core/v1."""

    key: str | None = None
    operator: Literal["Exists", "Equal"] | None = None
    value: str | None = None
    effect: Literal["NoSchedule", "PreferNoSchedule", "NoExecute"] | None = None
    toleration_seconds: int | None = None


class PodResources(Model):
    """What each pod gets and where it may run."""

    gpus: int = Field(default=0, ge=0, le=16)
    """GPUs per pod (nvidia.com/gpu)."""
    cpu: str = Field(default="1", pattern=QUANTITY_PATTERN)
    """CPU request and limit per pod, a Kubernetes quantity."""
    memory: str = Field(default="2Gi", pattern=QUANTITY_PATTERN)
    """Memory request and limit per pod, a Kubernetes quantity."""
    image: str | None = None
    """Container image; the operator's default for the kind when unset."""
    node_selector: dict[str, str] = Field(default_factory=dict)
    tolerations: list[Toleration] = Field(default_factory=list, max_length=32)
    pod_template: dict[str, Any] | None = None
    """A pod template overlay merged into every pod (strategic-merge style), e.g. extra volumes."""


class Resources(PodResources):
    """Worker pods of a training-type job: `nodes` pods, each running `processesPerNode` ranks."""

    nodes: int = Field(default=1, ge=1, le=1024)
    """Worker pods; torchrun's --nnodes. With minNodes, the most the gang runs with."""
    min_nodes: int | None = Field(default=None, ge=1, le=1024)
    """Elastic training: the fewest worker pods the gang goes on with. A lost worker (deleted,
    evicted, its node gone) other than worker 0 is replaced alone while the others continue
    from the last checkpoint; the gang grows back when its replacement runs."""
    processes_per_node: int = Field(default=1, ge=1, le=64)
    """Ranks per pod; torchrun's --nproc-per-node. Usually the GPUs per node."""

    rules = (
        Rule(
            "self.gpus == 0 || self.processesPerNode <= self.gpus",
            "must not exceed gpus: each process drives one GPU",
            ".processesPerNode",
        ),
        Rule(
            "!has(self.minNodes) || self.minNodes < self.nodes",
            "must be less than nodes: an elastic gang runs with between minNodes and nodes"
            " workers (leave minNodes unset for a fixed size)",
            ".minNodes",
        ),
    )


FailureAction = Literal["Ignore", "Count", "FailJob"]
"""As in a batch Job's podFailurePolicy: restart without counting the failure against
runPolicy.backoffLimit, restart and count it, or fail the run."""


class FailurePolicy(Model):
    """What each class of failure does. By default what the cluster did to a run (preempted,
    evicted, its node lost) restarts it without using up its budget; what the run did itself
    (out of memory, its code failed, it hung) counts."""

    preempted: FailureAction = "Ignore"
    """Stopped with SIGTERM by a preemption (Kueue, the scheduler), after a checkpoint."""
    evicted: FailureAction = "Ignore"
    """Evicted by the kubelet (node pressure) or through the eviction API (a drain)."""
    worker_lost: FailureAction = "Ignore"
    """A pod disappeared, or its node stopped reporting."""
    oom_killed: FailureAction = "Count"
    job_failed: FailureAction = "Count"
    """The job's own code failed (a nonzero exit that is none of the above)."""
    timed_out: FailureAction = "Count"
    """A rendezvous, a collective or the run's progress timed out (runPolicy's timeouts)."""

    def action(self, reason: str) -> FailureAction:
        """The action for a failure of condition reason `reason`; FailJob for a reason no
        restart can help (a configuration error, a deadline)."""
        field = FAILURE_CLASSES.get(reason)
        return getattr(self, field) if field else "FailJob"


FAILURE_CLASSES = {
    c.PREEMPTED: "preempted",
    c.EVICTED: "evicted",
    c.WORKER_LOST: "worker_lost",
    c.OOM_KILLED: "oom_killed",
    c.JOB_FAILED: "job_failed",
    c.RENDEZVOUS_TIMEOUT: "timed_out",
    c.COLLECTIVE_TIMEOUT: "timed_out",
    c.PROGRESS_TIMEOUT: "timed_out",
}
"""Failure reason -> the field of FailurePolicy that decides it."""


class SchedulingPolicy(Model):
    """Where the run queues, as in Kubeflow's RunPolicy.schedulingPolicy."""

    queue: str | None = Field(default=None, pattern=NAME_PATTERN)
    """The Kueue LocalQueue (or Volcano queue) the pods wait in, admitted all at once; the
    resource's kueue.x-k8s.io/queue-name label does the same."""
    priority_class: str | None = Field(default=None, pattern=NAME_PATTERN)
    """Kueue's WorkloadPriorityClass (Volcano: a PriorityClass); a higher one preempts lower
    ones, which checkpoint and wait to be admitted again. Also the kueue.x-k8s.io/priority-class
    label."""


class RunPolicy(Model):
    """How a run is retried, bounded, cleaned up and paused (as in Kubeflow's RunPolicy)."""

    backoff_limit: int = Field(default=3, ge=0, le=100)
    """Restarts allowed after failures that count (failurePolicy) before the run is Failed; the
    count is status.failures, which outlives the pods."""
    failure_policy: FailurePolicy = Field(default_factory=FailurePolicy)
    scheduling_policy: SchedulingPolicy = Field(default_factory=SchedulingPolicy)
    active_deadline_seconds: int | None = Field(default=None, ge=1)
    """Wall-clock limit for the whole run, restarts included."""
    ttl_seconds_after_finished: int | None = Field(default=None, ge=0)
    """Delete the child objects this long after the run finished (checkpoints are kept)."""
    suspend: bool = False
    """Stop the pods and keep checkpoints; setting it back to false resumes."""
    rendezvous_timeout_seconds: int = Field(default=600, ge=5, le=86400)
    """How long the workers of a multi-node gang wait for each other before the attempt fails
    (RendezvousTimeout)."""
    collective_timeout_seconds: int = Field(default=600, ge=5, le=86400)
    """How long one collective (an all-reduce, a checkpoint's) may block before the attempt fails
    (CollectiveTimeout); torch.distributed's own default is 600."""
    progress_timeout_seconds: int | None = Field(default=None, ge=30, le=604800)
    """Restart a running training gang that reported nothing (no step, no checkpoint) for this
    long (ProgressTimeout); unset: never. Set it above the slowest step plus checkpoint."""


class Storage(Model):
    """Object storage for outputs. Credentials come from a Secret, never from the spec."""

    uri: str | None = Field(default=None, pattern=URI_PATTERN)
    """URI prefix (s3://bucket/prefix, file:///path); the operator's default when unset."""
    secret_name: str | None = Field(default=None, pattern=NAME_PATTERN)
    """Secret with AWS_ACCESS_KEY_ID / AWS_SECRET_ACCESS_KEY (or the provider's equivalents)."""
    endpoint_url: str | None = Field(default=None, pattern=r"^https?://.+")
    """S3 endpoint for S3-compatible stores (MinIO, Ceph, a local test server)."""


class ModelSource(Model):
    """Where a base model comes from: exactly one of a PretrainJob, a FineTune or a URI."""

    pretrain_job_ref: LocalRef | None = None
    fine_tune_ref: LocalRef | None = None
    uri: str | None = Field(default=None, pattern=URI_PATTERN)
    """A Hugging Face Llama checkpoint directory (config.json + *.safetensors + tokenizer)."""

    rules = (
        Rule(
            "(has(self.pretrainJobRef) ? 1 : 0) + (has(self.fineTuneRef) ? 1 : 0)"
            " + (has(self.uri) ? 1 : 0) == 1",
            "set exactly one of pretrainJobRef, fineTuneRef or uri",
        ),
    )

    def references(self, field: str) -> list[Reference]:
        """The resource this source names, if it names one; `field` is where the source is."""
        if self.pretrain_job_ref:
            return [Reference(f"{field}.pretrainJobRef", "PretrainJob", self.pretrain_job_ref.name)]
        if self.fine_tune_ref:
            return [Reference(f"{field}.fineTuneRef", "FineTune", self.fine_tune_ref.name)]
        return []


class ModelRef(Model):
    """A trained model: the output of a PretrainJob or a FineTune."""

    kind: Literal["PretrainJob", "FineTune"] = "FineTune"
    name: str = Field(pattern=NAME_PATTERN, max_length=63)


class Workload(Model):
    """The fields every workload kind shares."""

    resources: Resources = Field(default_factory=Resources)
    run_policy: RunPolicy = Field(default_factory=RunPolicy)
    storage: Storage = Field(default_factory=Storage)


# ----- status -----


def timestamp(moment: datetime.datetime) -> str:
    """A time as the API writes it: RFC 3339 in UTC, to the second."""
    return moment.astimezone(datetime.UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


def parse_time(text: str) -> datetime.datetime:
    return datetime.datetime.strptime(text, "%Y-%m-%dT%H:%M:%SZ").replace(tzinfo=datetime.UTC)


class Condition(Model):
    """A condition, as in metav1.Condition."""

    type: str
    status: Literal["True", "False", "Unknown"]
    reason: str = ""
    message: str = ""
    last_transition_time: str | None = None
    observed_generation: int | None = None


class Artifact(Model):
    """An input or output of a resource, with its digest when known."""

    uri: str
    digest: str | None = None
    kind: str | None = None
    name: str | None = None


class Lineage(Model):
    """Every input and output, so that 'which models were trained on this source' has an answer."""

    inputs: list[Artifact] = Field(default_factory=list)
    outputs: list[Artifact] = Field(default_factory=list)
    image: str | None = None
    parent_checkpoint: str | None = None
    code_version: str | None = None


class Checkpoint(Model):
    """The newest committed checkpoint."""

    step: int
    uri: str
    time: str | None = None


Phase = Literal["Pending", "Queued", "Waiting", "Running", "Suspended", "Succeeded", "Failed"]


class Status(Model):
    """What every kind reports. Both backends change a status only through these methods and
    typed assignments (checked), and write it out with `wire()`."""

    model_config = ConfigDict(frozen=False, validate_assignment=True)

    phase: Phase | None = None
    conditions: list[Condition] = Field(default_factory=list)
    observed_generation: int | None = None
    start_time: str | None = None
    completion_time: str | None = None
    lineage: Lineage | None = None
    restarts: int = 0
    """Attempts started after the first, whatever stopped the one before."""
    failures: int = 0
    """Failures counted against runPolicy.backoffLimit (runPolicy.failurePolicy says which)."""

    def wire(self) -> dict[str, Any]:
        """As written to the API: what is set, without the fields still at their defaults (no
        empty conditions, no restarts: 0)."""
        fields = type(self).model_fields
        unset = {
            k
            for k, f in fields.items()
            if getattr(self, k) == f.get_default(call_default_factory=True)
        }
        return self.model_dump(by_alias=True, exclude_none=True, exclude=unset, mode="json")

    def condition(self, type_: str) -> Condition | None:
        return next((c for c in self.conditions if c.type == type_), None)

    def set_condition(
        self, type_: str, value: bool, reason: str, message: str, now: datetime.datetime
    ) -> None:
        """Add or update a condition; lastTransitionTime moves only when its status flips."""
        text = "True" if value else "False"
        found = self.condition(type_)
        moved = found is None or found.status != text
        updated = Condition(
            type=type_,
            status=text,
            reason=reason,
            message=message,
            last_transition_time=timestamp(now) if moved else found.last_transition_time,
            observed_generation=self.observed_generation,
        )
        others = [c for c in self.conditions if c.type != type_]
        at = self.conditions.index(found) if found else len(others)
        self.conditions = [*others[:at], updated, *others[at:]]

    def is_true(self, type_: str) -> bool:
        found = self.condition(type_)
        return found is not None and found.status == "True"

    def fail(self, reason: str, message: str, now: datetime.datetime) -> None:
        self.phase = "Failed"
        self.completion_time = self.completion_time or timestamp(now)
        self.set_condition(RUNNING, False, reason, message, now)
        self.set_condition(FAILED, True, reason, message, now)

    def succeed(self, message: str, now: datetime.datetime) -> None:
        self.phase = "Succeeded"
        self.completion_time = self.completion_time or timestamp(now)
        self.set_condition(RUNNING, False, COMPLETED, message, now)
        self.set_condition(SUCCEEDED, True, COMPLETED, message, now)


class TrainingStatus(Status):
    """Progress of a training-type run, read from the trainer's progress file."""

    step: int | None = None
    total_steps: int | None = None
    progress: str | None = None
    """step/total, for `kubectl get`."""
    tokens: int | None = None
    loss: float | None = None
    tokens_per_second: float | None = None
    percent_complete: int | None = None
    eta_seconds: int | None = None
    """Estimated seconds to the last step, from the step rate measured since this attempt
    started."""
    eta: str | None = None
    """eta_seconds for people (1h02m, 4m10s), for `kubectl get`."""
    validation_loss: float | None = None
    skipped_steps: int | None = None
    """Steps whose update the divergence guard skipped (training.divergence)."""
    last_checkpoint: Checkpoint | None = None
