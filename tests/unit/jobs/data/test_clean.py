import random
import re

import pytest

from lmforge.jobs.data.clean import Cleaner, _strip_line_ends
from lmforge.operator.api.dataset import Cleaning


@pytest.mark.parametrize(
    ("config", "text", "cleaned"),
    [
        ({}, "e\u0301t\u00e9", "\u00e9t\u00e9"),  # NFC composes
        ({"unicodeNormalization": "NFKC"}, "\ufb01ne", "fine"),
        ({}, "a\x00b\x1bc\td\r\ne", "abc\td\ne"),  # controls go, tab and newline stay
        ({}, "def f():  \n    return 1\t\n", "def f():\n    return 1"),  # indentation kept
        ({"whitespace": "collapse"}, "a   b \t c", "a b c"),
        ({"whitespace": "keep"}, "a  \nb", "a  \nb"),
        (
            {"boilerplatePatterns": ["^# Copyright", "All rights reserved"]},
            "# Copyright 2020 X\n# All rights reserved.\nimport os",
            "import os",
        ),
        ({"minChars": 5}, "abc", None),
        ({"maxChars": 5}, "abcdefgh", None),
    ],
)
def test_cleaning(config, text, cleaned):
    assert Cleaner(Cleaning.model_validate({"minChars": 1, **config}))(text) == cleaned


def test_line_ends_are_stripped_as_the_multiline_regex_strips_them():
    rng = random.Random(8)
    for _ in range(500):
        text = "".join(rng.choice(["a", " ", "\t", "\n", "\n\n", "  x", "\u00a0", "\r"])
                       for _ in range(rng.randint(0, 40)))  # fmt: skip
        assert _strip_line_ends(text) == re.sub(r"[ \t]+$", "", text, flags=re.MULTILINE)
