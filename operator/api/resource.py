"""The envelope of every kind: apiVersion, kind, metadata, spec, status, and what a kind is to the
rest of lmforge: its CRD facts, what it references, and when what it made can be used."""

from __future__ import annotations

from typing import Any, ClassVar, Literal, NamedTuple

from pydantic import BaseModel, ConfigDict, Field

from lmforge.operator.api.base import API_VERSION, NAME_PATTERN, Model, Reference, Rule
from lmforge.operator.api.common import Status


class Column(NamedTuple):
    """A printer column for `kubectl get`."""

    name: str
    json_path: str
    type: str = "string"
    priority: int = 0

    def schema(self) -> dict[str, Any]:
        out = {"name": self.name, "type": self.type, "jsonPath": self.json_path}
        if self.priority:
            out["priority"] = self.priority
        return out


PROGRESS = (
    Column("Step", ".status.progress"),
    Column("%", ".status.percentComplete", "integer"),
    Column("ETA", ".status.eta"),
)
"""A training run's progress, for the people waiting on it."""

_LETTER_FIRST = Rule(
    "self.metadata.name.matches('^[a-z]')",
    "must start with a letter: its pods' hostnames and Services are named after it (DNS-1035"
    " labels)",
    ".metadata.name",
)
GANG_NAMES = (
    _LETTER_FIRST,
    Rule(
        "size(self.metadata.name) + size(string(self.spec.resources.nodes - 1)) <= 55",
        "is too long for its worker pods: <name>-worker-<resources.nodes - 1> is a hostname of"
        " at most 63 characters; use a shorter name",
        ".metadata.name",
    ),
)
"""What the training kinds' children need of their name, refused at admission (CEL)."""
SERVER_NAMES = (
    _LETTER_FIRST,
    Rule(
        "size(self.metadata.name) <= 57",
        "is too long for its server Deployment (<name>-serve, at most 63 characters): use a"
        " shorter name",
        ".metadata.name",
    ),
)
"""What a Deployment's children (<name>-serve, the Service <name>) need of its name."""


class ObjectMeta(BaseModel):
    """The part of metav1.ObjectMeta a manifest sets; the rest is the API server's."""

    model_config = ConfigDict(extra="allow", frozen=True)

    name: str = Field(pattern=NAME_PATTERN, max_length=63)
    """Child objects are named after it (<name>-worker-<i>), so a DNS label."""
    namespace: str | None = Field(default=None, pattern=NAME_PATTERN, max_length=63)
    labels: dict[str, str] = Field(default_factory=dict)
    annotations: dict[str, str] = Field(default_factory=dict)


class Resource(Model):
    """One lmforge object. Subclasses set kind, spec and status types and the CRD facts."""

    api_version: Literal["lmforge.dev/v1alpha1"] = Field(default=API_VERSION, alias="apiVersion")
    kind: str
    metadata: ObjectMeta
    spec: Model
    status: Status | None = None

    plural: ClassVar[str]
    short_names: ClassVar[tuple[str, ...]]
    columns: ClassVar[tuple[Column, ...]]
    ready_phase: ClassVar[str] = "Succeeded"
    """The phase in which what it made can be read by a resource that references it."""

    # Shown after the kind's own columns, as every built-in kind does.
    age: ClassVar = Column("Age", ".metadata.creationTimestamp", "date")

    @classmethod
    def status_class(cls) -> type[Status]:
        return cls.model_fields["status"].annotation.__args__[0]  # X | None

    def references(self) -> list[Reference]:
        """What this resource reads that others make, by field: the edges of the lifecycle."""
        return []

    def artifact_uri(self, default_root: str) -> str:
        """Where this resource's outputs go: <storage.uri>/<kind>/<name>/."""
        root = (getattr(self.spec, "storage", None) and self.spec.storage.uri) or default_root
        return f"{root.rstrip('/')}/{self.kind.lower()}/{self.metadata.name}"
