"""Where per-file work runs: local processes (the default) or Ray Data. Results keep input order."""

from __future__ import annotations

import multiprocessing
import os
import pickle
from collections.abc import Callable, Iterator
from typing import Any

from lmforge.operator.api.dataset import Engine

_work: Callable[[Any], Any] | None = None


def _install(work: Callable[[Any], Any]) -> None:
    global _work
    _work = work


def _call(item: Any) -> Any:
    return _work(item)


def workers(engine: Engine) -> int:
    return engine.workers or len(os.sched_getaffinity(0))


def run(work: Callable[[Any], Any], items: list[Any], engine: Engine) -> Iterator[Any]:
    """work(item) for every item, in order."""
    if engine.type == "ray":
        return _ray(work, items, engine)
    if workers(engine) == 1 or len(items) == 1:
        return map(work, items)
    return _local(work, items, workers(engine))


def _local(work: Callable[[Any], Any], items: list[Any], count: int) -> Iterator[Any]:
    # fork: the workers inherit `work` (compiled regexes, MinHash permutations) without pickling.
    context = multiprocessing.get_context("fork")
    with context.Pool(min(count, len(items)), initializer=_install, initargs=(work,)) as pool:
        yield from pool.imap(_call, items)


def _ray(work: Callable[[Any], Any], items: list[Any], engine: Engine) -> Iterator[Any]:
    """Ray Data over the item indices, order preserved. Joins the cluster at RAY_ADDRESS (a
    KubeRay head, say) when set; otherwise starts Ray on this machine and stops it after."""
    try:
        import ray
    except ImportError as error:
        raise ValueError("spec.engine.type: ray needs Ray: pip install 'lmforge[ray]'") from error
    started = not ray.is_initialized()
    if started:
        local = {} if os.environ.get("RAY_ADDRESS") else {"num_cpus": workers(engine)}
        ray.init(include_dashboard=False, log_to_driver=False, **local)
    try:
        ray.data.DataContext.get_current().execution_options.preserve_order = True
        dataset = ray.data.range(len(items), override_num_blocks=len(items))
        results = dataset.map(
            lambda row: {"result": pickle.dumps(work(items[row["id"]]))},
            concurrency=workers(engine),
        )
        for row in results.iter_rows():
            yield pickle.loads(row["result"])
    finally:
        if started:
            ray.shutdown()
