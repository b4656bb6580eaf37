"""Pure parts of the test node: a pod spec in, environment, volume files and /etc/hosts out.

Nothing here talks to the API server or starts a process; `fetch` and `token` callables hand in
what the node read from the cluster, so each function can be checked on plain dicts.
"""

from __future__ import annotations

import base64
import re
from collections.abc import Callable, Iterable

GATEWAY = "10.244.0.1"  # the node's address on the pod bridge; pods reach the API server here
API_PORT = 443
DOMAIN = "cluster.local"

# fetch("configmaps" | "secrets", namespace, name) -> {key: bytes} or None when it does not exist
Fetch = Callable[[str, str, str], "dict[str, bytes] | None"]
# token(audience or None, expirationSeconds) -> a service-account token bound to the pod
Token = Callable[["str | None", int], str]


class ConfigError(Exception):
    """The pod cannot start yet (a missing ConfigMap or Secret, an unsupported field)."""


def data_of(kind: str, obj: dict) -> dict[str, bytes]:
    """The payload of a ConfigMap or Secret as bytes per key."""
    if kind == "secrets":
        return {k: base64.b64decode(v) for k, v in (obj.get("data") or {}).items()}
    data = {k: v.encode() for k, v in (obj.get("data") or {}).items()}
    data.update({k: base64.b64decode(v) for k, v in (obj.get("binaryData") or {}).items()})
    return data


_REFERENCE = re.compile(r"\$\$|\$\(([A-Za-z_][A-Za-z0-9_.-]*)\)")


def expand(text: str, env: dict[str, str]) -> str:
    """Kubernetes $(VAR) expansion: defined names are replaced, `$$` is a literal `$`."""

    def replace(match: re.Match) -> str:
        if match.group(0) == "$$":
            return "$"
        return env.get(match.group(1), match.group(0))

    return _REFERENCE.sub(replace, text)


def field(pod: dict, path: str, pod_ip: str) -> str:
    """The value of a downward-API fieldRef."""
    meta, spec = pod["metadata"], pod["spec"]
    keyed = re.fullmatch(r"metadata\.(labels|annotations)\['(.+)'\]", path)
    if keyed:
        return (meta.get(keyed[1]) or {}).get(keyed[2], "")
    if path in ("metadata.labels", "metadata.annotations"):
        items = sorted((meta.get(path.split(".")[1]) or {}).items())
        return "".join(f'{k}="{v}"\n' for k, v in items)
    values = {
        "metadata.name": meta["name"],
        "metadata.namespace": meta["namespace"],
        "metadata.uid": meta["uid"],
        "spec.nodeName": spec.get("nodeName", ""),
        "spec.serviceAccountName": spec.get("serviceAccountName", ""),
        "status.podIP": pod_ip,
        "status.podIPs": pod_ip,
        "status.hostIP": GATEWAY,
        "status.hostIPs": GATEWAY,
    }
    if path not in values:
        raise ConfigError(f"fieldRef {path!r} is not supported by the test node")
    return values[path]


def _key_ref(ref: dict, kind: str, namespace: str, fetch: Fetch) -> bytes | None:
    data = fetch(kind, namespace, ref["name"])
    if data is not None and ref["key"] in data:
        return data[ref["key"]]
    if ref.get("optional"):
        return None
    what = "not found" if data is None else f"has no key {ref['key']!r}"
    raise ConfigError(f"{kind[:-1]} {namespace}/{ref['name']} {what}")


def _value_from(source: dict, pod: dict, pod_ip: str, fetch: Fetch) -> str | None:
    namespace = pod["metadata"]["namespace"]
    if "fieldRef" in source:
        return field(pod, source["fieldRef"]["fieldPath"], pod_ip)
    for key, kind in (("secretKeyRef", "secrets"), ("configMapKeyRef", "configmaps")):
        if key in source:
            value = _key_ref(source[key], kind, namespace, fetch)
            return None if value is None else value.decode(errors="surrogateescape")
    raise ConfigError(f"env valueFrom {sorted(source)} is not supported by the test node")


def container_env(
    container: dict, pod: dict, pod_ip: str, fetch: Fetch, base: dict[str, str]
) -> dict[str, str]:
    """`base`, then envFrom, then env (each value may refer to the ones before it)."""
    env = dict(base)
    namespace = pod["metadata"]["namespace"]
    for source in container.get("envFrom") or []:
        kind, ref = (
            ("configmaps", source["configMapRef"])
            if "configMapRef" in source
            else ("secrets", source["secretRef"])
        )
        data = fetch(kind, namespace, ref["name"])
        if data is None and not ref.get("optional"):
            raise ConfigError(f"envFrom: {kind[:-1]} {namespace}/{ref['name']} not found")
        for key, value in (data or {}).items():
            env[source.get("prefix", "") + key] = value.decode(errors="surrogateescape")
    for var in container.get("env") or []:
        if "valueFrom" in var:
            value = _value_from(var["valueFrom"], pod, pod_ip, fetch)
            if value is not None:
                env[var["name"]] = value
        else:
            env[var["name"]] = expand(var.get("value", ""), env)
    return env


