"""Deduplication across the whole corpus, as datatrove and NeMo-Curator do it at scale.

Where documents are read, each becomes records: its content hash (exact duplicates) and, per
LSH band, a hash of that band of its MinHash signature with a one-byte-per-value sketch of the
whole signature (near duplicates). Records are spilled to storage partitioned by hash, so one
partition holds every record that can collide with another; each partition is resolved on its
own (`exact_edges`, `near_edges`: sort, group, and for near duplicates confirm each candidate by
the similarity its sketch estimates), and the edges from all partitions are merged with
union-find. The smallest key (corpus order) of a cluster is kept: the same on any engine, any
number of workers or partitions.

Shingles are hashed and min-hashed with numpy, a whole document at a time: hashing each shingle
in a Python loop (datasketch's update_batch) cost more than every other per-document stage, and
datasketch's MinHashLSH holds its index in one process's memory.
"""

from __future__ import annotations

import hashlib

import numpy as np

from lmforge.operator.api.dataset import NearDuplicates

EXACT = np.dtype([("hash", "<u8", 2), ("key", "<i8")])
"""An exact-duplicate record: the document's content hash, and its key (its corpus order)."""


def content_hash(text: str) -> np.ndarray:
    return np.frombuffer(hashlib.blake2b(text.encode(), digest_size=16).digest(), "<u8")


_SPACE = ord(" ")
_GOLDEN, _MIX1, _MIX2 = (np.uint64(c) for c in
                         (0x9E3779B97F4A7C15, 0xBF58476D1CE4E5B9, 0x94D049BB133111EB))  # fmt: skip
_BYTE_BASE = np.uint64(0x100000001B3)
_SEED = 1  # fixed: signatures from different processes, runs and engines must mix
_CHUNK = 4096  # shingles per block: a [permutations x chunk] block stays in cache
_powers = np.ones(1, dtype=np.uint64)


def _mix(x: np.ndarray) -> np.ndarray:
    """splitmix64's finalizer: every input bit flips about half of the output bits."""
    x = x ^ (x >> np.uint64(30))
    x *= _MIX1
    x ^= x >> np.uint64(27)
    x *= _MIX2
    x ^= x >> np.uint64(31)
    return x


def _byte_powers(n: int) -> np.ndarray:
    """_BYTE_BASE ** i mod 2**64 for i < n (grown once, kept for the process)."""
    global _powers
    if len(_powers) < n:
        factors = np.full(max(n, 2 * len(_powers)), _BYTE_BASE, dtype=np.uint64)
        factors[0] = 1
        _powers = np.cumprod(factors, dtype=np.uint64)  # wraps mod 2**64, as intended
    return _powers[:n]


def word_hashes(text: str) -> np.ndarray:
    """A stable 64-bit hash of each whitespace-separated word (as str.split splits), in order."""
    words = text.split()
    if not words:
        return np.zeros(0, dtype=np.uint64)
    # Each word is followed by exactly one space now, and UTF-8 never uses byte 0x20 inside a
    # character, so words are the runs before each space. A word's hash is the polynomial of
    # its bytes (its space weighs 0), plus its length, mixed.
    data = np.frombuffer((" ".join(words) + " ").encode(), dtype=np.uint8)
    starts = np.concatenate(([0], np.flatnonzero(data == _SPACE)[:-1] + 1))
    spans = np.diff(starts, append=len(data))
    position = np.arange(len(data)) - np.repeat(starts, spans)
    values = np.where(data == _SPACE, 0, data).astype(np.uint64)
    sums = np.add.reduceat(values * _byte_powers(int(spans.max()))[position], starts)
    return _mix(sums + spans.astype(np.uint64) * _GOLDEN)


def shingles(text: str, size: int) -> np.ndarray:
    """Sorted, unique 64-bit hashes of the text's `size`-word shingles. A text of fewer words
    is one shingle of all of them, so every text has at least one."""
    words = word_hashes(text)
    width = max(1, min(size, len(words)))
    count = max(1, len(words) - width + 1)
    combined = np.zeros(count, dtype=np.uint64) if not len(words) else words[:count].copy()
    for offset in range(1, width):
        combined *= _GOLDEN
        combined += words[offset : offset + count]
    return np.unique(_mix(combined))


