"""The report of a local run: index.html with curves (PNG, matplotlib), the dataset audit, the
evaluation tables, and a model card per model with its lineage and samples."""

from __future__ import annotations

import html
import json
from pathlib import Path
from typing import Any

from lmforge.operator.api.events import parse
from lmforge.operator.local.state import State
from lmforge.operator.stages import STAGES


def write(state: State) -> Path:
    folder = state.root / "report"
    folder.mkdir(parents=True, exist_ok=True)
    sections = []
    for obj in state.all():
        kind, name = obj["kind"], obj["metadata"]["name"]
        body = {
            "Dataset": _dataset,
            "PretrainJob": _model,
            "FineTune": _model,
            "RewardModel": _model,
            "Evaluation": _evaluation,
        }.get(kind, lambda *a: "")(state, obj, folder)
        phase = obj["status"].get("phase", "")
        sections.append(
            f"<section><h2>{kind}/{html.escape(name)} <small>{phase}</small></h2>"
            f"{_conditions(obj)}{body}</section>"
        )
    page = (
        "<!doctype html><meta charset=utf-8><title>lmforge report</title>"
        "<style>body{font:15px system-ui;max-width:980px;margin:2em auto}"
        "table{border-collapse:collapse}"
        "td,th{border:1px solid #ccc;padding:3px 8px;text-align:left}"
        "pre{background:#f5f5f5;padding:8px;white-space:pre-wrap}small{color:#666}</style>"
        "<h1>lmforge report</h1>" + "".join(sections)
    )
    (folder / "index.html").write_text(page)
    return folder / "index.html"


def _table(rows: list[tuple[Any, ...]], header: tuple[str, ...]) -> str:
    head = "".join(f"<th>{html.escape(str(h))}</th>" for h in header)
    body = "".join(
        "<tr>" + "".join(f"<td>{html.escape(str(v))}</td>" for v in row) + "</tr>" for row in rows
    )
    return f"<table><tr>{head}</tr>{body}</table>"


def _conditions(obj: dict) -> str:
    rows = [
        (c["type"], c["status"], c["reason"], c.get("message", ""))
        for c in obj["status"].get("conditions", [])
    ]
    return _table(rows, ("condition", "status", "reason", "message")) if rows else ""


def _dataset(state: State, obj: dict, folder: Path) -> str:
    manifest_uri = obj["status"].get("manifestUri")
    if not manifest_uri or not manifest_uri.startswith("file://"):
        return ""
    root = Path(manifest_uri.removeprefix("file://")).parent
    manifest = json.loads((root / "manifest.json").read_text())
    audit = json.loads((root / manifest["audit"]["path"]).read_text())
    removed = [(stage, n) for stage, n in audit["removed"].items()]
    splits = [(k, v["documents"], v["sequences"], v["tokens"]) for k, v in audit["splits"].items()]
    return (
        f"<p>{audit['documents']['read']:,} documents read, {audit['documents']['kept']:,} kept;"
        f" {audit['files']['skipped']} files skipped."
        f" Tokenizer {manifest['tokenizer']['digest'][:19]}"
        f"…, vocabulary {manifest['tokenizer']['vocabSize']:,}.</p>"
        + _table(removed, ("removed by", "documents"))
        + _table(sorted(audit["pii"].items()), ("PII redacted", "count"))
        + _table(splits, ("split", "documents", "sequences", "tokens"))
    )


def _model(state: State, obj: dict, folder: Path) -> str:
    """Curves and the model card."""
    name, kind = obj["metadata"]["name"], obj["kind"]
    log = state.root / "runs" / kind.lower() / name / f"{STAGES[kind].role}.log"
    events = parse(log.read_text(errors="replace")) if log.exists() else []
    image = _curves(events, folder / f"{kind.lower()}-{name}.png")
    card = _model_card(state, obj)
    return (f"<img src='{image.name}' width=940>" if image else "") + card


def _curves(events: list[dict], path: Path) -> Path | None:
    steps = {e["step"]: e for e in events if e["event"] == "step"}  # a resumed step overwrites
    if not steps:
        return None
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    xs = sorted(steps)
    validation = [e for e in events if e["event"] == "validation" and "loss" in e]
    figure, axes = plt.subplots(1, 3, figsize=(14, 3.6))
    axes[0].plot(xs, [steps[s]["loss"] for s in xs], label="train")
    axes[0].plot(
        [e["step"] for e in validation], [e["loss"] for e in validation], "o-", label="validation"
    )
    axes[0].set(title="loss", xlabel="step")
    axes[0].legend()
    axes[1].plot(xs, [steps[s]["lr"] for s in xs])
    axes[1].set(title="learning rate", xlabel="step")
    axes[2].plot(xs, [steps[s]["tokensPerSecond"] for s in xs])
    axes[2].set(title="tokens/s", xlabel="step")
    figure.tight_layout()
    figure.savefig(path, dpi=80)
    plt.close(figure)
    return path


def _model_card(state: State, obj: dict) -> str:
    spec, status = obj["spec"], obj["status"]
    lineage = status.get("lineage", {})
    rows = [
        ("architecture", json.dumps(spec.get("model") or spec.get("baseModel"))),
        ("training", json.dumps(spec.get("training"))),
        ("final loss", status.get("loss")),
        ("validation loss", status.get("validationLoss")),
        ("steps", status.get("progress")),
        *(
            (label, status[field])
            for field, label in (
                ("accuracy", "held-out pairwise accuracy"),
                ("margin", "held-out log-prob margin over the reference"),
                ("reward", "held-out reward"),
            )
            if status.get(field) is not None
        ),
        ("last checkpoint", (status.get("lastCheckpoint") or {}).get("uri")),
        ("spec digest", obj["metadata"]["annotations"].get("lmforge.dev/spec-digest")),
    ]
    for item in lineage.get("inputs", []):
        rows.append((f"input {item.get('kind', '')}", item["uri"]))
    for item in lineage.get("outputs", []):
        rows.append(("output", item["uri"]))
    dataset = next((i for i in lineage.get("inputs", []) if i.get("kind") == "Dataset"), None)
    if dataset:
        record = state.get("Dataset", dataset["name"]) or {}
        rows.append(("tokenizer digest", record.get("status", {}).get("tokenizerDigest")))
        rows.append(
            ("code version", (record.get("status", {}).get("lineage") or {}).get("codeVersion"))
        )
    samples = _samples(state, obj)
    return "<h3>Model card</h3>" + _table(rows, ("", "")) + samples


def _samples(state: State, obj: dict) -> str:
    """Samples from the Evaluations of this model."""
    out = []
    for evaluation in state.all("Evaluation"):
        ref = evaluation["spec"]["modelRef"]
        if (ref.get("kind"), ref["name"]) != (obj["kind"], obj["metadata"]["name"]):
            continue
        outputs = (evaluation["status"].get("lineage") or {}).get("outputs") or [{"uri": ""}]
        results = Path(outputs[0]["uri"].removeprefix("file://"))
        if outputs[0]["uri"].startswith("file://") and results.exists():
            for prompt, text in json.loads(results.read_text())["samples"].items():
                out.append(f"<pre><b>{html.escape(prompt)}</b>{html.escape(text)}</pre>")
    return ("<h3>Samples</h3>" + "".join(out)) if out else ""


def _evaluation(state: State, obj: dict, folder: Path) -> str:
    status = obj["status"]
    rows = sorted(status.get("results", {}).items())
    verdict = {True: "passed", False: "failed", None: "not gated"}[status.get("passed")]
    return f"<p>Thresholds: {verdict}.</p>" + _table(rows, ("metric", "value"))
