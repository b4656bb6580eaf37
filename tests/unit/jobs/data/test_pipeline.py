"""The Dataset job end to end on a generated corpus: counts, determinism, atomicity, S3."""

import faulthandler
import gzip
import json
import os
import random
import signal
import subprocess
import sys
import time
from pathlib import Path

import fsspec
import pyarrow.parquet as pq
import pytest

from lmforge.jobs.data import engines, pipeline, shards, sources
from lmforge.jobs.data.reader import ShardReader
from lmforge.operator.api.dataset import Engine
from lmforge.operator.api.jobs import DataConfig

from .conftest import merge, spam


def write_corpus(folder: Path, words: list[str]) -> dict[str, int]:
    """jsonl files with planted exact duplicates, PII, blocklisted and too-short documents."""
    rng = random.Random(0)
    docs = [" ".join(rng.choices(words, k=rng.randint(40, 120))) for _ in range(60)]
    planted = {"exact": 5, "short": 4, "blocked": 3, "email": 6}
    docs += docs[: planted["exact"]]
    docs += ["tiny"] * planted["short"]
    docs += [f"{d} forbiddenword" for d in docs[10 : 10 + planted["blocked"]]]
    docs = [f"{d} mail me at user{i}@example.com" if 20 <= i < 20 + planted["email"] else d
            for i, d in enumerate(docs)]  # fmt: skip
    rng.shuffle(docs)
    folder.mkdir(parents=True, exist_ok=True)
    for part in range(3):
        rows = docs[part::3]
        (folder / f"part-{part}.jsonl").write_text(
            "".join(json.dumps({"text": t}) + "\n" for t in rows)
        )
    return planted | {"total": len(docs)}


@pytest.fixture
def corpus(tmp_path, words):
    planted = write_corpus(tmp_path / "raw", words)
    return tmp_path, planted


BUILD = {"cleaning": {"minChars": 10}, "filters": {"blocklist": {"words": ["forbiddenword"]}},
         "deduplication": {"near": {"enabled": False}}}  # fmt: skip


def build(spec, corpus, output: str, uri: str | None = None, **override):
    uri = uri or f"{corpus[0].as_uri()}/raw/*.jsonl"
    config = spec([{"uri": uri, "format": "jsonl"}], **merge(BUILD, override))
    return pipeline.run(config, output)


def read(uri: str) -> bytes:
    fs, path = fsspec.url_to_fs(uri)
    return fs.cat_file(path)


def test_counts_shards_and_manifest(spec, corpus):
    folder, planted = corpus
    out = (folder / "out").as_uri()
    manifest = build(spec, corpus, out)
    audit = json.loads(read(f"{out}/{manifest['audit']['path']}"))
    assert audit["documents"]["read"] == planted["total"]
    assert audit["removed"] == {"blocklist": planted["blocked"], "exactDuplicates": planted["exact"],
                                "length": planted["short"]}  # fmt: skip
    assert audit["pii"] == {"email": planted["email"]}
    assert audit["blocklistHits"] == {"forbiddenword": planted["blocked"]}
    kept = planted["total"] - planted["blocked"] - planted["exact"] - planted["short"]
    assert audit["documents"]["kept"] == kept
    assert sum(s["documents"] for s in manifest["splits"].values()) == kept
    for split in manifest["splits"].values():
        assert (
            split["tokens"] == split["sequences"] * 16 == sum(s["tokens"] for s in split["shards"])
        )
        for shard in split["shards"]:
            assert shards.digest(read(f"{out}/{shard['path']}")) == shard["digest"]
    assert (
        shards.digest(read(f"{out}/{manifest['tokenizer']['path']}"))
        == manifest["tokenizer"]["digest"]
    )
    assert manifest["sources"][0]["files"] == 3 and manifest["dtype"] == "uint16"


