import random

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
