"""Contamination: the share of each task's examples that share a word n-gram with what the
model was trained on (hf.LINEAGE: the Datasets, their shards decoded, and the jsonl rows of
every stage that made it). One pass over the training data serves every task."""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import numpy as np
from tokenizers import Tokenizer

from lmforge.jobs import hf
from lmforge.jobs.data import decontaminate, shards
from lmforge.jobs.data.reader import ShardReader
from lmforge.jobs.storage import filesystem, join
from lmforge.operator.api.evaluation import Task

BATCH = 256
"""Documents decoded at once."""


def overlaps(
    tasks: list[Task], model_uri: str, ngram: int, endpoint_url: str | None
) -> tuple[dict[str, float], dict[str, Any]]:
    """({<task>.overlap: share of its examples}, details) for the tasks that read rows."""
    data = hf.training_data(model_uri, endpoint_url)
    indexes = {
        task.name: decontaminate.index([task.uri], ngram, endpoint_url,
                                       f"tasks {task.name}.uri", task.max_examples)
        for task in tasks
        if task.uri and data
    }  # fmt: skip
    if not indexes:  # no rows to compare, or nothing known of the training: no figure, not 0
        return {}, {"trainingData": data}
    hits: dict[str, dict[int, str]] = {name: {} for name in indexes}
    for source, text in training_texts(data, endpoint_url):
        for name, index in indexes.items():
            for example in index.matches(text):
                hits[name].setdefault(example, source)
    results, details = {}, {"trainingData": data, "ngram": ngram}
    for name, index in indexes.items():
        total = len(index) + index.short
        results[f"{name}.overlap"] = round(len(hits[name]) / total, 6) if total else 0.0
        details[name] = {
            "examples": total,
            "overlapping": len(hits[name]),
            "first": [{"example": index.examples[e], "trainingData": source}
                      for e, source in sorted(hits[name].items())[:10]],
        }  # fmt: skip
    return results, details


def training_texts(
    data: list[dict[str, str]], endpoint_url: str | None
) -> Iterator[tuple[str, str]]:
    """(source URI, text) of every document the model was trained on."""
    for entry in data:
        uri = entry["uri"]
        if entry["kind"] == "Dataset":
            for text in documents(uri, endpoint_url):
                yield uri, text
        else:
            field = f"{hf.LINEAGE} of the model"
            for _, _, text in decontaminate.examples([uri], endpoint_url, field):
                yield uri, text


def documents(uri: str, endpoint_url: str | None, split: str = "train") -> Iterator[str]:
    """A Dataset's documents of one split, decoded from its shards (split at EOS; the tokens the
    packing left out of the last sequence are not there)."""
    fs, root = filesystem(uri, endpoint_url)
    manifest = shards.read_manifest(fs, root)
    if manifest is None:
        raise ValueError(f"{uri}: no {shards.MANIFEST} (listed in the model's {hf.LINEAGE})")
    tokenizer = Tokenizer.from_str(fs.cat_file(join(root, manifest["tokenizer"]["path"])).decode())
    eos = manifest["tokenizer"]["eosId"]
    reader = ShardReader(uri, split, endpoint_url=endpoint_url)
    pending: list[int] = []
    batch: list[list[int]] = []
    for i in range(reader.total):
        sequence = reader.sequence(i)
        tokens, start = sequence.tolist(), 0
        for end in np.flatnonzero(sequence == eos).tolist():
            batch.append(pending + tokens[start:end])
            pending, start = [], end + 1
        pending += tokens[start:]
        if len(batch) >= BATCH:
            yield from tokenizer.decode_batch(batch)
            batch = []
    yield from tokenizer.decode_batch([*batch, pending] if pending else batch)
