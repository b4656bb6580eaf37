"""Pods really run: Jobs, volumes and env from the API, DNS through a headless Service, restarts,
graceful deletion, S3 with credentials from a Secret, and the node's own heartbeat."""

import json
import re
import subprocess
import time
from datetime import UTC, datetime

from cluster import python_pod


def _job(name: str, code: str) -> dict:
    pod = python_pod(name, code)
    return {
        "apiVersion": "batch/v1",
        "kind": "Job",
        "metadata": {"name": name},
        "spec": {"backoffLimit": 0, "template": {"spec": pod["spec"]}},
    }


def _pods_of(cluster, namespace: str, job: str) -> list[dict]:
    return cluster.get("pods", "-n", namespace, "-l", f"job-name={job}")["items"]


def _phase(name: str, phase: str) -> tuple[str, str]:
    return f"pod/{name}", f"jsonpath={{.status.phase}}={phase}"


def test_job_running_python_succeeds(cluster, namespace):
    cluster.apply(_job("adds", "print('sum', sum(range(10)))"), namespace=namespace)
    cluster.wait("job/adds", "condition=Complete", namespace)
    (pod,) = _pods_of(cluster, namespace, "adds")
    assert pod["status"]["phase"] == "Succeeded"
    (status,) = pod["status"]["containerStatuses"]
    assert status["state"]["terminated"]["exitCode"] == 0
    assert status["state"]["terminated"]["reason"] == "Completed"
    assert pod["status"]["podIP"]
    assert cluster.logs(namespace, pod["metadata"]["name"]) == "sum 45\n"


def test_failing_job_shows_the_exit_code(cluster, namespace):
    code = "import sys; print('giving up'); sys.exit(3)"
    cluster.apply(_job("fails", code), namespace=namespace)
    cluster.wait("job/fails", "condition=Failed", namespace)
    (pod,) = _pods_of(cluster, namespace, "fails")
    assert pod["status"]["phase"] == "Failed"
    (status,) = pod["status"]["containerStatuses"]
    assert status["state"]["terminated"]["exitCode"] == 3
    assert status["state"]["terminated"]["reason"] == "Error"
    assert cluster.logs(namespace, pod["metadata"]["name"]) == "giving up\n"


def test_pod_reads_configmap_volume_secret_env_and_downward_api(cluster, namespace):
    cluster("create", "configmap", "settings", "-n", namespace, "--from-literal=greeting=hello")
    cluster("create", "secret", "generic", "creds", "-n", namespace, "--from-literal=token=s3cr3t")
    code = """
        import importlib.util, json, os, sys
        try:
            open("/tmp/lmforge-test/settings/new", "w")
            read_only = False
        except OSError:
            read_only = True
        print(json.dumps({
            "read_only": read_only,
            "greeting": open("/tmp/lmforge-test/settings/greeting").read(),
            "labels": open("/tmp/lmforge-test/podinfo/labels").read(),
            "env": {k: os.environ[k] for k in ("TOKEN", "POD", "NAMESPACE", "IP", "NODE", "GREETING")},
            "cwd": os.getcwd(),
            "argv": sys.argv[1:],
            "python": [sys.executable, bool(importlib.util.find_spec("lmforge.jobs"))],
        }))
    """
    env = [
        {"name": "TOKEN", "valueFrom": {"secretKeyRef": {"name": "creds", "key": "token"}}},
        {"name": "POD", "valueFrom": {"fieldRef": {"fieldPath": "metadata.name"}}},
        {"name": "NAMESPACE", "valueFrom": {"fieldRef": {"fieldPath": "metadata.namespace"}}},
        {"name": "IP", "valueFrom": {"fieldRef": {"fieldPath": "status.podIP"}}},
        {"name": "NODE", "valueFrom": {"fieldRef": {"fieldPath": "spec.nodeName"}}},
        {
            "name": "GREETING",
            "valueFrom": {"configMapKeyRef": {"name": "settings", "key": "greeting"}},
        },
    ]
    mounts = [
        {"name": "settings", "mountPath": "/tmp/lmforge-test/settings", "readOnly": True},
        {"name": "podinfo", "mountPath": "/tmp/lmforge-test/podinfo"},
    ]
    volumes = [
        {"name": "settings", "configMap": {"name": "settings"}},
        {"name": "podinfo", "downwardAPI": {"items": [
            {"path": "labels", "fieldRef": {"fieldPath": "metadata.labels"}}]}},
    ]  # fmt: skip
    pod = python_pod(
        "reader", code, volumes=volumes, metadata={"labels": {"app": "reader"}},
        container={"env": env, "volumeMounts": mounts, "workingDir": "/tmp",
                   "args": ["$(POD).$(NAMESPACE)", "$$(POD)", "$(UNDEFINED)"]},
    )  # fmt: skip
    cluster.apply(pod, namespace=namespace)
    cluster.wait(*_phase("reader", "Succeeded"), namespace)
    seen = json.loads(cluster.logs(namespace, "reader"))
    status = cluster.get("pod", "reader", "-n", namespace)
    assert seen["greeting"] == "hello"
    assert seen["read_only"]
    assert seen["labels"] == 'app="reader"'
    assert seen["env"] == {
        "TOKEN": "s3cr3t",
        "POD": "reader",
        "NAMESPACE": namespace,
        "IP": status["status"]["podIP"],
        "NODE": status["spec"]["nodeName"],
        "GREETING": "hello",
    }
    assert seen["cwd"] == "/tmp"
    assert seen["argv"] == [f"reader.{namespace}", "$(POD)", "$(UNDEFINED)"]
    assert seen["python"][1], seen["python"]  # the job image's Python has lmforge


