import pickle
import random
import re
from collections import Counter

import pytest

from lmforge.jobs.data import filters
from lmforge.jobs.data.filters import Blocker, Classify, Pii, _alpha_words, luhn, quality
from lmforge.operator.api.dataset import Blocklist, Classifier, PiiFilter, QualityFilter

from .conftest import spam

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


def test_alpha_words_counts_words_that_contain_a_letter():
    rng = random.Random(6)
    pieces = ["abc", "x1", "12", "--", "_", "(a)", "é", "²", "ß9", "#", "...", "Ω", "a-b"]
    for _ in range(300):
        words = [rng.choice(pieces) + rng.choice(pieces) for _ in range(rng.randint(1, 20))]
        text = " ".join(words)
        assert _alpha_words(text, words) == sum(any(c.isalpha() for c in w) for w in words)


@pytest.mark.parametrize(
    "text",
    [
        "- a\n- b\n- c\nword",
        "* one\n\n  * two\n\u2022 three",
        "-\n-\n-x y",
        "-x\n-y\n--z\nw",
        "a\nb\n- c",
    ],
)
def test_bullet_lines(text):
    strict = QualityFilter(min_words=1, min_mean_word_length=0, max_symbol_ratio=10,
                           min_alpha_word_ratio=0, max_duplicate_line_ratio=1,
                           max_bullet_line_ratio=0.5)  # fmt: skip
    expected = (
        len(re.findall(r"^\s*[-*\u2022]\s", text, re.MULTILINE))
        / len([line for line in text.split("\n") if line.strip()])
        > 0.5
    )
    assert (quality(text, strict) == "maxBulletLineRatio") is expected


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


def reference_pii(text: str, kinds: list[str]) -> tuple[str, Counter]:
    """The definition: one alternation of the patterns, applied with re.sub."""
    regex = re.compile("|".join(f"(?P<{k}>{filters.PATTERNS[k]})" for k in kinds))
    found: Counter = Counter()

    def replace(match: re.Match) -> str:
        if not filters._valid(match.lastgroup, match.group()):
            return match.group()
        found[match.lastgroup] += 1
        return filters._PLACEHOLDER[match.lastgroup]

    return regex.sub(replace, text), found


PIECES = [
    "192.168.0.1", "1.2.3.4.5", "10.0.0.256", "::", "::1", "fe80::1", "a:b:c", "dead:beef::cafe",
    "2001:db8::ff00:42:8329", "+1 (555) 123-4567", "555-123-4567", "(02) 1234 5678", "+44 20 7946 0958",
    "4539 5787 6362 1486", "4539-5787-6362-1487", "1234567890123", "a.b@c.de", "x_y+z@mail.example.org",
    "@decorator", "x@y", "me@host.c0m", "AKIAABCDEFGHIJKLMNOP", "ghp_" + "a" * 36, "xoxb-1234567890",
    "sk_live_" + "Z" * 24, "AIza" + "0" * 35, "-----BEGIN RSA PRIVATE KEY-----\nabc\n-----END RSA PRIVATE KEY-----",
    "-", ".", ":", "@", "+", "(", ")", "_", "é", "x", "Ab", "7", "42", "0x1f", "self.x", "a[::2]", "3.11.7",
]  # fmt: skip


@pytest.mark.parametrize("kinds", [list(filters.PATTERNS), ["ipAddress", "phone"], ["email"]])
def test_pii_finds_exactly_what_the_single_alternation_finds(kinds):
    rng, pii = random.Random(9), Pii(PiiFilter(types=kinds))
    for _ in range(3000):
        text = "".join(rng.choice(PIECES) + rng.choice(["", "", " ", "\n", ",", "-", ".", ":", "@"])
                       for _ in range(rng.randint(1, 12)))  # fmt: skip
        assert pii(text) == reference_pii(text, kinds), text


def test_a_fasttext_classifier_keeps_or_removes_by_the_labels_probability(classifier, words):
    rng = random.Random(11)
    prose, junk = " ".join(rng.choices(words, k=80)), spam(rng, 80)
    keep = Classify(Classifier(name="q", uri=classifier, label="hq", threshold=0.5), "f", None)
    assert keep.score(prose) > 0.9 > 0.1 > keep.score(junk)
    assert keep(prose) is None
    assert re.fullmatch(r"hq 0\.\d{3} < 0\.5 \(f\.threshold\)", keep(junk))
    toxic = Classify(Classifier(name="t", uri=classifier, label="__label__lq", threshold=0.5,
                                action="remove"), "f", None)  # fmt: skip
    assert toxic(prose) is None and toxic(junk).endswith(">= 0.5 (f.threshold)")
    assert toxic("one line\nand another") == toxic("one line and another")
    again = pickle.loads(pickle.dumps(keep))  # as a Ray worker gets it: it reads the model again
    assert again.model is None and again.score(prose) == keep.score(prose)


def test_a_classifier_that_cannot_load_names_the_field(classifier, tmp_path):
    wrong = Classify(Classifier(name="q", uri=classifier, label="edu", threshold=0.5), "f", None)
    with pytest.raises(ValueError, match=r"^f.label: 'edu' is not a label of .* \(it has hq, lq\)"):
        wrong.load()
    (tmp_path / "junk.bin").write_bytes(b"not a model")
    for uri in ((tmp_path / "junk.bin").as_uri(), (tmp_path / "none.bin").as_uri()):
        broken = Classify(Classifier(name="q", uri=uri, label="hq", threshold=0.5), "f", None)
        with pytest.raises(ValueError, match=f"^f.uri: cannot load a fastText model from {uri}"):
            broken.load()
