"""`lmforge lineage` over the state of resources run here: the tree of what a resource was built
from, and everything built from a source, found through the URIs in status.lineage."""

import json

import pytest

from lmforge.operator.cli import main

SOURCE = "stdlib://**/*.py"
DATA, MODEL, TUNED = "file:///s/dataset/stdlib", "file:///s/pretrain/m/model", "file:///s/ft/model"


def obj(kind: str, name: str, inputs: list[dict], outputs: list[dict], **lineage) -> dict:
    status = {"phase": "Succeeded", "lineage": {"inputs": inputs, "outputs": outputs, **lineage}}
    return {"kind": kind, "metadata": {"name": name}, "spec": {}, "status": status}


OBJECTS = [
    obj("Dataset", "stdlib", [{"uri": SOURCE, "digest": "sha256:" + "a" * 64}],
        [{"uri": DATA, "kind": "Dataset", "digest": "sha256:" + "b" * 64}], codeVersion="0.1.0"),
    obj("Dataset", "other", [{"uri": "s3://corpus/web/"}], [{"uri": "file:///s/dataset/other"}]),
    obj("PretrainJob", "m", [{"uri": DATA, "kind": "Dataset", "name": "stdlib"}],
        [{"uri": MODEL, "kind": "Model"}], parentCheckpoint="file:///s/pretrain/m/ckpt/step-250"),
    obj("FineTune", "chat", [{"uri": MODEL, "kind": "PretrainJob", "name": "m"},
                             {"uri": "s3://corpus/web/part-1.jsonl"}], [{"uri": TUNED}]),
    obj("Evaluation", "e", [{"uri": TUNED, "kind": "FineTune", "name": "chat"},
                            {"uri": DATA, "kind": "Dataset"}], [{"uri": "file:///s/e.json"}]),
]  # fmt: skip


@pytest.fixture
def state(tmp_path):
    for o in OBJECTS:
        path = tmp_path / "state" / o["kind"].lower() / f"{o['metadata']['name']}.json"
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(json.dumps(o))
    return tmp_path


def lineage(state, capsys, *args) -> tuple[int, str, str]:
    code = main(["lineage", "--state", str(state), *args])
    out, err = capsys.readouterr()
    return code, out, err


def test_tree_follows_inputs_to_the_resources_that_produced_them(state, capsys):
    code, out, _ = lineage(state, capsys, "evaluation/e")
    assert code == 0
    assert out.splitlines() == [
        "Evaluation/e (Succeeded)",
        "  -> file:///s/e.json",
        "  FineTune/chat (Succeeded)",
        "    -> file:///s/ft/model",
        "    PretrainJob/m (Succeeded)",
        "      -> file:///s/pretrain/m/model",
        "      parentCheckpoint: file:///s/pretrain/m/ckpt/step-250",
        "      Dataset/stdlib (Succeeded)",
        "        -> file:///s/dataset/stdlib  sha256:bbbbbbbbbbbb",
        "        codeVersion: 0.1.0",
        "        <- stdlib://**/*.py  sha256:aaaaaaaaaaaa",
        "    <- s3://corpus/web/part-1.jsonl",
        "  Dataset/stdlib (Succeeded)",
        "    -> file:///s/dataset/stdlib  sha256:bbbbbbbbbbbb",
        "    codeVersion: 0.1.0",
        "    <- stdlib://**/*.py  sha256:aaaaaaaaaaaa",
    ]


EVERYTHING = [
    "Dataset/stdlib  <- {}",
    "Evaluation/e  <- Dataset/stdlib",
    "PretrainJob/m  <- Dataset/stdlib",
    "FineTune/chat  <- PretrainJob/m",
]


@pytest.mark.parametrize(("source", "expected"), [
    (SOURCE, EVERYTHING),
    ("stdlib://json/decoder.py", EVERYTHING),  # a file the Dataset's source pattern covers
    ("s3://corpus/web", ["Dataset/other  <- {}", "FineTune/chat  <- {}",  # a folder
                         "Evaluation/e  <- FineTune/chat"]),
    (MODEL, ["FineTune/chat  <- {}", "Evaluation/e  <- FineTune/chat"]),
])  # fmt: skip
def test_source_lists_everything_built_from_it(state, capsys, source, expected):
    code, out, _ = lineage(state, capsys, "--source", source)
    assert code == 0
    assert out.splitlines() == [line.format(source) for line in expected]


def test_unknown_resource_or_source_says_so(state, capsys):
    code, _, err = lineage(state, capsys, "pretrainjob/nope")
    assert code == 1 and "PretrainJob/nope not found in" in err
    code, _, err = lineage(state, capsys, "--source", "s3://elsewhere/")
    assert code == 1 and "nothing in" in err and "was built from s3://elsewhere/" in err
    code, _, err = lineage(state, capsys)
    assert code == 2 and "KIND/NAME" in err
