"""The Dataset job: read -> clean -> filter -> deduplicate -> tokenize -> pack -> shards.

Per-document work (reading, cleaning, filters, MinHash signatures) runs on the engine's workers,
file batch by file batch, in the corpus's order. Decisions that need the whole corpus
(duplicates, the train/validation split, the tokenizer) are made here, in that same order, so
every engine writes the same dataset.
"""

from __future__ import annotations

import hashlib
import json
import time
from collections import Counter
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from importlib.metadata import version
from typing import Any

import numpy as np

from lmforge.jobs.data import engines, shards, sources, tokenize
from lmforge.jobs.data.clean import Cleaner
from lmforge.jobs.data.dedup import NearDuplicateIndex, Signer, content_hash
from lmforge.jobs.data.filters import Blocker, Pii, quality
from lmforge.jobs.storage import filesystem, join, write_atomic
from lmforge.operator.api.dataset import DatasetSpec

Progress = Callable[[str, int, int], None]
"""on_progress(stage, done, total)"""


class DataError(ValueError):
    """The job cannot produce a dataset from this input; the message says why and what to do."""


@dataclass
class FileResult:
    file: sources.File
    digest: str | None = None
    error: str | None = None
    bytes: int = 0
    read: int = 0
    kept: list[tuple[str, str, bytes, np.ndarray | None]] = field(default_factory=list)
    """(id, text, content hash, MinHash signature) of each document that passed the filters."""
    removed: Counter = field(default_factory=Counter)
    pii: Counter = field(default_factory=Counter)
    blocked: Counter = field(default_factory=Counter)
    seconds: Counter = field(default_factory=Counter)


class Processor:
    """The per-document stages, built once and shipped to every worker."""

    def __init__(self, spec: DatasetSpec, blocklist: list[str]):
        self.spec = spec
        self.clean = Cleaner(spec.cleaning)
        self.pii = Pii(spec.filters.pii) if spec.filters.pii.enabled else None
        self.block = Blocker(spec.filters.blocklist, blocklist)
        near = spec.deduplication.near
        self.sign = Signer(near) if near.enabled else None

    def __call__(self, batch: list[sources.File]) -> list[FileResult]:
        return [self.process(file) for file in batch]

    def process(self, file: sources.File) -> FileResult:
        result, clock = FileResult(file), _Clock()
        try:
            raw, texts = sources.read(
                file, self.spec.sources[file.source], self.spec.storage.endpoint_url
            )
        except sources.SourceError as error:
            result.error = str(error)
            return result
        result.digest, result.bytes, result.read = shards.digest(raw), len(raw), len(texts)
        result.seconds["read"] += clock.lap()
        for doc in sources.documents(file, texts):
            reason = self.filter(doc.text, result, clock)
            if isinstance(reason, str):
                result.removed[reason] += 1
                continue
            text = reason[0]
            signature = self.sign(text) if self.sign else None
            result.seconds["minhash"] += clock.lap()
            result.kept.append((doc.id, text, content_hash(text), signature))
        return result

    def filter(self, text: str, result: FileResult, clock: _Clock) -> str | tuple[str]:
        """The name of the stage that removes the document, or (its final text,)."""
        text = self.clean(text)
        result.seconds["clean"] += clock.lap()
        if text is None:
            return "length"
        q = self.spec.filters.quality
        failed = quality(text, q) if q.enabled else None
        result.seconds["quality"] += clock.lap()
        if failed:
            return f"quality.{failed}"
        hits = self.block(text)
        result.seconds["blocklist"] += clock.lap()
        if hits:
            result.blocked.update(hits)
            return "blocklist"
        if self.pii is not None:
            redacted, found = self.pii(text)
            result.seconds["pii"] += clock.lap()
            if found and self.spec.filters.pii.action == "drop":
                return "pii"
            result.pii.update(found)
            text = redacted
        return (text,)


class _Clock:
    def __init__(self):
        self.last = time.perf_counter()

    def lap(self) -> float:
        now = time.perf_counter()
        elapsed, self.last = now - self.last, now
        return elapsed


def config_digest(spec: DatasetSpec) -> str:
    """What decides the output: not the engine, workers, resources or where it is stored."""
    relevant = spec.wire()
    for key in ("engine", "resources", "runPolicy", "storage", "output"):
        relevant.pop(key, None)
    relevant["format"] = shards.FORMAT
    return shards.digest(json.dumps(relevant, sort_keys=True).encode())


def input_digest(files: list[sources.File]) -> str:
    """The listing of the inputs (URI and size), so changed sources rebuild the dataset."""
    return shards.digest(json.dumps([(f.uri, f.size) for f in files]).encode())


def batches(files: list[sources.File], target_bytes: int = 4 << 20) -> Iterator[list[sources.File]]:
    batch, size = [], 0
    for file in files:
        batch.append(file)
        size += file.size
        if size >= target_bytes:
            yield batch
            batch, size = [], 0
    if batch:
        yield batch


