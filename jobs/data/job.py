"""`python -m lmforge.jobs.data --config CONFIG.json`: build a Dataset, reporting its progress and,
in the `done` event, its figures and the digests of what it read (operator/api/events.py)."""

from __future__ import annotations

import argparse
from typing import Any

from lmforge.jobs.data.pipeline import DataError, run
from lmforge.operator.api import events
from lmforge.operator.api.events import Exit
from lmforge.operator.api.jobs import DataConfig

LABELS = {
    "process": "files read, cleaned, filtered",
    "deduplicate": "duplicate partitions resolved",
    "tokenize": "batches tokenized, packed, written",
}
"""The pipeline's stages, as its progress events name them."""


def summary(manifest: dict[str, Any], output_uri: str) -> dict[str, Any]:
    """What the `done` event says of a built dataset."""
    splits = manifest["splits"]
    seconds = manifest.get("seconds")  # absent when the dataset was already complete
    return {
        "output": output_uri,
        "documentsOut": sum(s["documents"] for s in splits.values()),
        "tokens": sum(s["tokens"] for s in splits.values()),
        "shards": sum(len(s["shards"]) for s in splits.values()),
        "tokenizerDigest": manifest["tokenizer"]["digest"],
        "configDigest": manifest["configDigest"],
        "lmforgeVersion": manifest["lmforgeVersion"],
        "vocabSize": manifest["tokenizer"]["vocabSize"],
        "sequenceLength": manifest["sequenceLength"],
        "seconds": round(seconds["total"], 3) if seconds else None,
        "splits": {
            name: {k: s[k] for k in ("documents", "sequences", "tokens")}
            | {"shards": len(s["shards"])}
            for name, s in splits.items()
        },
        "sources": [{"uri": s["uri"], "digest": s["digest"]} for s in manifest["sources"]],
    }


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m lmforge.jobs.data")
    parser.add_argument("--config", required=True, help="a DataConfig as JSON")
    args = parser.parse_args(argv)
    with open(args.config) as stream:
        config = DataConfig.model_validate_json(stream.read())

    def progress(stage: str, done: int, total: int) -> None:
        events.emit(events.PROGRESS, stage=LABELS[stage], done=done, total=total)

    try:
        manifest = run(config.spec, config.output_uri, on_progress=progress)
    except DataError as error:
        events.error(str(error))
        return Exit.FAILED
    events.finish(**summary(manifest, config.output_uri))
    return Exit.DONE
