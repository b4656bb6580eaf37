import json
import os
import random
import subprocess
import sys

import numpy as np
import pytest

from lmforge.jobs.data import dedup
from lmforge.jobs.data.dedup import Signer, UnionFind
from lmforge.operator.api.dataset import NearDuplicates


def shingles(text: str, k: int = 5) -> set[str]:
    w = text.split()
    return {" ".join(w[i : i + k]) for i in range(len(w) - k + 1)}


def jaccard(a: str, b: str) -> float:
    x, y = shingles(a), shingles(b)
    return len(x & y) / len(x | y)


def planted_corpus(words: list[str], rng: random.Random):
    """300 distinct documents, and for 150 of them a variant with true Jaccard >= 0.8."""
    originals = [" ".join(rng.choices(words, k=rng.randint(150, 400))) for _ in range(300)]
    variants = []
    for base in originals[:150]:
        while True:
            w = base.split()
            for i in rng.sample(range(len(w)), max(1, len(w) // 100)):
                w[i] = rng.choice(words)
            variant = " ".join(w)
            if jaccard(base, variant) >= 0.8:
                variants.append(variant)
                break
    docs = [(f"o{i}", t) for i, t in enumerate(originals)] + [
        (f"v{i}", t) for i, t in enumerate(variants)
    ]
    rng.shuffle(docs)
    return docs


def resolve(texts: list[str], config: NearDuplicates, partitions: int = 1) -> dict[int, int]:
    """What the pipeline does with the texts, keyed by position: records partitioned by bucket,
    each partition's edges, union-find. {removed position: the position its cluster keeps}."""
    sign = Signer(config)
    keys = np.arange(len(texts), dtype=np.int64)
    records = dedup.near_records(keys, np.stack([sign(t) for t in texts]), config)
    clusters = UnionFind()
    part = records["bucket"] % np.uint64(partitions)
    for p in range(partitions):
        for a, b in dedup.near_edges(records[part == p], config.threshold).tolist():
            clusters.union(a, b)
    return {k: clusters.find(k) for k in clusters.parent if clusters.find(k) != k}


def test_near_duplicate_recall_and_precision(words):
    config = NearDuplicates()  # the defaults users get: 128 permutations, 16 bands, 0.8
    docs = planted_corpus(words, random.Random(11))
    removed = {
        docs[k][0]: docs[kept][0] for k, kept in resolve([t for _, t in docs], config).items()
    }
    pair = {f"v{i}": f"o{i}" for i in range(150)} | {f"o{i}": f"v{i}" for i in range(150)}
    # Either member of a planted pair may come first; the later one goes, kept is its twin.
    caught = sum(1 for i in range(150) if f"v{i}" in removed or f"o{i}" in removed)
    true_removals = sum(1 for k, kept in removed.items() if pair.get(k) == kept)
    assert caught / 150 >= 0.95
    assert true_removals == len(removed)


def test_partitions_do_not_change_the_clusters(words):
    docs = [t for _, t in planted_corpus(words, random.Random(3))]
    config = NearDuplicates()
    one = resolve(docs, config)
    assert one and resolve(docs, config, partitions=7) == one


def test_a_cluster_keeps_its_first_document(words):
    """A chain a ~ b ~ c is one cluster whose smallest key stays, whatever the edges' order."""
    rng = random.Random(1)
    base = rng.choices(words, k=300)
    chain = [" ".join(base)]
    for _ in range(3):
        w = chain[-1].split()
        w[rng.randrange(len(w))] = rng.choice(words)
        chain.append(" ".join(w))
    other = " ".join(rng.choices(words, k=300))
    texts = [other, *chain]
    assert resolve(texts, NearDuplicates()) == {2: 1, 3: 1, 4: 1}
    clusters = UnionFind()
    for a, b in [(9, 5), (12, 9), (3, 12)]:
        clusters.union(a, b)
    assert {k: clusters.find(k) for k in (3, 5, 9, 12, 4)} == {3: 3, 5: 3, 9: 3, 12: 3, 4: 4}


def test_exact_edges_point_at_the_first_copy():
    records = np.zeros(5, dedup.EXACT)
    records["hash"] = [dedup.content_hash(t) for t in ("a", "b", "a", "c", "b")]
    records["key"] = [10, 11, 5, 7, 20]
    assert sorted(map(tuple, dedup.exact_edges(records).tolist())) == [(10, 5), (20, 11)]


def test_near_misses_mostly_stay(words):
    """Candidates are confirmed by the similarity their one-byte sketches estimate (spread
    about 0.04 at 0.8 with 128 permutations): variants just under the threshold mostly stay."""
    rng, config = random.Random(5), NearDuplicates()
    texts, misses = [], 0
    while misses < 40:
        base = rng.choices(words, k=300)
        w = list(base)
        for j in rng.sample(range(len(w)), 11):  # Jaccard 0.69-0.76
            w[j] = rng.choice(words)
        if 0.68 <= jaccard(" ".join(base), " ".join(w)) < 0.74:
            texts += [" ".join(base), " ".join(w)]
            misses += 1
    removed = resolve(texts, config)
    assert len(removed) <= 0.1 * misses


def test_sketches_estimate_jaccard(words):
    """The one-byte sketches' agreement, corrected for chance, estimates the shingle Jaccard."""
    rng, sign = random.Random(4), Signer(NearDuplicates())
    errors = []
    for _ in range(60):
        base = rng.choices(words, k=300)
        other = [rng.choice(words) if rng.random() < rng.uniform(0, 0.2) else w for w in base]
        a, b = " ".join(base), " ".join(other)
        full = float(np.mean(sign(a) == sign(b)))
        estimate = float(dedup.estimated_jaccard(dedup.sketch(sign(a)), dedup.sketch(sign(b))))
        errors.append((estimate - jaccard(a, b), full - jaccard(a, b)))
    errors = np.array(errors)
    assert abs(errors.mean(axis=0)).max() < 0.02 and np.abs(errors).mean(axis=0).max() < 0.05


def test_shingle_hashes_are_the_word_shingle_sets(words):
    """One hash per distinct 5-word shingle; whitespace only separates words."""
    rng = random.Random(2)
    for _ in range(50):
        text = " ".join(rng.choices(words[:40], k=rng.randint(0, 60)))
        assert len(dedup.shingles(text, 5)) == max(1, len(shingles(text)))
        spaced = text.replace(" ", rng.choice(["\n", "\t ", "  \u3000"]))
        assert (dedup.shingles(spaced, 5) == dedup.shingles(text, 5)).all()
    assert len(dedup.shingles("too short", 5)) == 1
    assert dedup.shingles("a b c d e f", 5).tolist() != dedup.shingles("a b c d e g", 5).tolist()
    assert len(dedup.shingles("é ü 😀 x y z", 5)) == 2


@pytest.mark.parametrize("bands", [16, 32])
def test_buckets_differ_per_band(bands):
    signature = np.zeros(128, dtype=np.uint64)  # the same rows in every band
    assert len(set(dedup.buckets(signature, bands).tolist())) == bands


def test_signatures_do_not_depend_on_the_process():
    """Workers of any engine compute signatures that mix: no per-process hash seed."""
    code = ("from lmforge.jobs.data.dedup import Signer;"
            "from lmforge.operator.api.dataset import NearDuplicates;"
            "print(Signer(NearDuplicates())('one two three four five six seven').tolist())")  # fmt: skip
    runs = {
        subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True,
                       env={**os.environ, "PYTHONHASHSEED": seed}).stdout
        for seed in ("1", "2")
    }  # fmt: skip
    assert len(runs) == 1
    assert (
        json.loads(runs.pop())
        == Signer(NearDuplicates())("one two three four five six seven").tolist()
    )