def test_every_removed_document_has_an_audit_row_that_says_why(spec, corpus):
    folder = corpus[0]
    out = folder / "out"
    manifest = build(spec, corpus, out.as_uri())
    rows = pq.read_table(out / manifest["audit"]["removed"]).to_pylist()
    audit = json.loads((out / manifest["audit"]["path"]).read_text())
    assert len(rows) == sum(audit["removed"].values()) == audit["removedDocuments"]["rows"]
    first, text_of = {}, {}  # the first document (in corpus order) with each text
    for path in sorted((folder / "raw").glob("*.jsonl")):
        for index, line in enumerate(path.read_text().splitlines()):
            doc = sources.document_id(path.as_uri(), index)
            text_of[doc] = json.loads(line)["text"]
            first.setdefault(text_of[doc], (doc, path.as_uri()))
    by_stage = {}
    for row in rows:
        by_stage.setdefault(row["stage"], []).append(row)
    assert {stage: len(r) for stage, r in by_stage.items()} == audit["removed"]
    for row in by_stage["exactDuplicates"]:
        assert (row["duplicateOf"], row["duplicateOfSource"]) == first[text_of[row["id"]]]
        assert row["duplicateOf"] != row["id"] and row["detail"] == "the same content"
    for row in by_stage["blocklist"]:
        assert "forbiddenword" in text_of[row["id"]] and row["detail"] == "forbiddenword"
        assert row["duplicateOf"] is None
    duplicate = by_stage["exactDuplicates"][0]
    answer = why(str(out), duplicate["id"])
    assert answer.returncode == 0 and answer.stdout.splitlines() == [
        f"{duplicate['id']} from {duplicate['source']}: removed by exactDuplicates (the same content)",
        f"kept instead: {duplicate['duplicateOf']} from {duplicate['duplicateOfSource']}",
    ]
    answer = why(f"{out.as_uri()}/manifest.json", duplicate["duplicateOf"])
    assert answer.returncode == 0 and "not removed" in answer.stdout
    answer = why(str(folder / "raw"), duplicate["id"])
    assert answer.returncode == 1 and "no manifest.json: no complete dataset" in answer.stderr


def why(dataset: str, document: str) -> subprocess.CompletedProcess:
    """`lmforge data why`, as a user runs it."""
    command = [sys.executable, "-m", "lmforge.operator.cli", "data", "why", dataset, document]
    return subprocess.run(command, capture_output=True, text=True, timeout=60)


