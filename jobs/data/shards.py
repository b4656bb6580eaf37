"""Arrow IPC shards of packed sequences, and the manifest that makes them a dataset.

Layout under the output URI:
    data-<build>/train/shard-00000.arrow ...  one column, tokens: fixed_size_list<uint16|32>[length]
    data-<build>/validation/shard-00000.arrow
    data-<build>/tokenizer.json
    data-<build>/audit.json                   what each stage did
    manifest.json                             written last, atomically: then the dataset exists

<build> is a digest of the config and the inputs, so a rebuild never overwrites the files the
current manifest points at: a crash mid-build leaves the last good dataset intact, and the old
build's folder is removed only after the new manifest is in place.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Iterable
from typing import Any

import fsspec
import numpy as np
import pyarrow as pa

from lmforge.jobs.storage import join, write_atomic

FORMAT = "lmforge.dataset/v1"
MANIFEST = "manifest.json"


def digest(data: bytes) -> str:
    return "sha256:" + hashlib.sha256(data).hexdigest()


def encode_shard(rows: np.ndarray) -> bytes:
    values = pa.array(rows.reshape(-1))
    column = pa.FixedSizeListArray.from_arrays(values, rows.shape[1])
    table = pa.table({"tokens": column})
    sink = pa.BufferOutputStream()
    with pa.ipc.new_file(sink, table.schema) as writer:
        writer.write_table(table)
    return sink.getvalue().to_pybytes()


def write_stream(
    fs: fsspec.AbstractFileSystem,
    root: str,
    folder: str,
    stream: Iterable[np.ndarray],
    length: int,
    shard_bytes: int,
) -> list[dict[str, Any]]:
    """A token stream packed into rows of `length` tokens (the tail shorter than a row is
    dropped) in size-bounded shards under root/folder, each written once it is full: at most a
    shard is held. Returns their manifest entries."""
    entries, pending, held = [], [], 0
    per_shard = None
    for tokens in stream:
        if per_shard is None:
            per_shard = max(1, shard_bytes // (length * tokens.itemsize)) * length
        pending.append(tokens)
        held += len(tokens)
        while held >= per_shard:
            joined = np.concatenate(pending)
            entries.append(_write_shard(fs, root, folder, len(entries), joined[:per_shard], length))
            pending, held = [joined[per_shard:]], held - per_shard
    if held >= length:
        joined = np.concatenate(pending)
        rows = held // length * length
        entries.append(_write_shard(fs, root, folder, len(entries), joined[:rows], length))
    return entries


def _write_shard(fs, root: str, folder: str, number: int, tokens: np.ndarray,
                 length: int) -> dict[str, Any]:  # fmt: skip
    rows = tokens.reshape(-1, length)
    data = encode_shard(rows)
    path = f"{folder}/shard-{number:05d}.arrow"
    write_atomic(fs, join(root, path), data)
    return {"path": path, "sequences": len(rows), "tokens": int(rows.size),
            "bytes": len(data), "digest": digest(data)}  # fmt: skip


def read_manifest(fs: fsspec.AbstractFileSystem, root: str) -> dict[str, Any] | None:
    """The manifest, or None if there is none (the dataset does not exist yet)."""
    fs.invalidate_cache()  # object stores' listings may be cached from before our writes
    try:
        return json.loads(fs.cat_file(join(root, MANIFEST)))
    except FileNotFoundError:
        return None


def complete(fs: fsspec.AbstractFileSystem, root: str, manifest: dict[str, Any]) -> bool:
    """Every shard the manifest names is there with its size (a cheap check, no hashing)."""
    for split in manifest["splits"].values():
        for shard in split["shards"]:
            try:
                if fs.size(join(root, shard["path"])) != shard["bytes"]:
                    return False
            except FileNotFoundError:
                return False
    return True


def remove_other_builds(fs: fsspec.AbstractFileSystem, root: str, keep: str) -> None:
    for entry in fs.ls(root, detail=False):
        name = entry.rstrip("/").rsplit("/", 1)[-1]
        if name.startswith("data-") and name != keep:
            fs.rm(entry, recursive=True)


def write_json(fs: fsspec.AbstractFileSystem, root: str, name: str, value: Any) -> bytes:
    data = (json.dumps(value, indent=2, sort_keys=True) + "\n").encode()
    write_atomic(fs, join(root, name), data)
    return data
