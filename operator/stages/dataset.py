"""Dataset: the data job reads the sources, writes shards, manifest.json and audit.json, and
reports its figures and the digests of what it read in its `done` event."""

from __future__ import annotations

from typing import Any

from lmforge.operator.api.common import Artifact, Lineage
from lmforge.operator.api.common import Storage as StorageSpec
from lmforge.operator.api.dataset import Dataset, DatasetStatus
from lmforge.operator.api.events import DONE, latest
from lmforge.operator.api.jobs import DataConfig
from lmforge.operator.stages.base import Description, Inputs, Stage, Store

FIGURES = {
    "documentsOut": "documents_out",
    "tokens": "tokens",
    "shards": "shards",
    "tokenizerDigest": "tokenizer_digest",
}
"""Field of the `done` event -> field of the status."""


class DatasetStage(Stage):
    kind = "Dataset"
    role = "data"

    def describe(self, dataset: Dataset, inputs: Inputs, store: Store) -> Description:
        output = dataset.spec.output.uri or dataset.artifact_uri(store.uri)
        resolved = StorageSpec(uri=store.uri, endpoint_url=store.endpoint_url)
        spec = dataset.spec.model_copy(update={"storage": resolved})
        config = DataConfig(name=dataset.metadata.name, spec=spec, output_uri=output)
        lineage = Lineage(
            inputs=[Artifact(uri=s.uri) for s in dataset.spec.sources],
            outputs=[Artifact(uri=output, kind="Dataset")],
        )
        return Description(config, lineage, "lmforge.jobs.data")

    def finish(self, status: DatasetStatus, events: list[dict[str, Any]]) -> str | None:
        """The figures and digests of the `done` event; only the manifest's URI when the event
        could not be read."""
        summary = latest(events, DONE) or {}
        lineage = status.lineage
        output = lineage.outputs[0]
        status.manifest_uri = f"{output.uri}/manifest.json"
        for event_field, field in FIGURES.items():
            if summary.get(event_field) is not None:
                setattr(status, field, summary[event_field])
        update: dict[str, Any] = {}
        if summary.get("sources"):
            update["inputs"] = [
                Artifact(uri=s["uri"], digest=s["digest"]) for s in summary["sources"]
            ]
        if summary.get("configDigest"):
            digested = output.model_copy(update={"digest": summary["configDigest"]})
            update["outputs"] = [digested, *lineage.outputs[1:]]
        if summary.get("lmforgeVersion"):
            update["code_version"] = summary["lmforgeVersion"]
        status.lineage = lineage.model_copy(update=update)
        return None
