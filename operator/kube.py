"""The operator's calls to the Kubernetes API (besides kopf's own watching and events; `lmforge
lineage --kube` lists resources with a client of its own, operator/lineage.py).

Objects go in and come out as plain dicts, as the API serves them (camelCase), so the renderers
and the status logic never see a client model. Every method is one or two API calls; retrying is
the caller's business (kopf's TemporaryError), so ApiException travels up unchanged, except for
the outcomes a level-triggered operator expects (not found on read or delete, already exists on
create) which are answers here, not errors.
"""

from __future__ import annotations

import hashlib
import json
import logging
from typing import Any

from kubernetes import client, config
from kubernetes.client.rest import ApiException

from lmforge.operator.api.base import GROUP, VERSION

log = logging.getLogger(__name__)

MERGE_PATCH = "application/merge-patch+json"
_KINDS = {
    "Pod": ("core", "pod"),
    "Service": ("core", "service"),
    "ConfigMap": ("core", "config_map"),
    "Deployment": ("apps", "deployment"),
    "HorizontalPodAutoscaler": ("autoscaling", "horizontal_pod_autoscaler"),
    "NetworkPolicy": ("networking", "network_policy"),
    "PodDisruptionBudget": ("policy", "pod_disruption_budget"),
}
_CUSTOM_KINDS = {
    "PodGroup.scheduling.volcano.sh": ("scheduling.volcano.sh", "v1beta1", "podgroups"),
    "PodGroup.scheduling.x-k8s.io": ("scheduling.x-k8s.io", "v1alpha1", "podgroups"),
    "Workload.kueue.x-k8s.io": ("kueue.x-k8s.io", "v1beta2", "workloads"),
    "RayCluster.ray.io": ("ray.io", "v1", "rayclusters"),
}
"""Children of other projects' CRDs (render/scheduling.py, render/dataset.py): kind.group ->
group, version, plural."""
CHILD_KINDS = ("Pod", "Service", "ConfigMap")
"""What jobs own (and a finished job's TTL deletes)."""
APPLIED = "lmforge.dev/applied"
"""On objects kept in step with their rendering (apply): the digest of the last one applied."""


class OwnershipError(RuntimeError):
    """A child's name is taken by an object another controller manages."""


def load_api_client() -> client.ApiClient:
    """In-cluster credentials in a pod, else the kubeconfig ($KUBECONFIG or ~/.kube/config)."""
    try:
        config.load_incluster_config()
    except config.ConfigException:
        config.load_kube_config()
    return client.ApiClient()


def _json(response: Any) -> Any:
    return json.loads(response.data)


_CUSTOM_VERBS = {"create": "create", "read": "get", "patch": "patch", "list": "list",
                 "delete": "delete"}  # fmt: skip


def _kind(obj: dict[str, Any]) -> str:
    """The key of `obj`'s kind in _KINDS or _CUSTOM_KINDS."""
    group = obj.get("apiVersion", "v1").rpartition("/")[0]
    key = f"{obj['kind']}.{group}"
    return key if key in _CUSTOM_KINDS else obj["kind"]


def controller_of(obj: dict[str, Any]) -> dict[str, Any] | None:
    refs = obj.get("metadata", {}).get("ownerReferences") or []
    return next((ref for ref in refs if ref.get("controller")), None)