def in_validation(doc_id: str, fraction: float, seed: int) -> bool:
    point = int.from_bytes(hashlib.blake2b(f"{seed}:{doc_id}".encode(), digest_size=8).digest())
    return point / 2**64 < fraction


@dataclass
class Corpus:
    """What survives, per split, in corpus order; and what was removed, for the audit."""

    splits: dict[str, list[tuple[str, str, str]]] = field(
        default_factory=lambda: {"train": [], "validation": []}
    )  # (id, source uri, text)
    files: list[FileResult] = field(default_factory=list)
    removed: Counter = field(default_factory=Counter)
    clusters: Counter = field(default_factory=Counter)
    sources: dict[str, str] = field(default_factory=dict)


def deduplicate(
    results: Iterator[list[FileResult]], spec: DatasetSpec, total: int, on_progress: Progress
) -> Corpus:
    corpus, seen = Corpus(), {}
    near = NearDuplicateIndex(spec.deduplication.near) if spec.deduplication.near.enabled else None
    split = spec.split
    for batch in results:
        for result in batch:
            corpus.files.append(result)
            corpus.removed.update(result.removed)
            for doc_id, text, digest, signature in result.kept:
                if spec.deduplication.exact:
                    if digest in seen:
                        corpus.removed["exactDuplicates"] += 1
                        corpus.clusters[seen[digest]] += 1
                        continue
                    seen[digest] = doc_id
                if near is not None and (kept := near.representative(doc_id, signature, text)):
                    corpus.removed["nearDuplicates"] += 1
                    corpus.clusters[kept] += 1
                    continue
                name = (
                    "validation"
                    if in_validation(doc_id, split.validation_fraction, split.seed)
                    else "train"
                )
                corpus.splits[name].append((doc_id, result.file.uri, text))
                corpus.sources[doc_id] = result.file.uri
            on_progress("process", len(corpus.files), total)
    return corpus


def run(spec: DatasetSpec, output_uri: str, on_progress: Progress | None = None) -> dict[str, Any]:
    """Build the dataset at output_uri; returns its manifest (untouched if already complete)."""
    on_progress = on_progress or (lambda stage, done, total: None)
    endpoint = spec.storage.endpoint_url
    try:
        files = sources.list_files(spec.sources, endpoint)
    except sources.SourceError as error:
        raise DataError(str(error)) from error
    fs, root = filesystem(output_uri, endpoint)
    digests = {"configDigest": config_digest(spec), "inputDigest": input_digest(files)}
    existing = shards.read_manifest(fs, root)
    if existing and digests.items() <= existing.items() and shards.complete(fs, root, existing):
        return existing

    started = time.perf_counter()
    work = list(batches(files))
    processor = Processor(spec, _blocklist(spec))
    try:
        results = engines.run(processor, work, spec.engine)
    except ValueError as error:
        raise DataError(str(error)) from error
    corpus = deduplicate(results, spec, len(files), on_progress)
    if not corpus.splits["train"]:
        raise DataError(f"no documents left to train on: {_removed_summary(corpus)}")
    process_seconds = time.perf_counter() - started

    on_progress("tokenize", 0, 1)
    tokenizer = _tokenizer(spec, [text for _, _, text in corpus.splits["train"]])
    tokenizer_seconds = time.perf_counter() - started - process_seconds
    tokenizer_json = tokenizer.to_str().encode()
    vocab, eos = tokenizer.get_vocab_size(), tokenize.eos_id(tokenizer)
    build = "data-" + shards.digest("".join(digests.values()).encode())[7:19]
    dtype, length = tokenize.token_dtype(vocab), spec.packing.sequence_length
    tokenize_started = time.perf_counter()
    splits, tokens_by_source = _write_splits(corpus, tokenizer, spec, fs, root, build)
    tokenize_seconds = time.perf_counter() - tokenize_started
    on_progress("tokenize", 1, 1)
    write_atomic(fs, join(root, f"{build}/tokenizer.json"), tokenizer_json)
    audit = _audit(corpus, tokens_by_source, splits)
    audit_bytes = shards.write_json(fs, root, f"{build}/audit.json", audit)
    manifest = {
        "format": shards.FORMAT,
        "lmforgeVersion": version("lmforge"),
        **digests,
        "sequenceLength": length,
        "dtype": dtype.name,
        "tokenizer": {"path": f"{build}/tokenizer.json", "digest": shards.digest(tokenizer_json),
                      "vocabSize": vocab, "eosId": eos},
        "splits": splits,
        "sources": _sources(spec, corpus),
        "audit": {"path": f"{build}/audit.json", "digest": shards.digest(audit_bytes)},
    }  # fmt: skip
    shards.write_json(fs, root, shards.MANIFEST, manifest)  # last: the dataset now exists
    shards.remove_other_builds(fs, root, keep=build)
    # Not part of the dataset (it differs run to run): how long each part took, for the summary
    # and the benchmark. Per-stage figures are seconds summed over the workers.
    stages = sum((f.seconds for f in corpus.files), Counter())
    manifest["seconds"] = {"process": process_seconds, "tokenizer": tokenizer_seconds,
                           "tokenize": tokenize_seconds, "total": time.perf_counter() - started,
                           "workerStages": dict(stages)}  # fmt: skip
    return manifest


