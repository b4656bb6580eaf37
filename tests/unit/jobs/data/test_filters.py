import random
import re

import pytest

from lmforge.jobs.data.filters import Blocker, Pii, luhn, quality
from lmforge.operator.api.dataset import Blocklist, PiiFilter, QualityFilter

Q = QualityFilter(min_words=5)


@pytest.mark.parametrize(
    ("text", "reason"),
    [
        ("the cat sat on the mat today", None),
        ("too few words", "minWords"),
        ("a b c d e f g h", "meanWordLength"),
        ("# # # # # # words here now", "maxSymbolRatio"),
        ("10 20 30 40 50 60 70 80 word", "minAlphaWordRatio"),
        ("same line here\nsame line here\nsame line here\nother words", "maxDuplicateLineRatio"),
    ],
)
def test_quality(text, reason):
    assert quality(text, Q) == reason


def test_blocklist_words_and_patterns():
    block = Blocker(Blocklist(words=["Forbidden"], patterns=[r"how to make \w+"]), ["evil"])
    assert block("nothing to see") == []
    assert block("a FORBIDDEN word and evil too") == ["evil", "forbidden"]
    assert block("how to make soup") == [r"how to make \w+"]
    assert block("forbiddenly is another word") == []


def card(rng: random.Random) -> str:
    digits = [4] + [rng.randrange(10) for _ in range(14)]
    for check in range(10):
        if luhn("".join(map(str, [*digits, check]))):
            number = "".join(map(str, [*digits, check]))
            return " ".join(number[i : i + 4] for i in range(0, 16, 4))
    raise AssertionError


PLANT = {
    "email": lambda r: f"{r.choice(['ann', 'bo.li', 'x_y'])}{r.randrange(999)}@mail{r.randrange(9)}.example.org",
    "phone": lambda r: f"+1 ({r.randrange(200, 999)}) {r.randrange(200, 999)}-{r.randrange(1000, 9999)}",
    "ipAddress": lambda r: r.choice([
        f"10.{r.randrange(256)}.{r.randrange(256)}.{r.randrange(1, 255)}",
        f"2001:db8:{r.randrange(65535):x}::{r.randrange(65535):x}",
    ]),
    "creditCard": card,
    "cloudKey": lambda r: "AKIA" + "".join(r.choice("ABCDEFGHIJKLMNOPQRSTUVWXYZ234567") for _ in range(16)),
    "privateKey": lambda r: "-----BEGIN RSA PRIVATE KEY-----\nMIIEow" + "x" * r.randrange(40, 80)
    + "\n-----END RSA PRIVATE KEY-----",
}  # fmt: skip


def test_pii_recall_per_type(words):
    """Planted PII of each type in prose: at least 95% of each is found and removed."""
    rng, pii = random.Random(3), Pii(PiiFilter())
    for kind, make in PLANT.items():
        planted = [make(rng) for _ in range(200)]
        texts = [" ".join(rng.sample(words, 20)) + f" contact {p} today " + " ".join(rng.sample(words, 20))
                 for p in planted]  # fmt: skip
        found = 0
        for text, value in zip(texts, planted, strict=True):
            redacted, counts = pii(text)
            if counts[kind] and value not in redacted:
                found += 1
        assert found / len(planted) >= 0.95, kind


def test_pii_leaves_ordinary_text_alone(words):
    rng, pii = random.Random(5), Pii(PiiFilter())
    text = (
        " ".join(rng.sample(words, 200)) + " version 3.11.7 on 2026-11-29 costs 1,250.00 at 10:30"
    )
    redacted, counts = pii(text)
    assert (redacted, sum(counts.values())) == (text, 0)


def test_pii_only_the_configured_types():
    pii = Pii(PiiFilter(types=["email"]))
    redacted, counts = pii("mail a@b.io from 10.0.0.1")
    assert redacted == "mail <EMAIL> from 10.0.0.1" and dict(counts) == {"email": 1}


@pytest.mark.parametrize(
    ("number", "valid"), [("4539578763621486", True), ("4539578763621487", False)]
)
def test_luhn(number, valid):
    assert luhn(number) is valid and bool(re.fullmatch(r"\d+", number))
