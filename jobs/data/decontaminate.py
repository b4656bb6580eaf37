"""Decontamination: the word n-grams of evaluation data, and the texts that share one with it
(GPT-3's 13-gram overlap test). The Dataset job removes such documents; an Evaluation counts
the examples of each task that share one with its model's training data."""

from __future__ import annotations

import itertools
import re
from collections.abc import Iterable, Iterator
from fnmatch import fnmatch

from fsspec.core import has_magic

from lmforge.jobs.storage import filesystem, jsonl

_WORD = re.compile(r"[^\W_]+")


def words(text: str) -> list[str]:
    """Lower-cased runs of letters and digits: punctuation, case and spacing do not matter."""
    return _WORD.findall(text.lower())


class Index:
    """Every n-gram of the examples added, each with the first example it came from.

    Words are numbered as they first appear, and an n-gram is kept as the hash of its tuple of
    numbers: tuples of ints hash the same in every process (unlike str), so an index built in
    one process answers the same in a worker, and a text whose words are not all in the index's
    vocabulary is passed over without hashing.
    """

    def __init__(self, n: int):
        self.n = n
        self.vocabulary: dict[str, int] = {}
        self.grams: dict[int, int] = {}
        self.examples: list[str] = []
        """Where each example is, e.g. "s3://evals/qa.jsonl line 7"."""
        self.files: list[str] = []
        """The file of each example."""
        self.short = 0
        """Examples of fewer than n words: they cannot be matched."""

    def add(self, text: str, where: str, file: str) -> None:
        ids = [self.vocabulary.setdefault(w, len(self.vocabulary)) for w in words(text)]
        if len(ids) < self.n:
            self.short += 1
            return
        example = len(self.examples)
        self.examples.append(where)
        self.files.append(file)
        for i in range(len(ids) - self.n + 1):
            self.grams.setdefault(hash(tuple(ids[i : i + self.n])), example)

    def find(self, text: str) -> int | None:
        """The first example (in the text's order) the text shares an n-gram with, or None."""
        return next(self.matches(text), None)

    def matches(self, text: str) -> Iterator[int]:
        """The examples the text shares an n-gram with, in the text's order (with repeats)."""
        n, run = self.n, 0
        ids = [self.vocabulary.get(w, -1) for w in words(text)]
        for i, word in enumerate(ids):
            run = run + 1 if word >= 0 else 0
            if run >= n:
                example = self.grams.get(hash(tuple(ids[i - n + 1 : i + 1])))
                if example is not None:
                    yield example

    def __len__(self) -> int:
        return len(self.examples)


def examples(
    uris: Iterable[str], endpoint_url: str | None, field: str
) -> Iterator[tuple[str, str, str]]:
    """(file, where, text) of every example of every file the URIs match: a jsonl row is one (the
    text of each of its string fields, lists included), any other file is one; a folder is
    every file under it. A URI that
    matches nothing, or a row that is not JSON, is a ValueError that names `field`."""
    for i, uri in enumerate(uris):
        fs, pattern = filesystem(uri, endpoint_url)
        try:
            if has_magic(pattern):
                paths = [p for p in sorted(fs.glob(pattern)) if fs.isfile(p)]
            else:  # a file, or every file under a folder
                paths = sorted(fs.find(pattern))
        except Exception as error:  # each backend has its own errors
            raise ValueError(f"{field}[{i}]: cannot list {uri}: {error}") from error
        if not paths:
            raise ValueError(f"{field}[{i}]: no files match {uri}")
        for path in paths:
            name = fs.unstrip_protocol(path)
            if fnmatch(path, "*.jsonl"):
                try:
                    for where, row in jsonl(name, endpoint_url):
                        yield name, where, "\n".join(_strings(row))
                except ValueError as error:
                    raise ValueError(f"{field}[{i}]: {error}") from error
            else:
                yield name, name, fs.cat_file(path).decode(errors="replace")


def index(
    uris: Iterable[str], n: int, endpoint_url: str | None, field: str, limit: int | None = None
) -> Index:
    """The n-grams of the first `limit` examples (every one when unset)."""
    built = Index(n)
    for file, where, text in itertools.islice(examples(uris, endpoint_url, field), limit):
        built.add(text, where, file)
    return built


def _strings(value) -> Iterator[str]:
    if isinstance(value, str):
        yield value
    elif isinstance(value, dict):
        for item in value.values():
            yield from _strings(item)
    elif isinstance(value, list):
        for item in value:
            yield from _strings(item)
