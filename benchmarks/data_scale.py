"""The Dataset job's peak memory against corpus size, and a corpus larger than its memory cap.

    python benchmarks/data_scale.py [--work DIR] [--base-mb 40] [--cap-mib 560] [--baseline REF]

A generated corpus of distinct documents (Zipf-distributed words from a fixed vocabulary; 2% are
planted exact copies and 2% near copies of earlier ones) is written as jsonl at 1x, 4x and 16x
--base-mb. The job runs on each in its own process tree (one worker at workerMemoryMiB 256, the
smallest setting), and the tree's memory is sampled every 0.2 s as the sum of its processes'
proportional set size (PSS: a page a forked worker shares with the driver counts once, where a
sum of RSS counts it once per process). The baseline is the same job as
of --baseline (default 9196c5c, the last pipeline whose driver held every kept document),
run the same way side by side. Then both run on the largest corpus inside a cgroup (v1) whose
memory limit, --cap-mib, is below the corpus's size: the streaming job must finish there, with
the same output as without the cap. Needs root (the cgroup) and git (the baseline's tree).
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

MB = 1e6
CGROUP = Path("/sys/fs/cgroup/memory")
REPO = Path(__file__).resolve().parent.parent


def write_corpus(folder: Path, size_mb: float, seed: int = 0) -> dict[str, Any]:
    """jsonl files of about 8 MB; returns the counts planted."""
    rng = np.random.default_rng(seed)
    letters = np.array(list("abcdefghijklmnopqrstuvwxyz"))
    vocab = np.array(["".join(rng.choice(letters, rng.integers(2, 10))) for _ in range(30_000)])
    folder.mkdir(parents=True, exist_ok=True)
    docs, written, planted, part, out = [], 0, {"exact": 0, "near": 0}, 0, None
    while written < size_mb * MB:
        if out is None or out.tell() > 8 * MB:
            out and out.close()
            out = open(folder / f"part-{part:05d}.jsonl", "w")  # noqa: SIM115 (closed below)
            part += 1
        roll = rng.random()
        if docs and roll < 0.02:
            text = docs[rng.integers(len(docs))]
            planted["exact"] += 1
        elif docs and roll < 0.04:
            words = docs[rng.integers(len(docs))].split()
            for i in rng.choice(len(words), max(1, len(words) // 50), replace=False):
                words[i] = vocab[rng.integers(len(vocab))]  # 2% of the words changed
            text = " ".join(words)
            planted["near"] += 1
        else:
            ids = np.minimum(rng.zipf(1.3, rng.integers(100, 600)), len(vocab)) - 1
            text = " ".join(vocab[ids])
        if len(docs) < 2000:  # the pool copies are drawn from
            docs.append(text)
        line = json.dumps({"text": text}) + "\n"
        out.write(line)
        written += len(line)
    out.close()
    return {"bytes": written, "files": part, **planted}


def spec(corpus: Path, baseline: bool) -> dict[str, Any]:
    engine = {"type": "local", "workers": 1} | ({} if baseline else {"workerMemoryMiB": 256})
    return {
        "sources": [{"uri": f"{corpus.as_uri()}/*.jsonl", "format": "jsonl"}],
        "filters": {"quality": {"enabled": False}},
        "deduplication": {"exact": True, "near": {"enabled": True}},
        "tokenizer": {"train": {"vocabSize": 4096}},
        "packing": {"sequenceLength": 256, "shardSizeMiB": 16},
        "engine": engine,
    }


def child(corpus: Path, out: Path, baseline: bool) -> None:
    from lmforge.jobs.data import pipeline
    from lmforge.operator.api.dataset import DatasetSpec

    started = time.perf_counter()
    manifest = pipeline.run(DatasetSpec.model_validate(spec(corpus, baseline)), out.as_uri())
    audit = json.loads((out / manifest["audit"]["path"]).read_text())
    print(json.dumps({"wall": time.perf_counter() - started, "removed": audit["removed"],
                      "kept": audit["documents"]["kept"],
                      "shards": [s["digest"] for split in manifest["splits"].values()
                                 for s in split["shards"]]}))  # fmt: skip


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


def spawn(corpus: Path, out: Path, python_path: Path | None, cap_mib: int | None) -> dict:
    """One run in its own process tree (in a fresh cgroup limited to cap_mib if given)."""
    shutil.rmtree(out, ignore_errors=True)
    env = dict(os.environ)
    if python_path:
        env["PYTHONPATH"] = f"{python_path}:{env.get('PYTHONPATH', '')}"
    command = [sys.executable, __file__, "--child", str(corpus), str(out)]
    command += ["--as-baseline"] if python_path else []
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


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--work", type=Path)
    parser.add_argument("--base-mb", type=float, default=40)
    parser.add_argument("--cap-mib", type=int, default=560)
    parser.add_argument("--baseline", default="9196c5c")
    parser.add_argument("--child", nargs=2, type=Path, help=argparse.SUPPRESS)
    parser.add_argument("--as-baseline", action="store_true", help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.child:
        return child(*args.child, args.as_baseline)
    work = args.work or Path(tempfile.mkdtemp(prefix="lmforge-scale-"))
    old = baseline_tree(args.baseline, work)
    report: dict[str, Any] = {"baseline": args.baseline, "capMiB": args.cap_mib, "sizes": {}}
    for factor in (1, 4, 16):
        corpus = work / f"corpus-{factor}x"
        planted = write_corpus(corpus, args.base_mb * factor)
        runs = {"lmforge": spawn(corpus, work / "out", None, None),
                "baseline": spawn(corpus, work / "out-baseline", old, None)}  # fmt: skip
        report["sizes"][f"{factor}x"] = {"corpus": planted, **runs}
        print(f"{factor:>3}x {planted['bytes'] / MB:7.1f} MB: lmforge peak "
              f"{runs['lmforge']['peakPssMiB']} MiB in {runs['lmforge'].get('wall', 0):.1f} s, "
              f"baseline peak {runs['baseline']['peakPssMiB']} MiB in "
              f"{runs['baseline'].get('wall', 0):.1f} s", flush=True)  # fmt: skip
    largest = report["sizes"]["16x"]
    capped = {"lmforge": spawn(corpus, work / "out", None, args.cap_mib),
              "baseline": spawn(corpus, work / "out-baseline", old, args.cap_mib)}  # fmt: skip
    capped["lmforge"]["sameShards"] = (
        capped["lmforge"].get("shards") == largest["lmforge"]["shards"]
    )
    report["capped"] = capped
    for name, run in capped.items():
        outcome = "finished" if run["rc"] == 0 else f"failed ({run['error'][0][:120]})"
        size = largest["corpus"]["bytes"] / MB
        print(f"under a {args.cap_mib} MiB cap, {size:.0f} MB corpus: {name} {outcome},"
              f" peak {run['peakPssMiB']} MiB, OOM kills {run['oomKills']}")  # fmt: skip
    for size in report["sizes"].values():
        for run in size.values():
            run.pop("shards", None)
    for run in capped.values():
        run.pop("shards", None)
    print(json.dumps({"benchmark": "data_scale", **report}, sort_keys=True))


if __name__ == "__main__":
    main()
