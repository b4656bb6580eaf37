"""`python -m lmforge.jobs.eval --config CONFIG.json`: score a model on each task, write
results.json where the config says, and report every metric and the gate in the `done` event."""

from __future__ import annotations

import argparse
import json
import sys

import torch
from tokenizers import Tokenizer

from lmforge.jobs import hf
from lmforge.jobs.data.reader import ShardReader
from lmforge.jobs.eval import overlap, tasks
from lmforge.jobs.eval.perplexity import perplexity
from lmforge.jobs.generate import sample
from lmforge.jobs.model import Scorer, Transformer
from lmforge.jobs.storage import filesystem, join, write_atomic
from lmforge.operator.api import events
from lmforge.operator.api.evaluation import Threshold
from lmforge.operator.api.events import Exit
from lmforge.operator.api.jobs import EvalConfig


def evaluate(config: EvalConfig) -> dict:
    arch, state = hf.load(config.model_uri, config.endpoint_url)
    model = Transformer(arch)
    model.load_state_dict(state)
    fs, root = filesystem(config.model_uri, config.endpoint_url)
    tokenizer = Tokenizer.from_str(fs.cat_file(join(root, hf.TOKENIZER)).decode())
    results, details = {}, {}
    for task in config.tasks:
        if task.type == "reward":
            rows = tasks.read_rows(task.uri, task.type, task.max_examples, config.endpoint_url)
            scorer = _scorer(config.task_uris[task.name], tokenizer, config, task.name)
            metrics, details[task.name] = tasks.reward(
                model, scorer, tokenizer, rows, task.max_new_tokens
            )
            results |= {f"{task.name}.{k}": round(v, 6) for k, v in metrics.items()}
            continue
        if task.type != "perplexity":
            rows = tasks.read_rows(task.uri, task.type, task.max_examples, config.endpoint_url)
            metrics, details[task.name] = tasks.run(
                task.type, model, tokenizer, rows, task.max_new_tokens
            )
            results |= {f"{task.name}.{k}": round(v, 6) for k, v in metrics.items()}
            continue
        reader = ShardReader(
            config.task_uris[task.name], task.split, endpoint_url=config.endpoint_url
        )
        figures = perplexity(model, reader, task.max_examples)
        details[task.name] = figures
        results |= {
            f"{task.name}.perplexity": figures["perplexity"],
            f"{task.name}.loss": figures["loss"],
        }
    contamination = {}
    if config.contamination.enabled:
        figures, contamination = overlap.overlaps(
            config.tasks, config.model_uri, config.contamination.ngram, config.endpoint_url
        )
        results |= figures
    ok, missed = passed(results, config.thresholds)
    samples = {p: sample(model, tokenizer, p, seed=i) for i, p in enumerate(config.samples)}
    return {
        "results": results,
        "details": details,
        "contamination": contamination,
        "passed": ok,
        "missed": missed,
        "samples": samples,
    }


def _scorer(uri: str, tokenizer: Tokenizer, config: EvalConfig, task: str) -> Scorer:
    """The reward model of a reward task; it must read the evaluated model's tokens."""
    arch, state = hf.load(uri, config.endpoint_url)
    fs, root = filesystem(uri, config.endpoint_url)
    if "score.weight" not in state:
        raise ValueError(f"tasks {task}: rewardModelRef's model has no score head")
    if Tokenizer.from_str(fs.cat_file(join(root, hf.TOKENIZER)).decode()).to_str() != (
        tokenizer.to_str()
    ):
        raise ValueError(f"tasks {task}: the reward model's tokenizer differs from the model's")
    scorer = Scorer(arch)
    scorer.load_state_dict(state)
    return scorer.eval()


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m lmforge.jobs.eval")
    parser.add_argument("--config", required=True)
    args = parser.parse_args(argv)
    with open(args.config) as stream:
        config = EvalConfig.model_validate_json(stream.read())
    try:
        with torch.no_grad():
            report = evaluate(config)
    except ValueError as error:
        events.error(str(error))
        return Exit.CONFIG_ERROR
    fs, path = filesystem(config.results_uri, config.endpoint_url)
    write_atomic(fs, path, json.dumps(report, indent=2).encode())
    events.finish(
        output=config.results_uri,
        results=report["results"],
        passed=report["passed"],
        missed=report["missed"],
    )
    return Exit.DONE


def passed(results: dict[str, float], thresholds: list[Threshold]) -> tuple[bool, list[str]]:
    """Whether every threshold holds, and a line for each that does not."""
    missed = []
    for t in thresholds:
        value = results.get(t.metric)
        if value is None:
            missed.append(f"{t.metric}: no such result (have {', '.join(sorted(results))})")
        elif t.min is not None and value < t.min:
            missed.append(f"{t.metric} = {value:.4g} is below the minimum {t.min:g}")
        elif t.max is not None and value > t.max:
            missed.append(f"{t.metric} = {value:.4g} is above the maximum {t.max:g}")
    return not missed, missed


if __name__ == "__main__":
    sys.exit(main())