def test_pod_waits_for_a_missing_secret_then_runs(cluster, namespace):
    env = [{"name": "TOKEN", "valueFrom": {"secretKeyRef": {"name": "later", "key": "token"}}}]
    pod = python_pod("patient", "import os; print(os.environ['TOKEN'])", container={"env": env})
    cluster.apply(pod, namespace=namespace)
    waiting = (
        "jsonpath={.status.containerStatuses[0].state.waiting.reason}=CreateContainerConfigError"
    )
    cluster.wait("pod/patient", waiting, namespace)
    cluster("create", "secret", "generic", "later", "-n", namespace, "--from-literal=token=now")
    cluster.wait(*_phase("patient", "Succeeded"), namespace)
    assert cluster.logs(namespace, "patient") == "now\n"


def test_pod_calls_the_api_server_as_its_service_account(cluster, namespace):
    # In-cluster config, as kopf and the Python client do it: the service host and port from
    # the environment, the mounted token and CA; and the API server's DNS name.
    code = """
        import json, os, ssl, urllib.request
        folder = "/var/run/secrets/kubernetes.io/serviceaccount"
        context = ssl.create_default_context(cafile=f"{folder}/ca.crt")
        token = open(f"{folder}/token").read()
        host, port = os.environ["KUBERNETES_SERVICE_HOST"], os.environ["KUBERNETES_SERVICE_PORT"]
        for server in (f"{host}:{port}", "kubernetes.default.svc"):
            request = urllib.request.Request(
                f"https://{server}/apis/authentication.k8s.io/v1/selfsubjectreviews",
                data=json.dumps({"apiVersion": "authentication.k8s.io/v1",
                                 "kind": "SelfSubjectReview"}).encode(),
                headers={"Authorization": f"Bearer {token}", "Content-Type": "application/json"},
            )
            review = json.load(urllib.request.urlopen(request, context=context, timeout=10))
            print(review["status"]["userInfo"]["username"])
        print(open(f"{folder}/namespace").read())
    """
    cluster.apply(python_pod("caller", code), namespace=namespace)
    cluster.wait(*_phase("caller", "Succeeded"), namespace)
    account = f"system:serviceaccount:{namespace}:default"
    assert cluster.logs(namespace, "caller").splitlines() == [account, account, namespace]


