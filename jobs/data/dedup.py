"""Deduplication across the whole corpus: exact (content hash) and near (MinHash + LSH).

Signatures are computed where the documents are read (in parallel); the decisions are made in
one place, in the corpus's order, so the first document of each cluster is kept on any engine.
Shingles are hashed and min-hashed with numpy, a whole document at a time: hashing each shingle
in a Python loop (datasketch's update_batch) cost more than every other per-document stage.
"""

from __future__ import annotations

import hashlib

import numpy as np
from datasketch import MinHash, MinHashLSH

from lmforge.operator.api.dataset import NearDuplicates


def content_hash(text: str) -> bytes:
    return hashlib.blake2b(text.encode(), digest_size=16).digest()


SCHEME = MinHash(16).scheme  # datasketch's default, for the LSH index's MinHash objects

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


def jaccard(a: np.ndarray, b: np.ndarray) -> float:
    """Jaccard similarity of two sets given as sorted unique arrays."""
    common = len(np.intersect1d(a, b, assume_unique=True))
    return common / (len(a) + len(b) - common)


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


class NearDuplicateIndex:
    """Keeps the first of every group of documents whose Jaccard similarity is >= threshold.

    LSH over the signatures finds the candidates. Given the texts, each candidate is confirmed
    with the exact Jaccard of the two documents' shingles: with ~128 permutations the estimate
    is off by ~0.04 at 0.8, enough to drop documents just under the threshold and keep some
    just over it. Without texts, the estimate decides.
    """

    def __init__(self, config: NearDuplicates):
        self.config = config
        rows = config.permutations // config.bands
        self.lsh = MinHashLSH(num_perm=config.permutations, params=(config.bands, rows))
        # MinHash objects only carry our signatures into the LSH index; giving them permutations
        # saves drawing new (unused) ones for every document.
        self.permutations = MinHash(config.permutations, scheme=SCHEME).permutations
        self.kept: dict[str, np.ndarray] = {}
        self.texts: dict[str, str] = {}

    def representative(
        self, key: str, signature: np.ndarray, text: str | None = None
    ) -> str | None:
        """The kept document this one duplicates; None (and it is kept) if there is none."""
        sketch = MinHash(hashvalues=signature, permutations=self.permutations, scheme=SCHEME)
        own = None
        scores = []
        for candidate in self.lsh.query(sketch):
            if text is not None and candidate in self.texts:
                own = shingles(text, self.config.shingle_size) if own is None else own
                other = shingles(self.texts[candidate], self.config.shingle_size)
                scores.append((jaccard(own, other), candidate))
            else:
                scores.append((float(np.mean(self.kept[candidate] == signature)), candidate))
        matches = [s for s in scores if s[0] >= self.config.threshold]
        best = min(matches, key=lambda s: (-s[0], s[1]))[1] if matches else None
        if best is None:
            self.lsh.insert(key, sketch, check_duplication=False)
            self.kept[key] = signature
            if text is not None:
                self.texts[key] = text
        return best
