"""Executors that map a stage's per-video function over videos: `local` (process pool) and `ray`.

A stage hands an executor a picklable top-level function and a list of work items; the function
writes its own shard and returns a small summary. The stage's code is the same under every executor.
"""

from __future__ import annotations

import multiprocessing as mp
from collections.abc import Callable, Iterable, Iterator
from concurrent.futures import ProcessPoolExecutor, as_completed
from typing import Any

from .memory import call_and_release
from .registry import Registry

EXECUTORS: Registry[Executor] = Registry("executor")


class Executor:
    """Runs ``fn(item)`` for every item and yields ``(item, result)`` as each finishes."""

    def map(self, fn: Callable[[Any], Any], items: Iterable[Any]) -> Iterator[tuple[Any, Any]]:
        """Yield ``(item, fn(item))`` pairs in completion order."""
        raise NotImplementedError

    def close(self) -> None:
        """Release workers."""


@EXECUTORS.register("local")
class LocalExecutor(Executor):
    """In-process for one worker, else a spawn-context process pool (safe with CUDA and threads)."""

    def __init__(self, workers: int = 1, **_: Any) -> None:
        self.workers = max(1, int(workers))

    def map(self, fn: Callable[[Any], Any], items: Iterable[Any]) -> Iterator[tuple[Any, Any]]:
        items = list(items)
        if self.workers == 1 or len(items) <= 1:
            for item in items:
                yield item, call_and_release(fn, item)
            return
        ctx = mp.get_context("spawn")
        with ProcessPoolExecutor(max_workers=min(self.workers, len(items)), mp_context=ctx) as pool:
            futures = {pool.submit(call_and_release, fn, item): item for item in items}
            for fut in as_completed(futures):
                yield futures[fut], fut.result()


def create_executor(name: str = "local", **kwargs: Any) -> Executor:
    """The executor registered as ``name`` (``ray`` is imported only when asked for)."""
    if name == "ray" and "ray" not in EXECUTORS:
        from . import ray_executor  # noqa: F401  (registers "ray")
    return EXECUTORS.create(name, **kwargs)
