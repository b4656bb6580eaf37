"""`lmforge data run`: a Dataset file in, shards and a summary out; bad input named."""

import json

from lmforge.operator import cli

DATASET = """
apiVersion: lmforge.dev/v1alpha1
kind: Dataset
metadata:
  name: tiny
spec:
  sources:
    - uri: {uri}
  cleaning: {{minChars: 1}}
  filters: {{quality: {{enabled: false}}}}
  tokenizer: {{train: {{vocabSize: 300, minFrequency: 1}}}}
  packing: {{sequenceLength: 16}}
  split: {{validationFraction: 0.0}}
  engine: {{workers: 1}}
"""


def test_builds_under_default_storage_and_prints_a_summary(tmp_path, monkeypatch, capsys):
    (tmp_path / "docs").mkdir()
    for i in range(5):
        (tmp_path / "docs" / f"{i}.txt").write_text(f"document number {i} " * 30)
    (tmp_path / "d.yaml").write_text(DATASET.format(uri=f"{(tmp_path / 'docs').as_uri()}/*.txt"))
    monkeypatch.chdir(tmp_path)
    assert cli.main(["data", "run", "-f", "d.yaml"]) == 0
    out = capsys.readouterr().out
    assert "train" in out and "vocabulary" in out
    manifest = tmp_path / ".lmforge/storage/dataset/tiny/manifest.json"
    assert json.loads(manifest.read_text())["splits"]["train"]["documents"] == 5


def test_a_source_without_files_is_one_clear_line(tmp_path, capsys):
    (tmp_path / "d.yaml").write_text(DATASET.format(uri=f"{tmp_path.as_uri()}/none/*.txt"))
    assert cli.main(["data", "run", "-f", str(tmp_path / "d.yaml")]) == 1
    err = capsys.readouterr().err.strip()
    assert err == (f"{tmp_path / 'd.yaml'}: Dataset/tiny: spec.sources[0].uri: no files match"
                   f" {tmp_path.as_uri()}/none/*.txt")  # fmt: skip


def test_an_invalid_file_is_refused_before_anything_runs(tmp_path, capsys):
    (tmp_path / "d.yaml").write_text(DATASET.format(uri="/not/a/uri"))
    assert cli.main(["data", "run", "-f", str(tmp_path / "d.yaml")]) == 1
    assert "spec.sources[0].uri: String should match pattern" in capsys.readouterr().err
