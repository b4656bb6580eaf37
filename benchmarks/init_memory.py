"""Memory per rank to build a model under FSDP2: the trainer's sharded initialization (meta
device, then each rank draws its shards) against building the whole model and then sharding it.
With --base, the model starts from a base checkpoint (a FineTune): the trainer reads each
rank's rows of its safetensors into the shards, against loading the whole checkpoint on every
rank into a whole model and then sharding it.

    python benchmarks/init_memory.py [--preset 1b] [--ranks 2] [--base] [--check]

Each build runs in its own torchrun of --ranks processes on CPU (gloo). The sharded one is the
trainer's own (`Trainer(config)` of a PretrainJob with strategy fsdp, on a dataset of a few
random tokens, which only sets the vocabulary; with --base, an SFT FineTune of a random model
of the preset exported with hf.export); the baseline draws `Transformer(arch)` whole (with
--base: hf.load, then load_state_dict), as the trainer did before, then applies the same
fully_shard. Printed per build: the largest
growth of any rank's resident memory while building (peak RSS minus RSS before), this rank's
parameter bytes, and the whole model's. --check also gathers the sharded model's weights and
compares them with an unsharded build of the same seed, or with the base checkpoint (equal
bit for bit, or it exits 1).
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import subprocess
import sys
import tempfile
from pathlib import Path

import numpy as np
import psutil

MIB = 1 << 20


def dataset(folder: Path, vocab: int) -> str:
    """Packed random tokens: all the trainer needs of a Dataset to build its model."""
    import fsspec

    from lmforge.jobs.data import shards

    fs, root = fsspec.filesystem("file"), str(folder)
    rng = np.random.default_rng(0)
    splits = {}
    for split in ("train", "validation"):
        tokens = rng.integers(0, vocab, 65 * 64, dtype=np.uint16)
        entries = shards.write_stream(fs, root, f"b/{split}", [tokens], 65, 1 << 20)
        splits[split] = {"shards": entries}
    manifest = {"sequenceLength": 65, "splits": splits,
                "tokenizer": {"vocabSize": vocab, "path": "b/tokenizer.json"}}  # fmt: skip
    shards.write_json(fs, root, shards.MANIFEST, manifest)
    return folder.as_uri()


def base_model(folder: Path, preset: str, vocab: int) -> tuple[dict, int]:
    """A random model of the preset exported with a trained tokenizer, and SFT rows: the
    fields of a FineTune that starts from it, and the model's context length."""
    import torch

    from lmforge.jobs import hf
    from lmforge.jobs.data import tokenize
    from lmforge.jobs.model import Transformer
    from lmforge.operator.api.architecture import Architecture
    from lmforge.operator.api.dataset import TokenizerTraining

    tokenizer = tokenize.train(["def f(x):\n    return x + 1\n"] * 64, TokenizerTraining())
    tokenizer.save(str(folder / "tokenizer.json"))
    torch.manual_seed(0)
    arch = Architecture(preset=preset, vocab_size=vocab).resolved()
    hf.export(Transformer(arch), arch, folder / "model", folder / "tokenizer.json")
    row = {"prompt": "Add one.", "response": "def f(x):\n    return x + 1"}
    (folder / "sft.jsonl").write_text((json.dumps(row) + "\n") * 16)
    return {"method": "sft", "baseModelUri": (folder / "model").as_uri(),
            "examplesUri": (folder / "sft.jsonl").as_uri(),
            "validationFraction": 0.25}, arch.context_length  # fmt: skip


