"""The node is a real one: pods run in containers under containerd (their own cgroup, mount and
network namespaces, the image's filesystem, their resource limits enforced), ClusterIP Services
route through kube-proxy, `kubectl logs` and `exec` reach the kubelet, and the namespace's Pod
Security "restricted" admission refuses what breaks it while admitting every pod lmforge
renders."""

import copy
import json
import os
from pathlib import Path

import pytest
import yaml
from cluster import IMAGE, python_pod

from lmforge.operator.api import parse
from lmforge.operator.api.common import Artifact
from lmforge.operator.render import RENDERERS
from lmforge.operator.render import deployment as render_deployment
from lmforge.operator.render.names import Owner
from lmforge.operator.render.pods import Defaults, Rendering
from lmforge.operator.stages import STAGES
from lmforge.operator.stages.base import storage
from lmforge.operator.stages.deployment import model_digest

ROOT = Path(__file__).resolve().parents[2]
SAMPLES = sorted((ROOT / "manifests" / "samples").rglob("*.yaml"))


def _phase(name: str, phase: str) -> tuple[str, str]:
    return f"pod/{name}", f"jsonpath={{.status.phase}}={phase}"


def test_a_pod_runs_in_a_container_of_its_own(cluster, namespace):
    code = """
        import json, os
        def cgroup(controller):
            for line in open("/proc/self/cgroup"):
                _, names, path = line.strip().split(":", 2)
                if controller in names.split(","):
                    return path
        print(json.dumps({
            "ns": {n: os.readlink(f"/proc/self/ns/{n}") for n in ("mnt", "net", "pid", "uts")},
            "pid": os.getpid(),
            "cgroup": cgroup("memory"),
            "memory_limit": int(open("/sys/fs/cgroup/memory/memory.limit_in_bytes").read()),
            "os": open("/etc/os-release").read(),
            "venv": os.path.isdir("/opt/venv"),
            "checkout": os.path.exists(os.environ["CHECKOUT"]),
            "uid": os.getuid(),
        }))
    """
    container = {
        "env": [{"name": "CHECKOUT", "value": str(ROOT)}],
        "resources": {"limits": {"cpu": "500m", "memory": "300Mi"}},
    }
    cluster.apply(python_pod("boxed", code, container=container), namespace=namespace)
    cluster.wait(*_phase("boxed", "Succeeded"), namespace)
    seen = json.loads(cluster.logs(namespace, "boxed"))
    uid = cluster.get("pod", "boxed", "-n", namespace)["metadata"]["uid"]
    for name, link in seen["ns"].items():
        assert link != os.readlink(f"/proc/self/ns/{name}"), name  # not this machine's
    assert seen["pid"] == 1  # the first process of its own PID namespace
    assert seen["cgroup"].startswith("/kubepods/") and uid in seen["cgroup"]
    assert seen["memory_limit"] == 300 * 2**20
    assert "VERSION_CODENAME=bookworm" in seen["os"] and seen["venv"]  # the image's files
    assert not seen["checkout"]  # ... and not this machine's
    assert seen["uid"] == 1000  # the image's user, as runAsNonRoot asks


