import random

import pytest

from lmforge.operator.api.dataset import DatasetSpec

# A permissive spec: tests switch on what they test.
LOOSE = {
    "cleaning": {"minChars": 1},
    "filters": {"quality": {"enabled": False}},
    "tokenizer": {"train": {"vocabSize": 300, "minFrequency": 1}},
    "packing": {"sequenceLength": 16, "shardSizeMiB": 1},
    "split": {"validationFraction": 0.2},
    "engine": {"workers": 1},
}


def merge(base: dict, override: dict) -> dict:
    out = dict(base)
    for key, value in override.items():
        out[key] = merge(out[key], value) if isinstance(value, dict) and key in out else value
    return out


@pytest.fixture
def spec():
    def make(sources: list[dict], **override) -> DatasetSpec:
        return DatasetSpec.model_validate(merge(LOOSE, {"sources": sources, **override}))

    return make


@pytest.fixture
def words():
    """Pseudo-words: prose-like text with no accidental structure."""
    rng = random.Random(7)
    letters = "abcdefghijklmnopqrstuvwxyz"
    return ["".join(rng.choice(letters) for _ in range(rng.randint(2, 9))) for _ in range(5000)]


SPAM = ["buy", "cheap", "pills", "now", "click", "here", "free", "money", "casino", "win",
        "bonus", "offer", "limited", "deal", "discount", "prize", "winner", "urgent"]  # fmt: skip


def spam(rng: random.Random, n: int) -> str:
    return " ".join(rng.choices(SPAM, k=n))


@pytest.fixture
def classifier(tmp_path, words):
    """A fastText model, trained here, that tells the pseudo-word prose (hq) from spam (lq)."""
    import fasttext

    rng = random.Random(3)
    lines = [f"__label__hq {' '.join(rng.choices(words, k=60))}" for _ in range(600)]
    lines += [f"__label__lq {spam(rng, 60)}" for _ in range(600)]
    rng.shuffle(lines)
    (tmp_path / "train.txt").write_text("\n".join(lines) + "\n")
    model = fasttext.train_supervised(str(tmp_path / "train.txt"), epoch=20, lr=0.5, dim=16, minCount=1,
                                      thread=1, seed=0, verbose=0)  # fmt: skip
    model.save_model(str(tmp_path / "quality.bin"))
    return (tmp_path / "quality.bin").as_uri()
