"""`lmforge run`: each resource, in reference order, as processes on this machine.

A stage whose spec and inputs are unchanged since it succeeded is skipped; a changed one reruns
from scratch with everything downstream of it; an interrupted training resumes from its newest
checkpoint (the trainer does that by itself). Status is kept in the state folder as the operator
keeps it in the API, so `lmforge get` and `lmforge describe` work while a run is going.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import signal
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeRemainingColumn

from ..api import conditions as c
from ..api.references import references
from ..api.resource import Resource
from ..render.inputs import READY_PHASES
from ..render.progress import apply_training_events, latest
from .state import DIGEST, State, now, set_condition


class StageError(RuntimeError):
    """A stage failed; the message says why (and where its logs are)."""


class Runner:
    def __init__(self, state: State, console: Console):
        self.state, self.console = state, console
        self.progress: Progress | None = None
        self.servers: list[tuple[str, subprocess.Popen, str]] = []
        """(Deployment name, server process, endpoint) of the servers started."""

    def run(self, ordered: list[Resource]) -> int:
        """Run every stage that needs it; 0 when all succeeded, 1 otherwise."""
        digests: dict[tuple[str, str], str] = {}
        columns = (
            TextColumn("{task.description:<32}"),
            BarColumn(),
            MofNCompleteColumn(),
            TextColumn("{task.fields[info]}"),
            TimeRemainingColumn(),
        )
        with Progress(*columns, console=self.console) as self.progress:
            for resource in ordered:
                inputs = [digests[(r.kind, r.name)] for r in references(resource)]
                digest = _digest(resource, inputs)
                digests[(resource.kind, resource.metadata.name)] = digest
                self.execute(resource, digest)
        ready = [self._phase(r.kind, r.metadata.name) == READY_PHASES[r.kind] for r in ordered]
        return 0 if all(ready) else 1

    def execute(self, resource: Resource, digest: str) -> None:
        kind, name = resource.kind, resource.metadata.name
        record = self.state.get(kind, name)
        same = record and record["metadata"]["annotations"].get(DIGEST) == digest
        if same and record["status"].get("phase") == "Succeeded":  # a server always starts anew
            self.console.print(f"{kind}/{name}: unchanged, skipped")
            return
        status: dict[str, Any] = {"phase": "Pending", "startTime": now()}
        blocked = [
            r for r in references(resource) if self._phase(r.kind, r.name) != READY_PHASES[r.kind]
        ]
        if blocked:
            ref = blocked[0]
            message = f"{ref.field}: {ref.kind}/{ref.name} did not succeed"
            status["phase"] = "Failed"
            set_condition(status, c.FAILED, True, c.DEPENDENCY_FAILED, message)
            self.state.put(resource, digest, status)
            self.console.print(f"[red]{kind}/{name}: not run: {message}")
            return
        if record and not same:
            self._clear(resource)  # the spec or an input changed: start over
        status["phase"] = "Running"
        set_condition(status, c.RUNNING, True, c.STARTED)
        self.state.put(resource, digest, status)
        try:
            STAGES[kind](self, resource, status, lambda: self.state.put(resource, digest, status))
        except StageError as error:
            status["phase"] = "Failed"
            set_condition(status, c.RUNNING, False, c.JOB_FAILED)
            set_condition(status, c.FAILED, True, c.JOB_FAILED, str(error))
            self.console.print(f"[red]{kind}/{name}: failed: {error}")
        except KeyboardInterrupt:
            status["phase"] = "Failed"
            set_condition(status, c.RUNNING, False, c.INTERRUPTED)
            set_condition(status, c.FAILED, True, c.INTERRUPTED, "interrupted; run again to resume")
            self.state.put(resource, digest, status)
            raise
        except Exception as error:  # a bug: record it, so the state never says Running, and raise
            status["phase"] = "Failed"
            set_condition(
                status, c.FAILED, True, c.INTERNAL_ERROR, f"{type(error).__name__}: {error}"
            )
            self.state.put(resource, digest, status)
            raise
        else:
            if kind == "Deployment":  # serving, not finished
                status["phase"] = "Available"
                set_condition(status, c.RUNNING, True, c.STARTED, status["endpoint"])
            else:
                status |= {"phase": "Succeeded", "completionTime": now()}
                set_condition(status, c.RUNNING, False, c.COMPLETED)
                set_condition(status, c.SUCCEEDED, True, c.COMPLETED)
        self.state.put(resource, digest, status)

    def _phase(self, kind: str, name: str) -> str | None:
        record = self.state.get(kind, name)
        return record["status"].get("phase") if record else None

    def artifact(self, resource: Resource) -> str:
        return resource.artifact_uri(self.state.storage)

    def run_dir(self, resource: Resource) -> Path:
        path = self.state.root / "runs" / resource.kind.lower() / resource.metadata.name
        path.mkdir(parents=True, exist_ok=True)
        return path

    def _clear(self, resource: Resource) -> None:
        shutil.rmtree(self.run_dir(resource), ignore_errors=True)
        artifact = self.artifact(resource)
        if artifact.startswith("file://"):
            shutil.rmtree(artifact.removeprefix("file://"), ignore_errors=True)

    def output_of(self, kind: str, name: str) -> str:
        """The primary output URI a succeeded resource recorded in its lineage."""
        return self.state.get(kind, name)["status"]["lineage"]["outputs"][0]["uri"]


def _digest(resource: Resource, inputs: list[str]) -> str:
    spec = json.dumps(resource.spec.wire(), sort_keys=True)
    return "sha256:" + hashlib.sha256((spec + "".join(inputs)).encode()).hexdigest()


# ----- stages -----

Save = Callable[[], Any]


def dataset_stage(runner: Runner, resource: Resource, status: dict, save: Save) -> None:
    from lmforge.jobs.data.pipeline import DataError, run  # the data extra, loaded when needed

    output = resource.spec.output.uri or runner.artifact(resource)
    bar = runner.progress.add_task(f"Dataset/{resource.metadata.name}", total=None, info="")

    def on_progress(stage: str, done: int, total: int) -> None:
        info = "files read, cleaned, filtered" if stage == "process" else "tokenize, pack, write"
        runner.progress.update(bar, completed=done, total=total, info=info)

    try:
        manifest = run(resource.spec, output, on_progress=on_progress)
    except DataError as error:
        raise StageError(str(error)) from error
    train = manifest["splits"]["train"]
    status |= {
        "documentsOut": sum(s["documents"] for s in manifest["splits"].values()),
        "tokens": sum(s["tokens"] for s in manifest["splits"].values()),
        "shards": sum(len(s["shards"]) for s in manifest["splits"].values()),
        "manifestUri": f"{output}/manifest.json",
        "tokenizerDigest": manifest["tokenizer"]["digest"],
    }
    status["lineage"] = {
        "inputs": [{"uri": s["uri"], "digest": s["digest"]} for s in manifest["sources"]],
        "outputs": [{"uri": output, "digest": manifest["configDigest"], "kind": "Dataset"}],
        "codeVersion": manifest["lmforgeVersion"],
    }
    runner.progress.update(bar, completed=1, total=1, info=f"{train['tokens']:,} train tokens")


def pretrain_stage(runner: Runner, resource: Resource, status: dict, save: Save) -> None:
    from ..render.training import pretrain_config

    spec, run_dir = resource.spec, runner.run_dir(resource)
    dataset = runner.output_of("Dataset", spec.dataset_ref.name)
    config = pretrain_config(resource, dataset, _store(runner, resource))
    status["lineage"] = {
        "inputs": [{"uri": dataset, "kind": "Dataset", "name": spec.dataset_ref.name}],
        "outputs": [{"uri": config["outputUri"], "kind": "Model"}],
    }
    _train(runner, resource, _torchrun(resource, run_dir, config), run_dir, status, save)


def finetune_stage(runner: Runner, resource: Resource, status: dict, save: Save) -> None:
    """FineTune (sft, dpo) and RewardModel: the trainer from the base model."""
    from ..render.names import RenderError
    from ..render.training import finetune_config, finetune_inputs, finetune_lineage

    inputs = finetune_inputs(resource, _outputs(runner, resource))
    try:
        config = finetune_config(resource, inputs, _store(runner, resource))
    except RenderError as error:
        raise StageError(str(error)) from error
    status["lineage"] = finetune_lineage(inputs, config, None)
    run_dir = runner.run_dir(resource)
    _train(runner, resource, _torchrun(resource, run_dir, config), run_dir, status, save)


def _outputs(runner: Runner, resource: Resource) -> dict[str, dict]:
    """Field -> the output of each reference (each has succeeded: the graph ran it first)."""
    outputs = {}
    for ref in references(resource):
        found = runner.state.get(ref.kind, ref.name)["status"]["lineage"]["outputs"]
        outputs[ref.field] = next(o for o in found if ref.output in (None, o.get("kind")))
    return outputs


def _store(runner: Runner, resource: Resource):
    from ..render.pods import StorageSettings

    storage = resource.spec.storage
    return StorageSettings(storage.uri or runner.state.storage, None, storage.endpoint_url)


def _torchrun(resource: Resource, run_dir: Path, config: dict) -> list[str]:
    """The trainer's config written for this run (progress to the run folder), and the torchrun
    command for it: every rank on this machine."""
    config = config | {"progressPath": str(run_dir / "progress.jsonl")}
    (run_dir / "config.json").write_text(json.dumps(config, indent=2))
    ranks = resource.spec.resources.nodes * resource.spec.resources.processes_per_node
    return [
        sys.executable,
        "-m",
        "torch.distributed.run",
        "--standalone",
        f"--nproc-per-node={ranks}",
        "-m",
        "lmforge.jobs.train",
        "--config",
        str(run_dir / "config.json"),
    ]


def _train(
    runner: Runner, resource: Resource, command: list[str], run_dir: Path, status: dict, save: Save
) -> None:
    """torchrun in its own session (a terminal's Ctrl-C reaches only us); on Ctrl-C, SIGTERM it so
    the trainer checkpoints before it exits, and the next run resumes from there."""
    threads = max(1, (os.cpu_count() or 1) // max(1, resource.spec.resources.processes_per_node))
    env = {**os.environ, "OMP_NUM_THREADS": str(threads)}
    bar = runner.progress.add_task(f"{resource.kind}/{resource.metadata.name}", total=None, info="")
    progress = run_dir / "progress.jsonl"
    with open(run_dir / "train.log", "ab") as log:
        process = subprocess.Popen(
            command, stdout=log, stderr=subprocess.STDOUT, env=env, start_new_session=True
        )
        try:
            offset = 0
            while process.poll() is None:
                offset = _follow(runner, bar, progress, offset, status, save)
                time.sleep(0.5)
            _follow(runner, bar, progress, offset, status, save)
        except KeyboardInterrupt:
            runner.console.print("interrupted: saving a checkpoint before stopping...")
            process.send_signal(signal.SIGTERM)
            process.wait(timeout=300)
            _follow(runner, bar, progress, offset, status, save)
            raise
    if process.returncode != 0:
        tail = (run_dir / "train.log").read_text(errors="replace").strip().splitlines()[-3:]
        raise StageError(
            f"training exited with {process.returncode}: {' | '.join(tail)}"
            f" (log: {run_dir / 'train.log'})"
        )


def _follow(runner: Runner, bar, path: Path, offset: int, status: dict, save: Save) -> int:
    """Read new progress events into the bar and the status; returns the new file offset."""
    if not path.exists():
        return offset
    with path.open() as stream:
        stream.seek(offset)
        lines = stream.readlines()
        offset = stream.tell()
    events = [json.loads(line) for line in lines]
    status.update(apply_training_events(status, events))
    step = latest(events, "step")
    if step:
        info = f"loss {step['loss']:.3f}  {step['tokensPerSecond']:,.0f} tok/s"
        runner.progress.update(bar, completed=step["step"], total=step["totalSteps"], info=info)
    if lines:
        save()
    return offset


def evaluation_stage(runner: Runner, resource: Resource, status: dict, save: Save) -> None:
    from ..render.evaluation import evaluation_config, lineage, task_inputs

    spec, run_dir = resource.spec, runner.run_dir(resource)
    model = runner.output_of(spec.model_ref.kind, spec.model_ref.name)
    inputs = task_inputs(resource, _outputs(runner, resource))
    config = evaluation_config(resource, model, inputs, _store(runner, resource))
    (run_dir / "config.json").write_text(json.dumps(config, indent=2))
    bar = runner.progress.add_task(f"Evaluation/{resource.metadata.name}", total=None, info="")
    command = [
        sys.executable,
        "-m",
        "lmforge.jobs.eval",
        "--config",
        str(run_dir / "config.json"),
        "--out",
        str(run_dir / "results.json"),
    ]
    done = subprocess.run(command, capture_output=True, text=True)
    if done.returncode != 0:
        raise StageError(done.stderr.strip().splitlines()[-1] if done.stderr.strip() else "failed")
    report = json.loads((run_dir / "results.json").read_text())
    status |= {
        "results": {k: round(v, 6) for k, v in report["results"].items()},
        "passed": report["passed"],
        "summary": ", ".join(
            f"{k}={v:.4g}" for k, v in report["results"].items() if k.endswith("perplexity")
        ),
    }
    status["lineage"] = lineage(resource, model, inputs, (run_dir / "results.json").as_uri(), None)
    runner.progress.update(bar, completed=1, total=1, info=status["summary"])
    if not report["passed"]:
        set_condition(status, c.FAILED, True, c.GATE_FAILED, "; ".join(report["missed"]))
        raise StageError("thresholds not met: " + "; ".join(report["missed"]))


def deployment_stage(runner: Runner, resource: Resource, status: dict, save: Save) -> None:
    """`lmforge serve` in the background on a free port from 8000, up once it has answered a
    chat request; `lmforge run` keeps it serving after the last stage (see cli.run_command)."""
    from ..render.deployment import model_digest, outputs, serve_config
    from ..render.names import RenderError

    spec, name, run_dir = resource.spec, resource.metadata.name, runner.run_dir(resource)
    model = runner.output_of(spec.model_ref.kind, spec.model_ref.name)
    store = _store(runner, resource)
    try:
        config = serve_config(resource, model, store)
    except RenderError as error:
        raise StageError(str(error)) from error
    config |= {
        "apiKeysDir": None,
        "auditLog": str(run_dir / "audit.jsonl"),
    }
    if spec.auth:
        runner.console.print(
            f"Deployment/{name}: spec.auth is not used here (no Secrets): the "
            "local server is open to this machine only (127.0.0.1)"
        )
    (run_dir / "serve.json").write_text(json.dumps(config, indent=2))
    port = _free_port(8000)
    endpoint = f"http://127.0.0.1:{port}/v1"
    bar = runner.progress.add_task(f"Deployment/{name}", total=None, info="starting")
    log = open(run_dir / "server.log", "ab")  # noqa: SIM115 - the server outlives this function
    command = [
        sys.executable,
        "-m",
        "lmforge.jobs.serve",
        "--config",
        str(run_dir / "serve.json"),
        "--port",
        str(port),
    ]
    process = subprocess.Popen(
        command, stdout=log, stderr=subprocess.STDOUT, start_new_session=True
    )
    runner.servers.append((name, process, endpoint))
    answer = _first_answer(process, endpoint, name, run_dir / "server.log")
    status |= {
        "endpoint": endpoint,
        "modelDigest": model_digest({"uri": model}, config),
        "replicas": 1,
        "readyReplicas": 1,
        "sample": answer,
    }
    status["lineage"] = {
        "inputs": [{"uri": model, "kind": spec.model_ref.kind, "name": spec.model_ref.name}],
        "outputs": outputs(endpoint, config),
    }
    runner.progress.update(bar, completed=1, total=1, info=endpoint)


def _free_port(first: int) -> int:
    import socket

    for port in range(first, first + 100):
        with socket.socket() as s:
            try:
                s.bind(("127.0.0.1", port))
                return port
            except OSError:
                continue
    raise StageError(f"no free port from {first} to {first + 99}")


def _first_answer(process: subprocess.Popen, endpoint: str, model: str, log: Path) -> str:
    """Wait for the server to answer a chat request (as a client would); its reply."""
    import urllib.error
    import urllib.request

    body = json.dumps(
        {
            "model": model,
            "messages": [{"role": "user", "content": "def "}],
            "max_tokens": 16,
            "temperature": 0,
        }
    ).encode()
    deadline = time.monotonic() + 180
    while time.monotonic() < deadline:
        if process.poll() is not None:
            tail = log.read_text(errors="replace").strip().splitlines()[-1:] or ["no output"]
            raise StageError(f"the server exited with {process.returncode}: {tail[0]} (log: {log})")
        request = urllib.request.Request(
            f"{endpoint}/chat/completions", body, {"content-type": "application/json"}
        )
        try:
            with urllib.request.urlopen(request, timeout=30) as response:
                return json.loads(response.read())["choices"][0]["message"]["content"]
        except (urllib.error.URLError, ConnectionError):
            time.sleep(0.5)
    process.terminate()
    raise StageError(f"the server did not answer within 180 s (log: {log})")


STAGES = {
    "Dataset": dataset_stage,
    "PretrainJob": pretrain_stage,
    "Evaluation": evaluation_stage,
    "FineTune": finetune_stage,
    "RewardModel": finetune_stage,
    "Deployment": deployment_stage,
}
