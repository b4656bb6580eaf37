"""The Dataset job: read -> clean -> filter -> deduplicate -> tokenize -> pack -> shards.

No process holds the corpus. Three passes run on the engine's workers, each over parts that fit
a worker's memory (spec.engine.workerMemoryMiB; docs/data.md has the formula):
1. `Processor`, per batch of files: documents stream from the reader through cleaning and the
   filters into the batch's spill (spill.py): the documents, and their duplicate records
   partitioned by hash.
2. `Resolver`, per partition: exact and near-duplicate edges (dedup.py), which this process
   merges with union-find into clusters; every cluster keeps its first document.
3. `Writer`, per batch: the batch's documents again, minus the removed, tokenized; the removed
   go into the audit (audit.py).
Between 2 and 3 the tokenizer is trained on a stream of the kept training documents; after 3
this process packs the batches' tokens, in corpus order, into shards, a shard at a time.
Every decision depends on the documents' keys (their corpus order) only, so every engine and
every number of workers writes the same bytes.
"""

from __future__ import annotations

import hashlib
import json
import math
import os
import time
from collections import Counter
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from importlib.metadata import version
from typing import Any

import numpy as np

from lmforge.jobs.data import audit, decontaminate, engines, shards, sources, spill, tokenize
from lmforge.jobs.data.clean import Cleaner
from lmforge.jobs.data.dedup import Signer, UnionFind, exact_edges, near_edges
from lmforge.jobs.data.filters import Blocker, Classify, Domains, Language, Pii, domain, quality
from lmforge.jobs.storage import filesystem, join, write_atomic
from lmforge.operator.api.dataset import DatasetSpec

Progress = Callable[[str, int, int], None]
"""on_progress(stage, done, total)"""

RUNTIME_MIB = 256
"""What a worker needs before any document: Python, numpy, pyarrow, the tokenizer."""
BATCHES_PER_WORKER = 4
"""At least this many batches per worker where the files allow, so that the workers finish
together."""


class DataError(ValueError):
    """The job cannot produce a dataset from this input; the message says why and what to do."""


