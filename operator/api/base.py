"""The base every API model derives from, and the rules that travel with it into the CRD.

A model is the one source of truth for its part of a resource: field names (camelCase on the
wire), defaults and limits (pydantic `Field`), and cross-field rules written once in CEL. The CRD
generator copies the rules into `x-kubernetes-validations`, so the API server enforces them; the
same expressions are evaluated here when a model is parsed, so `lmforge validate` and the operator
reject exactly what the API server rejects.
"""

from __future__ import annotations

from functools import cache
from typing import Any, ClassVar, NamedTuple

import cel
from pydantic import BaseModel, ConfigDict, Field, model_validator
from pydantic.alias_generators import to_camel
from pydantic_core import PydanticCustomError

GROUP = "lmforge.dev"
VERSION = "v1alpha1"
API_VERSION = f"{GROUP}/{VERSION}"

# DNS-1123 label: what Kubernetes accepts as the name of the objects we derive from a resource.
NAME_PATTERN = r"^[a-z0-9]([-a-z0-9]*[a-z0-9])?$"
URI_PATTERN = r"^[a-zA-Z][a-zA-Z0-9+.-]*://.+"
QUANTITY_PATTERN = r"^([+]?[0-9.]+)([eEinumkKMGTP]*[-+]?[0-9]*)$"


class Rule(NamedTuple):
    """A cross-field rule in CEL; `self` is the object of the model that declares it."""

    rule: str
    message: str
    field_path: str | None = None

    def schema(self) -> dict[str, str]:
        out = {"rule": self.rule, "message": self.message}
        if self.field_path:
            out["fieldPath"] = self.field_path
        return out


def immutable(**kwargs: Any) -> Any:
    """A `Field` whose value cannot change once the resource exists (a CEL transition rule)."""
    rule = Rule("self == oldSelf", "is immutable: delete and recreate the resource to change it")
    return Field(json_schema_extra={"x-kubernetes-validations": [rule.schema()]}, **kwargs)


@cache
def _program(expression: str) -> cel.Program:
    return cel.compile(expression)


class Model(BaseModel):
    """Base of every part of a spec or status: camelCase on the wire, unknown fields refused."""

    model_config = ConfigDict(
        alias_generator=to_camel,
        populate_by_name=True,
        extra="forbid",
        frozen=True,
        use_attribute_docstrings=True,
    )
    rules: ClassVar[tuple[Rule, ...]] = ()
    """This class's own rules; a subclass adds to its bases' rules rather than replacing them."""

    @classmethod
    def all_rules(cls) -> list[Rule]:
        return [r for c in reversed(cls.__mro__) for r in c.__dict__.get("rules", ())]

    @classmethod
    def __get_pydantic_json_schema__(cls, core_schema: Any, handler: Any) -> dict[str, Any]:
        schema = handler.resolve_ref_schema(handler(core_schema))
        if cls.all_rules():
            schema["x-kubernetes-validations"] = [r.schema() for r in cls.all_rules()]
        return schema

    @model_validator(mode="after")
    def _check_rules(self) -> Model:
        rules = self.all_rules()
        if not rules:
            return self
        wire = self.wire()
        for rule in rules:
            if not _program(rule.rule).execute({"self": wire}):
                # The API server reports a rule with a fieldPath under that field; so do we.
                raise PydanticCustomError(
                    "rule", "{message}", {"message": rule.message, "field": rule.field_path}
                )
        return self

    def wire(self) -> dict[str, Any]:
        """The object as it appears in the API: camelCase keys, unset optionals absent."""
        return self.model_dump(by_alias=True, exclude_none=True, mode="json")


class Reference(NamedTuple):
    """An edge of the lifecycle graph: this resource reads what another one made."""

    field: str
    """Where the reference is, e.g. spec.baseModel.fineTuneRef."""
    kind: str
    name: str
    output: str | None = None
    """Which of the referenced resource's outputs (by kind); its first when unset."""


class LocalRef(Model):
    """A reference to another lmforge resource in the same namespace."""

    name: str = Field(pattern=NAME_PATTERN, max_length=63)