# Both pods listen on :8000 and call each other through every DNS name a headless Service gives;
# each says who it is and is answered with the other's hostname.  A pod exits once it is done and
# has heard "done" from its peer, so neither leaves while the other still calls it.
PEER = """
    import os, socket, sys, threading, time
    me, peer, service = sys.argv[1:]
    namespace = os.environ["NAMESPACE"]
    server = socket.create_server(("", 8000))
    peer_done = threading.Event()
    def serve():
        while True:
            conn, _ = server.accept()
            if conn.makefile().readline().split() == [peer, "done"]:
                peer_done.set()
            conn.sendall(socket.gethostname().encode())
            conn.close()
    threading.Thread(target=serve, daemon=True).start()
    def call(name, what):
        for attempt in range(120):
            try:
                with socket.create_connection((name, 8000), timeout=2) as conn:
                    conn.sendall(f"{me} {what}\\n".encode())
                    return conn.recv(64).decode()
            except OSError:
                time.sleep(0.25)
        sys.exit(f"{me}: cannot reach {name}:8000")
    fqdn = f"{peer}.{service}.{namespace}.svc.cluster.local"
    for name in (f"{peer}.{service}", fqdn, f"{service}.{namespace}.svc", service):
        print(name, "->", call(name, "hello"))
    print("fqdn", socket.getfqdn())
    call(fqdn, "done")
    sys.exit(0 if peer_done.wait(60) else f"{me}: no 'done' from {peer}")
"""


def test_pods_reach_each_other_through_a_headless_service(cluster, namespace):
    service = {
        "apiVersion": "v1",
        "kind": "Service",
        "metadata": {"name": "peers"},
        "spec": {"clusterIP": "None", "selector": {"app": "peers"}, "ports": [{"port": 8000}]},
    }
    env = [{"name": "NAMESPACE", "valueFrom": {"fieldRef": {"fieldPath": "metadata.namespace"}}}]
    pods = [
        python_pod(
            me, PEER, hostname=me, subdomain="peers", metadata={"labels": {"app": "peers"}},
            container={"args": [me, peer, "peers"], "env": env},
        )
        for me, peer in (("w0", "w1"), ("w1", "w0"))
    ]  # fmt: skip
    cluster.apply(service, *pods, namespace=namespace)
    for me in ("w0", "w1"):
        cluster.wait(*_phase(me, "Succeeded"), namespace, timeout=90)
    ips = {cluster.get("pod", me, "-n", namespace)["status"]["podIP"] for me in ("w0", "w1")}
    assert len(ips) == 2  # two addresses, both listening on 8000
    for me, peer in (("w0", "w1"), ("w1", "w0")):
        lines = cluster.logs(namespace, me).splitlines()
        assert lines[:2] == [
            f"{peer}.peers -> {peer}",
            f"{peer}.peers.{namespace}.svc.cluster.local -> {peer}",
        ]
        # The Service's own name answers with either endpoint.
        assert lines[2] in (f"peers.{namespace}.svc -> w0", f"peers.{namespace}.svc -> w1")
        assert lines[3] in ("peers -> w0", "peers -> w1")
        assert lines[4] == f"fqdn {me}.peers.{namespace}.svc.cluster.local"


def test_on_failure_restarts_the_container_until_it_succeeds(cluster, namespace):
    code = """
        import os, sys
        if not os.path.exists("/tmp/lmforge-test/scratch/ran"):
            open("/tmp/lmforge-test/scratch/ran", "w").close()
            print("first run fails"); sys.exit(1)
        print("second run succeeds")
    """
    pod = python_pod(
        "flaky", code, restart="OnFailure", volumes=[{"name": "scratch", "emptyDir": {}}],
        container={"volumeMounts": [{"name": "scratch", "mountPath": "/tmp/lmforge-test/scratch"}]},
    )  # fmt: skip
    cluster.apply(pod, namespace=namespace)
    cluster.wait(*_phase("flaky", "Succeeded"), namespace)
    (status,) = cluster.get("pod", "flaky", "-n", namespace)["status"]["containerStatuses"]
    assert status["restartCount"] == 1  # the first run's exit code is in its log below
    assert status["state"]["terminated"]["exitCode"] == 0
    # The kubelet keeps the log of the last run (and of the one before while it restarts).
    assert cluster.logs(namespace, "flaky").endswith("second run succeeds\n")


