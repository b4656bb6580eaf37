"""The `lmforge` command."""

from __future__ import annotations

import argparse
import os
import signal
import subprocess
import sys
from importlib.metadata import version
from pathlib import Path

from lmforge.operator import manifest, plan
from lmforge.operator.api import KINDS
from lmforge.operator.api.crd import crd
from lmforge.operator.api.events import DONE, latest
from lmforge.operator.api.reference import markdown
from lmforge.operator.validate import validate


def generated(crd_dirs: list[Path], docs: Path) -> dict[Path, str]:
    """Every file generated from the API models: one CRD per kind (in each folder: manifests/crds
    and the Helm chart's crds/) and the API reference."""
    crds_ = {f"{k.plural}.lmforge.dev.yaml": manifest.dump([crd(k)]) for k in KINDS.values()}
    out = {folder / name: text for folder in crd_dirs for name, text in crds_.items()}
    out[docs] = markdown()
    return out


def crds(args: argparse.Namespace) -> int:
    folders = [args.dir, args.chart_dir]
    files = generated(folders, args.docs)
    stale = sorted({p for folder in folders for p in folder.glob("*.yaml")} - set(files))
    if args.check:
        differ = [p for p, text in files.items() if not p.exists() or p.read_text() != text]
        for path in differ + stale:
            print(f"{path}: out of date; run `lmforge crds` and commit the result", file=sys.stderr)
        return 1 if differ or stale else 0
    for path in stale:
        path.unlink()
    for path, text in files.items():
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(text)
        print(f"wrote {path}")
    return 0


def validate_command(args: argparse.Namespace) -> int:
    count, failed = 0, False
    for path in args.file:
        resources, problems = validate(path)
        count += len(resources)
        for problem in problems:
            print(problem, file=sys.stderr)
        failed = failed or bool(problems)
    print(f"{count} valid resource(s)" + (", errors above" if failed else ""))
    return 1 if failed else 0


def data_run(args: argparse.Namespace) -> int:
    import tempfile

    from rich.console import Console
    from rich.progress import Progress

    from lmforge.operator.local.runner import COLUMNS, StageError, complete
    from lmforge.operator.stages import STAGES
    from lmforge.operator.stages.base import Store, storage

    resources, problems = validate(args.file)
    datasets = [r for _, r in resources if r.kind == "Dataset"]
    for problem in problems:
        print(problem, file=sys.stderr)
    if problems or len(datasets) != 1:
        if not problems:
            print(f"{args.file}: expected one Dataset, found {len(datasets)}", file=sys.stderr)
        return 1
    dataset = datasets[0]
    if args.output:
        output = dataset.spec.output.model_copy(update={"uri": args.output})
        dataset = dataset.model_copy(
            update={"spec": dataset.spec.model_copy(update={"output": output})}
        )
    stage, console = STAGES["Dataset"], Console()
    description = stage.describe(
        dataset, {}, storage(dataset.spec.storage, Store(default_storage()))
    )
    status = dataset.status_class()(lineage=description.lineage)
    try:
        with tempfile.TemporaryDirectory() as folder, Progress(*COLUMNS, console=console) as bars:
            events = complete(stage, description, Path(folder), status, bars, dataset.metadata.name)
    except StageError as error:
        print(f"{args.file}: Dataset/{dataset.metadata.name}: {error.message}", file=sys.stderr)
        return 1
    console.print(data_summary(latest(events, DONE), description.config.output_uri))
    return 0


def data_why(args: argparse.Namespace) -> int:
    """The answer is read by the data job's module (the data extra: pyarrow), in this place."""
    command = [sys.executable, "-m", "lmforge.jobs.data.audit", args.dataset, args.id]
    command += ["--endpoint-url", args.endpoint_url] if args.endpoint_url else []
    os.execv(sys.executable, command)


def data_summary(done: dict, output_uri: str):
    """The table `lmforge data run` prints: each split's figures from the job's done event."""
    from rich.table import Table

    table = Table(title=f"Dataset at {output_uri}", show_header=True)
    for column in ("split", "documents", "sequences", "tokens", "shards"):
        table.add_column(column, justify="left" if column == "split" else "right")
    for name, split in done["splits"].items():
        table.add_row(name, f"{split['documents']:,}", f"{split['sequences']:,}",
                      f"{split['tokens']:,}", str(split["shards"]))  # fmt: skip
    seconds = done.get("seconds")
    took = f"{seconds:.1f} s" if seconds is not None else "already complete: nothing to do"
    table.caption = (
        f"vocabulary {done['vocabSize']:,}, sequences of {done['sequenceLength']} tokens,"
        f" {took}; audit.json has the details"
    )
    return table


