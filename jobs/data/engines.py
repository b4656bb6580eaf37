"""Where the pipeline's work runs: local processes (the default) or Ray tasks. Results keep input
order. A worker that dies (the kernel's OOM killer, a signal) fails the job at once with
WorkerLost instead of leaving it waiting."""

from __future__ import annotations

import multiprocessing
import os
import signal
from collections.abc import Callable, Iterator
from multiprocessing import connection
from typing import Any

from lmforge.operator.api.dataset import Engine

LOST = (
    "a data worker died while working ({cause}); the kernel's OOM killer is the usual cause:"
    " give each worker more memory (spec.resources.memory, and spec.engine.workerMemoryMiB to"
    " match) or run fewer at once (spec.engine.workers)"
)
CRASHED = "a data worker crashed while working ({cause}): a fault in native code, not memory"


class WorkerLost(RuntimeError):
    """A worker process died mid-task."""


def workers(engine: Engine) -> int:
    return engine.workers or len(os.sched_getaffinity(0))


def run(work: Callable[[Any], Any], items: list[Any], engine: Engine) -> Iterator[Any]:
    """work(item) for every item, in order."""
    if engine.type == "ray":
        return _ray(work, items, engine)
    if len(items) == 1:
        return map(work, items)
    return _local(work, items, workers(engine))


def _local(work: Callable[[Any], Any], items: list[Any], count: int) -> Iterator[Any]:
    """Each item in a process of its own, forked when it starts (it inherits `work`, compiled
    regexes and MinHash permutations, without pickling) and gone when it ends: the memory that
    native libraries fragment over many items (tokenizers, Arrow: 5-10 MiB a batch here) goes
    back with it, so a worker's peak does not grow with the corpus. Plain processes and pipes,
    so nothing else runs in this process when it forks; and a dead worker is noticed at once
    (multiprocessing.Pool replaces a killed worker and waits for its task forever). Not in a
    process that has run Ray: what Ray leaves behind crashes forked children (SIGSEGV), so a
    job runs one engine, in a process of its own."""
    context = multiprocessing.get_context("fork")
    running: dict[
        int, tuple[Any, Any]
    ] = {}  # item index -> (process, the pipe its result comes by)
    done: dict[int, Any] = {}
    started = given = 0
    try:
        while given < len(items):
            while len(running) < count and started < len(items):
                receiver, sender = context.Pipe(duplex=False)
                process = context.Process(target=_child, args=(work, items[started], sender))
                process.start()
                sender.close()
                running[started] = process, receiver
                started += 1
            ready = set(connection.wait([r for _, r in running.values()]))
            for index, (process, receiver) in list(running.items()):
                if receiver in ready:
                    del running[index]
                    done[index] = _received(process, receiver)
            while given in done:
                yield done.pop(given)
                given += 1
    finally:
        for process, _ in running.values():
            process.kill()
            process.join()


def _child(work: Callable[[Any], Any], item: Any, sender) -> None:
    try:
        result = True, work(item)
    except BaseException as error:  # the job fails with it, in the parent
        result = False, error
    sender.send(result)
    sender.close()


def _received(process, receiver) -> Any:
    """The item's result, or its error raised here; WorkerLost if the process died first."""
    try:
        ok, value = receiver.recv()
    except EOFError:  # it closed the pipe without a result: killed
        process.join()
        code = process.exitcode
        cause = signal.Signals(-code).name if code and code < 0 else f"exit code {code}"
        message = CRASHED if cause in ("SIGSEGV", "SIGBUS", "SIGABRT") else LOST
        raise WorkerLost(message.format(cause=cause)) from None
    finally:
        receiver.close()
    process.join()
    if not ok:
        raise value
    return value


def _ray(work: Callable[[Any], Any], items: list[Any], engine: Engine) -> Iterator[Any]:
    """Ray tasks, `workers` at a time, results in input order. Joins the cluster at RAY_ADDRESS
    (a KubeRay head, say) when set; otherwise starts Ray on this machine and stops it after.
    Plain tasks rather than Ray Data's map: on two CPUs its streaming executor kept one of them
    idle for most of a pass (benchmarks/data_ray.py)."""
    try:
        import ray
    except ImportError as error:
        raise ValueError("spec.engine.type: ray needs Ray: pip install 'lmforge[ray]'") from error
    started = not ray.is_initialized()
    if started:
        local = {} if os.environ.get("RAY_ADDRESS") else {"num_cpus": workers(engine)}
        ray.init(include_dashboard=False, log_to_driver=False, **local)
    try:
        task = ray.remote(max_retries=0)(lambda index: work(items[index]))
        running: dict[Any, int] = {}  # a task's result -> its item
        finished: dict[int, Any] = {}  # done, waiting for an earlier item
        submitted = returned = 0
        while returned < len(items):
            while submitted < len(items) and len(running) < workers(engine):
                running[task.remote(submitted)] = submitted
                submitted += 1
            (ref,), _ = ray.wait(list(running), num_returns=1)
            try:
                finished[running.pop(ref)] = ray.get(ref)
            except (ray.exceptions.WorkerCrashedError, ray.exceptions.OutOfMemoryError) as error:
                raise WorkerLost(LOST.format(cause=type(error).__name__)) from error
            while returned in finished:
                yield finished.pop(returned)
                returned += 1
    finally:
        if started:
            ray.shutdown()
