"""Object storage through fsspec: any URI it reads (file://, s3://, ...), and atomic writes."""

from __future__ import annotations

import json
import os
from collections.abc import Iterator
from typing import Any

import fsspec
from fsspec.implementations.local import LocalFileSystem

from lmforge.jobs.data.stdlib import register

register()


def options(uri: str, endpoint_url: str | None = None) -> dict[str, Any]:
    """fsspec options for a URI. Credentials come from the environment (AWS_ACCESS_KEY_ID ...)."""
    if endpoint_url and uri.startswith("s3://"):
        return {"endpoint_url": endpoint_url}
    return {}


def filesystem(uri: str, endpoint_url: str | None = None) -> tuple[fsspec.AbstractFileSystem, str]:
    return fsspec.url_to_fs(uri, **options(uri, endpoint_url))


def write_atomic(fs: fsspec.AbstractFileSystem, path: str, data: bytes) -> None:
    """Readers see the old object or the new one, never a part: rename on local disks; object
    stores already make a PUT visible only once it is complete."""
    if isinstance(fs, LocalFileSystem):
        fs.makedirs(os.path.dirname(path), exist_ok=True)
        temporary = f"{path}.tmp-{os.getpid()}"
        with open(temporary, "wb") as out:
            out.write(data)
            out.flush()
            os.fsync(out.fileno())
        os.replace(temporary, path)
    else:
        fs.pipe_file(path, data)


def join(uri: str, *parts: str) -> str:
    return "/".join([uri.rstrip("/"), *parts])


def jsonl(uri: str, endpoint_url: str | None = None) -> Iterator[tuple[str, Any]]:
    """(where, row) for each non-blank line of a jsonl file, `where` being "<uri> line N"; a
    line that is not JSON is a ValueError that says where."""
    fs, path = filesystem(uri, endpoint_url)
    for number, line in enumerate(fs.cat_file(path).decode().splitlines(), 1):
        if line.strip():
            where = f"{uri} line {number}"
            try:
                yield where, json.loads(line)
            except json.JSONDecodeError as error:
                raise ValueError(f"{where}: not JSON ({error})") from error
