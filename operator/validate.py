"""Validate manifests without a cluster, against the models the CRDs are generated from.

Each problem names the file, the resource, the field path as the API server writes it
(spec.sources[0].uri) and what is wrong.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

import yaml
from pydantic import ValidationError

from lmforge.operator import manifest
from lmforge.operator.api import API_VERSION, KINDS, Resource

_MESSAGES = {"missing": "Required value", "extra_forbidden": "unknown field"}


@dataclass(frozen=True)
class Problem:
    file: str
    resource: str
    path: str
    message: str

    def __str__(self) -> str:
        where = f"{self.resource}: " if self.resource else ""
        field = f"{self.path}: " if self.path else ""
        return f"{self.file}: {where}{field}{self.message}"


def field_path(loc: tuple[Any, ...]) -> str:
    """('spec', 'sources', 0, 'uri') -> spec.sources[0].uri"""
    out = ""
    for part in loc:
        out += f"[{part}]" if isinstance(part, int) else (f".{part}" if out else str(part))
    return out


def errors(document: Any) -> tuple[Resource | None, list[tuple[str, str]]]:
    """The typed resource, or the (field path, message) pairs that say why there is none."""
    if not isinstance(document, dict):
        return None, [("", f"expected a mapping, got {type(document).__name__}")]
    kind = document.get("kind")
    if kind not in KINDS:
        return None, [("kind", f"unknown kind {kind!r}: use one of {', '.join(KINDS)}")]
    if document.get("apiVersion") != API_VERSION:
        return None, [("apiVersion", f"{document.get('apiVersion')!r}: use {API_VERSION}")]
    try:
        return KINDS[kind].model_validate(document), []
    except ValidationError as error:
        found = []
        for e in error.errors():
            path = field_path(e["loc"]) + ((e.get("ctx") or {}).get("field") or "")
            path = path.removeprefix(".")  # a rule on the whole object: .metadata.name
            found.append((path, _MESSAGES.get(e["type"], e["msg"])))
        return None, found


def validate(path: Path) -> tuple[list[tuple[str, Resource]], list[Problem]]:
    """Every valid resource under a file or folder, with its file; and every problem found."""
    resources, problems = [], []
    for file in manifest.files(path):
        try:
            loaded = manifest.load(file)
        except (OSError, yaml.YAMLError) as error:
            problems.append(Problem(str(file), "", "", f"cannot read: {error}"))
            continue
        for document in loaded:
            resource, found = errors(document)
            problems += [Problem(str(file), _name(document), p, m) for p, m in found]
            if resource is not None:
                resources.append((str(file), resource))
    return resources, problems


def _name(document: Any) -> str:
    if not isinstance(document, dict):
        return ""
    name = (document.get("metadata") or {}).get("name", "<no name>")
    return f"{document.get('kind', '<no kind>')}/{name}"