class Signer:
    """MinHash signatures of word shingles. Permutation i is h(x) = (a_i * x + b_i) mod 2**64,
    top 32 bits (multiply-add-shift), over shingle hashes that are already well mixed."""

    def __init__(self, config: NearDuplicates):
        self.config = config
        rng = np.random.default_rng(_SEED)
        shape = (config.permutations, 1)
        self.a = rng.integers(0, 2**64, size=shape, dtype=np.uint64, endpoint=False) | 1
        self.b = rng.integers(0, 2**64, size=shape, dtype=np.uint64, endpoint=False)

    def __call__(self, text: str) -> np.ndarray:
        return self.signature(shingles(text, self.config.shingle_size))

    def signature(self, hashes: np.ndarray) -> np.ndarray:
        signature = np.full(len(self.a), np.iinfo(np.uint64).max, dtype=np.uint64)
        for start in range(0, len(hashes), _CHUNK):
            block = self.a * hashes[start : start + _CHUNK]
            block += self.b
            block >>= np.uint64(32)
            np.minimum(signature, block.min(axis=1), out=signature)
        return signature


def near_dtype(config: NearDuplicates) -> np.dtype:
    """A near-duplicate record: one band's bucket, the key, and the signature's sketch."""
    return np.dtype([("bucket", "<u8"), ("key", "<i8"), ("sketch", "u1", config.permutations)])


def near_records(keys: np.ndarray, signatures: np.ndarray, config: NearDuplicates) -> np.ndarray:
    """A record per document and band, for documents' keys and their signatures."""
    records = np.empty((len(keys), config.bands), near_dtype(config))
    records["bucket"] = np.stack([buckets(s, config.bands) for s in signatures])
    records["key"] = keys[:, None]
    records["sketch"] = sketch(signatures)[:, None, :]
    return records.reshape(-1)


def buckets(signature: np.ndarray, bands: int) -> np.ndarray:
    """One hash per band of the signature, distinct across bands (band i's rows and i)."""
    rows = signature.reshape(bands, -1)
    combined = np.arange(bands, dtype=np.uint64) * _GOLDEN
    for column in rows.T:
        combined = _mix(combined * _GOLDEN + column)
    return combined


def sketch(signature: np.ndarray) -> np.ndarray:
    """The low byte of each MinHash value (b-bit minwise hashing, Li and Konig 2010): two
    documents' bytes agree with probability J + (1 - J) / 256 for Jaccard similarity J."""
    return (signature & np.uint64(0xFF)).astype(np.uint8)


def estimated_jaccard(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """Row by row, the similarity two arrays of sketches estimate."""
    agree = (a == b).mean(axis=-1)
    return (agree - 1 / 256) / (1 - 1 / 256)


def exact_edges(records: np.ndarray) -> np.ndarray:
    """(duplicate, kept) key pairs: every document whose content hash a smaller key has."""
    order = np.lexsort((records["key"], records["hash"][:, 1], records["hash"][:, 0]))
    hashes, keys = records["hash"][order], records["key"][order]
    same = np.zeros(len(keys), dtype=bool)
    same[1:] = (hashes[1:] == hashes[:-1]).all(axis=1)
    return _to_first(keys, same, np.ones(len(keys), dtype=bool))


def near_edges(records: np.ndarray, threshold: float) -> np.ndarray:
    """(candidate, first) key pairs: each document sharing a bucket with a smaller key whose
    similarity to that first key, estimated from their sketches, is at least the threshold."""
    order = np.lexsort((records["key"], records["bucket"]))
    records = records[order]
    same = np.zeros(len(records), dtype=bool)
    same[1:] = records["bucket"][1:] == records["bucket"][:-1]
    first = _firsts(same)
    similar = estimated_jaccard(records["sketch"], records["sketch"][first]) >= threshold
    return _to_first(records["key"], same, similar)


def _firsts(same: np.ndarray) -> np.ndarray:
    """For each row of sorted groups (same: the row's group is the previous row's), the index of
    its group's first row."""
    starts = np.where(same, 0, np.arange(len(same)))
    return np.maximum.accumulate(starts) if len(same) else starts


def _to_first(keys: np.ndarray, same: np.ndarray, keep: np.ndarray) -> np.ndarray:
    first = _firsts(same)
    chosen = same & keep & (keys != keys[first])
    return np.stack([keys[chosen], keys[first][chosen]], axis=1)


class UnionFind:
    """Clusters of keys; a cluster's root is its smallest key, the document that is kept."""

    def __init__(self):
        self.parent: dict[int, int] = {}

    def find(self, key: int) -> int:
        parent = self.parent
        while (up := parent.get(key, key)) != key:
            parent[key] = grand = parent.get(up, up)  # path halving
            key = grand
        return key

    def union(self, a: int, b: int) -> None:
        a, b = self.find(a), self.find(b)
        if a != b:
            self.parent[max(a, b)] = min(a, b)
