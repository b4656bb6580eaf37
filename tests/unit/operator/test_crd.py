"""The generated CRDs: current, structural, and defaulting exactly as the models do."""

import copy
from pathlib import Path

import cel
import pytest

from lmforge.operator import cli
from lmforge.operator.api import KINDS
from lmforge.operator.api.crd import crd

ROOT = Path(__file__).resolve().parents[3]
CRDS = {name: crd(kind) for name, kind in KINDS.items()}
# Short names the built-in kinds already use; ours must not shadow them.
BUILTIN_SHORT_NAMES = {
    "cm", "cs", "csr", "deploy", "ds", "ep", "ev", "hpa", "ing", "limits", "netpol", "no", "ns",
    "pc", "pdb", "po", "pv", "pvc", "quota", "rc", "rs", "sa", "sc", "sts", "svc",
}  # fmt: skip


def schema(name: str) -> dict:
    return CRDS[name]["spec"]["versions"][0]["schema"]["openAPIV3Schema"]


def nodes(node: dict, path: str = ""):
    yield path, node
    for key, child in node.get("properties", {}).items():
        yield from nodes(child, f"{path}.{key}")
    for key in ("items", "additionalProperties"):
        if isinstance(node.get(key), dict):
            yield from nodes(node[key], f"{path}[]")


def test_committed_files_are_current(monkeypatch):
    monkeypatch.chdir(ROOT)
    assert cli.main(["crds", "--check"]) == 0


def test_check_fails_on_a_stale_file(tmp_path, capsys):
    crd_dir, docs = tmp_path / "crds", tmp_path / "api.md"
    where = ["--dir", str(crd_dir), "--chart-dir", str(tmp_path / "chart"), "--docs", str(docs)]
    assert cli.main(["crds", *where]) == 0
    assert cli.main(["crds", "--check", *where]) == 0
    edited = crd_dir / "datasets.lmforge.dev.yaml"
    edited.write_text(edited.read_text().replace("minimum: 16", "minimum: 17"))
    (crd_dir / "old.lmforge.dev.yaml").write_text("{}")
    assert cli.main(["crds", "--check", *where]) == 1
    err = capsys.readouterr().err
    assert "datasets.lmforge.dev.yaml: out of date" in err
    assert "old.lmforge.dev.yaml: out of date" in err


@pytest.mark.parametrize("name", KINDS)
def test_schema_is_structural(name):
    for path, node in nodes(schema(name)):
        assert not {"$ref", "anyOf", "allOf", "oneOf", "const", "title"} & node.keys(), path
        assert "type" in node, f"{name}{path} has no type"
        if node["type"] == "object" and "properties" not in node:
            free_form = node.get("x-kubernetes-preserve-unknown-fields")
            assert free_form or "additionalProperties" in node, path
        for key in ("exclusiveMinimum", "exclusiveMaximum"):
            assert node.get(key, True) is True, f"{path}: {key} must be a boolean in OpenAPI v3.0"


@pytest.mark.parametrize("name", KINDS)
def test_rules_compile_as_cel(name):
    rules = [r for _, n in nodes(schema(name)) for r in n.get("x-kubernetes-validations", [])]
    assert rules
    for rule in rules:
        cel.compile(rule["rule"])
        assert rule["message"]


@pytest.mark.parametrize("name", KINDS)
def test_names_columns_and_status(name):
    spec = CRDS[name]["spec"]
    assert spec["names"]["categories"] == ["lmforge"]
    assert not set(spec["names"]["shortNames"]) & BUILTIN_SHORT_NAMES
    version = spec["versions"][0]
    assert version["subresources"] == {"status": {}}
    columns = [c["name"] for c in version["additionalPrinterColumns"]]
    assert "Phase" in columns and columns[-1] == "Age"
    status = schema(name)["properties"]["status"]["properties"]
    for column in version["additionalPrinterColumns"]:
        parts = column["jsonPath"].split(".")
        if parts[1] == "status":
            assert parts[2] in status, f"column {column['name']} reads a field status lacks"


def test_short_names_are_unique():
    names = [n for c in CRDS.values() for n in c["spec"]["names"]["shortNames"]]
    assert len(names) == len(set(names))


@pytest.mark.parametrize(
    ("name", "field"),
    [
        ("PretrainJob", "datasetRef"),
        ("PretrainJob", "model"),
        ("FineTune", "baseModel"),
        ("FineTune", "method"),
        ("Evaluation", "modelRef"),
        ("RewardModel", "baseModel"),
    ],
)
def test_inputs_are_immutable(name, field):
    rules = schema(name)["properties"]["spec"]["properties"][field]["x-kubernetes-validations"]
    assert {"rule": "self == oldSelf"}.items() <= rules[-1].items()


def apply_defaults(node: dict, value):
    """The API server's structural defaulting: fill absent fields, then descend."""
    if isinstance(value, dict) and "properties" in node:
        for key, child in node["properties"].items():
            if key not in value and "default" in child:
                value[key] = copy.deepcopy(child["default"])
            if key in value:
                apply_defaults(child, value[key])
    elif isinstance(value, list) and "items" in node:
        for item in value:
            apply_defaults(node["items"], item)
    return value


MINIMAL = {
    "Dataset": {"sources": [{"uri": "file:///c/*.txt"}]},
    "PretrainJob": {
        "datasetRef": {"name": "d"},
        "model": {"preset": "tiny"},
        "training": {"steps": 1},
    },
    "FineTune": {
        "baseModel": {"uri": "s3://m/"},
        "data": {"uri": "s3://d.jsonl"},
        "training": {"steps": 1},
        "lora": {},
    },
    "RewardModel": {
        "baseModel": {"uri": "s3://m/"},
        "preferences": {"uri": "s3://p.jsonl"},
        "training": {"steps": 1},
    },
    "Evaluation": {
        "modelRef": {"name": "m"},
        "tasks": [{"name": "a", "type": "perplexity", "datasetRef": {"name": "d"}}],
    },
    "Deployment": {"modelRef": {"name": "m"}, "autoscaling": {}},
}


@pytest.mark.parametrize("name", KINDS)
def test_api_server_defaults_equal_model_defaults(name):
    spec_schema = schema(name)["properties"]["spec"]
    defaulted = apply_defaults(spec_schema, copy.deepcopy(MINIMAL[name]))
    parsed = KINDS[name].model_fields["spec"].annotation.model_validate(MINIMAL[name])
    assert defaulted == parsed.wire()