def test_damaged_input_is_counted_in_the_audit_with_where(spec, corpus):
    folder = corpus[0]
    whole = gzip.compress((folder / "raw" / "part-1.jsonl").read_bytes())
    (folder / "raw" / "part-1.jsonl").unlink()
    (folder / "raw" / "part-1.jsonl.gz").write_bytes(whole[: len(whole) // 2])
    with open(folder / "raw" / "part-2.jsonl", "ab") as out:
        out.write(b'{"text": "caf\xe9"}\n')
    manifest = build(spec, corpus, (folder / "out").as_uri(), uri=f"{folder.as_uri()}/raw/*")
    audit = json.loads((folder / "out" / manifest["audit"]["path"]).read_text())
    uri = (folder / "raw").as_uri()
    assert audit["skippedRecords"]["count"] == 2
    first = audit["skippedRecords"]["first"]
    assert first[0]["uri"] == f"{uri}/part-1.jsonl.gz"
    assert first[0]["where"].startswith("the rest of the file: cannot decompress:")
    assert first[1]["uri"] == f"{uri}/part-2.jsonl" and first[1]["where"].endswith(
        "not UTF-8 at byte 13"
    )
    assert audit["documents"]["read"] > corpus[1]["total"] * 2 // 3  # what came before the cut


def test_a_worker_killed_mid_batch_fails_the_job_at_once_naming_memory(spec, corpus, monkeypatch):
    """As the kernel's OOM killer would: SIGKILL, in the middle of the second batch, while the
    other worker goes on. The job must fail with the settings to change, not wait forever."""
    killed = corpus[0] / "killed-at"
    process = pipeline.Processor.process

    def dies_on_the_second_batch(self, file, out):
        if file.number == 1:
            killed.write_text(repr(time.time()))
            os.kill(os.getpid(), signal.SIGKILL)
        return process(self, file, out)

    monkeypatch.setattr(pipeline.Processor, "process", dies_on_the_second_batch)
    monkeypatch.setattr(pipeline.Budget, "of", classmethod(
        lambda cls, spec, files: cls(chunk_bytes=1 << 20, batch_bytes=1,
                                     partitions={"exact": 2, "near": 3})))  # fmt: skip
    with pytest.raises(pipeline.DataError) as error:
        build(spec, corpus, (corpus[0] / "out").as_uri(), engine={"workers": 2})
    waited = time.time() - float(killed.read_text())
    assert "a data worker died while working (SIGKILL)" in str(error.value)
    assert "spec.engine.workerMemoryMiB" in str(error.value) and "memory" in str(error.value)
    assert waited < 5, f"the job noticed its dead worker after {waited:.1f} s"
    assert not (corpus[0] / "out" / "manifest.json").exists()


def test_a_worker_that_crashes_is_not_blamed_on_memory():
    def crash(item):
        if item == 1:
            faulthandler.disable()  # pytest's would print a fatal error into the log
            os.kill(os.getpid(), signal.SIGSEGV)
        return item

    with pytest.raises(engines.WorkerLost, match=r"crashed while working \(SIGSEGV\)") as error:
        list(engines.run(crash, [0, 1, 2], Engine(workers=2)))
    assert "workerMemoryMiB" not in str(error.value)


def test_engines_and_worker_counts_build_identical_datasets(spec, corpus):
    """Local with 1 and 2 workers and Ray tasks: the same manifest and the same shard bytes. Ray
    runs in a job process of its own, as in a pod: it leaves native state behind that a process
    forked later (the local engine's workers) can crash on."""
    folder, _ = corpus
    engines = {"one": {"workers": 1}, "two": {"workers": 2}, "ray": {"type": "ray", "workers": 2}}
    built = {name: build(spec, corpus, (folder / name).as_uri(), engine=engine)
             for name, engine in engines.items() if name != "ray"}  # fmt: skip
    config = spec([{"uri": f"{folder.as_uri()}/raw/*.jsonl", "format": "jsonl"}],
                  **merge(BUILD, {"engine": engines["ray"]}))  # fmt: skip
    job = DataConfig(name="ray", spec=config, output_uri=(folder / "ray").as_uri())
    (folder / "ray.json").write_text(json.dumps(job.wire()))
    ran = subprocess.run([sys.executable, "-m", "lmforge.jobs.data", "--config",
                          str(folder / "ray.json")], capture_output=True, text=True)  # fmt: skip
    assert ran.returncode == 0, ran.stdout + ran.stderr
    built["ray"] = ShardReader((folder / "ray").as_uri()).manifest
    for manifest in built.values():
        manifest.pop("seconds", None)
    assert built["one"] == built["two"] == built["ray"]
    for shard in built["one"]["splits"]["train"]["shards"]:
        contents = {read(f"{(folder / name).as_uri()}/{shard['path']}") for name in engines}
        assert len(contents) == 1


def test_rerun_is_a_no_op_and_a_changed_config_rebuilds(spec, corpus):
    folder, _ = corpus
    out = (folder / "out").as_uri()
    first = build(spec, corpus, out)
    again = build(spec, corpus, out)
    assert "seconds" in first and "seconds" not in again  # nothing was built the second time
    changed = build(spec, corpus, out, packing={"sequenceLength": 32})
    assert changed["configDigest"] != first["configDigest"] and changed["sequenceLength"] == 32
    builds = [p.name for p in (folder / "out").iterdir() if p.name.startswith("data-")]
    assert builds == [changed["splits"]["train"]["shards"][0]["path"].split("/")[0]]


def test_a_crash_before_the_manifest_keeps_the_last_good_dataset(spec, corpus, monkeypatch):
    folder, _ = corpus
    out = (folder / "out").as_uri()
    good = build(spec, corpus, out)
    write_json = shards.write_json

    def crash_at_manifest(fs, root, name, value):
        if name == shards.MANIFEST:
            raise KeyboardInterrupt("killed")
        return write_json(fs, root, name, value)

    monkeypatch.setattr(shards, "write_json", crash_at_manifest)
    with pytest.raises(KeyboardInterrupt):
        build(spec, corpus, out, packing={"sequenceLength": 32})
    monkeypatch.undo()
    reader = ShardReader(out)  # still the good dataset, every shard intact
    assert reader.manifest["configDigest"] == good["configDigest"]
    for shard in good["splits"]["train"]["shards"]:
        assert shards.digest(read(f"{out}/{shard['path']}")) == shard["digest"]


def test_nothing_left_after_filtering_says_why(spec, corpus):
    total = corpus[1]["total"]
    with pytest.raises(
        pipeline.DataError,
        match=f"no documents left to train on: {total} documents"
        f" read from 3 files; {total} removed by length. Loosen spec.cleaning",
    ):
        build(spec, corpus, (corpus[0] / "out").as_uri(), cleaning={"minChars": 100_000})


def test_sources_and_output_on_s3(spec, corpus, bucket, s3_endpoint):
    folder, _ = corpus
    fs = fsspec.filesystem("s3", endpoint_url=s3_endpoint)
    for file in (folder / "raw").iterdir():
        fs.put_file(str(file), f"{bucket[5:]}/raw/{file.name}")
    out = f"{bucket}/dataset"
    remote = build(spec, corpus, out, f"{bucket}/raw/*.jsonl", storage={"endpointUrl": s3_endpoint})
    local = build(spec, corpus, (folder / "local").as_uri())
    remote_audit = json.loads(fs.cat_file(f"{out[5:]}/{remote['audit']['path']}"))
    local_audit = json.loads(read(f"{(folder / 'local').as_uri()}/{local['audit']['path']}"))
    for key in ("documents", "removed", "pii", "blocklistHits"):
        assert remote_audit[key] == local_audit[key]
    assert remote["sources"][0]["files"] == 3
    reader = ShardReader(f"{bucket}/dataset", endpoint_url=s3_endpoint, cache_dir=str(folder / "c"))
    first = next(reader.batches(2))
    assert first.shape == (2, 16)
    again = build(spec, corpus, out, f"{bucket}/raw/*.jsonl", storage={"endpointUrl": s3_endpoint})
    assert "seconds" not in again  # complete: nothing to do


def test_an_unreachable_bucket_is_a_clear_error(spec):
    config = spec([{"uri": "s3://nowhere/*.jsonl", "format": "jsonl"}],
                  storage={"endpointUrl": "http://127.0.0.1:9"})  # fmt: skip
    with pytest.raises(
        pipeline.DataError, match=r"spec.sources\[0\].uri: cannot list s3://nowhere"
    ):
        pipeline.run(config, "file:///tmp/never")


def test_classifiers_and_decontamination_remove_and_say_why(spec, corpus, classifier):
    folder, planted = corpus
    rng = random.Random(5)
    (folder / "raw" / "spam.jsonl").write_text(
        "".join(json.dumps({"text": spam(rng, 60)}) + "\n" for _ in range(10))
    )
    texts = {}
    for path in sorted((folder / "raw").glob("part-*.jsonl")):
        for index, line in enumerate(path.read_text().splitlines()):
            texts.setdefault(json.loads(line)["text"], []).append((path, index))
    unique = [t for t, at in texts.items() if len(at) == 1 and len(t.split()) > 40
              and "forbiddenword" not in t]  # fmt: skip
    leaked = unique[:3]  # in the evaluation data, as a question with other case and punctuation
    rows = [{"question": " ".join(t.split()[10:30]).upper() + "?", "answer": "x"} for t in leaked]
    rows.append({"question": "nothing in the corpus at all", "answer": "y"})
    evaluation = folder / "eval.jsonl"
    evaluation.write_text("".join(json.dumps(r) + "\n" for r in rows))
    filters = {"blocklist": {"words": ["forbiddenword"]},
               "classifiers": [{"name": "quality", "uri": classifier, "label": "hq",
                                "threshold": 0.5}],
               "decontamination": {"uris": [evaluation.as_uri()]}}  # fmt: skip
    out = folder / "out"
    manifest = build(spec, corpus, out.as_uri(), filters=filters)
    audit = json.loads((out / manifest["audit"]["path"]).read_text())
    assert audit["removed"]["classifier.quality"] == 10
    assert audit["removed"]["decontamination"] == 3
    assert audit["decontamination"] == {"ngram": 13, "examples": 3, "shorterThanNgram": 1,
                                        "removedByFile": {evaluation.as_uri(): 3}}  # fmt: skip
    removed = pq.read_table(out / manifest["audit"]["removed"]).to_pylist()
    spam_uri = (folder / "raw" / "spam.jsonl").as_uri()
    by_stage = {}
    for row in removed:
        by_stage.setdefault(row["stage"], []).append(row)
    assert {r["id"] for r in by_stage["classifier.quality"]} == {
        sources.document_id(spam_uri, i) for i in range(10)
    }
    assert all(r["detail"].startswith("hq 0.") for r in by_stage["classifier.quality"])
    expected = {}
    for line, text in enumerate(leaked, 1):
        path, index = texts[text][0]
        expected[sources.document_id(path.as_uri(), index)] = (
            f"shares a 13-gram with {evaluation.as_uri()} line {line}"
        )
    assert {r["id"]: r["detail"] for r in by_stage["decontamination"]} == expected
    assert audit["documents"]["kept"] == planted["total"] - sum(audit["removed"].values()) + 10


def test_a_classifier_label_the_model_lacks_fails_naming_the_field(spec, corpus, classifier):
    filters = {"classifiers": [{"name": "edu", "uri": classifier, "label": "edu",
                                "threshold": 0.5}]}  # fmt: skip
    with pytest.raises(pipeline.DataError, match=r"spec.filters.classifiers\[0\].label: 'edu'"):
        build(spec, corpus, (corpus[0] / "out").as_uri(), filters=filters)
    missing = {"decontamination": {"uris": [(corpus[0] / "none.jsonl").as_uri()]}}
    with pytest.raises(
        pipeline.DataError, match=r"spec.filters.decontamination.uris\[0\]: no files match"
    ):
        build(spec, corpus, (corpus[0] / "out").as_uri(), filters=missing)


def test_budget_sizes_partitions_by_record_kind_and_expansion(spec):
    """docs/data.md's formula: near records are ~100x the exact ones per document, and a gzip
    file holds about 4x its size in text where jsonl holds 1x."""
    config = spec([{"uri": "file:///c/*.jsonl", "format": "jsonl"}],
                  engine={"workers": 2, "workerMemoryMiB": 512})  # fmt: skip
    plain = [sources.File(0, f"file:///c/{i}.jsonl", 100 << 20, i) for i in range(4)]
    packed = [sources.File(0, f"file:///c/{i}.jsonl.gz", 100 << 20, i) for i in range(4)]
    budget, zipped = pipeline.Budget.of(config, plain), pipeline.Budget.of(config, packed)
    free = (512 - pipeline.RUNTIME_MIB) << 20
    n = config.deduplication.near
    near = n.bands * (16 + n.permutations)
    assert budget.partitions == {"exact": 1, "near": -(-(400 << 20) * near // 1024 // (free // 4))}
    assert zipped.partitions["near"] == -(-(1600 << 20) * near // 1024 // (free // 4))
    assert budget.chunk_bytes == free // 8
    assert budget.batch_bytes == min(free // 4, (400 << 20) // (4 * 2))
