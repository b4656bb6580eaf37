"""`lmforge validate`: every sample passes, every invalid manifest fails with its message."""

from pathlib import Path

import pytest
import yaml

from lmforge.operator import cli
from lmforge.operator.validate import errors, validate

ROOT = Path(__file__).resolve().parents[3]
SAMPLES = sorted((ROOT / "manifests/samples").rglob("*.yaml"))
INVALID = sorted((ROOT / "tests/manifests/invalid").glob("*.yaml"))
EXPECT = "lmforge.dev/expect-error"


def expected(file: Path) -> list[str]:
    document = yaml.safe_load(file.read_text())
    return document["metadata"]["annotations"][EXPECT].splitlines()


def kinds_in(folder: str) -> list[str]:
    return [yaml.safe_load(f.read_text())["kind"] for f in SAMPLES if f.parent.name == folder]


def test_there_is_a_sample_per_kind_a_lifecycle_and_a_quickstart():
    everything = {"Dataset", "PretrainJob", "FineTune", "RewardModel", "Evaluation", "Deployment"}
    assert set(kinds_in("samples")) == everything
    lifecycle = ["Dataset", "PretrainJob", "FineTune", "RewardModel", "FineTune", "Evaluation"]
    assert kinds_in("lifecycle") == [*lifecycle, "Deployment"]
    assert kinds_in("quickstart") == [*lifecycle[:-1], "Evaluation", *lifecycle[-1:], "Deployment"]


@pytest.mark.parametrize("file", SAMPLES, ids=lambda f: f.name)
def test_sample_is_valid(file):
    resources, problems = validate(file)
    assert not problems, "\n".join(map(str, problems))
    assert len(resources) == 1


@pytest.mark.parametrize("file", INVALID, ids=lambda f: f.name)
def test_invalid_manifest_is_rejected_with_its_message(file):
    resources, problems = validate(file)
    assert resources == []
    lines = [str(p) for p in problems]
    assert any(all(part in line for part in expected(file)) for line in lines), lines
    assert all(line.startswith(f"{file}: ") for line in lines)


def test_cli_exit_codes_and_messages(capsys):
    assert cli.main(["validate", "-f", str(ROOT / "manifests/samples")]) == 0
    assert f"{len(SAMPLES)} valid resource(s)" in capsys.readouterr().out

    assert cli.main(["validate", "-f", str(ROOT / "tests/manifests/invalid")]) == 1
    err = capsys.readouterr().err
    for file in INVALID:
        assert any(all(p in line for p in expected(file)) for line in err.splitlines()), file


@pytest.mark.parametrize(
    ("document", "path", "message"),
    [
        ("- a list", "", "expected a mapping, got list"),
        ("kind: Pod", "kind", "unknown kind 'Pod': use one of Dataset, PretrainJob"),
        ("{kind: Dataset, apiVersion: lmforge.dev/v1}", "apiVersion", "use lmforge.dev/v1alpha1"),
        (
            "{kind: Dataset, apiVersion: lmforge.dev/v1alpha1, spec: {}}",
            "metadata",
            "Required value",
        ),
    ],
)
def test_envelope_errors(document, path, message):
    resource, found = errors(yaml.safe_load(document))
    assert resource is None
    assert any(p == path and message in m for p, m in found), found


def test_unreadable_files_are_problems_not_crashes(tmp_path):
    (tmp_path / "broken.yaml").write_text("kind: [unclosed\n")
    (tmp_path / "good.yaml").write_text((ROOT / "manifests/samples/dataset.yaml").read_text())
    resources, problems = validate(tmp_path)
    assert [r.metadata.name for _, r in resources] == ["web-corpus"]
    assert len(problems) == 1 and "broken.yaml: cannot read:" in str(problems[0])
    _, problems = validate(tmp_path / "missing.yaml")
    assert "missing.yaml: cannot read: [Errno 2] No such file or directory" in str(problems[0])


def test_every_problem_of_a_file_is_reported(tmp_path):
    manifest = tmp_path / "two.yaml"
    manifest.write_text(
        (ROOT / "tests/manifests/invalid/finetune-bad-method.yaml").read_text()
        + "---\n"
        + (ROOT / "tests/manifests/invalid/deployment-autoscaling.yaml").read_text()
    )
    _, problems = validate(manifest)
    assert [p.resource for p in problems] == ["FineTune/bad-method", "Deployment/bad-autoscaling"]
