import gzip
import json
import re

import pyarrow as pa
import pyarrow.parquet as pq
import pytest
import zstandard

from lmforge.jobs.data import sources
from lmforge.operator.api.dataset import Source


def read_all(uri: str, **source) -> list[str]:
    config = Source(uri=uri, **source)
    (file,) = sources.list_files([config])
    return sources.read(file, config)[1]


def test_formats_and_compression(tmp_path):
    rows = [{"text": "one"}, {"body": "skipped"}, {"text": "two"}]
    jsonl = "\n".join(json.dumps(r) for r in rows).encode()
    (tmp_path / "a.txt").write_text("whole file")
    (tmp_path / "b.jsonl.gz").write_bytes(gzip.compress(jsonl))
    (tmp_path / "c.jsonl.zst").write_bytes(zstandard.ZstdCompressor().compress(jsonl))
    pq.write_table(pa.table({"content": ["p1", "p2"], "n": [1, 2]}), tmp_path / "d.parquet")
    base = tmp_path.as_uri()
    assert read_all(f"{base}/a.txt") == ["whole file"]
    assert read_all(f"{base}/b.jsonl.gz", format="jsonl") == ["one", "two"]
    assert read_all(f"{base}/c.jsonl.zst", format="jsonl") == ["one", "two"]
    assert read_all(f"{base}/d.parquet", format="parquet", field="content") == ["p1", "p2"]


def test_globs_list_files_in_order_with_sizes(tmp_path):
    for name in ("b.txt", "a.txt", "sub/c.txt", "skip.md"):
        (tmp_path / name).parent.mkdir(exist_ok=True)
        (tmp_path / name).write_text(name)
    files = sources.list_files([Source(uri=f"{tmp_path.as_uri()}/**/*.txt")])
    assert [f.uri.rsplit("/", 1)[1] for f in files] == ["a.txt", "b.txt", "c.txt"]
    assert [f.size for f in files] == [5, 5, 9]


@pytest.mark.parametrize(
    ("name", "data", "source", "message"),
    [
        ("bad.txt", b"caf\xe9", {}, "not UTF-8 at byte 3"),
        (
            "bad.jsonl",
            b'{"text": 1}\n{"body": "x"}',
            {"format": "jsonl"},
            "no line has a string field 'text': set spec.sources[].field",
        ),
        ("bad2.jsonl", b'{"text": "a"}\n{oops', {"format": "jsonl"}, "line 2 is not JSON"),
        ("bad.gz", b"not gzip", {"compression": "gzip"}, "cannot decompress as gzip"),
        ("bad.parquet", b"PAR1 nope", {"format": "parquet"}, "not a parquet file"),
    ],
)
def test_bad_files_say_why(tmp_path, name, data, source, message):
    (tmp_path / name).write_bytes(data)
    with pytest.raises(sources.SourceError, match=re.escape(message)):
        read_all((tmp_path / name).as_uri(), **source)


def test_parquet_without_the_column(tmp_path):
    pq.write_table(pa.table({"a": ["x"], "b": ["y"]}), tmp_path / "t.parquet")
    with pytest.raises(sources.SourceError, match="no column 'text' \\(it has a, b\\)"):
        read_all((tmp_path / "t.parquet").as_uri(), format="parquet")


def test_a_source_without_files_is_an_error(tmp_path):
    with pytest.raises(sources.SourceError, match=r"spec.sources\[0\].uri: no files match"):
        sources.list_files([Source(uri=f"{tmp_path.as_uri()}/*.txt")])


def test_ids_are_stable_and_distinct():
    assert sources.document_id("s3://b/x", 0) == sources.document_id("s3://b/x", 0)
    assert len({sources.document_id("s3://b/x", i) for i in range(1000)}) == 1000


def test_stdlib_filesystem_is_the_standard_library_without_site_packages():
    files = sources.list_files([Source(uri="stdlib://json/*.py")])
    assert [f.uri for f in files][:2] == ["stdlib://json/__init__.py", "stdlib://json/decoder.py"]
    everything = sources.list_files([Source(uri="stdlib://**/*.py")])
    assert len(everything) > 500
    assert not [f for f in everything if "site-packages" in f.uri]


def test_stdlib_tasks_are_functions_split_and_corrupted():
    from lmforge.jobs.finetune.functions import CORRUPTIONS
    from lmforge.jobs.storage import jsonl

    def rows(name):
        return [row for _, row in jsonl(f"stdlib-tasks://functions/{name}.jsonl")]

    train, test = rows("preferences"), rows("test/preferences")
    assert len(train) > 2000 and len(test) > 200
    assert not {r["prompt"] for r in train} & {r["prompt"] for r in test}  # held out
    assert {r["corruption"] for r in train} == set(CORRUPTIONS)
    assert all(r["rejected"] != r["chosen"] and r["rejected"].strip() for r in train)
    sft, chat = rows("test/sft"), rows("test/chat")
    assert [r["response"] for r in sft] == [r["chosen"] for r in test]
    assert chat[0]["prompt"] == f"<|user|>\n{test[0]['prompt']}\n<|assistant|>\n"
    assert chat[0]["reference"] == test[0]["chosen"]


def test_corruptions_change_the_body_as_named():
    import random

    from lmforge.jobs.finetune.functions import CORRUPTIONS

    body = "    total = a + b\n    total *= scale\n    return total"
    rng = random.Random(0)
    assert CORRUPTIONS["truncated"](body, ["a", "b"], rng) == "    total = a + b"
    renamed = CORRUPTIONS["renamed"](body, ["a", "b", "scale"], rng)
    assert renamed != body and renamed.count("total") == 3
    shuffled = CORRUPTIONS["shuffled"](body, [], random.Random(1))
    assert sorted(shuffled.splitlines()) == sorted(body.splitlines())
