"""Ranked preference rows: read from a file or a folder of feedback, every bad row named, and
encoded as one row per response."""

import json

import pytest
import torch

from lmforge.jobs.finetune import preferences
from lmforge.jobs.train import objectives

from ..conftest import BASE_CONTEXT as CONTEXT


def test_rows_hold_each_response_and_the_score_reads_its_last_token(base):
    _, tokenizer = base
    ranking = preferences.read_ranking(
        "row", {"prompt": "def f(x):", "responses": ["    return x", "    pass", "    x"]}
    )
    short = preferences.read_ranking("row", {"prompt": "def g():", "chosen": "a", "rejected": "b"})
    rows = preferences.encode([ranking, short], tokenizer, CONTEXT - 1)
    assert rows.shape == (2, 3, 2, CONTEXT - 1)
    for i, response in enumerate(ranking.responses):
        targets = rows[0, i, 1]
        text = tokenizer.decode(targets[targets != -100].tolist(), skip_special_tokens=False)
        assert text == response + "<|eos|>"
    assert (rows[1, 2, 1] == -100).all()  # the padding slot of a ranking of two
    present = (torch.from_numpy(rows)[:, :, 1] != -100).any(-1)
    assert present.tolist() == [[True, True, True], [True, True, False]]
    _, targets = objectives.split(torch.from_numpy(rows))
    last = objectives.last_target(targets)
    for n, row in enumerate(targets):  # the position whose target is <|eos|>
        if present.flatten()[n]:
            assert tokenizer.id_to_token(int(row[last[n]])) == "<|eos|>"


@pytest.mark.parametrize(
    ("row", "message"),
    [
        ({"prompt": "p", "responses": ["only one"]}, "1 response; a ranking needs at least 2"),
        ({"prompt": "p", "chosen": "same", "rejected": "same"}, "response 2 is the same text"),
        ({"prompt": "p", "responses": ["a", "b", "a"]}, "response 3 is the same text as resp"),
        ({"chosen": "a", "rejected": "b"}, "prompt: a string"),
        ({"prompt": "p", "response": "a"}, "responses \\(best first\\), or chosen and rejected"),
        ({"prompt": "p", "responses": ["a", 3]}, "responses: a list of strings"),
        ({"messages": [{"role": "bot", "content": "x"}], "chosen": "a", "rejected": "b"}, "role"),
    ],
)
def test_bad_preference_rows_are_named(tmp_path, row, message):
    path = tmp_path / "p.jsonl"
    path.write_text(json.dumps({"prompt": "ok", "chosen": "a", "rejected": "b"}) + "\n")
    with path.open("a") as out:
        out.write(json.dumps(row) + "\n")
    with pytest.raises(preferences.ExampleError, match=f"p.jsonl line 2: .*{message}"):
        preferences.read(path.as_uri())


def test_too_long_a_response_is_named(base):
    _, tokenizer = base
    ranking = preferences.read_ranking("f line 7", {"prompt": "p", "chosen": "a " * 300,
                                                    "rejected": "b"})  # fmt: skip
    with pytest.raises(preferences.ExampleError, match="f line 7: response 1 with its prompt"):
        preferences.encode([ranking], tokenizer, CONTEXT - 1)


def test_a_folder_of_feedback_files_is_read(tmp_path):
    for n in range(3):
        day = tmp_path / "preferences" / f"day{n}"
        day.mkdir(parents=True)
        row = {"prompt": f"p{n}", "chosen": "a", "rejected": "b", "model": "m", "id": str(n)}
        (day / "fb.jsonl").write_text(json.dumps(row) + "\n")
    rankings = preferences.read((tmp_path / "preferences").as_uri())
    assert [r.context[0]["content"] for r in rankings] == ["p0", "p1", "p2"]
