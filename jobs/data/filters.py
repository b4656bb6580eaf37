"""Filters: URL domains, language, Gopher/C4 quality heuristics, PII redaction, a blocklist and
fastText classifiers. Each says what it did."""

from __future__ import annotations

import ipaddress
import os
import re
import tempfile
from collections import Counter
from collections.abc import Callable
from urllib.parse import urlsplit

from lmforge.jobs.storage import filesystem
from lmforge.operator.api.dataset import (
    Blocklist,
    Classifier,
    LanguageFilter,
    PiiFilter,
    QualityFilter,
    UrlFilter,
)

_BULLET = re.compile(r"^\s*[-*\u2022]\s", re.MULTILINE)


def quality(text: str, q: QualityFilter) -> str | None:
    """The name of the first heuristic the document fails, or None if it passes them all."""
    words = text.split()
    n = len(words)
    if n < q.min_words:
        return "minWords"
    if n > q.max_words:
        return "maxWords"
    mean = sum(map(len, words)) / n
    if not q.min_mean_word_length <= mean <= q.max_mean_word_length:
        return "meanWordLength"
    if (text.count("#") + text.count("...") + text.count("\u2026")) / n > q.max_symbol_ratio:
        return "maxSymbolRatio"
    if _alpha_words(text, words) / n < q.min_alpha_word_ratio:
        return "minAlphaWordRatio"
    lines = [line for line in text.split("\n") if line.strip()]
    if lines and 1 - len(set(lines)) / len(lines) > q.max_duplicate_line_ratio:
        return "maxDuplicateLineRatio"
    # Every bullet line holds one of these characters: when there are too few of them, the
    # (slower) regex cannot find too many bullet lines.
    bound = sum(text.count(c) for c in "-*\u2022")
    if (
        lines
        and bound / len(lines) > q.max_bullet_line_ratio
        and len(_BULLET.findall(text)) / len(lines) > q.max_bullet_line_ratio
    ):
        return "maxBulletLineRatio"
    return None


_ASCII_NON_LETTERS = "".join(chr(c) for c in range(128) if not chr(c).isalpha())


def _alpha_words(text: str, words: list[str]) -> int:
    """How many words contain a letter. An ASCII word that still has something left after
    stripping every non-letter from both ends has a letter: one C call per word instead of a
    Python loop over its characters."""
    if text.isascii():
        return sum(1 for w in words if w.strip(_ASCII_NON_LETTERS))
    return sum(
        1
        for w in words
        if (w.strip(_ASCII_NON_LETTERS) if w.isascii() else any(ch.isalpha() for ch in w))
    )


# What each type matches is, by definition, what this one alternation matches, scanned left to
# right (the leftmost match wins, the first type on a tie; an invalid match is left as it is and
# the scan goes on after it). Run as one regex it costs ~8 s on 30 MB of code: the engine tries
# every alternative at every position. The finders below return exactly its matches, each type
# searched on its own with a pattern that starts with a literal or a character class, which the
# engine skips to in C. tests/unit/jobs/data/test_filters.py checks them against this regex.
PATTERNS = {
    "privateKey": r"-----BEGIN (?:[A-Z]+ )*PRIVATE KEY-----[\s\S]*?"
    r"-----END (?:[A-Z]+ )*PRIVATE KEY-----",
    "cloudKey": r"\b(?:(?:AKIA|ASIA)[0-9A-Z]{16}|AIza[0-9A-Za-z_\-]{35}|gh[pousr]_[A-Za-z0-9]{36}"
    r"|xox[abposr]-[A-Za-z0-9-]{10,}|sk_live_[0-9a-zA-Z]{24,})\b",
    "email": r"\b[A-Za-z0-9._%+-]+@[A-Za-z0-9-]+(?:\.[A-Za-z0-9-]+)*\.[A-Za-z]{2,}\b",
    "ipAddress": r"(?<![\w.:])(?:\d{1,3}(?:\.\d{1,3}){3}"
    r"|(?:[0-9A-Fa-f]{0,4}:){2,7}[0-9A-Fa-f]{0,4})"
    r"(?![\w.:])",
    "creditCard": r"(?<![\w-])\d(?:[ -]?\d){12,18}(?![\w-])",
    "phone": r"(?<![\w+])(?:\+\d{1,3}[ .-]?)?(?:\(\d{2,4}\)[ .-]?|\d{2,4}[ .-])\d{3,4}[ .-]\d{3,4}"
    r"(?![\w-])",
}

Span = tuple[int, int] | None
"""(start, end) of the first match at or after a position; None: there is none."""


def _search(pattern: re.Pattern) -> Callable[[str, int], Span]:
    def find(text: str, pos: int) -> Span:
        match = pattern.search(text, pos)
        return match.span() if match else None

    return find


def _ipv6(text: str, pos: int) -> Span:
    """An IPv6 match's first two colons have at most 4 hex digits between them, and it starts
    at most 4 characters before the first: find such colon pairs, then try those starts."""
    while pair := _IPV6_COLONS.search(text, pos):
        colon = pair.start()
        for start in range(max(pos, colon - 4), colon + 1):
            if match := _IPV6.match(text, start):
                return match.span()
        pos = colon + 1
    return None


