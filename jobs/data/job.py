"""Run the Dataset job with progress bars and a summary table (rich); also `python -m` in pods."""

from __future__ import annotations

import argparse
import json
import sys
import time
from typing import Any

from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn
from rich.table import Table

from lmforge.operator.api.dataset import Dataset

from .pipeline import DataError, run


def run_with_progress(dataset: Dataset, output_uri: str, console: Console) -> dict[str, Any]:
    started = time.perf_counter()
    columns = (TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn(),
               TimeElapsedColumn())  # fmt: skip
    with Progress(*columns, console=console, transient=False) as progress:
        tasks: dict[str, Any] = {}

        def on_progress(stage: str, done: int, total: int) -> None:
            if stage not in tasks:
                label = "files read, cleaned, filtered" if stage == "process" else "tokenize, pack"
                tasks[stage] = progress.add_task(f"{dataset.metadata.name}: {label}", total=total)
            progress.update(tasks[stage], completed=done, total=total)

        manifest = run(dataset.spec, output_uri, on_progress=on_progress)
    console.print(summary(manifest, output_uri, time.perf_counter() - started))
    return manifest


def summary(manifest: dict[str, Any], output_uri: str, seconds: float) -> Table:
    table = Table(title=f"Dataset at {output_uri}", show_header=True)
    for column in ("split", "documents", "sequences", "tokens", "shards"):
        table.add_column(column, justify="left" if column == "split" else "right")
    for name, split in manifest["splits"].items():
        table.add_row(name, f"{split['documents']:,}", f"{split['sequences']:,}",
                      f"{split['tokens']:,}", str(len(split["shards"])))  # fmt: skip
    skipped = "" if "seconds" in manifest else " (already complete: nothing to do)"
    table.caption = (
        f"vocabulary {manifest['tokenizer']['vocabSize']:,}, sequences of"
        f" {manifest['sequenceLength']} tokens, {seconds:.1f} s{skipped};"
        " audit.json has the details"
    )
    return table


def main(argv: list[str] | None = None) -> int:
    """In a pod: `python -m lmforge.jobs.data --config CONFIG.json --output URI`."""
    parser = argparse.ArgumentParser(prog="python -m lmforge.jobs.data")
    parser.add_argument("--config", required=True, help="the Dataset resource as JSON")
    parser.add_argument("--output", required=True, help="output URI")
    args = parser.parse_args(argv)
    with open(args.config) as stream:
        dataset = Dataset.model_validate(json.load(stream))
    try:
        run_with_progress(dataset, args.output, Console(stderr=True))
    except DataError as error:
        print(f"error: {error}", file=sys.stderr)
        return 1
    return 0
