"""`lmforge run`: each resource, in reference order, as processes on this machine.

Each stage is described (operator/stages) as the operator describes it, and its job runs here
as the pod would run it: the same module and config; training as torchrun standalone, one
replica of its torchx AppDef on torchx's local scheduler (docs/torchx.md). Its events
become status the same way. A stage whose spec and inputs are unchanged since it succeeded is
skipped; a changed one reruns from scratch with everything downstream of it; an interrupted
training resumes from its newest checkpoint (the trainer does that by itself). Status is kept in
the state folder as the operator keeps it in the API, so `lmforge get` and `lmforge describe`
work while a run is going.
"""

from __future__ import annotations

import datetime
import functools
import hashlib
import json
import os
import re
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeRemainingColumn

from lmforge.operator.api import conditions
from lmforge.operator.api.common import Status, timestamp
from lmforge.operator.api.events import PROGRESS, STEP, last_error, parse
from lmforge.operator.api.resource import Resource
from lmforge.operator.local.state import DIGEST, State
from lmforge.operator.stages import STAGES
from lmforge.operator.stages.base import Description, SpecError, Stage, Store, command, storage
from lmforge.operator.stages.deployment import model_digest, served
from lmforge.operator.stages.inputs import resolve

COLUMNS = (
    TextColumn("{task.description:<32}"),
    BarColumn(),
    MofNCompleteColumn(),
    TextColumn("{task.fields[info]}"),
    TimeRemainingColumn(),
)


class StageError(RuntimeError):
    """A stage failed; the message says why, and where its log is."""

    def __init__(self, message: str, reason: str = conditions.JOB_FAILED, where: str = ""):
        super().__init__(message + (f" ({where})" if where else ""))
        self.message, self.reason = message, reason


def now() -> datetime.datetime:
    return datetime.datetime.now(datetime.UTC)