def test_deletion_sends_sigterm_then_sigkill_after_the_grace_period(cluster, namespace):
    code = """
        import signal, sys, time
        polite = sys.argv[1] == "polite"
        def on_term(*_):
            print("SIGTERM", flush=True)
            if polite:
                sys.exit(0)
        signal.signal(signal.SIGTERM, on_term)
        print("running", flush=True)
        while True:
            time.sleep(0.1)
    """
    pods = [
        python_pod(name, code, container={"args": [name]}, terminationGracePeriodSeconds=2)
        for name in ("polite", "stubborn")
    ]
    cluster.apply(*pods, namespace=namespace)
    cluster.wait("pod/polite", "condition=Ready", namespace)
    cluster.wait("pod/stubborn", "condition=Ready", namespace)
    # Each container's output, followed until it ends; and every status the pods had.
    kubectl = [cluster.kubectl, "--kubeconfig", str(cluster.kubeconfig), "-n", namespace]
    follow = {n: subprocess.Popen([*kubectl, "logs", "-f", n], stdout=subprocess.PIPE, text=True)
              for n in ("polite", "stubborn")}  # fmt: skip
    watch = subprocess.Popen([*kubectl, "get", "pods", "--watch", "-o", "json",
                              "--output-watch-events"], stdout=subprocess.PIPE, text=True)  # fmt: skip
    time.sleep(1)  # the followers are attached
    cluster("delete", "pod", "polite", "stubborn", "-n", namespace, "--timeout=60s")
    gone = cluster("get", "pods", "-n", namespace, "-o", "name")
    watch.terminate()
    ended = {}
    for event in whole_documents(watch.communicate()[0]):
        pod = event["object"]
        for status in pod["status"].get("containerStatuses", []):
            if "terminated" in status["state"]:
                ended[pod["metadata"]["name"]] = status["state"]["terminated"]["exitCode"]
    assert gone.stdout == ""
    # Both got SIGTERM; the stubborn one, which ignores it, is gone too: SIGKILL after 2 s. The
    # exit codes are checked where the kubelet's last status reached the API before the pod left.
    for name, output in follow.items():
        assert output.communicate(timeout=30)[0] == "running\nSIGTERM\n", name
    assert ended.items() <= {"polite": 0, "stubborn": 137}.items(), ended


def test_pod_writes_to_s3_with_credentials_from_a_secret(cluster, namespace, s3, s3_endpoint):
    import s3fs

    code = """
        import os, s3fs
        fs = s3fs.S3FileSystem(endpoint_url=os.environ["S3_ENDPOINT"])
        fs.pipe(os.environ["BUCKET"] + "/hello.txt", b"written by " + os.environ["POD"].encode())
    """
    env = [
        {"name": "S3_ENDPOINT", "value": s3.endpoint},
        {"name": "BUCKET", "value": s3.bucket},
        {"name": "POD", "valueFrom": {"fieldRef": {"fieldPath": "metadata.name"}}},
    ]
    container = {"env": env, "envFrom": [{"secretRef": {"name": s3.secret}}]}
    cluster.apply(python_pod("writer", code, container=container), namespace=namespace)
    cluster.wait(*_phase("writer", "Succeeded"), namespace, timeout=90)
    written = s3fs.S3FileSystem(endpoint_url=s3_endpoint).cat(f"{s3.bucket}/hello.txt")
    assert written == b"written by writer"


def test_nodes_are_ready_and_renew_their_leases(cluster):
    nodes = cluster.get("nodes")["items"]
    assert nodes
    for node in nodes:
        name = node["metadata"]["name"]
        ready = [c for c in node["status"]["conditions"] if c["type"] == "Ready"]
        assert ready[0]["status"] == "True", (name, ready)
        assert {"cpu", "memory", "pods"} <= node["status"]["allocatable"].keys()
        lease = cluster.get("lease", name, "-n", "kube-node-lease")["spec"]
        renewed = datetime.strptime(lease["renewTime"], "%Y-%m-%dT%H:%M:%S.%fZ")
        age = datetime.now(UTC).replace(tzinfo=None) - renewed
        assert lease["holderIdentity"] == name
        assert age.total_seconds() < lease["leaseDurationSeconds"], (name, lease)


SPACE = re.compile(r"\s*")


def whole_documents(text: str) -> list[dict]:
    """The JSON documents of a stream, less the last one if it was cut off (the writer stopped)."""
    decoder, found, at = json.JSONDecoder(), [], 0
    while (at := SPACE.match(text, at).end()) < len(text):
        try:
            document, at = decoder.raw_decode(text, at)
        except json.JSONDecodeError:
            break
        found.append(document)
    return found
