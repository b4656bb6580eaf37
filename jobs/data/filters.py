"""Filters: Gopher/C4 quality heuristics, PII redaction, and a blocklist. Each says what it did."""

from __future__ import annotations

import ipaddress
import re
from collections import Counter

from lmforge.operator.api.dataset import Blocklist, PiiFilter, QualityFilter

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
    if sum(any(ch.isalpha() for ch in w) for w in words) / n < q.min_alpha_word_ratio:
        return "minAlphaWordRatio"
    lines = [line for line in text.split("\n") if line.strip()]
    if lines and 1 - len(set(lines)) / len(lines) > q.max_duplicate_line_ratio:
        return "maxDuplicateLineRatio"
    if lines and len(_BULLET.findall(text)) / len(lines) > q.max_bullet_line_ratio:
        return "maxBulletLineRatio"
    return None


# One alternation, one pass over the text; each match is checked by its type's validator.
_PII = {
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
        kinds = [k for k in _PII if k in config.types]
        self.regex = re.compile("|".join(f"(?P<{k}>{_PII[k]})" for k in kinds)) if kinds else None

    def __call__(self, text: str) -> tuple[str, Counter]:
        """The text with PII replaced by placeholders, and the count of each type found."""
        found: Counter = Counter()
        if self.regex is None:
            return text, found

        def replace(match: re.Match) -> str:
            kind = match.lastgroup
            if not _valid(kind, match.group()):
                return match.group()
            found[kind] += 1
            return _PLACEHOLDER[kind]

        return self.regex.sub(replace, text), found


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