Files = dict[str, tuple[bytes, int]]  # relative path -> (content, mode)


def _keyed_files(source: dict, kind: str, namespace: str, fetch: Fetch, mode: int) -> Files:
    data = fetch(kind, namespace, source.get("name") or source.get("secretName"))
    if data is None:
        if source.get("optional"):
            return {}
        name = source.get("name") or source.get("secretName")
        raise ConfigError(f"volume: {kind[:-1]} {namespace}/{name} not found")
    items = source.get("items") or [{"key": k, "path": k} for k in data]
    files = {}
    for item in items:
        if item["key"] not in data:
            if source.get("optional"):
                continue
            raise ConfigError(f"volume: {kind[:-1]} has no key {item['key']!r}")
        files[item["path"]] = (data[item["key"]], item.get("mode", mode))
    return files


def _downward_files(source: dict, pod: dict, pod_ip: str, mode: int) -> Files:
    files = {}
    for item in source.get("items") or []:
        if "fieldRef" not in item:
            raise ConfigError("downwardAPI: only fieldRef items are supported by the test node")
        value = field(pod, item["fieldRef"]["fieldPath"], pod_ip)
        files[item["path"]] = (value.encode(), item.get("mode", mode))
    return files


def volume_files(volume: dict, pod: dict, pod_ip: str, fetch: Fetch, token: Token) -> Files:
    """The files of a configMap, secret, downwardAPI or projected volume."""
    namespace = pod["metadata"]["namespace"]
    if "configMap" in volume or "secret" in volume:
        kind = "configmaps" if "configMap" in volume else "secrets"
        source = volume.get("configMap") or volume["secret"]
        return _keyed_files(source, kind, namespace, fetch, source.get("defaultMode", 0o644))
    if "downwardAPI" in volume:
        source = volume["downwardAPI"]
        return _downward_files(source, pod, pod_ip, source.get("defaultMode", 0o644))
    projected = volume["projected"]
    mode, files = projected.get("defaultMode", 0o644), {}
    for source in projected.get("sources") or []:
        if "configMap" in source:
            files |= _keyed_files(source["configMap"], "configmaps", namespace, fetch, mode)
        elif "secret" in source:
            files |= _keyed_files(source["secret"], "secrets", namespace, fetch, mode)
        elif "downwardAPI" in source:
            files |= _downward_files(source["downwardAPI"], pod, pod_ip, mode)
        elif "serviceAccountToken" in source:
            sat = source["serviceAccountToken"]
            value = token(sat.get("audience"), sat.get("expirationSeconds", 3607))
            files[sat["path"]] = (value.encode(), mode)
        else:
            raise ConfigError(f"projected source {sorted(source)} is not supported")
    return files


def _names(first: str, namespace: str, same_namespace: bool) -> list[str]:
    """What a pod's resolver would accept for `first` in `namespace`, given its search path."""
    names = [
        f"{first}.{namespace}.svc.{DOMAIN}",
        f"{first}.{namespace}.svc",
        f"{first}.{namespace}",
    ]
    return [*names, first] if same_namespace else names


def hosts_file(pod: dict, pod_ip: str, services: Iterable[dict], slices: Iterable[dict]) -> str:
    """/etc/hosts for a pod: itself, the API server, and every ready headless-Service endpoint.

    Stands in for cluster DNS: `<svc>`, `<svc>.<ns>[.svc[.cluster.local]]` and, for endpoints
    with a hostname (pods with hostname + subdomain), `<hostname>.<svc>.<ns>.svc.cluster.local`.
    """
    meta, spec = pod["metadata"], pod["spec"]
    namespace = meta["namespace"]
    hostname = spec.get("hostname") or meta["name"]
    own = [hostname]
    if spec.get("subdomain"):
        own.insert(0, f"{hostname}.{spec['subdomain']}.{namespace}.svc.{DOMAIN}")
    lines = [
        "127.0.0.1\tlocalhost",
        "::1\tlocalhost ip6-localhost ip6-loopback",
        f"{pod_ip}\t{' '.join(own)}",
        f"{GATEWAY}\t{' '.join(_names('kubernetes', 'default', namespace == 'default'))}",
    ]
    headless = {
        (s["metadata"]["namespace"], s["metadata"]["name"])
        for s in services
        if s["spec"].get("clusterIP") == "None"
    }
    for piece in sorted(slices, key=lambda s: (s["metadata"]["namespace"], s["metadata"]["name"])):
        svc_ns = piece["metadata"]["namespace"]
        svc = (piece["metadata"].get("labels") or {}).get("kubernetes.io/service-name")
        if (svc_ns, svc) not in headless or piece.get("addressType") != "IPv4":
            continue
        same = svc_ns == namespace
        for endpoint in piece.get("endpoints") or []:
            if (endpoint.get("conditions") or {}).get("ready") is False:
                continue
            for address in endpoint["addresses"]:
                lines.append(f"{address}\t{' '.join(_names(svc, svc_ns, same))}")
                if endpoint.get("hostname"):
                    names = _names(f"{endpoint['hostname']}.{svc}", svc_ns, same)
                    lines.append(f"{address}\t{' '.join(names)}")
    return "\n".join(lines) + "\n"
