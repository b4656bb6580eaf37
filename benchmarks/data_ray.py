"""The Dataset job on 1 and 2 Ray workers against the local engine's 1 and 2, and what the
measured per-worker rate says about 1 TB on N nodes.

    python benchmarks/data_ray.py [--work DIR] [--mb 80] [--cores-per-node 32]

One generated corpus (data_scale.py's: Zipf words, 2% planted exact and 2% near copies) goes
through the same spec four times, each run in its own process tree with its memory sampled as
the tree's PSS: engine local with 1 and 2 workers (the baseline: forked processes), then engine
ray with 1 and 2 (a Ray cluster started by the job on this machine; plain Ray tasks, that many
at a time). Every run must write the same shards. The estimate for 1 TB divides it by one
Ray worker's rate over the parallel passes (1: read, clean, filter, spill; 3: tokenize) times
the workers of N nodes: linear scaling, with a tokenizer given by URI (training one is serial).
"""

from __future__ import annotations

import argparse
import json
import shutil
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))
import data_scale
from data_scale import MB, tree_pss, write_corpus

TB = 1e12


def spec(corpus: Path, engine: str, workers: int) -> dict[str, Any]:
    """data_scale.py's spec, on `workers` of `engine`."""
    engine_spec = {"type": engine, "workers": workers, "workerMemoryMiB": 512}
    return data_scale.spec(corpus, baseline=False) | {"engine": engine_spec}


def child(corpus: Path, out: Path, engine: str, workers: int) -> None:
    from lmforge.jobs.data import pipeline
    from lmforge.operator.api.dataset import DatasetSpec

    started = time.perf_counter()
    manifest = pipeline.run(DatasetSpec.model_validate(spec(corpus, engine, workers)),
                            out.as_uri())  # fmt: skip
    print(json.dumps({"wall": time.perf_counter() - started,
                      "seconds": manifest["seconds"],
                      "shards": [s["digest"] for split in manifest["splits"].values()
                                 for s in split["shards"]]}))  # fmt: skip


def spawn(corpus: Path, out: Path, engine: str, workers: int) -> dict[str, Any]:
    import subprocess

    shutil.rmtree(out, ignore_errors=True)
    command = [sys.executable, __file__, "--child", str(corpus), str(out), engine, str(workers)]
    process = subprocess.Popen(command, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    peak = 0
    while process.poll() is None:
        peak = max(peak, tree_pss(process.pid))
        time.sleep(0.2)
    stdout, stderr = process.communicate()
    if process.returncode:
        raise SystemExit(f"{engine} x{workers} failed:\n{stderr[-3000:]}")
    return {"peakPssMiB": round(peak / 2**20), **json.loads(stdout.splitlines()[-1])}


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--work", type=Path)
    parser.add_argument("--mb", type=float, default=80)
    parser.add_argument("--cores-per-node", type=int, default=32)
    parser.add_argument("--child", nargs=4, help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.child:
        corpus, out, engine, workers = args.child
        return child(Path(corpus), Path(out), engine, int(workers))
    work = args.work or Path(tempfile.mkdtemp(prefix="lmforge-ray-"))
    corpus = work / "corpus"
    planted = write_corpus(corpus, args.mb)
    size = planted["bytes"] / MB
    runs = {}
    print(f"corpus: {size:.1f} MB in {planted['files']} files", flush=True)
    print(f"{'run':<10} {'wall s':>8} {'MB/s':>7} {'speedup':>8} {'peak PSS MiB':>13}  stages")
    for engine in ("local", "ray"):
        for workers in (1, 2):
            run = spawn(corpus, work / "out", engine, workers)
            name = f"{engine} x{workers}"
            runs[name] = run
            one = runs[f"{engine} x1"]["wall"]
            parts = ("process", "tokenizer", "tokenize")
            stages = " ".join(f"{k} {run['seconds'][k]:.1f}" for k in parts)
            figures = f"{run['wall']:8.1f} {size / run['wall']:7.2f} {one / run['wall']:8.2f}"
            print(f"{name:<10} {figures} {run['peakPssMiB']:13d}  {stages}", flush=True)
    digests = {tuple(r.pop("shards")) for r in runs.values()}
    same = len(digests) == 1
    print(f"same shards in all four runs: {same}")

    # One Ray worker alone does passes 1 and 3 for the whole corpus: its rate is what each of
    # N x C workers would do with linear scaling, which two cores cannot show (the driver and
    # the workers share them). The tokenizer is given by URI at that size, not trained.
    def rate(run: dict[str, Any]) -> float:  # MB/s over passes 1 and 3
        return size / (run["seconds"]["process"] + run["seconds"]["tokenize"])

    per_worker = rate(runs["ray x1"])
    estimate = {}
    print(f"one worker over passes 1 and 3: Ray {per_worker:.2f} MB/s, local engine "
          f"{rate(runs['local x1']):.2f} MB/s")  # fmt: skip
    for nodes in (1, 8, 64):
        hours = TB / MB / (per_worker * nodes * args.cores_per_node) / 3600
        estimate[nodes] = round(hours, 1)
        print(f"1 TB on {nodes:>2} nodes x {args.cores_per_node} workers, linear: {hours:,.1f} h")
    print(json.dumps({"benchmark": "data_ray", "corpusMB": round(size, 1), "sameShards": same,
                      "runs": runs, "perWorkerMBs": per_worker,
                      "estimateHours1TB": estimate}, sort_keys=True))  # fmt: skip
    if not same:
        raise SystemExit("the runs wrote different shards")


if __name__ == "__main__":
    main()
