"""Pods as observed, and why one failed: the reason decides whether the gang restarts."""

import pytest

from lmforge.operator.api import conditions
from lmforge.operator.render.observe import Admission, admission, failure, lost, observe

TORCHRUN_CONFIG_ERROR = """error: model.contextLength (128) is shorter than the dataset's sequences
torch.distributed.elastic.multiprocessing.errors.ChildFailedError:
Root Cause (first observed failure):
[0]:
  rank      : 0 (local_rank: 0)
  exitcode  : 2 (pid: 41)
"""

RENDEZVOUS = """  File ".../torch/distributed/elastic/rendezvous/static_tcp_rendezvous.py", in next_rendezvous
torch.distributed.DistStoreError: Timed out after 601 seconds waiting for clients. 1/2 clients joined.
"""
COLLECTIVE = """error: rank 1: a collective did not complete within runPolicy.collectiveTimeoutSeconds (600 s)
Root Cause (first observed failure):
  exitcode  : 3 (pid: 41)
"""
WATCHDOG = (
    "[Rank 1] Watchdog caught collective operation timeout: WorkNCCL(SeqNum=9, OpType=ALLREDUCE)"
)


def pod(phase="Running", terminated=None, waiting=None, reason=None, conditions=(), deleting=False):
    state = {"terminated": terminated} if terminated else {"waiting": waiting} if waiting else {}
    status = {
        "phase": phase,
        "containerStatuses": [{"name": "trainer", "state": state}],
        "conditions": list(conditions),
    }
    if reason:
        status["reason"] = reason
    meta = {
        "name": "tiny-worker-1",
        "labels": {
            "lmforge.dev/role": "worker",
            "lmforge.dev/index": "1",
            "lmforge.dev/attempt": "2",
        },
    }
    if deleting:
        meta["deletionTimestamp"] = "2026-11-01T12:00:00Z"
    return {"metadata": meta, "status": status}


def test_labels_and_state():
    state = observe(pod(waiting={"reason": "ImagePullBackOff", "message": "no such image"}))
    assert (state.role, state.index, state.attempt, state.phase) == ("worker", 1, 2, "Running")
    assert state.waiting == "ImagePullBackOff: no such image"
    assert state.active and not observe(pod(deleting=True)).active


@pytest.mark.parametrize(
    ("observed", "reason", "retryable", "words"),
    [
        (pod(), None, None, None),
        (pod("Pending", waiting={"reason": "ContainerCreating"}), None, None, None),
        (pod("Succeeded", terminated={"exitCode": 0, "reason": "Completed"}), None, None, None),
        (
            pod("Failed", terminated={"exitCode": 137, "reason": "OOMKilled"}),
            conditions.OOM_KILLED,
            True,
            "raise spec.resources.memory",
        ),
        (pod("Failed", reason="Evicted"), conditions.EVICTED, True, "evicted"),
        (
            pod(
                "Failed",
                terminated={"exitCode": 1, "reason": "Error"},
                conditions=[{"type": "DisruptionTarget", "status": "True"}],
            ),
            conditions.PREEMPTED,
            True,
            "preempted",
        ),
        (
            pod("Failed", terminated={"exitCode": 143, "reason": "Error"}),
            conditions.PREEMPTED,
            True,
            "SIGTERM",
        ),
        (
            pod(
                "Failed",
                terminated={"exitCode": 1, "reason": "Error", "message": TORCHRUN_CONFIG_ERROR},
            ),
            conditions.CONFIG_ERROR,
            False,
            "model.contextLength (128) is shorter",
        ),
        (
            pod("Failed", terminated={"exitCode": 2, "reason": "Error"}),
            conditions.CONFIG_ERROR,
            False,
            "configuration error",
        ),
        (
            pod(
                "Failed", terminated={"exitCode": 1, "reason": "Error", "message": "error: boom\n"}
            ),
            conditions.JOB_FAILED,
            True,
            "exited with 1: boom",
        ),
        (pod("Unknown"), conditions.WORKER_LOST, True, "stopped reporting"),
        (
            pod("Failed", terminated={"exitCode": 1, "reason": "Error", "message": RENDEZVOUS}),
            conditions.RENDEZVOUS_TIMEOUT,
            True,
            "did not all meet within runPolicy.rendezvousTimeoutSeconds: Timed out after 601"
            " seconds waiting for clients. 1/2 clients joined.",
        ),
        (
            pod("Failed", terminated={"exitCode": 1, "reason": "Error", "message": COLLECTIVE}),
            conditions.COLLECTIVE_TIMEOUT,
            True,
            "a collective timed out: rank 1: a collective did not complete",
        ),
        (
            pod("Failed", terminated={"exitCode": 1, "reason": "Error", "message": WATCHDOG}),
            conditions.COLLECTIVE_TIMEOUT,
            True,
            "a collective timed out",
        ),
    ],
)
def test_failure_classification(observed, reason, retryable, words):
    found = failure(observe(observed))
    if reason is None:
        assert found is None
        return
    assert (found.reason, found.retryable) == (reason, retryable)
    assert words in found.message and found.message.startswith("tiny-worker-1")


def test_lost():
    assert lost("tiny-worker-2") == (
        conditions.WORKER_LOST,
        "tiny-worker-2 disappeared (deleted or its node was lost)",
        True,
    )


def test_kueues_gate_and_termination_target_are_seen():
    gated = pod("Pending")
    gated["spec"] = {"schedulingGates": [{"name": "kueue.x-k8s.io/admission"}]}
    assert observe(gated).gated and not observe(pod()).gated
    evicted = {"type": "TerminationTarget", "status": "True",
               "reason": "WorkloadEvictedDueToPreempted"}  # fmt: skip
    ended = observe(pod("Failed", terminated={"exitCode": 7}, conditions=[evicted]))
    assert failure(ended).reason == conditions.PREEMPTED


def test_admission_reads_the_workloads_quota_reservation():
    reserved = {"type": "QuotaReserved", "status": "True", "reason": "QuotaReserved", "message": ""}
    assert admission({"status": {"conditions": [reserved]}}).admitted
    pending = {**reserved, "status": "False", "reason": "Pending", "message": "insufficient quota"}
    found = admission({"status": {"conditions": [pending]}})
    assert found == Admission(False, "Pending", "insufficient quota")
    assert admission(None) == Admission(
        False, "WaitingForPods", "Kueue has not made the pod group's Workload yet"
    )
