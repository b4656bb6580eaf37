"""Cleaning: Unicode normalization, control characters, whitespace, boilerplate, length."""

from __future__ import annotations

import re
import unicodedata

from lmforge.operator.api.dataset import Cleaning

# C0 controls and DEL, except tab and newline; carriage returns become newlines first.
_CONTROL = re.compile(r"[\x00-\x08\x0b\x0c\x0e-\x1f\x7f]")
_RUNS = re.compile(r"[ \t]+")


def _strip_line_ends(text: str) -> str:
    """Spaces and tabs at the end of every line removed. What re.sub(r"[ \t]+$", "", text,
    flags=re.MULTILINE) does, 6x faster on code: that regex restarts at every space of every
    indentation run."""
    return "\n".join([line.rstrip(" \t") for line in text.split("\n")])


class Cleaner:
    def __init__(self, config: Cleaning):
        self.config = config
        patterns = config.boilerplate_patterns
        self.boilerplate = re.compile("|".join(f"(?:{p})" for p in patterns)) if patterns else None

    def __call__(self, text: str) -> str | None:
        """The cleaned text, or None when its length is out of bounds."""
        c = self.config
        if c.unicode_normalization != "none":
            text = unicodedata.normalize(c.unicode_normalization, text)
        text = text.replace("\r\n", "\n").replace("\r", "\n")
        if c.strip_control_characters:
            text = _CONTROL.sub("", text)
        if c.whitespace == "trailing":
            text = _strip_line_ends(text)
        elif c.whitespace == "collapse":
            text = _RUNS.sub(" ", _strip_line_ends(text))
        if self.boilerplate is not None:
            kept = [line for line in text.split("\n") if not self.boilerplate.search(line)]
            text = "\n".join(kept)
        text = text.strip("\n")
        return text if c.min_chars <= len(text) <= c.max_chars else None
