"""The job's working files in storage, beside the build it makes (deleted once it is done).

    work/docs/b-<batch>.parquet            every document the batch read, in corpus order: key,
                                           text (null once removed), removed and detail (why),
                                           validation, url and language (when known)
    work/exact/p-<partition>/b-<batch>-<chunk>.npy   exact-duplicate records (dedup.EXACT)
    work/near/p-<partition>/b-<batch>-<chunk>.npy    near-duplicate records (dedup.near_dtype)
    work/tokens/<split>/b-<batch>.bin       the batch's kept documents as tokens, EOS after each

Each worker writes only its batch's files and flushes them every `chunk_bytes` of text, so it
holds at most that much whatever the size of its files; a partition holds every record that can
collide with another, so it is resolved alone.
"""

from __future__ import annotations

import io
from collections.abc import Iterator

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

from lmforge.jobs.data import dedup
from lmforge.jobs.storage import filesystem, join
from lmforge.operator.api.dataset import NearDuplicates

DOCS = pa.schema([("key", pa.int64()), ("text", pa.string()), ("removed", pa.string()),
                  ("detail", pa.string()), ("validation", pa.bool_()), ("url", pa.string()),
                  ("language", pa.string())])  # fmt: skip
KEY_BITS = 32
"""key = (file number << KEY_BITS) | the document's place in its file: sorting keys sorts the
corpus, and a key says which file and document it is."""


def key(number: int, index: int) -> int:
    return (number << KEY_BITS) | index


def file_of(key: int) -> tuple[int, int]:
    return key >> KEY_BITS, key & ((1 << KEY_BITS) - 1)


def docs_path(work: str, batch: int) -> str:
    return join(work, "docs", f"b-{batch:06d}.parquet")


def tokens_path(work: str, split: str, batch: int) -> str:
    return join(work, "tokens", split, f"b-{batch:06d}.bin")


class Spill:
    """One batch's documents and duplicate records, written as they come."""

    def __init__(
        self,
        work: str,
        batch: int,
        partitions: dict[str, int],
        near: NearDuplicates | None,
        exact: bool,
        chunk_bytes: int,
        endpoint_url: str | None,
    ):
        self.fs, self.work = filesystem(work, endpoint_url)
        self.batch, self.partitions, self.near, self.exact = batch, partitions, near, exact
        self.chunk_bytes, self.chunks = chunk_bytes, 0
        path = docs_path(self.work, batch)
        self.fs.makedirs(path.rsplit("/", 1)[0], exist_ok=True)
        self.handle = self.fs.open(path, "wb")
        self.writer = pq.ParquetWriter(self.handle, DOCS, compression="zstd")
        self._reset()

    def _reset(self) -> None:
        self.rows: dict[str, list] = {name: [] for name in DOCS.names}
        self.hashes: list[np.ndarray] = []
        self.signatures: list[np.ndarray] = []
        self.kept: list[int] = []
        self.size = 0

    def add(self, key: int, text: str | None, removed, validation: bool, url: str | None,
            language: str | None, signature: np.ndarray | None = None) -> None:  # fmt: skip
        """removed: None, or why (pipeline.Removed: its stage and detail)."""
        why = (removed.stage, removed.detail) if removed else (None, None)
        row = (key, text, *why, validation, url, language)
        for name, value in zip(DOCS.names, row, strict=True):
            self.rows[name].append(value)
        if text is not None:
            self.kept.append(key)
            if self.exact:
                self.hashes.append(dedup.content_hash(text))
            if signature is not None:
                self.signatures.append(signature)
            self.size += len(text)
        if self.size >= self.chunk_bytes:
            self.flush()

    def flush(self) -> None:
        if not self.rows["key"]:
            return
        self.writer.write_table(pa.table(self.rows, schema=DOCS))
        keys = np.array(self.kept, dtype=np.int64)
        if self.hashes:
            records = np.empty(len(keys), dedup.EXACT)
            records["hash"], records["key"] = np.stack(self.hashes), keys
            self._partitioned("exact", records, records["hash"][:, 0])
        if self.signatures:
            records = dedup.near_records(keys, np.stack(self.signatures), self.near)
            self._partitioned("near", records, records["bucket"])
        self.chunks += 1
        self._reset()

    def _partitioned(self, kind: str, records: np.ndarray, hashes: np.ndarray) -> None:
        partition = hashes % np.uint64(self.partitions[kind])
        for p in np.unique(partition):
            buffer = io.BytesIO()
            np.save(buffer, records[partition == p])
            name = f"{kind}/p-{int(p):04d}/b-{self.batch:06d}-{self.chunks:04d}.npy"
            path = join(self.work, name)
            self.fs.makedirs(path.rsplit("/", 1)[0], exist_ok=True)
            self.fs.pipe_file(path, buffer.getvalue())

    def close(self) -> None:
        self.flush()
        self.writer.close()
        self.handle.close()  # the writer leaves a file it did not open; on S3 this uploads it


def records(work: str, kind: str, partition: int, endpoint_url: str | None) -> np.ndarray | None:
    """Every record of one partition, from every batch; None if it has none."""
    fs, root = filesystem(work, endpoint_url)
    folder = join(root, kind, f"p-{partition:04d}")
    try:
        names = sorted(fs.ls(folder, detail=False))
    except FileNotFoundError:
        return None
    parts = [np.load(io.BytesIO(fs.cat_file(name))) for name in names]
    return np.concatenate(parts) if parts else None


def documents(work: str, batch: int, endpoint_url: str | None) -> Iterator[pa.RecordBatch]:
    """A batch's documents, a row group at a time."""
    fs, root = filesystem(work, endpoint_url)
    with fs.open(docs_path(root, batch), "rb") as handle:
        yield from pq.ParquetFile(handle).iter_batches(batch_size=4096)