def run_command(args: argparse.Namespace) -> int:
    from rich.console import Console

    from lmforge.operator.local import report
    from lmforge.operator.local.graph import GraphError, order
    from lmforge.operator.local.runner import Runner
    from lmforge.operator.local.state import State

    located, problems = validate(args.file)
    where = {(r.kind, r.metadata.name): file for file, r in located}
    try:
        ordered = order([r for _, r in located], where) if not problems else []
    except GraphError as error:
        problems += error.problems
    for problem in problems:
        print(problem, file=sys.stderr)
    if problems:
        print("nothing was run", file=sys.stderr)
        return 1
    console, state = Console(), State(args.state)
    runner = Runner(state, console)
    # SIGTERM (`timeout`, a service manager) stops the run as Ctrl-C does: the stage in progress
    # checkpoints and the servers stop. Left to the default, we would die and leave the trainer
    # and the servers, which run in sessions of their own, behind.
    previous = signal.signal(signal.SIGTERM, _interrupt)
    code = 130
    try:
        try:
            code = runner.run(ordered)
        except KeyboardInterrupt:
            console.print("stopped; `lmforge run` again continues where this run stopped")
        console.print(f"report: {report.write(state)}")
        if code == 0 and runner.servers and not args.no_serve:
            for name, _, endpoint in runner.servers:
                console.print(
                    f"Deployment/{name}: serving at {endpoint} (OpenAI API); Ctrl-C stops"
                )
            runner.servers[0][1].wait()
    except KeyboardInterrupt:
        pass
    finally:  # a second Ctrl-C or SIGTERM must not cut this short and orphan a server
        interrupt = signal.signal(signal.SIGINT, signal.SIG_IGN)
        signal.signal(signal.SIGTERM, signal.SIG_IGN)
        for _, process, _ in runner.servers:
            process.terminate()
        for _, process, _ in runner.servers:
            try:
                process.wait(30)
            except subprocess.TimeoutExpired:
                process.kill()
        signal.signal(signal.SIGINT, interrupt)
        signal.signal(signal.SIGTERM, previous)
    return code


def _interrupt(signum: int, frame) -> None:
    raise KeyboardInterrupt


def get_command(args: argparse.Namespace) -> int:
    from lmforge.operator.local.show import kind_named, table
    from lmforge.operator.local.state import State

    state = State(args.state)
    kinds = [kind_named(args.kind)] if args.kind else list(KINDS)
    if None in kinds:
        print(f"unknown kind {args.kind!r}: use one of {', '.join(KINDS)}", file=sys.stderr)
        return 1
    shown = [(k, state.all(k)) for k in kinds]
    shown = [(k, objects) for k, objects in shown if objects]
    if not shown:
        print(f"No resources found in {args.state}.")
    print("\n\n".join(table(objects, k) for k, objects in shown))
    return 0


def describe_command(args: argparse.Namespace) -> int:
    from lmforge.operator.local.show import describe, kind_named
    from lmforge.operator.local.state import State

    kind_text, _, name = args.resource.partition("/")
    kind = kind_named(kind_text)
    record = State(args.state).get(kind, name) if kind and name else None
    if record is None:
        print(f"{args.resource}: not found in {args.state} (use KIND/NAME)", file=sys.stderr)
        return 1
    print(describe(record))
    return 0


def lineage_command(args: argparse.Namespace) -> int:
    from lmforge.operator import lineage
    from lmforge.operator.local.show import kind_named
    from lmforge.operator.local.state import State

    objects = lineage.from_cluster(args.namespace) if args.kube else State(args.state).all()
    where = (
        f"namespace {args.namespace}"
        if args.kube and args.namespace
        else ("the cluster" if args.kube else str(args.state))
    )
    if args.source:
        found = lineage.built_from(objects, args.source)
        for obj, via in found:
            print(f"{lineage.key(obj)}  <- {via}")
        if not found:
            print(f"nothing in {where} was built from {args.source}", file=sys.stderr)
        return 0 if found else 1
    kind_text, _, name = (args.resource or "").partition("/")
    kind = kind_named(kind_text)
    if not kind or not name:
        print("give KIND/NAME (e.g. pretrainjob/stdlib-tiny) or --source URI", file=sys.stderr)
        return 2
    try:
        print(lineage.tree(objects, kind, name))
    except LookupError as error:
        print(f"{error} in {where}", file=sys.stderr)
        return 1
    return 0


def serve_command(args: argparse.Namespace) -> int:
    """The server is a job (the serve extra: torch, fastapi): run its module in this process's
    place, as a Deployment's pod runs it."""
    os.execv(sys.executable, [sys.executable, "-m", "lmforge.jobs.serve", *args.serve_args])


def operator_command(args: argparse.Namespace) -> int:
    from lmforge.operator.main import main as operator_main  # the operator extra: kopf, kubernetes

    return operator_main(args.operator_args)


def default_storage() -> str:
    """Object storage when a spec names none: a folder under the working directory."""
    return (Path.cwd() / ".lmforge" / "storage").as_uri()