class Kube:
    def __init__(self, api_client: client.ApiClient | None = None):
        api_client = api_client or load_api_client()
        self.core = client.CoreV1Api(api_client)
        self.custom = client.CustomObjectsApi(api_client)
        self.apps = client.AppsV1Api(api_client)
        self.autoscaling = client.AutoscalingV2Api(api_client)
        self.networking = client.NetworkingV1Api(api_client)
        self.policy = client.PolicyV1Api(api_client)

    # ----- lmforge resources -----

    def get(self, plural: str, namespace: str, name: str) -> dict[str, Any] | None:
        try:
            return _json(
                self.custom.get_namespaced_custom_object(
                    GROUP, VERSION, namespace, plural, name, _preload_content=False
                )
            )
        except ApiException as error:
            if error.status == 404:
                return None
            raise

    def patch_status(self, plural: str, namespace: str, name: str, patch: dict[str, Any]) -> None:
        self.custom.patch_namespaced_custom_object_status(
            GROUP,
            VERSION,
            namespace,
            plural,
            name,
            {"status": patch},
            _content_type=MERGE_PATCH,
            _preload_content=False,
        )

    # ----- children -----

    def _core(self, verb: str, kind: str) -> Any:
        """The client's method for `verb` on `kind` (a kind.group for another project's CRD),
        taking (namespace, body) to create and (name, namespace, ...) otherwise."""
        if kind in _CUSTOM_KINDS:
            group, version, plural = _CUSTOM_KINDS[kind]
            method = getattr(self.custom, f"{_CUSTOM_VERBS[verb]}_namespaced_custom_object")
            if verb in ("create", "list"):
                return lambda namespace, *a, **kw: method(
                    group, version, namespace, plural, *a, **kw
                )
            return lambda name, namespace, *a, **kw: method(
                group, version, namespace, plural, name, *a, **kw
            )
        api, suffix = _KINDS[kind]
        return getattr(getattr(self, api), f"{verb}_namespaced_{suffix}")

    def has_crd(self, name: str) -> bool:
        """Whether a CustomResourceDefinition (plural.group) is installed."""
        try:
            client.ApiextensionsV1Api(self.core.api_client).read_custom_resource_definition(
                name, _preload_content=False
            )
            return True
        except ApiException as error:
            if error.status == 404:
                return False
            raise

    def read(self, kind: str, namespace: str, name: str) -> dict[str, Any] | None:
        try:
            return _json(self._core("read", kind)(name, namespace, _preload_content=False))
        except ApiException as error:
            if error.status == 404:
                return None
            raise

    def apply(self, obj: dict[str, Any]) -> str:
        """Create `obj`, or bring the existing one to it when its rendering changed since the
        last apply (a merge patch of its labels, annotations, spec and data): "created",
        "exists", "adopted" or "updated"."""
        obj = json.loads(json.dumps(obj))
        meta = obj["metadata"]
        digest = hashlib.sha256(json.dumps(obj, sort_keys=True).encode()).hexdigest()[:32]
        meta["annotations"] = {**(meta.get("annotations") or {}), APPLIED: digest}
        outcome = self.ensure(obj)
        if outcome != "exists":
            return outcome
        existing = self.read(_kind(obj), meta["namespace"], meta["name"]) or {}
        if (existing.get("metadata", {}).get("annotations") or {}).get(APPLIED) == digest:
            return "exists"
        patch = {"metadata": {"labels": meta["labels"], "annotations": meta["annotations"]}}
        patch |= {k: obj[k] for k in ("spec", "data") if k in obj}
        self._core("patch", _kind(obj))(
            meta["name"],
            meta["namespace"],
            patch,
            _content_type=MERGE_PATCH,
            _preload_content=False,
        )
        return "updated"

    def annotate(self, kind: str, namespace: str, name: str, annotations: dict[str, str]) -> None:
        """Merge `annotations` into an object's (a pod's may change while it terminates)."""
        patch = {"metadata": {"annotations": annotations}}
        self._core("patch", kind)(name, namespace, patch, _preload_content=False)

    def list(self, kind: str, namespace: str, selector: str) -> list[dict[str, Any]]:
        response = self._core("list", kind)(
            namespace, label_selector=selector, _preload_content=False
        )
        return _json(response)["items"]

    def ensure(self, obj: dict[str, Any], update_data: bool = False) -> str:
        """Create `obj`, or leave the existing one alone: "created", "exists", "adopted" or
        "updated" (update_data: a ConfigMap whose data differs gets the new data)."""
        kind, meta = _kind(obj), obj["metadata"]
        try:
            self._core("create", kind)(meta["namespace"], obj, _preload_content=False)
            return "created"
        except ApiException as error:
            if error.status != 409:
                raise
        existing = _json(
            self._core("read", kind)(meta["name"], meta["namespace"], _preload_content=False)
        )
        ours = meta["ownerReferences"][0]
        controller = controller_of(existing)
        if controller is None:
            self._adopt(kind, existing, obj)
            return "adopted"
        if controller.get("uid") != ours["uid"]:
            raise OwnershipError(
                f"{kind} {meta['namespace']}/{meta['name']} is managed by"
                f" {controller.get('kind')}/{controller.get('name')} (uid {controller.get('uid')})"
            )
        if update_data and existing.get("data") != obj.get("data"):
            self._core("patch", kind)(
                meta["name"], meta["namespace"], {"data": obj["data"]}, _preload_content=False
            )
            return "updated"
        return "exists"

    def _adopt(self, kind: str, existing: dict[str, Any], desired: dict[str, Any]) -> None:
        """Make an orphan ours (kopf.adopt's semantics): our owner reference and labels."""
        meta = existing["metadata"]
        refs = [*(meta.get("ownerReferences") or []), *desired["metadata"]["ownerReferences"]]
        patch = {"metadata": {"ownerReferences": refs, "labels": desired["metadata"]["labels"]}}
        self._core("patch", kind)(meta["name"], meta["namespace"], patch, _preload_content=False)

    def delete(self, kind: str, namespace: str, name: str, grace: int | None = None) -> bool:
        """Delete one object (pods get SIGTERM and `grace`, or their own grace period); False if
        it was already gone."""
        options = client.V1DeleteOptions(
            grace_period_seconds=grace, propagation_policy="Background"
        )
        try:
            self._core("delete", kind)(name, namespace, body=options, _preload_content=False)
            return True
        except ApiException as error:
            if error.status == 404:
                return False
            raise

    def delete_children(self, namespace: str, selector: str) -> int:
        """Delete every child object matching `selector`; how many there were."""
        count = 0
        for kind in CHILD_KINDS:
            for obj in self.list(kind, namespace, selector):
                count += self.delete(kind, namespace, obj["metadata"]["name"])
        return count

    def pod_log(self, namespace: str, name: str, container: str, tail_lines: int) -> str | None:
        """The last lines of a container's log; None when there is none to read (not started,
        gone, or the node's log endpoint cannot be reached)."""
        try:
            response = self.core.read_namespaced_pod_log(
                name,
                namespace,
                container=container,
                tail_lines=tail_lines,
                limit_bytes=1 << 20,
                _preload_content=False,
            )
        except ApiException as error:
            if error.status in (400, 404, 500, 502, 503):
                log.debug("no log for %s/%s: %s %s", namespace, name, error.status, error.reason)
                return None
            raise
        return response.data.decode(errors="replace")
