"""Names, labels and owner references of child objects: deterministic, so every pass finds the
objects the previous one made, and a crashed operator finds them again after a restart."""

from __future__ import annotations

import re
from typing import Any, NamedTuple

from lmforge.operator.stages.base import SpecError

PREFIX = "lmforge.dev"
NAME = f"{PREFIX}/name"
KIND = f"{PREFIX}/kind"
ROLE = f"{PREFIX}/role"
INDEX = f"{PREFIX}/index"
ATTEMPT = f"{PREFIX}/attempt"
MANAGED_BY = "app.kubernetes.io/managed-by"
OPERATOR = "lmforge-operator"
TRACEPARENT_ANNOTATION = f"{PREFIX}/traceparent"

# A DNS-1035 label: Service names (and pod hostnames) must start with a letter, unlike the
# DNS-1123 names the resources may have.
_DNS_1035 = re.compile(r"^[a-z]([-a-z0-9]*[a-z0-9])?$")


class Owner(NamedTuple):
    """The resource that owns the children, as the API server knows it."""

    api_version: str
    kind: str
    name: str
    namespace: str
    uid: str

    @classmethod
    def of(cls, obj: dict[str, Any]) -> Owner:
        meta = obj["metadata"]
        return cls(obj["apiVersion"], obj["kind"], meta["name"], meta["namespace"], meta["uid"])

    def reference(self) -> dict[str, Any]:
        # controller: true makes the garbage collector delete the child with its owner, and
        # tells anyone else (and our adopt check) who manages it.
        return {
            "apiVersion": self.api_version,
            "kind": self.kind,
            "name": self.name,
            "uid": self.uid,
            "controller": True,
            "blockOwnerDeletion": True,
        }


def labels(owner: Owner, role: str, **extra: str | int) -> dict[str, str]:
    out = {NAME: owner.name, KIND: owner.kind, ROLE: role, MANAGED_BY: OPERATOR}
    out.update({f"{PREFIX}/{key}": str(value) for key, value in extra.items()})
    return out


def selector(owner: Owner, role: str | None = None) -> str:
    """A label selector for the children of `owner` (with `role`, only those)."""
    terms = [f"{KIND}={owner.kind}", f"{NAME}={owner.name}"]
    return ",".join(terms + ([f"{ROLE}={role}"] if role else []))


def metadata(owner: Owner, name: str, role: str, **extra: str | int) -> dict[str, Any]:
    return {
        "name": name,
        "namespace": owner.namespace,
        "labels": labels(owner, role, **extra),
        "ownerReferences": [owner.reference()],
    }


def check_child_name(name: str, what: str) -> str:
    """`name` if Kubernetes accepts it as a hostname or Service name, else a SpecError that says
    how long metadata.name may be."""
    if len(name) > 63 or not _DNS_1035.match(name):
        raise SpecError(
            "metadata.name",
            f"the {what} would be named {name!r}, which is not a DNS-1035 label (at most 63"
            " characters, starting with a letter): use a shorter name that starts with a letter",
        )
    return name
