"""Reading and writing manifests: multi-document YAML files, a file or a folder of them."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import yaml


class _Dumper(yaml.SafeDumper):
    def ignore_aliases(self, data: Any) -> bool:  # no &anchors: kubectl users read these files
        return True


def dump(documents: list[dict[str, Any]]) -> str:
    return yaml.dump_all(documents, Dumper=_Dumper, sort_keys=False, width=100)


def files(path: Path) -> list[Path]:
    """The YAML files of a path: itself, or every *.yaml / *.yml below a folder, sorted."""
    if path.is_dir():
        return sorted(p for p in path.rglob("*") if p.suffix in (".yaml", ".yml") and p.is_file())
    return [path]


def load(file: Path) -> list[Any]:
    """The non-empty YAML documents of one file. Raises OSError, yaml.YAMLError."""
    with file.open() as stream:
        return [d for d in yaml.safe_load_all(stream) if d is not None]