@dataclass(frozen=True)
class Budget:
    """Sizes derived from spec.engine.workerMemoryMiB (docs/data.md, "Memory")."""

    chunk_bytes: int
    """Text a worker gathers before it writes: its spill's buffers and the tokenizer's input."""
    batch_bytes: int
    """Input bytes per batch of files (a unit of work; one larger file is a batch alone)."""
    partitions: dict[str, int]
    """Per kind of duplicate record (exact, near): enough that one partition's records fit."""

    @classmethod
    def of(cls, spec: DatasetSpec, files: list[sources.File]) -> Budget:
        free = max(32, spec.engine.worker_memory_mib - RUNTIME_MIB) << 20
        near = spec.deduplication.near
        # Records per document of 1 KB of text: an exact record (24 B) and, per band, a near one
        # (16 B and a byte per permutation).
        text = sum(f.size * _expansion(spec.sources[f.source], f.uri) for f in files)
        per_doc = {"exact": 24, "near": near.bands * (16 + near.permutations)}
        partitions = {kind: min(4096, max(1, math.ceil(text * size / 1024 / (free // 4))))
                      for kind, size in per_doc.items()}  # fmt: skip
        # Smaller batches where the corpus is small, so that every worker gets some: a corpus
        # of one batch would run on one worker.
        input_bytes = sum(f.size for f in files)
        spread = math.ceil(input_bytes / (BATCHES_PER_WORKER * engines.workers(spec.engine)))
        batch = max(1, min(free // 4, spread))
        return cls(chunk_bytes=free // 8, batch_bytes=batch, partitions=partitions)


def _expansion(source: sources.Source, uri: str) -> int:
    """About how many bytes of text a byte of the file holds: compressed files and Parquet
    about 4, plain text and jsonl 1."""
    compressed = sources.compression_of(uri, source.compression) != "none"
    return 4 if compressed or source.format == "parquet" else 1


@dataclass
class FileResult:
    file: sources.File
    reading: sources.Reading = field(default_factory=sources.Reading)
    read: int = 0
    kept: int = 0
    removed: Counter = field(default_factory=Counter)
    pii: Counter = field(default_factory=Counter)
    blocked: Counter = field(default_factory=Counter)
    contaminated: Counter = field(default_factory=Counter)
    """Documents removed per file of evaluation data."""
    seconds: Counter = field(default_factory=Counter)


@dataclass(frozen=True)
class Removed:
    stage: str
    """As the audit counts it: url, length, language, quality.<heuristic>, blocklist,
    decontamination, classifier.<name>, pii."""
    detail: str | None = None


@dataclass(frozen=True)
class Batch:
    index: int
    files: list[sources.File]


class Processor:
    """Pass 1: the per-document stages, built once and shipped to every worker."""

    def __init__(self, spec: DatasetSpec, lists: Lists, work: str, budget: Budget):
        self.spec, self.work, self.budget = spec, work, budget
        self.domains = Domains(spec.filters.urls, lists.domains)
        language = spec.filters.language
        self.language = Language(language) if language.enabled else None
        self.clean = Cleaner(spec.cleaning)
        self.pii = Pii(spec.filters.pii) if spec.filters.pii.enabled else None
        self.block = Blocker(spec.filters.blocklist, lists.words)
        self.evaluation = lists.evaluation
        endpoint = spec.storage.endpoint_url
        self.classifiers = [Classify(c, f"spec.filters.classifiers[{i}]", endpoint)
                            for i, c in enumerate(spec.filters.classifiers)]  # fmt: skip
        for classify in self.classifiers:
            classify.load()  # a bad model fails the job now; forked workers share it
        near = spec.deduplication.near
        self.sign = Signer(near) if near.enabled else None
        # A document longer than this cannot pass maxChars: the reader skips it unread.
        self.max_bytes = spec.cleaning.max_chars * 6 + 1024

    def __call__(self, batch: Batch) -> list[FileResult]:
        spec = self.spec
        out = spill.Spill(self.work, batch.index, self.budget.partitions,
                          spec.deduplication.near if self.sign else None,
                          spec.deduplication.exact, self.budget.chunk_bytes,
                          spec.storage.endpoint_url)  # fmt: skip
        results = [self.process(file, out) for file in batch.files]
        out.close()
        return results

    def process(self, file: sources.File, out: spill.Spill) -> FileResult:
        result, clock = FileResult(file), _Clock()
        source = self.spec.sources[file.source]
        split = self.spec.split
        documents = sources.read(
            file, source, result.reading, self.max_bytes, self.spec.storage.endpoint_url
        )
        for index, (text, url) in enumerate(documents):
            result.seconds["read"] += clock.lap()
            result.read += 1
            key = spill.key(file.number, index)
            validation = in_validation(
                sources.document_id(file.uri, index), split.validation_fraction, split.seed
            )
            outcome, language = self.filter(text, url, result, clock)
            if isinstance(outcome, Removed):
                result.removed[outcome.stage] += 1
                out.add(key, None, outcome, validation, url, language)
                continue
            signature = self.sign(outcome) if self.sign else None
            result.seconds["minhash"] += clock.lap()
            result.kept += 1
            out.add(key, outcome, None, validation, url, language, signature)
        result.seconds["read"] += clock.lap()
        return result

    def filter(
        self, text: str, url: str | None, result: FileResult, clock: _Clock
    ) -> tuple[Removed | str, str | None]:
        """(Why the document is removed, or its final text; its language if identified)."""
        if url is not None and (why := self.domains(url)):
            return Removed("url", why), None
        text = self.clean(text)
        result.seconds["clean"] += clock.lap()
        if text is None:
            c = self.spec.cleaning
            return Removed("length", f"not within spec.cleaning minChars {c.min_chars} and"
                           f" maxChars {c.max_chars} once cleaned"), None  # fmt: skip
        language = None
        if self.language is not None:
            language, why = self.language(text)
            result.seconds["language"] += clock.lap()
            if why:
                return Removed("language", why), language
        q = self.spec.filters.quality
        failed = quality(text, q) if q.enabled else None
        result.seconds["quality"] += clock.lap()
        if failed:
            return Removed(f"quality.{failed}", f"spec.filters.quality.{failed}"), language
        hits = self.block(text)
        result.seconds["blocklist"] += clock.lap()
        if hits:
            result.blocked.update(hits)
            return Removed("blocklist", ", ".join(hits[:10])), language
        if self.evaluation is not None:
            example = self.evaluation.find(text)
            result.seconds["decontamination"] += clock.lap()
            if example is not None:
                result.contaminated[self.evaluation.files[example]] += 1
                where = self.evaluation.examples[example]
                n = self.evaluation.n
                return Removed("decontamination", f"shares a {n}-gram with {where}"), language
        for classify in self.classifiers:
            why = classify(text)
            if why:
                result.seconds["classifiers"] += clock.lap()
                return Removed(f"classifier.{classify.config.name}", why), language
        result.seconds["classifiers"] += clock.lap()
        if self.pii is not None:
            redacted, found = self.pii(text)
            result.seconds["pii"] += clock.lap()
            if found and self.spec.filters.pii.action == "drop":
                return Removed("pii", ", ".join(sorted(found))), language
            result.pii.update(found)
            text = redacted
        return text, language


class _Clock:
    def __init__(self):
        self.last = time.perf_counter()

    def lap(self) -> float:
        now = time.perf_counter()
        elapsed, self.last = now - self.last, now
        return elapsed


class Resolver:
    """Pass 2: one partition's duplicate edges, (removed key, the key it duplicates)."""

    def __init__(self, spec: DatasetSpec, work: str):
        self.spec, self.work = spec, work

    def __call__(self, task: tuple[str, int]) -> np.ndarray:
        kind, partition = task
        records = spill.records(self.work, kind, partition, self.spec.storage.endpoint_url)
        if records is None:
            return np.zeros((0, 2), dtype=np.int64)
        if kind == "exact":
            return exact_edges(records)
        return near_edges(records, self.spec.deduplication.near.threshold)


@dataclass
class Removals:
    """The duplicates of one batch: sorted keys, the key each one's cluster keeps, and whether
    it is an exact copy (else a near duplicate)."""

    keys: np.ndarray
    kept: np.ndarray
    exact: np.ndarray


@dataclass
class Written:
    """What pass 3 wrote for one batch."""

    documents: Counter = field(default_factory=Counter)
    tokens_by_file: Counter = field(default_factory=Counter)
    languages: Counter = field(default_factory=Counter)
    domains: Counter = field(default_factory=Counter)
    removed: int = 0


class Writer:
    """Pass 3: one batch's kept documents tokenized, its removed documents into the audit."""

    def __init__(self, spec: DatasetSpec, work: str, files: list[sources.File], tokenizer_json: str,
                 audit_folder: str, chunk_bytes: int):  # fmt: skip
        self.spec, self.work, self.files = spec, work, files
        self.tokenizer_json, self.audit_folder, self.chunk_bytes = (
            tokenizer_json,
            audit_folder,
            chunk_bytes,
        )

    def __call__(self, task: tuple[int, Removals]) -> Written:
        batch, removals = task
        tokenizer = tokenize.Tokenizer.from_str(self.tokenizer_json)
        eos = tokenize.eos_id(tokenizer)
        dtype = tokenize.token_dtype(tokenizer.get_vocab_size())
        endpoint = self.spec.storage.endpoint_url
        fs, work = filesystem(self.work, endpoint)
        written, rows = Written(), audit.Rows(self.files)
        outputs = {}
        for split in ("train", "validation"):
            path = spill.tokens_path(work, split, batch)
            fs.makedirs(path.rsplit("/", 1)[0], exist_ok=True)
            outputs[split] = fs.open(path, "wb")
        for part in spill.documents(self.work, batch, endpoint):
            keys = part.column("key").to_numpy()
            texts = part.column("text").to_pylist()
            removed = part.column("removed").to_pylist()
            details = part.column("detail").to_pylist()
            validation = part.column("validation").to_pylist()
            urls = part.column("url").to_pylist()
            languages = part.column("language").to_pylist()
            at = np.searchsorted(removals.keys, keys)
            at[at == len(removals.keys)] = 0
            duplicate = (
                (removals.keys[at] == keys) if len(removals.keys) else np.zeros(len(keys), bool)
            )
            kept = {"train": [], "validation": []}
            for i, k in enumerate(keys.tolist()):
                if removed[i] is not None:
                    rows.filtered(k, urls[i], removed[i], details[i])
                elif duplicate[i]:
                    j = at[i]
                    rows.duplicate(k, urls[i], int(removals.kept[j]), bool(removals.exact[j]))
                else:
                    kept["validation" if validation[i] else "train"].append((k, texts[i]))
                    if languages[i] is not None:
                        written.languages[languages[i]] += 1
                    if urls[i] is not None:
                        written.domains[domain(urls[i])] += 1
            for split, docs in kept.items():
                stream, lengths = tokenize.encode(tokenizer, [t for _, t in docs], eos, dtype,
                                                  self.chunk_bytes)  # fmt: skip
                outputs[split].write(stream.tobytes())
                written.documents[split] += len(docs)
                for (k, _), n in zip(docs, lengths, strict=True):
                    written.tokens_by_file[spill.file_of(k)[0]] += n
        for out in outputs.values():
            out.close()
        written.removed = rows.write(self.audit_folder, batch, endpoint)
        return written


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


def batches(files: list[sources.File], target_bytes: int) -> list[Batch]:
    """Consecutive files of about target_bytes together."""
    groups, group, size = [], [], 0
    for file in files:
        group.append(file)
        size += file.size
        if size >= target_bytes:
            groups.append(group)
            group, size = [], 0
    if group:
        groups.append(group)
    return [Batch(index, group) for index, group in enumerate(groups)]


def in_validation(doc_id: str, fraction: float, seed: int) -> bool:
    point = int.from_bytes(hashlib.blake2b(f"{seed}:{doc_id}".encode(), digest_size=8).digest())
    return point / 2**64 < fraction


@dataclass
class Clusters:
    """The duplicates of the whole corpus, from every partition's edges."""

    removals: dict[int, Removals]
    """By batch."""
    sizes: Counter
    """Documents removed per kept key."""
    removed: Counter


def cluster(edges: list[np.ndarray], exact: set[int], batch_of: np.ndarray) -> Clusters:
    """Union-find over every edge; a cluster keeps its smallest key (the first in the corpus)."""
    clusters = UnionFind()
    for pairs in edges:
        for a, b in pairs.tolist():
            clusters.union(a, b)
    by_batch: dict[int, list[tuple[int, int, bool]]] = {}
    sizes, removed = Counter(), Counter()
    for key in sorted(clusters.parent):
        root = clusters.find(key)
        if root != key:
            is_exact = key in exact
            by_batch.setdefault(int(batch_of[spill.file_of(key)[0]]), []).append(
                (key, root, is_exact)
            )
            sizes[root] += 1
            removed["exactDuplicates" if is_exact else "nearDuplicates"] += 1
    removals = {
        batch: Removals(*(np.array(column) for column in zip(*rows, strict=True)))
        for batch, rows in by_batch.items()
    }
    return Clusters(removals, sizes, removed)


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
    build = "data-" + shards.digest("".join(digests.values()).encode())[7:19]
    work = join(output_uri, build, "work")
    if fs.exists(join(root, build)):  # what an interrupted run of this build left
        fs.rm(join(root, build), recursive=True)
    budget = Budget.of(spec, files)
    work_batches = batches(files, budget.batch_bytes)
    batch_of = np.zeros(len(files), dtype=np.int64)
    for batch in work_batches:
        batch_of[[f.number for f in batch.files]] = batch.index

    # 1: read, clean, filter, spill
    try:
        processor = Processor(spec, _lists(spec), work, budget)
    except ValueError as error:  # a classifier's model or label
        raise DataError(str(error)) from error
    results: list[FileResult] = []
    for batch_results in _map(processor, work_batches, spec):
        results += batch_results
        on_progress("process", len(results), len(files))
    if not sum(r.kept for r in results):
        raise DataError(f"no documents left to train on: {_removed_summary(results, Counter())}")

    # 2: duplicates
    kinds = [k for k, on in (("exact", spec.deduplication.exact),
                             ("near", spec.deduplication.near.enabled)) if on]  # fmt: skip
    tasks = [(kind, p) for kind in kinds for p in range(budget.partitions[kind])]
    edges, exact = [], set()
    for done, ((kind, _), pairs) in enumerate(zip(tasks, _map(Resolver(spec, work), tasks, spec),
                                                  strict=True), 1):  # fmt: skip
        edges.append(pairs)
        if kind == "exact":
            exact.update(pairs[:, 0].tolist())
        on_progress("deduplicate", done, len(tasks))
    clusters = cluster(edges, exact, batch_of)
    process_seconds = time.perf_counter() - started

    # the tokenizer, on a stream of the kept training documents
    on_progress("tokenize", 0, len(work_batches))
    tokenizer = _tokenizer(spec, _kept_texts(work, work_batches, clusters, endpoint))
    tokenizer_json = tokenizer.to_str()
    tokenizer_seconds = time.perf_counter() - started - process_seconds

    # 3: tokenize, audit; then pack
    tokenize_started = time.perf_counter()
    if engines.workers(spec.engine) > 1 and len(work_batches) > 1:
        os.environ["TOKENIZERS_PARALLELISM"] = "false"  # workers fork from here: one thread each
    writer = Writer(spec, work, files, tokenizer_json, join(output_uri, build, audit.FOLDER),
                    budget.chunk_bytes)  # fmt: skip
    empty = Removals(*(np.zeros(0, dtype=t) for t in (np.int64, np.int64, bool)))
    tasks3 = [(b.index, clusters.removals.get(b.index, empty)) for b in work_batches]
    written = []
    for w in _map(writer, tasks3, spec):
        written.append(w)
        on_progress("tokenize", len(written), len(work_batches))
    totals = sum((w.documents for w in written), Counter())
    if not totals["train"]:
        raise DataError(
            f"no documents left to train on: {_removed_summary(results, clusters.removed)}"
        )
    vocab = tokenizer.get_vocab_size()
    dtype, length = tokenize.token_dtype(vocab), spec.packing.sequence_length
    splits = {}
    for split in ("train", "validation"):
        stream = _token_stream(work, split, len(work_batches), dtype, budget.chunk_bytes, endpoint)
        entries = shards.write_stream(fs, root, f"{build}/{split}", stream, length,
                                      spec.packing.shard_size_mib << 20)  # fmt: skip
        splits[split] = {
            "documents": totals[split],
            "tokens": sum(e["tokens"] for e in entries),
            "sequences": sum(e["sequences"] for e in entries),
            "shards": entries,
        }
    tokenize_seconds = time.perf_counter() - tokenize_started
    fs.rm(join(root, build, "work"), recursive=True)

    write_atomic(fs, join(root, f"{build}/tokenizer.json"), tokenizer_json.encode())
    tokens_by_source = Counter()
    for w in written:
        for number, n in w.tokens_by_file.items():
            tokens_by_source[files[number].uri] += n
    summary = _audit(results, clusters, files, tokens_by_source, splits)
    if processor.evaluation is not None:
        index = processor.evaluation
        summary["decontamination"] = {
            "ngram": index.n, "examples": len(index), "shorterThanNgram": index.short,
            "removedByFile": dict(sum((r.contaminated for r in results), Counter()).most_common()),
        }  # fmt: skip
    summary["removedDocuments"] = {"path": f"{build}/{audit.FOLDER}",
                                   "rows": sum(w.removed for w in written)}  # fmt: skip
    languages = sum((w.languages for w in written), Counter())
    domains = sum((w.domains for w in written), Counter())
    if spec.filters.language.enabled:
        summary["languages"] = dict(languages.most_common())
    if domains:
        summary["domains"] = {"count": len(domains), "top": dict(domains.most_common(100))}
    audit_bytes = shards.write_json(fs, root, f"{build}/audit.json", summary)
    manifest = {
        "format": shards.FORMAT,
        "lmforgeVersion": version("lmforge"),
        **digests,
        "sequenceLength": length,
        "dtype": dtype.name,
        "tokenizer": {"path": f"{build}/tokenizer.json",
                      "digest": shards.digest(tokenizer_json.encode()),
                      "vocabSize": vocab, "eosId": tokenize.eos_id(tokenizer)},
        "splits": splits,
        "sources": _sources(spec, results),
        "audit": {"path": f"{build}/audit.json", "digest": shards.digest(audit_bytes),
                  "removed": f"{build}/{audit.FOLDER}"},
    }  # fmt: skip
    shards.write_json(fs, root, shards.MANIFEST, manifest)  # last: the dataset now exists
    shards.remove_other_builds(fs, root, keep=build)
    # Not part of the dataset (it differs run to run): how long each part took, for the summary
    # and the benchmark. Per-stage figures are seconds summed over the workers.
    stages = sum((r.seconds for r in results), Counter())
    manifest["seconds"] = {"process": process_seconds, "tokenizer": tokenizer_seconds,
                           "tokenize": tokenize_seconds, "total": time.perf_counter() - started,
                           "workerStages": dict(stages)}  # fmt: skip
    return manifest


def _map(work, items: list, spec: DatasetSpec) -> Iterator:
    try:
        yield from engines.run(work, items, spec.engine)
    except engines.WorkerLost as error:
        raise DataError(str(error)) from error
    except ValueError as error:
        raise DataError(str(error)) from error


def _kept_texts(work: str, batches_: list[Batch], clusters: Clusters, endpoint) -> Iterator[str]:
    for batch in batches_:
        removed = clusters.removals.get(batch.index)
        drop = set(removed.keys.tolist()) if removed else set()
        for part in spill.documents(work, batch.index, endpoint):
            keys = part.column("key").to_pylist()
            validation = part.column("validation").to_pylist()
            for k, text, v in zip(keys, part.column("text").to_pylist(), validation, strict=True):
                if text is not None and not v and k not in drop:
                    yield text


def _token_stream(work: str, split: str, count: int, dtype, chunk_bytes: int,
                  endpoint) -> Iterator[np.ndarray]:  # fmt: skip
    fs, root = filesystem(work, endpoint)
    for batch in range(count):
        with fs.open(spill.tokens_path(root, split, batch), "rb") as handle:
            while data := handle.read(chunk_bytes):
                yield np.frombuffer(data, dtype=dtype)


@dataclass(frozen=True)
class Lists:
    """What the filters read from files: blocklisted words, blocked domains, evaluation data."""

    words: list[str]
    domains: list[str]
    evaluation: decontaminate.Index | None = None


def _lists(spec: DatasetSpec) -> Lists:
    f = spec.filters
    words = _words(spec, f.blocklist.uri, "spec.filters.blocklist.uri")
    domains = _words(spec, f.urls.blocked_domains_uri, "spec.filters.urls.blockedDomainsUri")
    d, evaluation = f.decontamination, None
    if d.uris:
        field = "spec.filters.decontamination.uris"
        try:
            evaluation = decontaminate.index(d.uris, d.ngram, spec.storage.endpoint_url, field)
        except (OSError, UnicodeDecodeError) as error:
            raise DataError(f"{field}: cannot read evaluation data: {error}") from error
        except ValueError as error:
            raise DataError(str(error)) from error
    return Lists(words, domains, evaluation)


def _words(spec: DatasetSpec, uri: str | None, where: str) -> list[str]:
    if not uri:
        return []
    fs, path = filesystem(uri, spec.storage.endpoint_url)
    try:
        return fs.cat_file(path).decode().split()
    except (OSError, UnicodeDecodeError) as error:
        raise DataError(f"{where}: cannot read {uri}: {error}") from error


def _tokenizer(spec: DatasetSpec, texts: Iterator[str]):
    if spec.tokenizer.uri:
        try:
            return tokenize.load(spec.tokenizer.uri, spec.storage.endpoint_url)
        except ValueError as error:
            raise DataError(str(error)) from error
    return tokenize.train(texts, spec.tokenizer.train)


def _removed_summary(results: list[FileResult], duplicates: Counter) -> str:
    read = sum(r.read for r in results)
    skipped = [r for r in results if r.reading.error]
    parts = [f"{read} documents read from {len(results) - len(skipped)} files"]
    removed = sum((r.removed for r in results), Counter()) + duplicates
    parts += [f"{count} removed by {stage}" for stage, count in removed.most_common()]
    if skipped:
        first = skipped[0]
        parts.append(
            f"{len(skipped)} files skipped (first: {first.file.uri}: {first.reading.error})"
        )
    return "; ".join(parts) + ". Loosen spec.cleaning / spec.filters or check spec.sources"


def _audit(results: list[FileResult], clusters: Clusters, files: list[sources.File],
           tokens_by_source: Counter, splits: dict[str, Any]) -> dict[str, Any]:  # fmt: skip
    skipped = [{"uri": r.file.uri, "reason": r.reading.error} for r in results if r.reading.error]
    damaged = [{"uri": r.file.uri, "where": where}
               for r in results for where in r.reading.skipped]  # fmt: skip
    blocked, pii, removed = Counter(), Counter(), Counter(clusters.removed)
    for r in results:
        blocked.update(r.blocked)
        pii.update(r.pii)
        removed.update(r.removed)
    largest = []
    for key, n in sorted(clusters.sizes.items(), key=lambda c: (-c[1], c[0]))[:10]:
        number, index = spill.file_of(key)
        uri = files[number].uri
        largest.append({"kept": sources.document_id(uri, index), "source": uri, "removed": n})
    return {
        "documents": {"read": sum(r.read for r in results),
                      "kept": sum(s["documents"] for s in splits.values())},
        "files": {"read": len(results) - len(skipped), "skipped": len(skipped),
                  "skippedFiles": skipped[:100]},
        "skippedRecords": {"count": sum(r.reading.skips for r in results), "first": damaged[:100]},
        "bytes": sum(r.reading.bytes for r in results),
        "removed": dict(sorted(removed.items())),
        "pii": dict(sorted(pii.items())),
        "blocklistHits": dict(blocked.most_common(50)),
        "duplicateClusters": {"count": len(clusters.sizes), "largest": largest},
        "topSources": [{"uri": uri, "tokens": n} for uri, n in tokens_by_source.most_common(10)],
        "splits": {k: {x: v[x] for x in ("documents", "sequences", "tokens")}
                   for k, v in splits.items()},
    }  # fmt: skip


def _sources(spec: DatasetSpec, results: list[FileResult]) -> list[dict[str, Any]]:
    out = []
    for index, source in enumerate(spec.sources):
        mine = [r for r in results if r.file.source == index]
        combined = "".join(f"{r.file.uri}={r.reading.digest}\n" for r in mine).encode()
        out.append(
            {
                "uri": source.uri,
                "files": len(mine),
                "documents": sum(r.read for r in mine),
                "digest": shards.digest(combined),
            }
        )
    return out
