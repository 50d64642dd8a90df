"""One driver for every per-video stage: map the stage's work over an executor and collect one summary.

A stage plans its work as :class:`VideoTask` items (a video, the hash its output will be marked with,
the stage config and any stage-specific parameters) and hands the driver a top-level work function
``work(task) -> dict of counts``. The driver runs it under any executor, turns a seqbuild, OS or Arrow
error raised for one video into a failure of that video (the others carry on), shows a progress bar and
returns a :class:`StageSummary`, the one summary shape every stage reports.

A long video may be several items, its parts (``part`` of ``parts``): they run like any other items,
and once the last of them has returned the stage's ``merge(tasks)`` makes the video's output from
them (in the driver's process); the video counts once, with what the merge returns.
"""

from __future__ import annotations

import functools
import logging
import math
import os
from collections import Counter
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from typing import Any, TypeVar

from .errors import DiskFullError, SeqbuildError
from .executors import Executor, LocalExecutor

log = logging.getLogger("seqbuild")

T = TypeVar("T")


@dataclass(frozen=True)
class VideoTask:
    """One video's work for a stage (picklable: executors, Ray included, send it to a worker)."""

    run: str
    video: str
    key: str
    cfg: Any
    params: dict[str, Any] = field(default_factory=dict)
    part: int = 0
    """Which part of the video this item is (see ``parts``)."""
    parts: int = 1
    """Items the video's work is split into (1: the whole video in one item)."""


@dataclass
class StageSummary:
    """What a stage did: videos considered, done now, skipped as complete, failures, and summed counts."""

    stage: str
    videos: int = 0
    done: int = 0
    skipped: int = 0
    failures: list[dict[str, str]] = field(default_factory=list)
    counts: dict[str, float] = field(default_factory=dict)
    details: dict[str, Any] = field(default_factory=dict)

    @property
    def failed(self) -> int:
        """Number of videos that failed."""
        return len(self.failures)

    def fail(self, video: str, error: str) -> None:
        """Record a failed video (and log it as an error naming the video)."""
        self.failures.append({"video": video, "error": error})
        log.error("%s %s: %s", self.stage, video, error)

    def add(self, counts: dict[str, Any]) -> None:
        """Add one video's counts: numbers are summed, tables of numbers are summed key by key."""
        for key, value in counts.items():
            if isinstance(value, bool) or value is None:
                continue
            if isinstance(value, (int, float)):
                self.counts[key] = self.counts.get(key, 0) + value
            elif isinstance(value, dict):
                _merge_sum(self.details.setdefault(key, {}), value)

    def to_dict(self) -> dict[str, Any]:
        """The summary as plain data (what `seqbuild run` records and the commands print)."""
        return {
            "stage": self.stage,
            "videos": self.videos,
            "done": self.done,
            "skipped": self.skipped,
            "failed": self.failed,
            **{k: _round(v) for k, v in self.counts.items()},
            **self.details,
            "failures": list(self.failures),
        }

    def __getitem__(self, key: str) -> Any:
        return self.to_dict()[key]

    def get(self, key: str, default: Any = None) -> Any:
        """A field of :meth:`to_dict` (``default`` when absent)."""
        return self.to_dict().get(key, default)

    def line(self) -> str:
        """A one-line account: ``videos=3 done=2 skipped=1 failed=0 faces=120 ...``."""
        parts = [
            f"videos={self.videos}",
            f"done={self.done}",
            f"skipped={self.skipped}",
            f"failed={self.failed}",
        ]
        parts += [f"{k}={_round(v)}" for k, v in self.counts.items()]
        return " ".join(parts)


def _round(value: float) -> float:
    return round(value, 3) if isinstance(value, float) else value


def _merge_sum(into: dict[str, Any], more: dict[str, Any]) -> None:
    for key, value in more.items():
        if isinstance(value, dict):
            _merge_sum(into.setdefault(key, {}), value)
        elif isinstance(value, (int, float)) and not isinstance(value, bool):
            into[key] = into.get(key, 0) + value
        else:
            into[key] = value