def test_cluster_ip_services_route_and_exec_reaches_the_container(cluster, namespace):
    server = python_pod(
        "web", "import http.server as h; h.HTTPServer(('', 8080), h.SimpleHTTPRequestHandler)"
        ".serve_forever()", metadata={"labels": {"app": "web"}},
        container={"workingDir": "/opt/venv", "readinessProbe": {"tcpSocket": {"port": 8080}}},
    )  # fmt: skip
    service = {
        "apiVersion": "v1",
        "kind": "Service",
        "metadata": {"name": "web"},
        "spec": {"selector": {"app": "web"}, "ports": [{"port": 80, "targetPort": 8080}]},
    }
    cluster.apply(server, service, namespace=namespace)
    cluster.wait("pod/web", "condition=Ready", namespace, timeout=90)
    ip = cluster.get("service", "web", "-n", namespace)["spec"]["clusterIP"]
    assert ip.startswith("10.96.")
    # A new Service is eventually consistent on any cluster (the EndpointSlice, then
    # kube-proxy's rules): the client retries for a while, as a real one would.
    code = f"""
        import time, urllib.request
        for url in ("http://{ip}/pyvenv.cfg", "http://web/pyvenv.cfg",
                    "http://web.{namespace}.svc.cluster.local/pyvenv.cfg"):
            for attempt in range(30):
                try:
                    body = urllib.request.urlopen(url, timeout=10).read()
                    break
                except OSError as error:
                    print("retry", url, error, flush=True)
                    time.sleep(1)
            print(body.decode().splitlines()[0])
    """
    cluster.apply(python_pod("client", code), namespace=namespace)
    cluster.wait(*_phase("client", "Succeeded"), namespace, timeout=90)
    lines = cluster.logs(namespace, "client").splitlines()
    assert [line for line in lines if not line.startswith("retry ")] == ["home = /usr/bin"] * 3
    done = cluster(
        "exec", "-n", namespace, "web", "--", "python", "-c", "import os; print(os.getcwd())"
    )
    assert done.stdout == "/opt/venv\n"


@pytest.mark.parametrize(
    "breach",
    [{"allowPrivilegeEscalation": True}, {"runAsNonRoot": False, "runAsUser": 0},
     {"capabilities": {"add": ["NET_ADMIN"]}}, {"seccompProfile": {"type": "Unconfined"}}],
    ids=["privilege-escalation", "root", "capabilities", "seccomp"],
)  # fmt: skip
def test_restricted_pod_security_refuses_a_pod_that_breaks_it(cluster, namespace, breach):
    pod = python_pod("bad", "print('never')")
    pod["spec"]["containers"][0]["securityContext"].update(breach)
    done = cluster("apply", "-n", namespace, "-f", "-", input=json.dumps(pod), check=False)
    assert done.returncode, done.stdout
    assert 'violates PodSecurity "restricted:latest"' in done.stderr, done.stderr


def _rendered_pods(document: dict) -> list[dict]:
    """Every pod (or pod template, as a pod) lmforge renders for a sample resource."""
    resource = parse(document)
    stage = STAGES[resource.kind]
    defaults = Defaults(image=IMAGE, storage_uri="s3://bucket")
    store = storage(resource.spec.storage, defaults.store)
    outputs = {ref.field: Artifact(uri=f"s3://bucket/{ref.name}", digest="sha256:0")
               for ref in resource.references()}  # fmt: skip
    owner = Owner("lmforge.dev/v1alpha1", resource.kind, resource.metadata.name, "ns", "uid-1")
    r = Rendering(owner, resource, stage.role, stage.describe(resource, outputs, store),
                  defaults, store, None)  # fmt: skip
    if resource.kind == "Deployment":
        children = render_deployment.children(r, model_digest(r.description))
        templates = [c["spec"]["template"] for c in children if c["kind"] == "Deployment"]
        pods = [{"apiVersion": "v1", "kind": "Pod", **copy.deepcopy(t)} for t in templates]
    else:
        _, pods = RENDERERS[resource.kind].children(r, 0)
    for i, pod in enumerate(pods):
        pod["metadata"] = {"name": f"{resource.metadata.name}-{i}"}
    return pods


@pytest.mark.parametrize("sample", SAMPLES, ids=[str(p.relative_to(ROOT)) for p in SAMPLES])
def test_every_pod_lmforge_renders_is_admitted(cluster, namespace, sample):
    pods = [pod for d in yaml.safe_load_all(sample.read_text()) if d for pod in _rendered_pods(d)]
    assert pods
    document = json.dumps({"apiVersion": "v1", "kind": "List", "items": pods})
    done = cluster("apply", "-n", namespace, "--dry-run=server", "-f", "-", input=document)
    assert "Warning" not in done.stderr, done.stderr
