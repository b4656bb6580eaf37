"""CustomResourceDefinitions generated from the API models.

Pydantic writes JSON Schema; Kubernetes wants a structural OpenAPI v3 schema: no $ref, no
anyOf for optional fields, boolean exclusive bounds, defaults for nested objects spelled out,
x-kubernetes-preserve-unknown-fields for free-form objects. This module translates one into the
other and wraps it in a CRD with the status subresource, printer columns, short names and the
`lmforge` category.
"""

from __future__ import annotations

from typing import Any

from pydantic import BaseModel
from pydantic.json_schema import GenerateJsonSchema

from lmforge.operator.api.base import GROUP, VERSION
from lmforge.operator.api.resource import ObjectMeta, Resource

CATEGORY = "lmforge"


class _Defaults(GenerateJsonSchema):
    """Pydantic leaves out defaults made by a factory; the API server needs them to default."""

    def default_schema(self, schema: Any) -> dict[str, Any]:
        if "default_factory" not in schema:
            return super().default_schema(schema)
        json_schema = self.generate_inner(schema["schema"])
        default = schema["default_factory"]()
        json_schema["default"] = default.wire() if isinstance(default, BaseModel) else default
        return json_schema


def _structural(node: dict[str, Any], defs: dict[str, Any]) -> dict[str, Any]:
    node = dict(node)
    node.pop("title", None)
    if "$ref" in node:  # inline it; the field's own keywords (description, default) win
        target = _structural(defs[node.pop("$ref").rsplit("/", 1)[1]], defs)
        rules = target.get("x-kubernetes-validations", []) + node.pop(
            "x-kubernetes-validations", []
        )
        return target | node | ({"x-kubernetes-validations": rules} if rules else {})
    if "anyOf" in node:  # Optional[X]: the API expresses "optional" by leaving X out of required
        options = [o for o in node.pop("anyOf") if o.get("type") != "null"]
        if len(options) != 1:
            raise TypeError(f"unions other than Optional cannot be structural: {options}")
        if node.get("default", ...) is None:
            del node["default"]
        return _structural(options[0], defs) | node
    if "const" in node:
        node["enum"] = [node.pop("const")]
    for bound in ("Minimum", "Maximum"):  # JSON Schema's exclusive bounds are OpenAPI 3.0 flags
        if f"exclusive{bound}" in node:
            node[bound.lower()] = node[f"exclusive{bound}"]
            node[f"exclusive{bound}"] = True
    if "properties" in node:
        node["properties"] = {k: _structural(v, defs) for k, v in node["properties"].items()}
    if "items" in node:
        node["items"] = _structural(node["items"], defs)
    extra = node.get("additionalProperties")
    if extra is True or (node.get("type") == "object" and "properties" not in node and not extra):
        node.pop("additionalProperties", None)
        node["x-kubernetes-preserve-unknown-fields"] = True
    elif isinstance(extra, dict):
        node["additionalProperties"] = _structural(extra, defs)
    elif extra is False:
        del node["additionalProperties"]  # structural schemas prune unknown fields instead
    return node


def openapi_schema(model: type[BaseModel]) -> dict[str, Any]:
    """The structural OpenAPI v3 schema of a model."""
    schema = model.model_json_schema(by_alias=True, schema_generator=_Defaults)
    return _structural(schema, schema.pop("$defs", {}))


def _name_schema() -> dict[str, Any]:
    return openapi_schema(ObjectMeta)["properties"]["name"]


def crd(kind: type[Resource]) -> dict[str, Any]:
    name = kind.model_fields["kind"].default
    spec = kind.model_fields["spec"].annotation
    status = kind.model_fields["status"].annotation.__args__[0]  # X | None
    schema = {
        "type": "object",
        "description": (kind.__doc__ or spec.__doc__ or name).strip(),
        "required": ["spec"],
        "properties": {
            "apiVersion": {"type": "string"},
            "kind": {"type": "string"},
            # The API server allows constraints on metadata.name only; child objects are named
            # after the resource, so it must be a DNS label.
            "metadata": {"type": "object", "properties": {"name": _name_schema()}},
            "spec": openapi_schema(spec),
            "status": openapi_schema(status),
        },
    }
    if kind.all_rules():  # rules on the whole object: those about metadata.name
        schema["x-kubernetes-validations"] = [r.schema() for r in kind.all_rules()]
    return {
        "apiVersion": "apiextensions.k8s.io/v1",
        "kind": "CustomResourceDefinition",
        "metadata": {"name": f"{kind.plural}.{GROUP}"},
        "spec": {
            "group": GROUP,
            "scope": "Namespaced",
            "names": {
                "kind": name,
                "listKind": f"{name}List",
                "plural": kind.plural,
                "singular": name.lower(),
                "shortNames": list(kind.short_names),
                "categories": [CATEGORY],
            },
            "versions": [
                {
                    "name": VERSION,
                    "served": True,
                    "storage": True,
                    "schema": {"openAPIV3Schema": schema},
                    "subresources": {"status": {}},
                    "additionalPrinterColumns": [c.schema() for c in (*kind.columns, Resource.age)],
                }
            ],
        },
    }