class Runner:
    def __init__(self, state: State, console: Console):
        self.state, self.console = state, console
        self.progress: Progress | None = None
        self.servers: list[tuple[str, subprocess.Popen, str]] = []
        """(Deployment name, server process, endpoint) of the servers started."""

    def run(self, ordered: list[Resource]) -> int:
        """Run every stage that needs it; 0 when all are ready, 1 otherwise."""
        digests: dict[tuple[str, str], str] = {}
        with Progress(*COLUMNS, console=self.console) as self.progress:
            for resource in ordered:
                inputs = [digests[(r.kind, r.name)] for r in resource.references()]
                digest = _digest(resource, inputs)
                digests[(resource.kind, resource.metadata.name)] = digest
                self.execute(resource, digest)
        ready = [self._phase(r.kind, r.metadata.name) == r.ready_phase for r in ordered]
        return 0 if all(ready) else 1

    def execute(self, resource: Resource, digest: str) -> None:
        kind, name = resource.kind, resource.metadata.name
        record = self.state.get(kind, name)
        same = record and record["metadata"]["annotations"].get(DIGEST) == digest
        if same and record["status"].get("phase") == "Succeeded":  # a server always starts anew
            self.console.print(f"{kind}/{name}: unchanged, skipped")
            return
        status = resource.status_class()(phase="Pending", start_time=timestamp(now()))
        found = {(r.kind, r.name): self.state.get(r.kind, r.name) for r in resource.references()}
        deps = resolve(resource, found)
        if not deps.ready:
            message = "; ".join(deps.failed + deps.waiting)
            status.fail(conditions.DEPENDENCY_FAILED, message, now())
            self.state.put(resource, digest, status)
            self.console.print(f"[red]{kind}/{name}: not run: {message}")
            return
        if record and not same:
            self._clear(resource)  # the spec or an input changed: start over
        status.phase = "Progressing" if STAGES[kind].serves else "Running"  # a server's phases
        status.set_condition(conditions.RUNNING, True, conditions.STARTED, "", now())
        self.state.put(resource, digest, status)
        self._attempt(resource, digest, status, deps.outputs)
        self.state.put(resource, digest, status)

    def _attempt(self, resource: Resource, digest: str, status: Status, outputs) -> None:
        """Describe and run the stage, recording how it ended in `status`."""
        kind, name = resource.kind, resource.metadata.name
        stage = STAGES[kind]
        try:
            store = storage(resource.spec.storage, Store(self.state.storage))
            description = stage.describe(resource, outputs, store)
            status.lineage = description.lineage
            if stage.serves:
                self._serve(resource, description, status)
            else:
                self._complete(resource, description, status, digest)
        except SpecError as error:
            status.fail(conditions.INVALID_SPEC, str(error), now())
            self.console.print(f"[red]{kind}/{name}: failed: {error}")
        except StageError as error:
            status.fail(error.reason, str(error), now())
            self.console.print(f"[red]{kind}/{name}: failed: {error}")
        except KeyboardInterrupt:
            status.fail(conditions.INTERRUPTED, "interrupted; run again to resume", now())
            self.state.put(resource, digest, status)
            raise
        except Exception as error:  # a bug: record it, so the state never says Running, and raise
            status.fail(conditions.INTERNAL_ERROR, f"{type(error).__name__}: {error}", now())
            self.state.put(resource, digest, status)
            raise

    def _phase(self, kind: str, name: str) -> str | None:
        record = self.state.get(kind, name)
        return record["status"].get("phase") if record else None

    def run_dir(self, resource: Resource) -> Path:
        path = self.state.root / "runs" / resource.kind.lower() / resource.metadata.name
        path.mkdir(parents=True, exist_ok=True)
        return path

    def _clear(self, resource: Resource) -> None:
        shutil.rmtree(self.run_dir(resource), ignore_errors=True)
        artifact = resource.artifact_uri(self.state.storage)
        if artifact.startswith("file://"):
            shutil.rmtree(artifact.removeprefix("file://"), ignore_errors=True)

    def _complete(
        self, resource: Resource, description: Description, status: Status, digest: str
    ) -> None:
        label = f"{resource.kind}/{resource.metadata.name}"
        stage, folder = STAGES[resource.kind], self.run_dir(resource)
        save = functools.partial(self.state.put, resource, digest, status)
        try:
            complete(stage, description, folder, status, self.progress, label, save)
        except KeyboardInterrupt:
            self.console.print("interrupted: the job stopped (a training saved a checkpoint)")
            raise
        status.succeed("", now())

    def _serve(self, resource: Resource, description: Description, status: Status) -> None:
        """`lmforge serve` in the background on a free port from 8000, up once it has answered a
        chat request; `lmforge run` keeps it serving after the last stage (cli.run_command)."""
        name, run_dir = resource.metadata.name, self.run_dir(resource)
        if resource.spec.auth:
            self.console.print(
                f"Deployment/{name}: spec.auth is not used here (no Secrets): the "
                "local server is open to this machine only (127.0.0.1)"
            )
        config = description.config.model_copy(update={"audit_log": str(run_dir / "audit.jsonl")})
        (run_dir / "serve.json").write_text(
            config.model_dump_json(by_alias=True, exclude_none=True)
        )
        port = _free_port(8000)
        endpoint = f"http://127.0.0.1:{port}/v1"
        bar = self.progress.add_task(f"Deployment/{name}", total=None, info="starting")
        argv = command(description, str(run_dir / "serve.json"), python=sys.executable)
        log = open(run_dir / "server.log", "ab")  # noqa: SIM115 - the server outlives this function
        process = subprocess.Popen(
            [*argv, "--port", str(port)],
            stdout=log,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )
        self.servers.append((name, process, endpoint))
        _first_answer(process, endpoint, name, run_dir / "server.log")
        status.endpoint, status.model_digest = endpoint, model_digest(description)
        status.replicas = status.ready_replicas = 1
        status.lineage = served(description, endpoint)
        status.phase = "Available"
        message = f"{endpoint} answered a chat request"
        status.set_condition(conditions.RUNNING, True, conditions.STARTED, message, now())
        self.progress.update(bar, completed=1, total=1, info=endpoint)


def _digest(resource: Resource, inputs: list[str]) -> str:
    spec = json.dumps(resource.spec.wire(), sort_keys=True)
    return "sha256:" + hashlib.sha256((spec + "".join(inputs)).encode()).hexdigest()


def complete(
    stage: Stage,
    description: Description,
    folder: Path,
    status: Status,
    progress: Progress,
    label: str,
    save=lambda: None,
) -> list[dict[str, Any]]:
    """Run a described job to its end with its config and log in `folder`, following its events
    into a bar and into `status` (then `save()`); every event. StageError when the job fails or
    its result fails the resource (an Evaluation's thresholds)."""
    config = folder / "config.json"
    config.write_text(description.config_json())
    bar = progress.add_task(label, total=None, info="")

    def follow(events: list[dict[str, Any]]) -> None:
        stage.progress(status, events)
        _show(progress, bar, events)
        save()

    log = folder / f"{stage.role}.log"
    if description.ranks is None:
        argv = command(description, str(config), python=sys.executable)
        events = run_job(argv, log, follow)
    else:  # training: torchrun, launched as torchx's local scheduler launches it
        from lmforge.operator.stages.appdef import appdef  # the local extra: torchx

        threads = {"OMP_NUM_THREADS": str(_threads(description))}
        name = re.sub(r"[^a-z0-9-]", "-", label.lower())
        app = appdef(description, str(config), name=name, role=stage.role, python=sys.executable,
                     one_machine=True, env=threads)  # fmt: skip
        events = run_app(app, log, follow)
    missed = stage.finish(status, events)
    progress.update(bar, completed=1, total=1, info=_summary(status))
    if missed is not None:
        raise StageError(f"thresholds not met: {missed}", conditions.GATE_FAILED)
    return events