def _write_splits(
    corpus: Corpus, tokenizer, spec: DatasetSpec, fs, root: str, build: str
) -> tuple[dict[str, Any], Counter]:
    """Each split tokenized, packed and written as shards of the build: the manifest's entries,
    and the tokens that each source contributed."""
    eos, dtype = tokenize.eos_id(tokenizer), tokenize.token_dtype(tokenizer.get_vocab_size())
    splits, tokens_by_source = {}, Counter()
    for name, docs in corpus.splits.items():
        stream, lengths = tokenize.encode(tokenizer, [text for _, _, text in docs], eos, dtype)
        for (_, source, _), count in zip(docs, lengths, strict=True):
            tokens_by_source[source] += count
        rows = tokenize.pack(stream, spec.packing.sequence_length)
        shard_list = shards.write_split(
            fs, root, f"{build}/{name}", rows, spec.packing.shard_size_mib << 20
        )
        splits[name] = {"documents": len(docs), "tokens": int(rows.size), "sequences": len(rows),
                        "shards": shard_list}  # fmt: skip
    return splits, tokens_by_source


def _blocklist(spec: DatasetSpec) -> list[str]:
    uri = spec.filters.blocklist.uri
    if not uri:
        return []
    fs, path = filesystem(uri, spec.storage.endpoint_url)
    try:
        return fs.cat_file(path).decode().split()
    except (OSError, UnicodeDecodeError) as error:
        raise DataError(f"spec.filters.blocklist.uri: cannot read {uri}: {error}") from error


def _tokenizer(spec: DatasetSpec, texts: list[str]):
    if spec.tokenizer.uri:
        try:
            return tokenize.load(spec.tokenizer.uri, spec.storage.endpoint_url)
        except ValueError as error:
            raise DataError(str(error)) from error
    return tokenize.train(texts, spec.tokenizer.train)


def _removed_summary(corpus: Corpus) -> str:
    read = sum(f.read for f in corpus.files)
    skipped = [f for f in corpus.files if f.error]
    parts = [f"{read} documents read from {len(corpus.files) - len(skipped)} files"]
    parts += [f"{count} removed by {stage}" for stage, count in corpus.removed.most_common()]
    if skipped:
        parts.append(
            f"{len(skipped)} files skipped (first: {skipped[0].file.uri}: {skipped[0].error})"
        )
    return "; ".join(parts) + ". Loosen spec.cleaning / spec.filters or check spec.sources"


def _audit(corpus: Corpus, tokens_by_source: Counter, splits: dict[str, Any]) -> dict[str, Any]:
    files = corpus.files
    skipped = [{"uri": f.file.uri, "reason": f.error} for f in files if f.error]
    blocked, pii = Counter(), Counter()
    for f in files:
        blocked.update(f.blocked)
        pii.update(f.pii)
    largest = [
        {"kept": doc, "source": corpus.sources.get(doc), "removed": n}
        for doc, n in sorted(corpus.clusters.items(), key=lambda c: (-c[1], c[0]))[:10]
    ]
    return {
        "documents": {"read": sum(f.read for f in files),
                      "kept": sum(s["documents"] for s in splits.values())},
        "files": {"read": len(files) - len(skipped), "skipped": len(skipped),
                  "skippedFiles": skipped[:100]},
        "bytes": sum(f.bytes for f in files),
        "removed": dict(sorted(corpus.removed.items())),
        "pii": dict(sorted(pii.items())),
        "blocklistHits": dict(blocked.most_common(50)),
        "duplicateClusters": {"count": len(corpus.clusters), "largest": largest},
        "topSources": [{"uri": uri, "tokens": n} for uri, n in tokens_by_source.most_common(10)],
        "splits": {k: {x: v[x] for x in ("documents", "sequences", "tokens")}
                   for k, v in splits.items()},
    }  # fmt: skip


def _sources(spec: DatasetSpec, corpus: Corpus) -> list[dict[str, Any]]:
    out = []
    for index, source in enumerate(spec.sources):
        files = [f for f in corpus.files if f.file.source == index]
        combined = "".join(f"{f.file.uri}={f.digest}\n" for f in files).encode()
        out.append(
            {
                "uri": source.uri,
                "files": len(files),
                "documents": sum(f.read for f in files),
                "digest": shards.digest(combined),
            }
        )
    return out
