"""Contamination: what the evaluated model's lineage says it was trained on, against a task."""

import json
from pathlib import Path

from lmforge.jobs.data.clean import Cleaner
from lmforge.jobs.data.decontaminate import words
from lmforge.jobs.data.filters import Pii
from lmforge.jobs.eval import overlap
from lmforge.jobs.train.trainer import training_data
from lmforge.operator.api.dataset import Cleaning, PiiFilter
from lmforge.operator.api.evaluation import Task
from lmforge.operator.api.jobs import read_train_config


def test_a_datasets_documents_decode_from_its_shards(dataset):
    clean, pii = Cleaner(Cleaning()), Pii(PiiFilter())  # what the Dataset did to the sources
    cleaned = {pii(clean(p.read_text()))[0]
               for package in (json, __import__("email"))
               for p in Path(package.__file__).parent.glob("*.py")}  # fmt: skip
    manifest = json.loads(Path(dataset.removeprefix("file://"), "manifest.json").read_text())
    for split in ("train", "validation"):
        docs = list(overlap.documents(dataset, None, split))
        # The packing leaves out the tokens after the last full sequence: the last document may
        # be cut short, or missing.
        assert manifest["splits"][split]["documents"] - len(docs) in (0, 1)
        assert all(d in cleaned for d in docs[:-1])
        assert any(c.startswith(docs[-1]) for c in cleaned)


def ngrams(text: str, n: int) -> set[tuple[str, ...]]:
    w = words(text)
    return {tuple(w[i : i + n]) for i in range(len(w) - n + 1)}


def test_overlap_counts_the_examples_the_training_data_shares_an_ngram_with(dataset, tmp_path):
    train = list(overlap.documents(dataset, None))
    validation = list(overlap.documents(dataset, None, "validation"))
    sft = tmp_path / "sft.jsonl"
    sft.write_text(json.dumps({"messages": [{"role": "user", "content": "Please " + " ".join(
        f"word{i}" for i in range(20))}]}) + "\n")  # fmt: skip
    model = tmp_path / "model"
    model.mkdir()
    lineage = [{"uri": sft.as_uri(), "kind": "jsonl"}, {"uri": dataset, "kind": "Dataset"}]
    (model / "lineage.json").write_text(json.dumps({"trainingData": lineage}))
    rows = [
        {"prompt": " ".join(train[0].split()[30:60]), "reference": "x"},  # seen in training
        {"prompt": " ".join(validation[0].split()[30:60]), "reference": "x"},  # held out
        {"prompt": "word3 word4 word5 word6 word7 word8 word9 word10 word11 word12 word13 "
                   "word14 word15", "reference": "x"},  # from the SFT rows
        {"prompt": "a question nobody asked before about anything at all in this world ever",
         "reference": "y"},
        {"prompt": "too short", "reference": "z"},
    ]  # fmt: skip
    task_file = tmp_path / "task.jsonl"
    task_file.write_text("".join(json.dumps(r) + "\n" for r in rows))
    seen = set().union(*(ngrams(t, 13) for t in train), ngrams(sft.read_text(), 13))
    expected = [bool(ngrams(r["prompt"] + "\n" + r["reference"], 13) & seen) for r in rows]
    assert expected[0] and expected[2] and not expected[3]  # what the rows were chosen for
    task = Task(name="qa", type="bleu", uri=task_file.as_uri())
    results, details = overlap.overlaps([task], str(model), 13, None)
    assert results == {"qa.overlap": round(sum(expected) / len(rows), 6)}
    assert details["qa"]["overlapping"] == sum(expected)
    first = {d["example"]: d["trainingData"] for d in details["qa"]["first"]}
    assert first[f"{task_file.as_uri()} line 1"] == dataset
    assert first[f"{task_file.as_uri()} line 3"] == sft.as_uri()
    first_two = Task(name="qa", type="bleu", uri=task_file.as_uri(), max_examples=2)
    assert overlap.overlaps([first_two], str(model), 13, None)[0] == {
        "qa.overlap": round(sum(expected[:2]) / 2, 6)
    }
    (model / "lineage.json").unlink()  # a model from elsewhere: no figure rather than 0
    assert overlap.overlaps([task], str(model), 13, None) == ({}, {"trainingData": []})


def test_a_fine_tuned_model_records_its_data_then_its_base_models(tmp_path):
    base = tmp_path / "base"
    base.mkdir()
    (base / "lineage.json").write_text(
        json.dumps({"trainingData": [{"uri": "s3://b/dataset", "kind": "Dataset"}]})
    )
    config = read_train_config(json.dumps({
        "method": "sft", "name": "f", "training": {"steps": 1, "globalBatchTokens": 64},
        "checkpointUri": "file:///c", "outputUri": "file:///o", "baseModelUri": str(base),
        "examplesUri": "s3://b/sft.jsonl",
    }))  # fmt: skip
    assert training_data(config) == [
        {"uri": "s3://b/sft.jsonl", "kind": "jsonl"},
        {"uri": "s3://b/dataset", "kind": "Dataset"},
    ]
