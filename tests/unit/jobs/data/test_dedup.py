import json
import os
import random
import subprocess
import sys

import numpy as np

from lmforge.jobs.data import dedup
from lmforge.jobs.data.dedup import NearDuplicateIndex, Signer
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


def test_near_duplicate_recall_and_precision(words):
    config = NearDuplicates()  # the defaults users get: 128 permutations, 16 bands, 0.8
    docs = planted_corpus(words, random.Random(11))
    sign, index = Signer(config), NearDuplicateIndex(config)
    removed = {key for key, text in docs if index.representative(key, sign(text))}
    planted = {key for key, _ in docs if key.startswith("v")}
    # Either member of a planted pair may come first; exactly one of each pair must go.
    pair = {f"v{i}": f"o{i}" for i in range(150)} | {f"o{i}": f"v{i}" for i in range(150)}
    caught = sum(1 for v in planted if v in removed or pair[v] in removed)
    true_removals = sum(1 for k in removed if k in pair and pair[k] not in removed)
    assert caught / len(planted) >= 0.9
    assert true_removals / max(1, len(removed)) >= 0.95


def test_first_document_of_a_cluster_is_kept_deterministically(words):
    config, rng = NearDuplicates(), random.Random(1)
    text = " ".join(rng.choices(words, k=200))
    sign = Signer(config)
    for _ in range(2):
        index = NearDuplicateIndex(config)
        assert index.representative("first", sign(text)) is None
        assert index.representative("second", sign(text + " extra")) == "first"
        assert index.representative("third", sign(" ".join(rng.choices(words, k=200)))) is None


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


def test_minhash_estimates_jaccard(words):
    """The signature's agreement is an unbiased estimate of the shingle Jaccard."""
    rng, sign = random.Random(4), Signer(NearDuplicates())
    errors = []
    for _ in range(60):
        base = rng.choices(words, k=300)
        other = [rng.choice(words) if rng.random() < rng.uniform(0, 0.2) else w for w in base]
        a, b = " ".join(base), " ".join(other)
        estimate = float(np.mean(sign(a) == sign(b)))
        errors.append(estimate - jaccard(a, b))
    assert abs(np.mean(errors)) < 0.02 and np.mean(np.abs(errors)) < 0.05


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


def test_with_texts_every_removal_is_a_true_near_duplicate(words):
    """Candidates confirmed by exact Jaccard: perfect precision, recall as before."""
    config = NearDuplicates()
    docs = planted_corpus(words, random.Random(11))
    # Near misses: variants with Jaccard just under the threshold must stay.
    rng, texts = random.Random(5), dict(docs)
    for i in range(150, 300):
        w = texts[f"o{i}"].split()
        for j in rng.sample(range(len(w)), len(w) // 32):
            w[j] = rng.choice(words)
        if 0.72 <= jaccard(texts[f"o{i}"], " ".join(w)) < 0.8:
            docs.append((f"n{i}", " ".join(w)))
    assert sum(key.startswith("n") for key, _ in docs) >= 20
    sign, index = Signer(config), NearDuplicateIndex(config)
    removed = {key: index.representative(key, sign(text), text) for key, text in docs}
    removed = {key: kept for key, kept in removed.items() if kept}
    texts = dict(docs)
    assert all(jaccard(texts[key], texts[kept]) >= 0.8 for key, kept in removed.items())
    assert not any(key.startswith("n") for key in removed)
    caught = sum(1 for i in range(150) if f"v{i}" in removed or f"o{i}" in removed)
    assert caught / 150 >= 0.9