def _threads(description: Description) -> int:
    """Threads per rank: the CPUs shared among the ranks, which all run here."""
    nodes, per_node = description.ranks
    return max(1, (os.cpu_count() or 1) // (nodes * per_node))


def run_job(argv: list[str], log: Path, follow) -> list[dict[str, Any]]:
    """Run a job in its own session (a terminal's Ctrl-C reaches only us) with its output in
    `log`, calling `follow(new events)` as they come; every event, once it exited 0. On Ctrl-C,
    SIGTERM it and wait for it to stop."""
    events: list[dict[str, Any]] = []
    with open(log, "ab") as out:
        offset = out.tell()
        process = subprocess.Popen(
            argv, stdout=out, stderr=subprocess.STDOUT, start_new_session=True
        )
        try:
            while process.poll() is None:
                offset = _read(log, offset, events, follow)
                time.sleep(0.5)
            _read(log, offset, events, follow)
        except KeyboardInterrupt:
            process.send_signal(signal.SIGTERM)
            process.wait(timeout=300)
            _read(log, offset, events, follow)
            raise
    if process.returncode != 0:
        raise _failed(log, f"exit {process.returncode}")
    return events


def run_app(app, log: Path, follow) -> list[dict[str, Any]]:
    """Run a torchx AppDef of one replica with torchx's local scheduler, appending the lines of
    its stdout and stderr (the files torchx writes them to) to `log` and calling
    `follow(new events)` as they come; every event, once it succeeded. On Ctrl-C torchx
    SIGTERMs the replica's process group (a trainer checkpoints before it exits) and SIGKILLs
    torchrun if it is still there after 10 s."""
    from torchx.schedulers import local_scheduler
    from torchx.specs import AppState, is_terminal

    handlers = signal.getsignal(signal.SIGINT), signal.getsignal(signal.SIGTERM)
    scheduler = local_scheduler.create_scheduler("lmforge")
    # It installs handlers of its own that turn Ctrl-C into another exception: keep ours.
    signal.signal(signal.SIGINT, handlers[0])
    signal.signal(signal.SIGTERM, handlers[1])
    logs = log.parent / "torchx"
    events: list[dict[str, Any]] = []
    with open(log, "ab") as out:
        offset = out.tell()
        app_id = scheduler.submit(app, {"log_dir": str(logs)})
        replica = logs / "lmforge" / app_id / app.roles[0].name / "0"
        copied = {replica / "stdout.log": 0, replica / "stderr.log": 0}
        try:
            while not is_terminal(state := scheduler.describe(app_id).state):
                _append(copied, out)
                offset = _read(log, offset, events, follow)
                time.sleep(0.5)
        except KeyboardInterrupt:
            scheduler.cancel(app_id)
            raise
        finally:
            scheduler.close()
            _append(copied, out, whole=True)
            _read(log, offset, events, follow)
    if state != AppState.SUCCEEDED:
        raise _failed(log, f"torchx app {app_id} {state.name}")
    return events


def _failed(log: Path, how: str) -> StageError:
    """A failed job's error: its last error line, else the last lines of its log."""
    text = log.read_text(errors="replace")
    why = last_error(text) or " | ".join(text.strip().splitlines()[-3:])
    return StageError(why, where=f"{how}; log: {log}")


def _append(copied: dict[Path, int], out, whole: bool = False) -> None:
    """Append to `out` the complete lines (everything, when `whole`) each file gained since
    the bytes `copied` of it, counting them."""
    for source, done in copied.items():
        if not source.exists():
            continue
        with source.open("rb") as stream:
            stream.seek(done)
            data = stream.read()
        data = data if whole else data[: data.rfind(b"\n") + 1]
        out.write(data)
        copied[source] = done + len(data)
    out.flush()


def _read(log: Path, offset: int, events: list[dict[str, Any]], follow) -> int:
    """Events in the complete lines written since `offset`; the new offset."""
    with log.open("rb") as stream:
        stream.seek(offset)
        data = stream.read()
    whole = data[: data.rfind(b"\n") + 1]
    new = parse(whole.decode(errors="replace"))
    if new:
        events += new
        follow(new)
    return offset + len(whole)


def _show(progress: Progress, bar, events: list[dict[str, Any]]) -> None:
    """The newest step (training) or share of work done (data) in the bar."""
    for event in events:
        if event["event"] == STEP:
            info = f"loss {event['loss']:.3f}  {event['tokensPerSecond']:,.0f} tok/s"
            progress.update(bar, completed=event["step"], total=event["totalSteps"], info=info)
        elif event["event"] == PROGRESS:
            total = event["total"]
            progress.update(bar, completed=event["done"], total=total, info=event.get("stage", ""))


def _summary(status: Status) -> str:
    """A short line for the finished bar: the gating metrics, the steps, or the tokens."""
    for field in ("summary", "progress"):
        if getattr(status, field, None):
            return getattr(status, field)
    return f"{status.tokens:,} tokens" if getattr(status, "tokens", None) else ""


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
