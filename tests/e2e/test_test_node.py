"""What the e2e tier needs from the test node beyond the integration tier's pods: `kubectl logs`
through the API server to the node's kubelet API, and a volume over the folder that holds the
node's own files (the chart's operator mounts an emptyDir at /tmp)."""

from __future__ import annotations

import json
import ssl
import subprocess
import urllib.error
import urllib.request
from pathlib import Path

import pytest
from cluster import python_pod
from e2e_support import unavailable

ROOT = Path(__file__).resolve().parents[2]

LINES = "for i in range(5): print('line', i, flush=True)\n"


def test_kubectl_logs_reads_the_node_through_the_api_server(cluster, namespace):
    if cluster.node_dir is None:
        unavailable("another cluster's kubelet is not the test node's")
    pod = python_pod(
        "talker",
        LINES + "import os, sys, time\n"
        "if not os.path.exists('/data/again'):\n"
        "    open('/data/again', 'w').close(); sys.exit(3)\n"
        "time.sleep(1); print('second run', flush=True)\n",
        restart="OnFailure",
        volumes=[{"name": "data", "emptyDir": {}}],
        container={"volumeMounts": [{"name": "data", "mountPath": "/data"}]},
    )
    cluster.apply(pod, namespace=namespace)
    cluster.wait("pod/talker", "jsonpath={.status.phase}=Succeeded", namespace)

    def logs(*args: str) -> str:
        return cluster("logs", "-n", namespace, "talker", *args).stdout

    assert logs() == "".join(f"line {i}\n" for i in range(5)) + "second run\n"
    assert logs("--previous") == "".join(f"line {i}\n" for i in range(5))
    assert logs("--tail=2") == "line 4\nsecond run\n"
    assert logs("--limit-bytes=9") == "line 0\nli"
    assert logs("--follow") == logs()  # a finished container: follow returns at once
    refused = cluster("logs", "-n", namespace, "nobody", check=False)
    assert refused.returncode and 'pods "nobody" not found' in refused.stderr

    node = cluster.get("node", "n1")["status"]
    assert {"type": "InternalIP", "address": "127.0.0.1"} in node["addresses"]
    port = node["daemonEndpoints"]["kubeletEndpoint"]["Port"]
    assert port > 0


def test_kubelet_api_requires_a_cluster_client_certificate(cluster, tmp_path):
    if cluster.node_dir is None:
        unavailable("another cluster's kubelet is not the test node's")
    port = cluster.get("node", "n1")["status"]["daemonEndpoints"]["kubeletEndpoint"]["Port"]
    pki = cluster.kubeconfig.parent / "pki"
    context = ssl.create_default_context(cafile=str(pki / "ca.crt"))  # it checks its cert too
    url = f"https://127.0.0.1:{port}/containerLogs/default/none/main"
    with pytest.raises((ssl.SSLError, urllib.error.URLError, ConnectionResetError)):
        urllib.request.urlopen(url, context=context, timeout=5)  # no client certificate
    # The user of a client certificate must be allowed nodes/proxy (a SubjectAccessReview).
    key, cert = tmp_path / "nobody.key", tmp_path / "nobody.crt"
    subprocess.run(["openssl", "genpkey", "-algorithm", "EC", "-pkeyopt", "ec_paramgen_curve:P-256",
                    "-out", str(key)], check=True, capture_output=True)  # fmt: skip
    subprocess.run(["openssl", "req", "-new", "-x509", "-key", str(key), "-subj", "/CN=nobody",
                    "-CA", str(pki / "ca.crt"), "-CAkey", str(pki / "ca.key"), "-days", "1",
                    "-out", str(cert)], check=True, capture_output=True)  # fmt: skip
    context.load_cert_chain(str(cert), str(key))
    with pytest.raises(urllib.error.HTTPError) as refused:
        urllib.request.urlopen(url, context=context, timeout=5)
    assert refused.value.code == 403
    context = ssl.create_default_context(cafile=str(pki / "ca.crt"))
    client = pki / "apiserver-kubelet-client"
    context.load_cert_chain(f"{client}.crt", f"{client}.key")
    with pytest.raises(urllib.error.HTTPError) as missing:
        urllib.request.urlopen(url, context=context, timeout=5)
    assert missing.value.code == 404, missing.value.read()


def test_a_volume_over_the_nodes_folder_hides_no_other_mount(cluster, namespace):
    """An emptyDir at /tmp, where the node keeps each pod's files, with a ConfigMap in it; and
    one over the folder that holds this checkout: what stands in for the image (the checkout,
    the interpreter, the node's `python`) stays visible, as an image's files would."""
    if cluster.node_dir is None:
        unavailable("another cluster's node keeps its files elsewhere")
    config = {
        "apiVersion": "v1",
        "kind": "ConfigMap",
        "metadata": {"name": "settings"},
        "data": {"a.json": json.dumps({"a": 1})},
    }
    mounts = {"/tmp", str(ROOT.parent)}
    code = """
        import json, os, shutil
        import lmforge.operator.cli
        print(json.load(open('/tmp/app/a.json'))['a'], 'app' in os.listdir('/tmp'),
              os.path.basename(os.getcwd()), bool(shutil.which('python')))
    """
    pod = python_pod(
        "shadow",
        code,
        volumes=[{"name": f"v{i}", "emptyDir": {}} for i in range(len(mounts))]
        + [{"name": "settings", "configMap": {"name": "settings"}}],
        container={
            "volumeMounts": [
                {"name": f"v{i}", "mountPath": m} for i, m in enumerate(sorted(mounts))
            ]
            + [{"name": "settings", "mountPath": "/tmp/app", "readOnly": True}]
        },
    )
    cluster.apply(config, pod, namespace=namespace)
    cluster.wait("pod/shadow", "jsonpath={.status.phase}=Succeeded", namespace)
    assert cluster.logs(namespace, "shadow") == "1 True work True\n"
