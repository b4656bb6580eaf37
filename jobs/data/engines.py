"""Where per-file work runs: local processes (the default) or Ray Data. Results keep input order."""

from __future__ import annotations

import multiprocessing
import os
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
    raise ValueError("spec.engine.type: ray is not available in this version yet; use local")
