"""The Dataset job's peak memory against corpus size; a corpus 10x its memory cap, against
datatrove on the same corpus, with dedup quality measured on planted duplicates.

    python benchmarks/data_scale.py [--work DIR] [--sizes 1,4,16] [--base-mb 40]
                                    [--cap-mib 450] [--capped-mb 4500] [--workers 1]

A generated corpus of distinct documents (Zipf-distributed words from a fixed vocabulary; 2% are
planted exact copies and 2% near copies of earlier ones) is written as jsonl.

The sweep (--sizes x --base-mb; --sizes '' skips it): the job on each size in its own process
tree, one worker at workerMemoryMiB 256 (the smallest setting), the tree's memory sampled every
0.2 s as the sum of its processes' proportional set size (PSS: a page a forked worker shares
with the driver counts once). The baseline is the same job as of --baseline (default 9196c5c,
the last pipeline whose driver held every kept document), run the same way side by side.

The capped run: a corpus of --capped-mb (near copies with 0.5-3% of their words changed, so
their exact shingle Jaccard spreads over 0.75-0.95) through the job inside a cgroup (v1) whose
memory limit is --cap-mib (cleaning, exact and near dedup, tokenize, pack; PII and quality
off), and through datatrove's MinHash pipeline on the same corpus (data_pipeline.py's, without
quality filters; not capped) with as many tasks as the job has workers; both get the same
tokenizer, trained once on the corpus's first file. Printed for each: wall, MB/s, peak PSS,
the recall of planted near copies by their exact Jaccard to their source and of exact copies,
and the precision of its duplicate removals (the share that are planted copies). Needs root
(the cgroup), git (the baseline's tree) and the bench extra (datatrove).
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
import data_pipeline
from data_pipeline import BUCKETS, ROWS, SHINGLE, THRESHOLD

MB = 1e6
CGROUP = Path("/sys/fs/cgroup/memory")
REPO = Path(__file__).resolve().parent.parent


def write_corpus(folder: Path, size_mb: float, seed: int = 0,
                 changed: tuple[float, float] = (0.02, 0.02)) -> dict[str, Any]:  # fmt: skip
    """jsonl files of about 8 MB ({"text", "id"}: the id is the document's number); returns the
    counts planted. A near copy changes a share of its source's words drawn from `changed`.
    Where copies are planted, folder/truth.json records each (copy, source) pair and, for near
    copies, the exact Jaccard of their shingles; a folder that has one is reused as it is."""
    if (folder / "truth.json").exists():
        return json.loads((folder / "truth.json").read_text())["planted"]
    from lmforge.jobs.data.dedup import shingles

    rng = np.random.default_rng(seed)
    letters = np.array(list("abcdefghijklmnopqrstuvwxyz"))
    vocab = np.array(["".join(rng.choice(letters, rng.integers(2, 10))) for _ in range(30_000)])
    folder.mkdir(parents=True, exist_ok=True)
    pool, written, part, out, number = [], 0, 0, None, 0
    planted, counts = {"exact": [], "near": []}, []
    while written < size_mb * MB:
        if out is None or out.tell() > 8 * MB:
            out and out.close()
            out = open(folder / f"part-{part:05d}.jsonl", "w")  # noqa: SIM115 (closed below)
            part += 1
            counts.append(0)
        roll = rng.random()
        if pool and roll < 0.02:
            source, text = pool[rng.integers(len(pool))]
            planted["exact"].append((number, source))
        elif pool and roll < 0.04:
            source, original = pool[rng.integers(len(pool))]
            words = original.split()
            share = rng.uniform(*changed)
            for i in rng.choice(len(words), max(1, round(len(words) * share)), replace=False):
                words[i] = vocab[rng.integers(len(vocab))]
            text = " ".join(words)
            a, b = shingles(original, SHINGLE), shingles(text, SHINGLE)
            common = len(np.intersect1d(a, b, assume_unique=True))
            planted["near"].append((number, source, common / (len(a) + len(b) - common)))
        else:
            ids = np.minimum(rng.zipf(1.3, rng.integers(100, 600)), len(vocab)) - 1
            text = " ".join(vocab[ids])
        if len(pool) < 2000:  # the pool copies are drawn from
            pool.append((number, text))
        line = json.dumps({"text": text, "id": str(number)}) + "\n"
        out.write(line)
        written += len(line)
        counts[-1] += 1
        number += 1
    out.close()
    summary = {"bytes": written, "files": part, "documents": number,
               "exact": len(planted["exact"]), "near": len(planted["near"])}  # fmt: skip
    truth = {"planted": summary, "perFile": counts, **planted}
    (folder / "truth.json").write_text(json.dumps(truth))
    return summary


def spec(corpus: Path, baseline: bool, workers: int = 1, tokenizer: Path | None = None) -> dict:
    engine = {"type": "local", "workers": workers}
    return {
        "sources": [{"uri": f"{corpus.as_uri()}/*.jsonl", "format": "jsonl"}],
        "filters": {"quality": {"enabled": False}},
        "deduplication": {"exact": True, "near": {"enabled": True}},
        "tokenizer": {"uri": tokenizer.as_uri()} if tokenizer else {"train": {"vocabSize": 4096}},
        "packing": {"sequenceLength": 256, "shardSizeMiB": 16},
        "engine": engine | ({} if baseline else {"workerMemoryMiB": 256}),
    }


def child(spec_file: Path, out: Path) -> None:
    from lmforge.jobs.data import pipeline
    from lmforge.operator.api.dataset import DatasetSpec

    started = time.perf_counter()
    dataset = DatasetSpec.model_validate(json.loads(spec_file.read_text()))
    manifest = pipeline.run(dataset, out.as_uri())
    audit = json.loads((out / manifest["audit"]["path"]).read_text())
    print(json.dumps({"wall": time.perf_counter() - started, "removed": audit["removed"],
                      "kept": audit["documents"]["kept"],
                      "shards": [s["digest"] for split in manifest["splits"].values()
                                 for s in split["shards"]]}))  # fmt: skip


def datatrove_child(corpus: Path, work: Path, workers: int) -> None:
    """datatrove's pipeline on the corpus; prints its wall seconds and the ids it removed."""
    stages = data_pipeline.datatrove_stages(work, workers, workers, corpus, quality=False)
    started = time.perf_counter()
    for stage in stages.values():
        stage.run()
    wall = time.perf_counter() - started
    removed = {}
    for kind in ("exact", "near"):
        for path in sorted((work / "datatrove" / f"removed-{kind}").glob("*.jsonl")):
            with open(path) as stream:
                removed |= {json.loads(line)["id"]: f"{kind}Duplicates" for line in stream}
    print(json.dumps({"wall": wall, "removed": removed}))


def baseline_tree(ref: str, work: Path) -> Path:
    """A folder to put first on PYTHONPATH so that `lmforge` imports the code as of ref."""
    root = work / f"baseline-{ref}"
    if not root.exists():
        source = root / "src"
        source.mkdir(parents=True)
        archive = subprocess.run(["git", "-C", str(REPO), "archive", ref, "jobs", "operator"],
                                 check=True, capture_output=True).stdout  # fmt: skip
        subprocess.run(["tar", "-x", "-C", str(source)], input=archive, check=True)
        (root / "lmforge").mkdir()
        for name in ("jobs", "operator"):
            (root / "lmforge" / name).symlink_to(source / name)
    return root


def tree_pss(root: int) -> int:
    """Bytes: the PSS of a process and all its descendants (Linux /proc)."""
    children: dict[int, list[int]] = {}
    for entry in os.scandir("/proc"):
        if entry.name.isdigit():
            try:
                with open(f"/proc/{entry.name}/stat") as stream:
                    parent = int(stream.read().rsplit(")", 1)[1].split()[1])
            except OSError:  # it exited while we looked
                continue
            children.setdefault(parent, []).append(int(entry.name))
    total, tree = 0, [root]
    while tree:
        pid = tree.pop()
        tree += children.get(pid, [])
        try:
            with open(f"/proc/{pid}/smaps_rollup") as stream:
                total += next(int(line.split()[1]) << 10 for line in stream
                              if line.startswith("Pss:"))  # fmt: skip
        except (OSError, StopIteration):
            continue
    return total


def spawn(arguments: list[str], python_path: Path | None = None, cap_mib: int | None = None,
          out: Path | None = None) -> dict[str, Any]:  # fmt: skip
    """One run of this script (`arguments` after its name) in its own process tree, in a fresh
    cgroup limited to cap_mib if given; what it printed last, and its peak PSS."""
    if out:
        shutil.rmtree(out, ignore_errors=True)
    env = dict(os.environ)
    if python_path:
        env["PYTHONPATH"] = f"{python_path}:{env.get('PYTHONPATH', '')}"
    command = [sys.executable, __file__, *arguments]
    group = None
    if cap_mib:
        group = CGROUP / f"lmforge-bench-{os.getpid()}"
        group.mkdir()
        (group / "memory.limit_in_bytes").write_text(str(cap_mib << 20))
        command = ["sh", "-c", f'echo $$ > {group}/cgroup.procs && exec "$@"', "sh", *command]
    peak = 0
    try:
        process = subprocess.Popen(command, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                                   text=True)  # fmt: skip
        while process.poll() is None:
            peak = max(peak, tree_pss(process.pid))
            time.sleep(0.2)
        stdout, stderr = process.communicate()
        oom = 0
        if group:
            control = (group / "memory.oom_control").read_text().split()
            oom = int(dict(zip(control[::2], control[1::2], strict=True)).get("oom_kill", 0))
    finally:
        if group:
            group.rmdir()
    result = {"rc": process.returncode, "peakPssMiB": round(peak / 2**20), "oomKills": oom}
    if process.returncode == 0:
        result |= json.loads(stdout.splitlines()[-1])
    else:
        result["error"] = stderr.strip().splitlines()[-1:] or [f"rc {process.returncode}"]
    return result


def run_job(work: Path, name: str, dataset: dict[str, Any], python_path: Path | None = None,
            cap_mib: int | None = None) -> dict[str, Any]:  # fmt: skip
    """The Dataset job on `dataset` (a spec), writing to work/out-<name>."""
    spec_file = work / f"spec-{name}.json"
    spec_file.write_text(json.dumps(dataset))
    out = work / f"out-{name}"
    return spawn(["--child", str(spec_file), str(out)], python_path, cap_mib, out) | {"out": out}


def job_removals(corpus: Path, out: Path) -> dict[str, str]:
    """The job's duplicate removals from its audit: {corpus id: stage}."""
    import pyarrow.parquet as pq

    from lmforge.jobs.data import shards, sources
    from lmforge.operator.api.dataset import Source

    truth = json.loads((corpus / "truth.json").read_text())
    files = sources.list_files([Source(uri=f"{corpus.as_uri()}/*.jsonl", format="jsonl")])
    ids, number = {}, 0
    for file, count in zip(files, truth["perFile"], strict=True):
        for index in range(count):
            ids[sources.document_id(file.uri, index)] = str(number)
            number += 1
    manifest = json.loads((out / shards.MANIFEST).read_text())
    rows = pq.read_table(out / manifest["audit"]["removed"], columns=["id", "stage"]).to_pylist()
    return {ids[r["id"]]: r["stage"] for r in rows if r["stage"].endswith("Duplicates")}


BINS = ((0.0, 0.8), (0.8, 0.85), (0.85, 0.9), (0.9, 1.01))


def dedup_quality(corpus: Path, removed: dict[str, str]) -> dict[str, Any]:
    """Recall of the planted copies and precision of the removals. A planted pair is found when
    either of its documents is removed (which one a cluster keeps is the system's choice); a
    removal is right when the document is one of a planted pair (the generated documents are
    otherwise distinct)."""
    truth = json.loads((corpus / "truth.json").read_text())
    pairs = [(str(c), str(s)) for c, s in truth["exact"]] + [
        (str(c), str(s)) for c, s, _ in truth["near"]
    ]
    planted = {d for pair in pairs for d in pair}

    def found(copy: int, source: int) -> bool:
        return str(copy) in removed or str(source) in removed

    near = [(found(c, s), j) for c, s, j in truth["near"]]
    by_bin = {f"{low:.2f}-{min(high, 1):.2f}": [f for f, j in near if low <= j < high]
              for low, high in BINS}  # fmt: skip
    high = [f for f, j in near if j >= 0.85]
    exact = [found(c, s) for c, s in truth["exact"]]
    return {
        "nearRecallAt085": round(sum(high) / max(1, len(high)), 4),
        "nearPlantedAt085": len(high),
        "nearRecallByJaccard": {k: f"{sum(v)}/{len(v)}" for k, v in by_bin.items()},
        "exactRecall": round(sum(exact) / max(1, len(exact)), 4),
        "precision": round(sum(d in planted for d in removed) / max(1, len(removed)), 4),
        "removed": len(removed),
    }


def train_tokenizer(corpus: Path, path: Path) -> Path:
    """One 4096-token BPE from the corpus's first file, for both systems of the capped run."""
    from lmforge.jobs.data import tokenize
    from lmforge.operator.api.dataset import TokenizerTraining

    first = sorted(corpus.glob("*.jsonl"))[0]
    texts = [json.loads(line)["text"] for line in first.open()]
    tokenize.train(texts, TokenizerTraining(vocab_size=4096)).save(str(path))
    return path


def sweep(work: Path, factors: list[int], base_mb: float, old: Path) -> dict[str, Any]:
    """Peak memory against corpus size, the job as of now and as of the baseline."""
    sizes = {}
    for factor in factors:
        corpus = work / f"corpus-{factor}x"
        planted = write_corpus(corpus, base_mb * factor)
        runs = {"lmforge": run_job(work, "lmforge", spec(corpus, False)),
                "baseline": run_job(work, "baseline", spec(corpus, True), old)}  # fmt: skip
        sizes[f"{factor}x"] = {"corpus": planted, **runs}
        for run in runs.values():
            del run["out"], run["shards"]
        print(f"{factor:>3}x {planted['bytes'] / MB:7.1f} MB: lmforge peak "
              f"{runs['lmforge']['peakPssMiB']} MiB in {runs['lmforge'].get('wall', 0):.1f} s, "
              f"baseline peak {runs['baseline']['peakPssMiB']} MiB in "
              f"{runs['baseline'].get('wall', 0):.1f} s", flush=True)  # fmt: skip
    return sizes


def capped(work: Path, size_mb: float, cap_mib: int, workers: int) -> dict[str, Any]:
    """The job under the cap and datatrove on the same corpus: speed, memory, dedup quality."""
    corpus = work / "corpus-capped"
    planted = write_corpus(corpus, size_mb, seed=1, changed=(0.005, 0.03))
    print(
        f"capped run: {planted['bytes'] / MB:.0f} MB, {planted['documents']} documents, "
        f"{planted['exact']} exact and {planted['near']} near copies planted",
        flush=True,
    )
    tokenizer = train_tokenizer(corpus, work / "tokenizer.json")
    dataset = spec(corpus, False, workers, tokenizer)
    dataset["filters"]["pii"] = {"enabled": False}  # datatrove's pipeline has no PII stage
    dataset["deduplication"]["near"] = {  # datatrove's MinhashConfig, as data_pipeline.py's
        "shingleSize": SHINGLE, "permutations": BUCKETS * ROWS, "bands": BUCKETS,
        "threshold": THRESHOLD}  # fmt: skip
    job = run_job(work, "capped", dataset, cap_mib=cap_mib)
    if job["rc"] == 0:
        job |= dedup_quality(corpus, job_removals(corpus, job.pop("out")))
    print(json.dumps({"lmforge": {k: v for k, v in job.items() if k != "shards"}}), flush=True)
    (work / "datatrove").mkdir(exist_ok=True)
    datatrove = spawn(["--datatrove", str(corpus), str(work), str(workers)])
    if datatrove["rc"] == 0:
        datatrove |= dedup_quality(corpus, datatrove.pop("removed"))
    shutil.rmtree(work / "datatrove", ignore_errors=True)
    runs = {"lmforge": job, "datatrove": datatrove}
    for name, run in runs.items():
        run.pop("shards", None)
        run.pop("out", None)
        if run["rc"]:
            print(f"{name} failed: {run['error']}, peak {run['peakPssMiB']} MiB,"
                  f" OOM kills {run['oomKills']}")  # fmt: skip
            continue
        run["mbPerSecond"] = round(planted["bytes"] / MB / run["wall"], 3)
        limit = f"under a {cap_mib} MiB cap" if name == "lmforge" else "no cap"
        print(f"{name:>9} ({limit}): {run['wall']:.1f} s, {run['mbPerSecond']} MB/s, peak"
              f" {run['peakPssMiB']} MiB, OOM kills {run['oomKills']}; near recall at"
              f" J >= 0.85 {run['nearRecallAt085']} (by J: {run['nearRecallByJaccard']}), exact"
              f" recall {run['exactRecall']}, precision {run['precision']}")  # fmt: skip
    if not job["rc"] and not datatrove["rc"]:
        ratio = job["mbPerSecond"] / datatrove["mbPerSecond"]
        print(f"throughput, lmforge / datatrove: {ratio:.2f}x; corpus / cap:"
              f" {planted['bytes'] / (cap_mib << 20):.1f}x")  # fmt: skip
    return {"corpus": planted, "capMiB": cap_mib, "workers": workers, **runs}


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--work", type=Path)
    parser.add_argument("--sizes", default="1,4,16", help="the sweep's factors of --base-mb")
    parser.add_argument("--base-mb", type=float, default=40)
    parser.add_argument("--baseline", default="9196c5c")
    parser.add_argument("--cap-mib", type=int, default=450)
    parser.add_argument("--capped-mb", type=float, help="default: 10x --cap-mib; 0 skips it")
    parser.add_argument("--workers", type=int, default=1, help="the capped run's")
    parser.add_argument("--child", nargs=2, type=Path, help=argparse.SUPPRESS)
    parser.add_argument("--datatrove", nargs=3, help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.child:
        return child(*args.child)
    if args.datatrove:
        corpus, work, workers = args.datatrove
        return datatrove_child(Path(corpus), Path(work), int(workers))
    work = args.work or Path(tempfile.mkdtemp(prefix="lmforge-scale-"))
    report: dict[str, Any] = {"baseline": args.baseline}
    factors = [int(f) for f in args.sizes.split(",") if f]
    if factors:
        report["sizes"] = sweep(work, factors, args.base_mb, baseline_tree(args.baseline, work))
    size = 10 * (args.cap_mib << 20) / MB if args.capped_mb is None else args.capped_mb
    if size:
        report["capped"] = capped(work, size, args.cap_mib, args.workers)
    print(json.dumps({"benchmark": "data_scale", **report}, sort_keys=True))


if __name__ == "__main__":
    main()
