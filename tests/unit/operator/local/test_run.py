"""`lmforge run` end to end on a miniature lifecycle: Dataset -> PretrainJob -> Evaluation."""

import json
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest

from lmforge.operator import cli
from lmforge.operator.api.events import parse

MINI = {
    "01-dataset.yaml": """
apiVersion: lmforge.dev/v1alpha1
kind: Dataset
metadata: {name: mini}
spec:
  sources: [{uri: "stdlib://json/*.py"}, {uri: "stdlib://email/*.py"}]
  filters: {quality: {enabled: false}}
  tokenizer: {train: {vocabSize: 400}}
  packing: {sequenceLength: 33}
  split: {validationFraction: 0.1}
  engine: {workers: 1}
""",
    "02-pretrainjob.yaml": """
apiVersion: lmforge.dev/v1alpha1
kind: PretrainJob
metadata: {name: mini-model}
spec:
  datasetRef: {name: mini}
  model: {layers: 2, dModel: 64, heads: 4, kvHeads: 2, contextLength: 32}
  training:
    steps: STEPS
    globalBatchTokens: 528
    microBatch: 8
    optimizer: {lr: 0.003}
    schedule: {warmupSteps: 2}
    checkpoint: {everySteps: 3}
    validation: {everySteps: 6, batches: 2}
  resources: {processesPerNode: 2}
""",
    "03-evaluation.yaml": """
apiVersion: lmforge.dev/v1alpha1
kind: Evaluation
metadata: {name: mini-eval}
spec:
  modelRef: {kind: PretrainJob, name: mini-model}
  tasks: [{name: ppl, type: perplexity, datasetRef: {name: mini}, maxExamples: EXAMPLES}]
  thresholds: [{metric: ppl.perplexity, max: 100000}]
""",
    "05-finetune.yaml": """
apiVersion: lmforge.dev/v1alpha1
kind: FineTune
metadata: {name: mini-sft}
spec:
  baseModel: {pretrainJobRef: {name: mini-model}}
  method: sft
  data: {uri: "EXAMPLES", validationFraction: 0.25}
  training: {steps: 4, globalBatchTokens: 256, microBatch: 2, checkpoint: {everySteps: 2}}
  resources: {processesPerNode: 2}
""",
    "04-deployment.yaml": """
apiVersion: lmforge.dev/v1alpha1
kind: Deployment
metadata: {name: mini-chat}
spec:
  modelRef: {kind: PretrainJob, name: mini-model}
  evaluationRef: {name: mini-eval}
""",
}


def write(folder: Path, steps: int = 12, examples: int = 50) -> Path:
    folder.mkdir(exist_ok=True)
    rows = [{"prompt": f"def f{i}():", "response": f"    return {i}"} for i in range(8)]
    sft = folder.parent / "sft.jsonl"
    sft.write_text("".join(json.dumps(r) + "\n" for r in rows))
    for name, text in MINI.items():
        text = text.replace("STEPS", str(steps)).replace('"EXAMPLES"', f'"{sft.as_uri()}"')
        text = text.replace("EXAMPLES", str(examples))
        (folder / name).write_text(text)
    return folder


def status(state: Path, kind: str, name: str) -> dict:
    return json.loads((state / "state" / kind.lower() / f"{name}.json").read_text())["status"]


def run(files: Path, state: Path) -> int:
    return cli.main(["run", "-f", str(files), "--state", str(state), "--no-serve"])


def test_runs_the_lifecycle_and_writes_the_report(tmp_path, capsys):
    files, state = write(tmp_path / "files"), tmp_path / "state"
    assert run(files, state) == 0
    for kind, name in (
        ("Dataset", "mini"),
        ("PretrainJob", "mini-model"),
        ("Evaluation", "mini-eval"),
    ):
        assert status(state, kind, name)["phase"] == "Succeeded"
    trained = status(state, "PretrainJob", "mini-model")
    assert trained["progress"] == "12/12" and trained["lastCheckpoint"]["step"] == 12
    assert trained["lineage"]["inputs"][0]["kind"] == "Dataset"
    evaluation = status(state, "Evaluation", "mini-eval")
    assert evaluation["passed"] is True and evaluation["results"]["ppl.perplexity"] > 1
    tuned = status(state, "FineTune", "mini-sft")
    assert tuned["phase"] == "Succeeded" and tuned["progress"] == "4/4"
    assert tuned["lineage"]["inputs"][0] == {
        "uri": trained["lineage"]["outputs"][0]["uri"],
        "kind": "PretrainJob",
        "name": "mini-model",
    }
    # The Deployment's server answered a chat request, then stopped with the run (--no-serve).
    served = status(state, "Deployment", "mini-chat")
    running = next(c for c in served["conditions"] if c["type"] == "Running")
    assert served["phase"] == "Available" and running["message"].endswith("answered a chat request")
    assert served["lineage"]["inputs"][0]["uri"] == trained["lineage"]["outputs"][0]["uri"]
    port = int(served["endpoint"].rsplit(":", 1)[1].split("/")[0])
    with pytest.raises(OSError):
        socket.create_connection(("127.0.0.1", port), timeout=2).close()
    page = (state / "report" / "index.html").read_text()
    for text in (
        "Dataset/mini",
        "PretrainJob/mini-model",
        "Model card",
        "Samples",
        "ppl.perplexity",
        "removed by",
        "tokenizer digest",
        "pretrainjob-mini-model.png",
    ):
        assert text in page, text
    assert (state / "report" / "pretrainjob-mini-model.png").stat().st_size > 10_000
    capsys.readouterr()
    assert cli.main(["get", "--state", str(state)]) == 0
    listing = capsys.readouterr().out
    assert "NAME" in listing and "mini-model" in listing and "12/12" in listing
    assert cli.main(["describe", "ptj/mini-model", "--state", str(state)]) == 0
    described = capsys.readouterr().out
    assert "Phase:        Succeeded" in described and "input   Dataset/mini" in described


