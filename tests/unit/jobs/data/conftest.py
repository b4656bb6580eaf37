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
