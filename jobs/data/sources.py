"""Readers: every file matching a source's URI glob, as documents with a source and a stable id."""

from __future__ import annotations

import gzip
import hashlib
import io
import json
from collections.abc import Iterator
from dataclasses import dataclass

import pyarrow.parquet as pq
import zstandard
from fsspec.core import has_magic

from lmforge.jobs.storage import filesystem
from lmforge.operator.api.dataset import Source

_SUFFIXES = {".gz": "gzip", ".zst": "zstd", ".zstd": "zstd"}


class SourceError(ValueError):
    """A file that cannot become documents; it is skipped and counted in the audit."""


@dataclass(frozen=True)
class File:
    """One file of one source, in the order the job reads them."""

    source: int
    """Index of its source in the spec."""
    uri: str
    size: int


@dataclass(frozen=True)
class Document:
    id: str
    source: str
    text: str


def document_id(uri: str, index: int) -> str:
    """Stable across runs and engines: the file's URI and the document's place in it."""
    return hashlib.blake2b(f"{uri}#{index}".encode(), digest_size=8).hexdigest()


def list_files(sources: list[Source], endpoint_url: str | None = None) -> list[File]:
    """Every file of every source, sorted within a source; raises SourceError if one has none."""
    files = []
    for index, source in enumerate(sources):
        try:
            fs, pattern = filesystem(source.uri, endpoint_url)
            if has_magic(pattern):
                found = fs.glob(pattern, detail=True)
            else:
                found = {pattern: fs.info(pattern)}
        except Exception as error:  # each backend has its own errors (botocore's, gcsfs', ...)
            raise SourceError(
                f"spec.sources[{index}].uri: cannot list {source.uri}: {error}"
            ) from error
        matched = sorted(
            (fs.unstrip_protocol(name), info["size"])
            for name, info in found.items()
            if info["type"] == "file"
        )
        if not matched:
            raise SourceError(f"spec.sources[{index}].uri: no files match {source.uri}")
        files += [File(index, uri, size) for uri, size in matched]
    return files


def read(file: File, source: Source, endpoint_url: str | None = None) -> tuple[bytes, list[str]]:
    """The file's raw bytes (for its digest) and its documents' texts. Raises SourceError."""
    fs, path = filesystem(file.uri, endpoint_url)
    try:
        raw = fs.cat_file(path)
    except OSError as error:
        raise SourceError(f"unreadable: {error}") from error
    data = _decompress(raw, file.uri, source.compression)
    field = source.field or "text"
    if source.format == "parquet":
        return raw, _parquet(data, field)
    try:
        text = data.decode("utf-8")
    except UnicodeDecodeError as error:
        raise SourceError(f"not UTF-8 at byte {error.start}") from error
    return raw, [text] if source.format == "text" else _jsonl(text, field)


def _decompress(raw: bytes, uri: str, compression: str) -> bytes:
    if compression == "auto":
        compression = next((c for s, c in _SUFFIXES.items() if uri.endswith(s)), "none")
    try:
        if compression == "gzip":
            return gzip.decompress(raw)
        if compression == "zstd":
            return zstandard.ZstdDecompressor().decompressobj().decompress(raw)
    except (OSError, EOFError, zstandard.ZstdError) as error:
        raise SourceError(f"cannot decompress as {compression}: {error}") from error
    return raw


def _jsonl(text: str, field: str) -> list[str]:
    texts, missing = [], 0
    for number, line in enumerate(text.splitlines(), 1):
        if not line.strip():
            continue
        try:
            row = json.loads(line)
        except json.JSONDecodeError as error:
            raise SourceError(f"line {number} is not JSON: {error.msg}") from error
        value = row.get(field) if isinstance(row, dict) else None
        if isinstance(value, str):
            texts.append(value)
        else:
            missing += 1
    if missing and not texts:
        raise SourceError(f"no line has a string field {field!r}: set spec.sources[].field")
    return texts


def _parquet(data: bytes, column: str) -> list[str]:
    try:
        table = pq.read_table(io.BytesIO(data))
    except Exception as error:  # pyarrow raises its own ArrowInvalid family for corrupt files
        raise SourceError(f"not a parquet file: {error}") from error
    if column not in table.column_names:
        raise SourceError(
            f"no column {column!r} (it has {', '.join(table.column_names)}):"
            " set spec.sources[].field"
        )
    return [t for t in table.column(column).to_pylist() if isinstance(t, str)]


def documents(file: File, texts: list[str]) -> Iterator[Document]:
    for index, text in enumerate(texts):
        yield Document(document_id(file.uri, index), file.uri, text)