def worker(mode: str, config_path: str, out: str, check: bool) -> None:
    """One rank under torchrun: build, measure, and (rank 0) write the figures."""
    import torch
    import torch.distributed as dist
    from torch.distributed.checkpoint.state_dict import StateDictOptions, get_model_state_dict
    from torch.distributed.fsdp import fully_shard

    from lmforge.jobs import hf
    from lmforge.jobs.model import Transformer
    from lmforge.jobs.train.trainer import Trainer
    from lmforge.operator.api.jobs import read_train_config

    config = read_train_config(Path(config_path).read_text())
    dist.init_process_group("gloo")
    before = psutil.Process().memory_info().rss
    base = getattr(config, "base_model_uri", None)
    if mode == "sharded":
        model = Trainer(config).model
    elif base:
        arch, tensors = hf.load(base)
        model = Transformer(arch)
        model.load_state_dict(tensors)
    else:
        manifest = Path(config.dataset_uri.removeprefix("file://"), "manifest.json")
        vocab = json.loads(manifest.read_text())["tokenizer"]["vocabSize"]
        torch.manual_seed(config.training.seed)
        model = Transformer(config.architecture.resolved(vocab_size=vocab))
    if mode != "sharded":
        for block in model.model.layers:
            fully_shard(block)
        model = fully_shard(model)
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024
    local = sum(p.to_local().numel() * p.element_size() for p in model.parameters())
    whole = sum(p.numel() * p.element_size() for p in model.parameters())
    grown = torch.tensor([peak - before, local], dtype=torch.float64)
    dist.all_reduce(grown, op=dist.ReduceOp.MAX)
    equal = None
    if check and mode == "sharded":
        state = get_model_state_dict(model, options=StateDictOptions(full_state_dict=True))
        if dist.get_rank() == 0:
            torch.manual_seed(config.training.seed)
            plain = hf.load(base)[1] if base else Transformer(model.arch).state_dict()
            equal = plain.keys() == state.keys() and all(plain[k].equal(state[k]) for k in plain)
    if dist.get_rank() == 0:
        figures = {"mode": mode, "grownMiB": grown[0].item() / MIB,
                   "localParamMiB": grown[1].item() / MIB, "modelParamMiB": whole / MIB,
                   "equal": equal}  # fmt: skip
        Path(out).write_text(json.dumps(figures))
    dist.destroy_process_group()


def main() -> int:
    parser = argparse.ArgumentParser()
    parser.add_argument("--preset", default="1b")
    parser.add_argument("--vocab", type=int, default=32000)
    parser.add_argument("--ranks", type=int, default=2)
    parser.add_argument("--base", action="store_true", help="fine-tune from a base model")
    parser.add_argument("--check", action="store_true")
    parser.add_argument("--worker", nargs=3, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.worker:
        worker(*args.worker, args.check)
        return 0
    work = Path(tempfile.mkdtemp(prefix="init-memory-"))
    config = {"name": "init", "method": "pretrain", "architecture": {"preset": args.preset},
              "training": {"steps": 1, "globalBatchTokens": 65 * args.ranks, "microBatch": 1,
                           "parallelism": {"strategy": "fsdp"}},
              "datasetUri": dataset(work / "data", args.vocab),
              "checkpointUri": (work / "checkpoints").as_uri(),
              "outputUri": (work / "model").as_uri(), "processesPerNode": args.ranks}  # fmt: skip
    if args.base:
        (work / "base").mkdir()
        del config["datasetUri"], config["architecture"]
        fields, context = base_model(work / "base", args.preset, args.vocab)
        config |= fields
        config["training"]["globalBatchTokens"] = context * args.ranks
    (work / "config.json").write_text(json.dumps(config))
    results = []
    for mode in ("unsharded", "sharded"):
        out = work / f"{mode}.json"
        command = [sys.executable, "-m", "torch.distributed.run", "--standalone",
                   f"--nproc-per-node={args.ranks}", __file__,
                   *(["--check"] if args.check else []),
                   "--worker", mode, str(work / "config.json"), str(out)]  # fmt: skip
        env = {**os.environ, "OMP_NUM_THREADS": "1"}
        subprocess.run(command, check=True, env=env)
        results.append(json.loads(out.read_text()))
    start = "from a base checkpoint" if args.base else "drawn"
    whole = results[0]["modelParamMiB"]
    print(f"{args.preset} ({start}), {args.ranks} ranks: whole model {whole:.0f} MiB")
    for r in results:
        print(
            f"  {r['mode']:>9}: a rank grew by {r['grownMiB']:7.0f} MiB building it;"
            f" its parameters {r['localParamMiB']:7.0f} MiB"
        )
    print(json.dumps({"preset": args.preset, "ranks": args.ranks, "base": args.base,
                      "builds": results}))  # fmt: skip
    return 1 if args.check and not results[1]["equal"] else 0


if __name__ == "__main__":
    sys.exit(main())