_IPV6 = re.compile(r"(?<![\w.:])(?:[0-9A-Fa-f]{0,4}:){2,7}[0-9A-Fa-f]{0,4}(?![\w.:])")
_IPV6_COLONS = re.compile(r":[0-9A-Fa-f]{0,4}:")


def _email(text: str, pos: int) -> Span:
    """From each "@" (a C search): its domain must match; then the local part is the run of
    local characters before it, from its first word boundary."""
    at = text.find("@", pos + 1)
    while at != -1:
        if domain := _EMAIL_DOMAIN.match(text, at):
            start = at
            while start > pos and text[start - 1] in _LOCAL_CHARS:
                start -= 1
            if start < at and (local := _EMAIL_LOCAL.search(text, start, at + 1)):
                return local.start(), domain.end()
        at = text.find("@", at + 1)
    return None


_EMAIL_DOMAIN = re.compile(r"@[A-Za-z0-9-]+(?:\.[A-Za-z0-9-]+)*\.[A-Za-z]{2,}\b")
_EMAIL_LOCAL = re.compile(r"\b[A-Za-z0-9._%+-]+@")
_LOCAL_CHARS = frozenset("ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789._%+-")


def _cloud_key(text: str, pos: int) -> Span:
    if not any(prefix in text for prefix in _CLOUD_PREFIXES):  # str's search is far cheaper
        return None
    match = _CLOUD.search(text, pos)
    return match.span() if match else None


_CLOUD = re.compile(PATTERNS["cloudKey"])
_CLOUD_PREFIXES = ("AKIA", "ASIA", "AIza", "ghp_", "gho_", "ghu_", "ghs_", "ghr_", "xox",
                   "sk_live_")  # fmt: skip

# A lookbehind moved after the first character, `\d(?<![\w-]\d)` for `(?<![\w-])\d`, asks the
# same question and lets the engine skip to the next digit. Phone numbers start with "+", "("
# or a digit: one pattern for each.
_PHONE_END = r"\d{3,4}[ .-]\d{3,4}(?![\w-])"
_FINDERS: list[tuple[str, Callable[[str, int], Span]]] = [
    ("privateKey", _search(re.compile(PATTERNS["privateKey"]))),
    ("cloudKey", _cloud_key),
    ("email", _email),
    ("ipAddress", _search(re.compile(r"\d(?<![\w.:]\d)\d{0,2}(?:\.\d{1,3}){3}(?![\w.:])"))),
    ("ipAddress", _ipv6),
    ("creditCard", _search(re.compile(r"\d(?<![\w-]\d)(?:[ -]?\d){12,18}(?![\w-])"))),
    ("phone", _search(re.compile(
        r"\+(?<![\w+]\+)\d{1,3}[ .-]?(?:\(\d{2,4}\)[ .-]?|\d{2,4}[ .-])" + _PHONE_END))),
    ("phone", _search(re.compile(r"\((?<![\w+]\()\d{2,4}\)[ .-]?" + _PHONE_END))),
    ("phone", _search(re.compile(r"\d(?<![\w+]\d)\d{1,3}[ .-]" + _PHONE_END))),
]  # fmt: skip
"""(type, finder), in the order the alternation tries them at one position."""
_PLACEHOLDER = {
    "email": "<EMAIL>",
    "phone": "<PHONE>",
    "ipAddress": "<IP_ADDRESS>",
    "creditCard": "<CREDIT_CARD>",
    "cloudKey": "<CLOUD_KEY>",
    "privateKey": "<PRIVATE_KEY>",
}


def luhn(digits: str) -> bool:
    total = 0
    for i, d in enumerate(reversed(digits)):
        n = int(d) * (2 if i % 2 else 1)
        total += n - 9 if n > 9 else n
    return total % 10 == 0


def _valid(kind: str, match: str) -> bool:
    if kind == "creditCard":
        digits = re.sub(r"\D", "", match)
        return 13 <= len(digits) <= 19 and luhn(digits)
    if kind == "ipAddress":
        try:
            address = ipaddress.ip_address(match)
        except ValueError:
            return False
        # "::" and the like are code far more often than addresses.
        return address.version == 4 or (match.count(":") >= 3 and len(match) >= 8)
    return True


class Pii:
    def __init__(self, config: PiiFilter):
        self.finders = [(kind, find) for kind, find in _FINDERS if kind in config.types]

    def __call__(self, text: str) -> tuple[str, Counter]:
        """The text with PII replaced by placeholders, and the count of each type found."""
        found: Counter = Counter()
        parts, cursor = [], 0
        # Each finder's next match; it stays right while it starts at or after the cursor.
        # (-1, -1): not searched yet.
        upcoming: list[Span] = [(-1, -1)] * len(self.finders)
        while True:
            for i, (_, find) in enumerate(self.finders):
                if upcoming[i] and upcoming[i][0] < cursor:
                    upcoming[i] = find(text, cursor)
            matches = [(span, i) for i, span in enumerate(upcoming) if span]
            if not matches:
                break
            (start, end), i = min(matches, key=lambda m: (m[0][0], m[1]))
            kind = self.finders[i][0]
            if _valid(kind, text[start:end]):
                parts += [text[cursor:start], _PLACEHOLDER[kind]]
                found[kind] += 1
            else:
                parts.append(text[cursor:end])
            cursor = end
        if not parts:
            return text, found
        parts.append(text[cursor:])
        return "".join(parts), found