def parser() -> argparse.ArgumentParser:
    top = argparse.ArgumentParser(
        prog="lmforge",
        description="Build a large language model from the ground up, on Kubernetes or here.",
    )
    top.add_argument("--version", action="version", version=f"lmforge {version('lmforge')}")
    commands = top.add_subparsers(dest="command", required=True, metavar="COMMAND")

    sub = commands.add_parser("crds", help="generate the CRDs and API reference from the models")
    sub.add_argument("--check", action="store_true", help="fail if the files are out of date")
    sub.add_argument("--dir", type=Path, default=Path("manifests/crds"))
    sub.add_argument("--chart-dir", type=Path, default=Path("helm/lmforge/crds"))
    sub.add_argument("--docs", type=Path, default=Path("docs/api.md"))
    sub.set_defaults(run=crds)

    sub = commands.add_parser("validate", help="check resource files without a cluster")
    sub.add_argument(
        "-f",
        "--file",
        type=Path,
        action="append",
        required=True,
        help="a YAML file or a folder of them (repeatable)",
    )
    sub.set_defaults(run=validate_command)

    data = commands.add_parser("data", help="run the Dataset job here").add_subparsers(
        dest="data_command", required=True, metavar="COMMAND"
    )
    sub = data.add_parser("run", help="build a Dataset's shards from its sources")
    sub.add_argument("-f", "--file", type=Path, required=True, help="a file with one Dataset")
    sub.add_argument("--output", help="output URI (default: spec.output.uri, else under storage)")
    sub.set_defaults(run=data_run)
    sub = data.add_parser("why", help="why a document is not in a Dataset (its audit row)")
    sub.add_argument("dataset", help="the Dataset's status.manifestURI, or its folder")
    sub.add_argument("id", help="the document's id, as audit.json and the removed/ rows name it")
    sub.add_argument("--endpoint-url", help="the S3 endpoint, when the URI is s3://")
    sub.set_defaults(run=data_why)

    sub = commands.add_parser("run", help="run resources here, in reference order (the quickstart)")
    sub.add_argument("-f", "--file", type=Path, required=True, help="a YAML file or a folder")
    sub.add_argument(
        "--no-serve", action="store_true", help="stop Deployments' servers once all stages ran"
    )
    sub.add_argument(
        "--state", type=Path, default=Path(".lmforge"), help="state and storage folder"
    )
    sub.set_defaults(run=run_command)

    sub = commands.add_parser("get", help="list resources run here, as kubectl get does")
    sub.add_argument("kind", nargs="?", help="a kind, plural or short name (default: all)")
    sub.add_argument("--state", type=Path, default=Path(".lmforge"))
    sub.set_defaults(run=get_command)

    sub = commands.add_parser("describe", help="one resource run here, as kubectl describe does")
    sub.add_argument("resource", help="KIND/NAME, e.g. pretrainjob/stdlib-tiny")
    sub.add_argument("--state", type=Path, default=Path(".lmforge"))
    sub.set_defaults(run=describe_command)

    sub = commands.add_parser(
        "lineage", help="what a resource was built from, or (--source) all built from a source"
    )
    sub.add_argument("resource", nargs="?", help="KIND/NAME, e.g. pretrainjob/stdlib-tiny")
    sub.add_argument("--source", metavar="URI", help="list every resource built from this source")
    sub.add_argument("--state", type=Path, default=Path(".lmforge"), help="resources run here")
    sub.add_argument("--kube", action="store_true", help="read the cluster's resources instead")
    sub.add_argument("-n", "--namespace", help="with --kube (default: all namespaces)")
    sub.set_defaults(run=lineage_command)

    sub = commands.add_parser(
        "operator", help="run the operator (kopf) against the current cluster", add_help=False
    )
    sub.add_argument(
        "operator_args",
        nargs=argparse.REMAINDER,
        help="the operator's own options (see `lmforge operator -h`: -n NAMESPACE, --liveness)",
    )
    sub.set_defaults(run=operator_command)

    sub = commands.add_parser(
        "serve",
        help="serve a model over an OpenAI-compatible API (see `lmforge serve -h`)",
        add_help=False,
    )
    sub.add_argument("serve_args", nargs=argparse.REMAINDER, help="passed to the server")
    sub.set_defaults(run=serve_command)

    sub = commands.add_parser(
        "plan", help="estimate memory, throughput and cost of a training run before it runs"
    )
    plan.add_arguments(sub)
    sub.set_defaults(run=plan.run)
    return top


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    # These parse their own options (argparse's REMAINDER drops leading options).
    if argv[:1] == ["serve"]:
        return serve_command(argparse.Namespace(serve_args=argv[1:]))
    if argv[:1] == ["operator"]:
        return operator_command(argparse.Namespace(operator_args=argv[1:]))
    args = parser().parse_args(argv)
    return args.run(args)


if __name__ == "__main__":
    sys.exit(main())
