"""Every removed document, as Parquet beside the shards, and the answer to "why was it removed?".

    data-<build>/removed/part-<batch>.parquet   id, source, url, stage, detail, duplicateOf,
                                                duplicateOfSource

stage is what audit.json counts (url, length, language, quality.<heuristic>, blocklist, pii,
exactDuplicates, nearDuplicates); for a duplicate, duplicateOf is the document its cluster kept.
"""

from __future__ import annotations

import argparse
import io
import sys
from pathlib import Path
from typing import Any

import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq

from lmforge.jobs.data import shards, spill
from lmforge.jobs.data.sources import File, document_id
from lmforge.jobs.storage import filesystem, join, write_atomic

FOLDER = "removed"
COLUMNS = ("id", "source", "url", "stage", "detail", "duplicateOf", "duplicateOfSource")
SCHEMA = pa.schema([(name, pa.string()) for name in COLUMNS])


class Rows:
    """One batch's removed documents, gathered by pass 3 of the pipeline."""

    def __init__(self, files: list[File]):
        self.files = files
        self.columns: dict[str, list] = {name: [] for name in SCHEMA.names}

    def _where(self, key: int) -> tuple[str, str]:
        number, index = spill.file_of(key)
        uri = self.files[number].uri
        return document_id(uri, index), uri

    def _add(self, key: int, url: str | None, stage: str, detail: str | None,
             twin: int | None) -> None:  # fmt: skip
        twin_id, twin_source = self._where(twin) if twin is not None else (None, None)
        row = (*self._where(key), url, stage, detail, twin_id, twin_source)
        for name, value in zip(SCHEMA.names, row, strict=True):
            self.columns[name].append(value)

    def filtered(self, key: int, url: str | None, stage: str, detail: str | None) -> None:
        self._add(key, url, stage, detail, None)

    def duplicate(self, key: int, url: str | None, kept: int, exact: bool) -> None:
        stage = "exactDuplicates" if exact else "nearDuplicates"
        detail = "the same content" if exact else "similar content (MinHash LSH)"
        self._add(key, url, stage, detail, kept)

    def write(self, folder: str, batch: int, endpoint_url: str | None) -> int:
        """The rows as folder/part-<batch>.parquet (none if there are none); how many."""
        count = len(self.columns["id"])
        if count:
            buffer = io.BytesIO()
            pq.write_table(pa.table(self.columns, schema=SCHEMA), buffer, compression="zstd")
            fs, root = filesystem(folder, endpoint_url)
            write_atomic(fs, join(root, f"part-{batch:06d}.parquet"), buffer.getvalue())
        return count


def why(dataset_uri: str, document: str, endpoint_url: str | None = None) -> dict[str, Any] | None:
    """The audit row of a removed document (by id), None if the dataset kept it or never read
    it. Raises FileNotFoundError if there is no complete dataset at dataset_uri."""
    fs, root = filesystem(dataset_uri, endpoint_url)
    manifest = shards.read_manifest(fs, root)
    if manifest is None:
        raise FileNotFoundError(f"{dataset_uri} has no {shards.MANIFEST}: no complete dataset")
    folder = join(root, manifest["audit"]["removed"])
    for path in sorted(fs.glob(join(folder, "part-*.parquet"))):
        with fs.open(path, "rb") as handle:  # not read_table(filters=): its threads can abort
            table = pq.ParquetFile(handle).read()  # the interpreter's exit (pyarrow 26)
        table = table.filter(pc.equal(table["id"], document))
        if table.num_rows:
            return table.to_pylist()[0]
    return None


def main(argv: list[str] | None = None) -> int:
    """`lmforge data why DATASET ID`: one removed document's row, in words."""
    parser = argparse.ArgumentParser(prog="lmforge data why")
    parser.add_argument("dataset")
    parser.add_argument("id")
    parser.add_argument("--endpoint-url")
    args = parser.parse_args(argv)
    uri = args.dataset if "://" in args.dataset else Path(args.dataset).resolve().as_uri()
    try:
        row = why(uri.removesuffix("/" + shards.MANIFEST), args.id, args.endpoint_url)
    except FileNotFoundError as error:
        print(f"{args.dataset}: {error}", file=sys.stderr)
        return 1
    if row is None:
        print(f"{args.id}: not removed (the dataset kept it, or it is not one of its documents)")
        return 0
    print(f"{row['id']} from {row['source']}: removed by {row['stage']} ({row['detail']})")
    if row["duplicateOf"]:
        print(f"kept instead: {row['duplicateOf']} from {row['duplicateOfSource']}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
