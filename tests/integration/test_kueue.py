"""Kueue (tests/cluster/kueue.py) admits a group of plain pods as one Workload: gated until the
whole group exists and fits the ClusterQueue's quota, then all at once; a group of higher priority
evicts a running one, whose pods then have to be created again. The operator builds on exactly
this, so the tests pin the names, conditions and messages Kueue v0.17 writes."""

import time

from cluster import python_pod
from kubeapi import Api

GATE = {"name": "kueue.x-k8s.io/admission"}
GROUP_LABEL = "kueue.x-k8s.io/pod-group-name"


def group(name: str, queue: str, cpu: str, code: str, priority: str | None = None) -> list[dict]:
    """A pod group of 2, each pod requesting `cpu`."""
    labels = {"kueue.x-k8s.io/queue-name": queue, GROUP_LABEL: name}
    if priority:
        labels["kueue.x-k8s.io/priority-class"] = priority
    metadata = {"labels": labels, "annotations": {"kueue.x-k8s.io/pod-group-total-count": "2"}}
    container = {"resources": {"requests": {"cpu": cpu}}}
    return [python_pod(f"{name}-{i}", code, metadata=metadata, container=container) for i in (0, 1)]


def conditions(obj: dict) -> dict[str, tuple[str, str]]:
    return {c["type"]: (c["status"], c["reason"]) for c in obj["status"].get("conditions", [])}


def test_a_pod_group_is_admitted_once_all_its_pods_exist(cluster, namespace, queue):
    first, second = group("gang", queue, "250m", "print('ran')")
    cluster.apply(first, namespace=namespace)
    # Kueue has looked at the group, and makes no Workload for one pod of two.
    event = "--field-selector=involvedObject.name=gang-0,reason=ErrWorkloadCompose"
    deadline = time.monotonic() + 30
    while not (events := cluster.get("events", "-n", namespace, event)["items"]):
        assert time.monotonic() < deadline, "no ErrWorkloadCompose event for gang-0"
        time.sleep(0.5)
    assert {e["message"] for e in events} == {"'gang' group has fewer runnable pods than expected"}
    pod = cluster.get("pod", "gang-0", "-n", namespace)
    assert GATE in pod["spec"]["schedulingGates"]
    assert pod["status"]["phase"] == "Pending"
    assert pod["metadata"]["finalizers"] == ["kueue.x-k8s.io/managed"]
    assert cluster.get("workloads", "-n", namespace)["items"] == []

    cluster.apply(second, namespace=namespace)
    for name in ("gang-0", "gang-1"):
        cluster.wait(f"pod/{name}", "jsonpath={.status.phase}=Succeeded", namespace, timeout=90)
    cluster.wait("workload/gang", "condition=Finished", namespace)
    workload = cluster.get("workload", "gang", "-n", namespace)
    owners = sorted(o["name"] for o in workload["metadata"]["ownerReferences"])
    assert owners == ["gang-0", "gang-1"]
    assert workload["status"]["admission"]["podSetAssignments"][0]["count"] == 2
    assert conditions(workload) == {
        "QuotaReserved": ("True", "QuotaReserved"),
        "Admitted": ("True", "Admitted"),
        "Finished": ("True", "Succeeded"),
    }
    for name in ("gang-0", "gang-1"):
        pod = cluster.get("pod", name, "-n", namespace)
        assert pod["metadata"]["annotations"]["kueue.x-k8s.io/workload"] == "gang"
        assert "schedulingGates" not in pod["spec"]
        assert "finalizers" not in pod["metadata"]


def test_a_group_over_the_quota_stays_gated_and_its_workload_says_why(cluster, namespace, queue):
    cluster.apply(*group("big", queue, "1", "print('ran')"), namespace=namespace)
    cluster.wait("workload/big", "condition=QuotaReserved=False", namespace)
    workload = cluster.get("workload", "big", "-n", namespace)
    (reserved,) = workload["status"]["conditions"]
    role = cluster.get("pod", "big-0", "-n", namespace)["metadata"]["annotations"]
    assert (reserved["type"], reserved["status"], reserved["reason"]) == (
        "QuotaReserved", "False", "Pending",
    )  # fmt: skip
    assert reserved["message"] == (
        f"couldn't assign flavors to pod set {role['kueue.x-k8s.io/role-hash']}: insufficient "
        f"quota for cpu in flavor {namespace}, previously considered podsets requests (0) + "
        "current podset request (2) > maximum capacity (1)"
    )
    for name in ("big-0", "big-1"):
        pod = cluster.get("pod", name, "-n", namespace)
        assert GATE in pod["spec"]["schedulingGates"]
        assert pod["status"]["phase"] == "Pending"


LOW = """
    import signal, sys, time
    def stop(*_):
        print("SIGTERM", flush=True)
        time.sleep(2)
        sys.exit(7)
    signal.signal(signal.SIGTERM, stop)
    print("started", flush=True)
    time.sleep(600)
"""


def test_a_higher_priority_group_evicts_a_running_one(cluster, namespace, queue):
    _evict(cluster, namespace, queue)


