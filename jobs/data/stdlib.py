"""stdlib://, the standard library of the running Python as a read-only fsspec filesystem.

A real corpus that every machine has, with nothing to download: `stdlib://**/*.py` is its source
(site-packages excluded: that is not the standard library).
"""

from __future__ import annotations

import sysconfig

import fsspec
from fsspec.implementations.dirfs import DirFileSystem
from fsspec.implementations.local import LocalFileSystem

PROTOCOL = "stdlib"


class StdlibFileSystem(DirFileSystem):
    protocol = PROTOCOL

    def __init__(self, **kwargs):
        super().__init__(path=sysconfig.get_paths()["stdlib"], fs=LocalFileSystem(), **kwargs)

    @classmethod
    def _strip_protocol(cls, path):
        path = path[len(PROTOCOL) + 3 :] if path.startswith(PROTOCOL + "://") else path
        return path.lstrip("/")

    # Everything that lists files goes through one of these; hide site-packages from each.
    def ls(self, path, detail=True, **kwargs):
        return self._visible(super().ls(path, detail=detail, **kwargs))

    def find(self, path, *args, **kwargs):
        return self._visible(super().find(path, *args, **kwargs))

    def glob(self, path, **kwargs):
        return self._visible(super().glob(path, **kwargs))

    @staticmethod
    def _visible(entries):
        def name(entry):
            return entry["name"] if isinstance(entry, dict) else entry

        def keep(entry):
            return not name(entry).lstrip("/").startswith("site-packages")

        if isinstance(entries, dict):
            return {k: v for k, v in entries.items() if keep(k)}
        return [e for e in entries if keep(e)]

    def unstrip_protocol(self, name):
        return f"{PROTOCOL}://{name.lstrip('/')}"


def register() -> None:
    fsspec.register_implementation(PROTOCOL, StdlibFileSystem, clobber=True)
