"""Deduplication across the whole corpus: exact (content hash) and near (MinHash + LSH).

Signatures are computed where the documents are read (in parallel); the decisions are made in
one place, in the corpus's order, so the first document of each cluster is kept on any engine.
"""

from __future__ import annotations

import hashlib

import numpy as np
from datasketch import MinHash, MinHashLSH

from lmforge.operator.api.dataset import NearDuplicates


def content_hash(text: str) -> bytes:
    return hashlib.blake2b(text.encode(), digest_size=16).digest()


SCHEME = MinHash(16).scheme  # datasketch's default; signatures only mix with the same scheme


class Signer:
    """MinHash signatures of word shingles."""

    def __init__(self, config: NearDuplicates):
        self.config = config
        self.permutations = MinHash(config.permutations, seed=1, scheme=SCHEME).permutations

    def __call__(self, text: str) -> np.ndarray:
        words = text.split()
        k = self.config.shingle_size
        shingles = {" ".join(words[i : i + k]).encode() for i in range(max(1, len(words) - k + 1))}
        sketch = MinHash(self.config.permutations, permutations=self.permutations, scheme=SCHEME)
        sketch.update_batch(shingles)
        return sketch.hashvalues


class NearDuplicateIndex:
    """Keeps the first of every group of documents whose estimated Jaccard is >= threshold."""

    def __init__(self, config: NearDuplicates):
        self.config = config
        rows = config.permutations // config.bands
        self.lsh = MinHashLSH(num_perm=config.permutations, params=(config.bands, rows))
        self.kept: dict[str, np.ndarray] = {}

    def representative(self, key: str, signature: np.ndarray) -> str | None:
        """The kept document this one duplicates; None (and it is kept) if there is none."""
        sketch = MinHash(self.config.permutations, hashvalues=signature, scheme=SCHEME)
        scores = [(float(np.mean(self.kept[c] == signature)), c) for c in self.lsh.query(sketch)]
        matches = [s for s in scores if s[0] >= self.config.threshold]
        best = min(matches, key=lambda s: (-s[0], s[1]))[1] if matches else None
        if best is None:
            self.lsh.insert(key, sketch, check_duplication=False)
            self.kept[key] = signature
        return best