def _evict(cluster, namespace: str, queue: str) -> None:
    low = group("low", queue, "500m", LOW, f"{namespace}-low")
    cluster.apply(*low, namespace=namespace)
    for name in ("low-0", "low-1"):
        cluster.wait(f"pod/{name}", "jsonpath={.status.phase}=Running", namespace, timeout=90)
        while "started" not in cluster.logs(namespace, name):  # its SIGTERM handler is set
            time.sleep(0.2)
    workload = cluster.get("workload", "low", "-n", namespace)

    # Every version of the low pods from here on: how Kueue deletes them.
    api = Api(cluster.kubeconfig)
    pods = f"/api/v1/namespaces/{namespace}/pods"
    selector = f"{GROUP_LABEL}=low"
    version = api.get(pods, labelSelector=selector)["metadata"]["resourceVersion"]
    high = group("high", queue, "500m", "import time; time.sleep(10)", f"{namespace}-high")
    cluster.apply(*high, namespace=namespace)
    deleted: dict[str, dict] = {}
    for event in api.watch(pods, timeout=60, resourceVersion=version, labelSelector=selector):
        pod = event["object"]
        if event["type"] != "BOOKMARK" and pod["metadata"].get("deletionTimestamp"):
            deleted.setdefault(pod["metadata"]["name"], pod)
        if len(deleted) == 2:
            break
    assert sorted(deleted) == ["low-0", "low-1"]
    for pod in deleted.values():
        # Deleted with the pod's own grace period (the kubelet sends SIGTERM), after a condition
        # that says why: on the pod, in the same words as the Workload's Evicted condition.
        assert pod["metadata"]["deletionGracePeriodSeconds"] == 5
        assert pod["status"]["phase"] == "Running"
        (target,) = [c for c in pod["status"]["conditions"] if c["type"] == "TerminationTarget"]
        assert (target["status"], target["reason"]) == ("True", "WorkloadEvictedDueToPreempted")
        assert target["message"].startswith("Preempted to accommodate a workload (UID: ")

    # The Workload stays, evicted and back in the queue; it waits for quota and for new pods.
    cluster.wait("workload/low", "condition=Requeued", namespace)
    evicted = cluster.get("workload", "low", "-n", namespace)
    assert evicted["metadata"]["uid"] == workload["metadata"]["uid"]
    assert conditions(evicted) == {
        "QuotaReserved": ("False", "Pending"),
        "Evicted": ("True", "Preempted"),
        "Admitted": ("False", "NoReservation"),
        "Preempted": ("True", "InClusterQueue"),
        "WaitingForReplacementPods": ("True", "Preempted"),
        "Requeued": ("True", "Preempted"),
    }
    messages = {c["message"] for c in evicted["status"]["conditions"] if c["reason"] == "Preempted"}
    (message,) = messages
    assert message.endswith(
        "due to prioritization in the ClusterQueue; "
        f"preemptor path: /{namespace}; preemptee path: /{namespace}"
    )
    # The evicted pods ran their SIGTERM handler and failed; Kueue's finalizer keeps them.
    for name in ("low-0", "low-1"):
        pod = cluster.get("pod", name, "-n", namespace)
        assert pod["status"]["phase"] == "Failed"
        assert pod["status"]["containerStatuses"][0]["state"]["terminated"]["exitCode"] == 7
        assert pod["metadata"]["finalizers"] == ["kueue.x-k8s.io/managed"]
        assert "deletionTimestamp" in pod["metadata"]

    for name in ("high-0", "high-1"):
        cluster.wait(f"pod/{name}", "jsonpath={.status.phase}=Succeeded", namespace, timeout=90)
    # Admitted again once the quota is free, with none of its pods running: Kueue makes no pods.
    cluster.wait("workload/low", "condition=Admitted", namespace)
    readmitted = cluster.get("workload", "low", "-n", namespace)
    assert conditions(readmitted)["Evicted"] == ("False", "QuotaReserved")
    assert conditions(readmitted)["WaitingForReplacementPods"] == ("True", "Preempted")

    # New pods of the group (new names: the old ones still exist) join the same Workload, are
    # ungated at once, and replace the failed ones, which Kueue then lets go.
    replacements = group("low", queue, "500m", "print('again')", f"{namespace}-low")
    for pod in replacements:
        pod["metadata"]["name"] += "-again"
    cluster.apply(*replacements, namespace=namespace)
    for name in ("low-0-again", "low-1-again"):
        cluster.wait(f"pod/{name}", "jsonpath={.status.phase}=Succeeded", namespace, timeout=90)
    cluster("wait", "-n", namespace, "pod/low-0", "pod/low-1", "--for=delete", "--timeout=60s")
    cluster.wait("workload/low", "condition=Finished", namespace)
    finished = cluster.get("workload", "low", "-n", namespace)
    assert finished["metadata"]["uid"] == workload["metadata"]["uid"]
    owners = sorted(o["name"] for o in finished["metadata"]["ownerReferences"])
    assert owners == ["low-0-again", "low-1-again"]
    assert conditions(finished)["WaitingForReplacementPods"] == ("False", "PodsReady")
