"""Readers: every file matching a source's URI glob, as documents with a source and a stable id."""

from __future__ import annotations

import gzip
import hashlib
import io
import json
import zlib
from collections.abc import Iterator
from dataclasses import dataclass, field

import pyarrow.parquet as pq
import zstandard
from fsspec.core import has_magic

from lmforge.jobs.data import web
from lmforge.jobs.storage import filesystem
from lmforge.operator.api.dataset import Source

_SUFFIXES = {".gz": "gzip", ".zst": "zstd", ".zstd": "zstd"}


class SourceError(ValueError):
    """A source whose files cannot be listed, or that has none: the job cannot start."""


@dataclass(frozen=True)
class File:
    """One file of one source, in the order the job reads them."""

    source: int
    """Index of its source in the spec."""
    uri: str
    size: int
    number: int = 0
    """Its place in the whole listing: documents are ordered by (number, place in the file)."""


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
        files += [File(index, uri, size, len(files) + i) for i, (uri, size) in enumerate(matched)]
    return files


@dataclass
class Reading:
    """What reading one file found besides its texts: its digest and size, and what was skipped
    (each with where it was), or why the file could not be read at all."""

    digest: str | None = None
    bytes: int = 0
    skipped: list[str] = field(default_factory=list)
    """Where, for the first KEEP skipped records."""
    skips: int = 0
    error: str | None = None

    KEEP = 100

    def skip(self, where: str) -> None:
        self.skips += 1
        if len(self.skipped) < self.KEEP:
            self.skipped.append(where)


class _Hashing(io.RawIOBase):
    """The raw bytes of a file, hashed and counted as they are read."""

    def __init__(self, stream):
        self.stream, self.hash, self.count = stream, hashlib.sha256(), 0
        self.watch = None

    def readable(self) -> bool:
        return True

    def readinto(self, buffer) -> int:
        data = self.stream.read(len(buffer))
        buffer[: len(data)] = data
        self.hash.update(data)
        self.count += len(data)
        if self.watch:
            self.watch(data)
        return len(data)

    def finish(self, reading: Reading) -> None:
        """Read what is left (after a decompression error, say), for the whole file's digest."""
        while self.readinto(bytearray(1 << 20)):
            pass
        reading.digest, reading.bytes = "sha256:" + self.hash.hexdigest(), self.count


def read(
    file: File, source: Source, reading: Reading, max_bytes: int, endpoint_url: str | None = None
) -> Iterator[tuple[str, str | None]]:
    """The file's documents, streamed, as (text, URL or None): nothing holds more than one
    document (at most max_bytes).

    Bad input never stops the job nor loses a good document: an invalid line or record (not
    UTF-8, not JSON, longer than max_bytes, a broken HTTP header) is skipped and counted in
    reading, with where it was; a compressed stream cut off or corrupt keeps every document
    before the damage. A file that cannot be opened at all is reading.error."""
    fs, path = filesystem(file.uri, endpoint_url)
    try:
        handle = fs.open(path, "rb")
    except OSError as error:
        reading.error = f"unreadable: {error}"
        return
    with handle:
        if source.format == "parquet":
            yield from ((text, None) for text in _parquet(handle, source.field or "text", reading))
            handle.seek(0)
        raw = _Hashing(handle)
        if source.format != "parquet":
            stream = _decompress(raw, file.uri, source.compression)
            try:
                if source.format == "warc":
                    ended = _SoftEnd(stream)
                    yield from web.records(ended, max_bytes, reading.skip)
                    if ended.error:
                        raise ended.error
                elif source.format == "text":
                    yield from ((text, None) for text in _text(stream, max_bytes, reading))
                else:
                    texts = _jsonl(stream, source.field or "text", max_bytes, reading)
                    yield from ((text, None) for text in texts)
            except DAMAGED as error:
                reading.skip(f"the rest of the file: cannot decompress: {error}")
        raw.finish(reading)


DAMAGED = (OSError, EOFError, zlib.error, zstandard.ZstdError)
"""What a cut-off or corrupt compressed stream raises."""


class _SoftEnd(io.RawIOBase):
    """A stream that ends where its data is damaged, keeping the error: a reader that reads
    ahead (fastwarc) then still gets every whole record before the damage. It seeks forward
    only, by reading on, which is all fastwarc asks when it passes over a record."""

    def __init__(self, stream: io.BufferedIOBase):
        self.stream, self.error, self.position = stream, None, 0

    def readable(self) -> bool:
        return True

    def seekable(self) -> bool:
        return True

    def tell(self) -> int:
        return self.position

    def seek(self, offset: int, whence: int = io.SEEK_SET) -> int:
        target = offset + (self.position if whence == io.SEEK_CUR else 0)
        if whence == io.SEEK_END or target < self.position:
            raise io.UnsupportedOperation("this stream seeks forward only")
        while self.position < target and self.readinto(
            bytearray(min(target - self.position, 1 << 20))
        ):
            pass
        return self.position

    def readinto(self, buffer) -> int:
        if self.error:
            return 0
        try:  # read1: one read of the stream below, so what came before the damage is returned
            data = self.stream.read1(len(buffer))
        except DAMAGED as error:
            self.error = error
            return 0
        buffer[: len(data)] = data
        self.position += len(data)
        return len(data)


