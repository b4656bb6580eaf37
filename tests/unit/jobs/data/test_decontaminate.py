import json
import os
import pickle
import subprocess
import sys

import pytest

from lmforge.jobs.data import decontaminate
from lmforge.jobs.data.decontaminate import Index

QUESTION = (
    "What does the function return when the list of arguments is empty and no default is given"
)


def test_a_shared_ngram_matches_whatever_the_case_punctuation_and_spacing():
    index = Index(13)
    index.add("a few words only", "short", "f")
    index.add(QUESTION, "qa line 1", "f")
    assert (index.short, len(index)) == (1, 1)
    quoted = "Docs say: " + QUESTION.upper().replace(" ", ",\n  ") + "? It raises."
    assert index.find(quoted) == 0
    twelve = " ".join(QUESTION.split()[:12])
    assert index.find(f"{twelve} banana {twelve}") is None  # 12 words in a row, twice
    assert index.find(" ".join(reversed(QUESTION.split()))) is None


def test_the_first_example_in_the_texts_order_is_named():
    index = Index(4)
    index.add("one two three four", "a", "f")
    index.add("five six seven eight", "b", "f")
    assert index.find("x five six seven eight one two three four") == 1
    assert list(index.matches("one two three four five six seven eight")) == [0, 1]


def test_an_index_answers_the_same_in_a_process_with_another_hash_seed(tmp_path):
    index = Index(5)
    for i in range(50):
        index.add(f"row {i} of the evaluation set says something about {i * 7}", f"r{i}", "f")
    texts = [f"prefix row {i} of the evaluation set says" for i in range(0, 50, 5)]
    (tmp_path / "index.pkl").write_bytes(pickle.dumps((index, texts)))
    script = (
        "import pickle, sys; index, texts = pickle.load(open(sys.argv[1], 'rb'));"
        "print([index.find(t) for t in texts])"
    )
    env = {**os.environ, "PYTHONHASHSEED": "12345"}
    out = subprocess.run([sys.executable, "-c", script, str(tmp_path / "index.pkl")], env=env,
                         capture_output=True, text=True, check=True)  # fmt: skip
    assert out.stdout.strip() == str([index.find(t) for t in texts]) == str(list(range(0, 50, 5)))


def test_examples_from_jsonl_rows_and_text_files(tmp_path):
    rows = [{"question": "q one", "choices": ["c1", "c2"], "answer": 1}, {"prompt": "p two"}]
    (tmp_path / "mc.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    (tmp_path / "notes.txt").write_text("plain text")
    found = list(decontaminate.examples([f"{tmp_path.as_uri()}/*"], None, "f.uris"))
    mc, notes = (tmp_path / "mc.jsonl").as_uri(), (tmp_path / "notes.txt").as_uri()
    assert found == [(mc, f"{mc} line 1", "q one\nc1\nc2"), (mc, f"{mc} line 2", "p two"),
                     (notes, notes, "plain text")]  # fmt: skip


def test_bad_evaluation_data_names_the_field(tmp_path):
    (tmp_path / "a.txt").write_text("text")
    with pytest.raises(ValueError, match=r"^f.uris\[1\]: no files match .*/none\*$"):
        list(decontaminate.examples([tmp_path.as_uri(), f"{tmp_path.as_uri()}/none*"], None,
                                    "f.uris"))  # fmt: skip
    (tmp_path / "sub").mkdir()
    (tmp_path / "sub" / "bad.jsonl").write_text("{not json\n")
    with pytest.raises(ValueError, match=r"^f.uris\[0\]: .*bad.jsonl line 1: not JSON"):
        list(decontaminate.examples([(tmp_path / "sub").as_uri()], None, "f.uris"))