def guarded(work: Callable[[Any], dict[str, Any]], task: Any) -> dict[str, Any]:
    """``work(task)``, with an error of the kind bad input causes returned as ``{"error": ...}``.

    A full disk is not one video's problem: it is raised, so the stage stops with one clear line
    instead of failing every remaining video the same way.
    """
    import pyarrow as pa

    try:
        return work(task)
    except DiskFullError:
        raise
    except (SeqbuildError, OSError, pa.ArrowException) as exc:
        return {"error": str(exc) or type(exc).__name__}


def drive(
    summary: StageSummary,
    tasks: Iterable[VideoTask],
    work: Callable[[VideoTask], dict[str, Any]],
    executor: Executor | None = None,
    workers: int = 1,
    progress: bool = True,
    merge: Callable[[list[VideoTask]], dict[str, Any]] | None = None,
) -> StageSummary:
    """Run ``work`` on every task (in a local pool of ``workers`` unless an executor is given); fill ``summary``.

    A result with an ``error`` key is a failed video; its other numbers are still counted (ingest writes
    a ``failed`` row for an unreadable source and reports its frames). The parts of a video (tasks with
    ``parts`` > 1) are merged by ``merge`` once all of this run's parts of it have returned without an
    error; a failed part fails its video (the parts that succeeded stay for the next run).
    """
    from tqdm.auto import tqdm

    tasks = list(tasks)
    waiting = Counter(t.video for t in tasks if t.parts > 1)
    if waiting and merge is None:
        raise ValueError("tasks with parts need a merge function")
    returned: dict[str, list[tuple[VideoTask, dict[str, Any]]]] = {}
    videos = len({t.video for t in tasks})
    own = executor is None
    executor = LocalExecutor(workers) if own else executor
    bar = tqdm(total=videos, desc=summary.stage.replace("_", "-"), unit="video", disable=not progress)

    def count(video: str, result: dict[str, Any]) -> None:
        bar.update(1)
        error = result.pop("error", None)
        summary.add(result)
        if error:
            summary.fail(video, str(error))
        else:
            summary.done += 1

    try:
        for task, result in executor.map(functools.partial(guarded, work), tasks):
            if task.parts <= 1:
                count(task.video, result)
                continue
            returned.setdefault(task.video, []).append((task, result))
            waiting[task.video] -= 1
            if waiting[task.video]:
                continue
            done = sorted(returned.pop(task.video), key=lambda tr: tr[0].part)
            errors = [f"part {t.part + 1} of {t.parts}: {r['error']}" for t, r in done if r.get("error")]
            if errors:
                count(task.video, {"error": "; ".join(errors)})
            else:
                merged = guarded(merge, [t for t, _ in done])  # type: ignore[arg-type]
                if "error" not in merged:
                    for _, result in done:  # what the parts counted, then what the merge adds
                        summary.add(result)
                count(task.video, merged)
    finally:
        bar.close()
        if own:
            executor.close()
    return summary


def usable_cpus() -> int:
    """The CPUs this process may run on (its affinity mask, else the machine's count)."""
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:  # not Linux
        return os.cpu_count() or 1


def auto_workers(requested: int, work: float, per_worker: float) -> int:
    """``requested`` when it is set (> 0); else one worker per usable CPU, but no more than one per
    ``per_worker`` units of ``work`` (a process pool costs seconds to start: short work stays in
    this process)."""
    if requested > 0:
        return requested
    return max(1, min(usable_cpus(), math.floor(work / per_worker) if per_worker > 0 else 1))


_PROCESS_CACHE: dict[tuple, Any] = {}


def process_cached(key: tuple, factory: Callable[[], T]) -> T:
    """The object made by ``factory`` for ``key``, made once per process (models in workers, never pickled)."""
    if key not in _PROCESS_CACHE:
        _PROCESS_CACHE[key] = factory()
    return _PROCESS_CACHE[key]