def compression_of(uri: str, compression: str) -> str:
    """The source's compression setting for this file, with `auto` read from its suffix."""
    if compression != "auto":
        return compression
    return next((c for s, c in _SUFFIXES.items() if uri.endswith(s)), "none")


def _decompress(raw: _Hashing, uri: str, compression: str) -> io.BufferedIOBase:
    compression = compression_of(uri, compression)
    if compression == "gzip":
        return gzip.GzipFile(fileobj=io.BufferedReader(raw))
    if compression == "zstd":
        return io.BufferedReader(_Zstd(raw))
    return io.BufferedReader(raw)


class _Zstd(io.RawIOBase):
    """A zstd stream that raises when it ends inside a frame, as gzip does when cut off:
    zstandard's reader ends such a stream silently. It follows the frame and block headers
    (RFC 8878) of the compressed bytes as they pass, reading nothing twice."""

    def __init__(self, raw: _Hashing):
        raw.watch = self._feed
        self.reader = zstandard.ZstdDecompressor().stream_reader(raw, read_across_frames=True)
        self.header, self.between = bytearray(), True
        self.steps = self._walk()
        self.skip, self.need = next(self.steps)

    def readable(self) -> bool:
        return True

    def readinto(self, buffer) -> int:
        count = self.reader.readinto(buffer)
        if not count and (self.skip or self.header or not self.between):
            raise zstandard.ZstdError("the stream ends inside a frame (the file is cut off)")
        return count

    def _feed(self, data: bytes) -> None:
        view = memoryview(data)
        while view:
            if self.skip:
                taken = min(self.skip, len(view))
                self.skip, view = self.skip - taken, view[taken:]
                continue
            taken = self.need - len(self.header)
            self.header += view[:taken]
            view = view[taken:]
            if len(self.header) == self.need:
                header, self.header = bytes(self.header), bytearray()
                self.skip, self.need = self.steps.send(header)

    def _walk(self) -> Iterator[tuple[int, int]]:
        """Yields (bytes to pass over, bytes of header to see next); is sent that header."""
        skip = 0
        while True:
            self.between = True
            magic = int.from_bytes((yield skip, 4), "little")
            self.between = False
            if magic & 0xFFFFFFF0 == 0x184D2A50:  # a skippable frame: its size, then its bytes
                skip = int.from_bytes((yield 0, 4), "little")
                continue
            (descriptor,) = yield 0, 1
            single, dictionary = descriptor >> 5 & 1, descriptor & 3
            skip = (1 - single) + (0, 1, 2, 4)[dictionary] + (single, 2, 4, 8)[descriptor >> 6]
            last = False
            while not last:
                block = int.from_bytes((yield skip, 3), "little")
                last, kind, size = block & 1, block >> 1 & 3, block >> 3
                skip = 1 if kind == 1 else size  # an RLE block holds one byte
            skip += 4 * (descriptor >> 2 & 1)  # the content checksum


def _text(stream: io.BufferedIOBase, max_bytes: int, reading: Reading) -> Iterator[str]:
    data = stream.read(max_bytes + 1)
    if len(data) > max_bytes:
        reading.skip(f"the file: longer than {max_bytes} bytes (spec.cleaning.maxChars)")
        return
    try:
        yield data.decode("utf-8")
    except UnicodeDecodeError as error:
        reading.skip(f"the file: not UTF-8 at byte {error.start}")


def _jsonl(stream: io.BufferedIOBase, key: str, max_bytes: int, reading: Reading) -> Iterator[str]:
    found = missing = 0
    for number, line in enumerate(_lines(stream, max_bytes), 1):
        if line is None:
            reading.skip(f"line {number}: longer than {max_bytes} bytes (spec.cleaning.maxChars)")
            continue
        if not line.strip():
            continue
        try:
            row = json.loads(line)  # bytes: json decodes (and checks) the UTF-8 itself
        except UnicodeDecodeError as error:
            reading.skip(f"line {number}: not UTF-8 at byte {error.start}")
            continue
        except json.JSONDecodeError as error:
            reading.skip(f"line {number}: not JSON ({error.msg})")
            continue
        value = row.get(key) if isinstance(row, dict) else None
        if isinstance(value, str):
            found += 1
            yield value
        else:
            missing += 1
    if missing and not found:
        reading.skip(f"every line: no string field {key!r}: set spec.sources[].field")


def _lines(stream: io.BufferedIOBase, max_bytes: int) -> Iterator[bytes | None]:
    """Each line, or None for one longer than max_bytes (read past, never held)."""
    while line := stream.readline(max_bytes + 1):
        if len(line) > max_bytes and not line.endswith(b"\n"):
            while (rest := stream.readline(1 << 20)) and not rest.endswith(b"\n"):
                pass
            yield None
        else:
            yield line


def _parquet(handle, column: str, reading: Reading) -> Iterator[str]:
    try:
        table = pq.ParquetFile(handle)
    except Exception as error:  # pyarrow raises its own ArrowInvalid family for corrupt files
        reading.skip(f"the file: not a parquet file: {error}")
        return
    names = table.schema_arrow.names
    if column not in names:
        reading.skip(
            f"the file: no column {column!r} (it has {', '.join(names)}): set spec.sources[].field"
        )
        return
    for batch in table.iter_batches(batch_size=1024, columns=[column]):
        yield from (t for t in batch.column(0).to_pylist() if isinstance(t, str))