def test_a_spec_change_reruns_only_that_stage_and_what_follows(tmp_path, capsys):
    files, state = write(tmp_path / "files", steps=6), tmp_path / "state"
    assert run(files, state) == 0
    capsys.readouterr()
    write(files, steps=6, examples=20)  # only the Evaluation changed
    assert run(files, state) == 0
    out = capsys.readouterr().out
    assert "Dataset/mini: unchanged, skipped" in out
    assert "PretrainJob/mini-model: unchanged, skipped" in out
    assert "Evaluation/mini-eval: unchanged" not in out
    write(files, steps=9, examples=20)  # the PretrainJob changed: it and the Evaluation rerun
    assert run(files, state) == 0
    out = capsys.readouterr().out
    assert "Dataset/mini: unchanged, skipped" in out and "mini-model: unchanged" not in out
    assert status(state, "PretrainJob", "mini-model")["progress"] == "9/9"


@pytest.mark.parametrize("stop", [signal.SIGINT, signal.SIGTERM])
def test_ctrl_c_during_training_checkpoints_and_the_rerun_resumes(tmp_path, stop):
    """Ctrl-C (SIGINT to the foreground process), or SIGTERM as `timeout` and service managers
    send: the trainer checkpoints and stops (it runs in its own session, so it would otherwise
    outlive us), and the rerun resumes."""
    files, state = write(tmp_path / "files", steps=60), tmp_path / "state"
    command = [
        sys.executable,
        "-m",
        "lmforge.operator.cli",
        "run",
        "-f",
        str(files),
        "--state",
        str(state),
        "--no-serve",
    ]
    runner = subprocess.Popen(command, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    log = state / "runs" / "pretrainjob" / "mini-model" / "worker.log"  # the trainer's output
    deadline = time.monotonic() + 300
    while time.monotonic() < deadline:
        if log.exists() and any(e.get("step", 0) >= 5 for e in parse(log.read_text())):
            break
        time.sleep(0.1)
    runner.send_signal(stop)
    output, _ = runner.communicate(timeout=300)
    assert runner.returncode == 130, output
    stopped = status(state, "PretrainJob", "mini-model")
    assert stopped["phase"] == "Failed"
    assert any(c["reason"] == "Interrupted" for c in stopped["conditions"])
    saved = stopped["lastCheckpoint"]["step"]
    assert saved >= 5
    resumed = subprocess.run(command, capture_output=True, text=True, timeout=600)
    assert resumed.returncode == 0, resumed.stdout[-2000:]
    events = parse(log.read_text())
    assert [e["step"] for e in events if e["event"] == "resume"] == [saved]
    assert "Dataset/mini: unchanged, skipped" in resumed.stdout


@pytest.mark.parametrize(
    ("extra", "message"),
    [
        (
            "apiVersion: lmforge.dev/v1alpha1\nkind: Evaluation\nmetadata: {name: orphan}\nspec:\n"
            "  modelRef: {kind: FineTune, name: missing}\n  tasks: [{name: b, type: bleu, uri: 'file:///x'}]\n",
            "Evaluation/orphan: spec.modelRef: refers to FineTune/missing, which is not in the files given",
        ),
        (
            "apiVersion: lmforge.dev/v1alpha1\nkind: FineTune\nmetadata: {name: a}\nspec:\n"
            "  baseModel: {fineTuneRef: {name: b}}\n  data: {uri: 'file:///x'}\n  training: {steps: 1}\n"
            "---\napiVersion: lmforge.dev/v1alpha1\nkind: FineTune\nmetadata: {name: b}\nspec:\n"
            "  baseModel: {fineTuneRef: {name: a}}\n  data: {uri: 'file:///x'}\n  training: {steps: 1}\n",
            "the references form a cycle: FineTune/",
        ),
    ],
)
def test_bad_references_stop_everything_before_it_starts(tmp_path, capsys, extra, message):
    files, state = write(tmp_path / "files"), tmp_path / "state"
    (files / "04-bad.yaml").write_text(extra)
    assert run(files, state) == 1
    err = capsys.readouterr().err
    assert f"{files / '04-bad.yaml'}: " in err and message in err and "nothing was run" in err
    assert not (state / "state").exists()