_WORD = re.compile(r"\w+")


class Blocker:
    """Words match whole words, case-insensitively; use patterns for phrases."""

    def __init__(self, config: Blocklist, extra_words: list[str] = ()):
        self.words = {w.lower() for w in (*config.words, *extra_words)}
        self.patterns = [re.compile(p) for p in config.patterns]

    def __call__(self, text: str) -> list[str]:
        """The blocklisted words and patterns the text contains (empty: keep it)."""
        hits = sorted(self.words.intersection(_WORD.findall(text.lower()))) if self.words else []
        return hits + [p.pattern for p in self.patterns if p.search(text)]


def domain(url: str) -> str:
    """The host of a URL, lower-case, without a leading www."""
    return (urlsplit(url).hostname or "").lower().removeprefix("www.")


class Domains:
    """Whether a URL's domain is blocked, or not allowed; a domain includes its subdomains."""

    def __init__(self, config: UrlFilter, extra_blocked: list[str] = ()):
        self.blocked = {d.lower() for d in (*config.blocked_domains, *extra_blocked)}
        self.allowed = {d.lower() for d in config.allowed_domains}

    def __call__(self, url: str) -> str | None:
        """Why the URL's document is removed, or None."""
        host = domain(url)
        parents = {".".join(host.split(".")[i:]) for i in range(host.count(".") + 1)}
        if blocked := parents & self.blocked:
            return f"{host}: {min(blocked)} is in spec.filters.urls blocked domains"
        if self.allowed and not parents & self.allowed:
            return f"{host}: not in spec.filters.urls.allowedDomains"
        return None


class Language:
    """The most likely language of a text and its probability (py3langid, normalized), from its
    first `chars` characters: enough to tell, and a bounded cost per document."""

    def __init__(self, config: LanguageFilter, chars: int = 4096):
        from py3langid.langid import MODEL_FILE, LanguageIdentifier

        self.config, self.chars = config, chars
        self.identify = LanguageIdentifier.from_model_file(MODEL_FILE, norm_probs=True)

    def __call__(self, text: str) -> tuple[str, str | None]:
        """(language, why the document is removed or None)."""
        language, score = self.identify.classify(text[: self.chars])
        c = self.config
        if score < c.min_score:
            return language, f"{language} at {score:.2f}, under spec.filters.language.minScore"
        if c.languages and language not in c.languages:
            return language, f"{language}: not in spec.filters.language.languages"
        return language, None


class Classify:
    """A fastText model's probability of one label for a document.

    The model is read once per process, on first use (a worker that unpickles this reads it
    again, as fastText models do not pickle). It is called through fastText's C++ binding:
    fasttext 0.9.2's Python predict() builds its result with np.array(copy=False), which
    numpy 2 refuses.
    """

    def __init__(self, config: Classifier, field: str, endpoint_url: str | None):
        self.config, self.field, self.endpoint_url = config, field, endpoint_url
        self.label = "__label__" + config.label.removeprefix("__label__")
        self.model = None

    def __getstate__(self) -> dict:
        return {**self.__dict__, "model": None}

    def load(self):
        if self.model is None:
            import fasttext_pybind

            fs, path = filesystem(self.config.uri, self.endpoint_url)
            with tempfile.TemporaryDirectory() as folder:
                local = os.path.join(folder, "model.bin")
                try:
                    fs.get_file(path, local)
                    model = fasttext_pybind.fasttext()
                    model.loadModel(local)
                except Exception as error:  # fsspec's backends' errors, fastText's ValueError
                    raise ValueError(
                        f"{self.field}.uri: cannot load a fastText model from {self.config.uri}:"
                        f" {error}"
                    ) from error
            labels = model.getLabels("replace")[0]
            if self.label not in labels:
                shown = ", ".join(label.removeprefix("__label__") for label in labels[:20])
                raise ValueError(f"{self.field}.label: {self.config.label!r} is not a label of"
                                 f" {self.config.uri} (it has {shown})")  # fmt: skip
            self.model = model
        return self.model

    def score(self, text: str) -> float:
        """The probability of the label (fastText reads one line: newlines become spaces)."""
        line = text.replace("\n", " ")
        for probability, label in self.load().predict(line, -1, 0.0, "replace"):
            if label == self.label:
                return probability
        return 0.0

    def __call__(self, text: str) -> str | None:
        """Why the document is removed, or None."""
        c, score = self.config, self.score(text)
        if c.action == "keep" and score < c.threshold:
            return f"{c.label} {score:.3f} < {c.threshold} ({self.field}.threshold)"
        if c.action == "remove" and score >= c.threshold:
            return f"{c.label} {score:.3f} >= {c.threshold} ({self.field}.threshold)"
        return None
