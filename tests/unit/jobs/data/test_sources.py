import gzip
import hashlib
import json

import pyarrow as pa
import pyarrow.parquet as pq
import pytest
import zstandard

from lmforge.jobs.data import sources
from lmforge.operator.api.dataset import Source


def read_all(uri: str, max_bytes: int = 1 << 20, **source) -> tuple[list[str], sources.Reading]:
    config = Source(uri=uri, **source)
    (file,) = sources.list_files([config])
    reading = sources.Reading()
    return [text for text, _ in sources.read(file, config, reading, max_bytes)], reading


def test_formats_and_compression(tmp_path):
    rows = [{"text": "one"}, {"body": "skipped"}, {"text": "two"}]
    jsonl = "\n".join(json.dumps(r) for r in rows).encode()
    (tmp_path / "a.txt").write_text("whole file")
    (tmp_path / "b.jsonl.gz").write_bytes(gzip.compress(jsonl))
    (tmp_path / "c.jsonl.zst").write_bytes(zstandard.ZstdCompressor().compress(jsonl))
    pq.write_table(pa.table({"content": ["p1", "p2"], "n": [1, 2]}), tmp_path / "d.parquet")
    base = tmp_path.as_uri()
    assert read_all(f"{base}/a.txt")[0] == ["whole file"]
    assert read_all(f"{base}/b.jsonl.gz", format="jsonl")[0] == ["one", "two"]
    assert read_all(f"{base}/c.jsonl.zst", format="jsonl")[0] == ["one", "two"]
    texts, reading = read_all(f"{base}/d.parquet", format="parquet", field="content")
    assert texts == ["p1", "p2"] and not reading.skipped
    data = (tmp_path / "d.parquet").read_bytes()
    assert reading.bytes == len(data)
    assert reading.digest == "sha256:" + hashlib.sha256(data).hexdigest()


def jsonl_lines(count: int) -> bytes:
    return b"".join(json.dumps({"text": f"document {i} " * 20}).encode() + b"\n"
                    for i in range(count))  # fmt: skip


def expected(count: int) -> list[str]:
    return [f"document {i} " * 20 for i in range(count)]


@pytest.mark.parametrize("compress", [gzip.compress, zstandard.ZstdCompressor().compress])
def test_a_compressed_file_cut_off_keeps_every_document_before_the_cut(tmp_path, compress):
    whole = compress(jsonl_lines(2000))
    (tmp_path / "cut.jsonl").write_bytes(whole[: len(whole) * 2 // 3])
    name = "gzip" if compress is gzip.compress else "zstd"
    texts, reading = read_all((tmp_path / "cut.jsonl").as_uri(), format="jsonl", compression=name)
    assert 0 < len(texts) < 2000 and texts == expected(len(texts))  # a prefix, none damaged
    assert len(reading.skipped) == 1 and "cannot decompress" in reading.skipped[0]
    assert reading.bytes == len(whole) * 2 // 3  # the digest covers the whole file


def test_a_corrupt_gzip_member_keeps_the_members_before_it(tmp_path):
    good = gzip.compress(jsonl_lines(50))
    bad = bytearray(gzip.compress(jsonl_lines(50)))
    bad[len(bad) // 2 : len(bad) // 2 + 8] = b"\xff" * 8
    (tmp_path / "two.jsonl.gz").write_bytes(good + bytes(bad))
    texts, reading = read_all((tmp_path / "two.jsonl.gz").as_uri(), format="jsonl")
    assert texts[:50] == expected(50) and texts == expected(len(texts))
    assert any("cannot decompress" in s for s in reading.skipped)


def test_bad_lines_are_skipped_with_their_line_and_the_rest_kept(tmp_path):
    lines = jsonl_lines(6).splitlines(keepends=True)
    lines[1] = b'{"text": "caf\xe9"}\n'  # not UTF-8
    lines[2] = b"{oops\n"
    lines[3] = json.dumps({"text": "x" * 10_000_000}).encode() + b"\n"  # 10 MB on one line
    (tmp_path / "mixed.jsonl").write_bytes(b"".join(lines))
    texts, reading = read_all((tmp_path / "mixed.jsonl").as_uri(), max_bytes=4096, format="jsonl")
    assert texts == [expected(6)[i] for i in (0, 4, 5)]
    assert reading.skipped == [
        "line 2: not UTF-8 at byte 13",
        "line 3: not JSON (Expecting property name enclosed in double quotes)",
        "line 4: longer than 4096 bytes (spec.cleaning.maxChars)",
    ]


@pytest.mark.parametrize(
    ("name", "data", "source", "message"),
    [
        ("bad.txt", b"caf\xe9", {}, "the file: not UTF-8 at byte 3"),
        ("long.txt", b"x" * 5000, {}, "the file: longer than 4096 bytes"),
        (
            "bad.jsonl",
            b'{"text": 1}\n{"body": "x"}',
            {"format": "jsonl"},
            "every line: no string field 'text': set spec.sources[].field",
        ),
        ("bad.gz", b"not gzip", {"compression": "gzip"}, "cannot decompress"),
        ("bad.parquet", b"PAR1 nope", {"format": "parquet"}, "the file: not a parquet file"),
    ],
)
def test_bad_files_are_skipped_and_say_why(tmp_path, name, data, source, message):
    (tmp_path / name).write_bytes(data)
    texts, reading = read_all((tmp_path / name).as_uri(), max_bytes=4096, **source)
    assert texts == [] and len(reading.skipped) == 1 and message in reading.skipped[0]
    assert reading.bytes == len(data)


def test_parquet_without_the_column(tmp_path):
    pq.write_table(pa.table({"a": ["x"], "b": ["y"]}), tmp_path / "t.parquet")
    _, reading = read_all((tmp_path / "t.parquet").as_uri(), format="parquet")
    assert "no column 'text' (it has a, b)" in reading.skipped[0]


def test_a_file_gone_since_listing_is_an_error_not_a_crash(tmp_path):
    (tmp_path / "gone.txt").write_text("soon gone")
    config = Source(uri=(tmp_path / "gone.txt").as_uri())
    (file,) = sources.list_files([config])
    (tmp_path / "gone.txt").unlink()
    reading = sources.Reading()
    assert list(sources.read(file, config, reading, 4096)) == []
    assert reading.error.startswith("unreadable")


def test_globs_list_files_in_order_with_sizes(tmp_path):
    for name in ("b.txt", "a.txt", "sub/c.txt", "skip.md"):
        (tmp_path / name).parent.mkdir(exist_ok=True)
        (tmp_path / name).write_text(name)
    files = sources.list_files([Source(uri=f"{tmp_path.as_uri()}/**/*.txt")])
    assert [f.uri.rsplit("/", 1)[1] for f in files] == ["a.txt", "b.txt", "c.txt"]
    assert [f.size for f in files] == [5, 5, 9]


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


def test_a_file_of_bad_lines_counts_them_all_and_keeps_the_first_places(tmp_path):
    (tmp_path / "bad.jsonl").write_bytes(b"{oops\n" * 150 + b'{"text": "good"}\n')
    texts, reading = read_all((tmp_path / "bad.jsonl").as_uri(), format="jsonl")
    assert texts == ["good"] and reading.skips == 150
    assert reading.skipped == [f"line {n}: not JSON (Expecting property name enclosed in double"
                               f" quotes)" for n in range(1, 101)]  # fmt: skip
