"""`seqbuild run`: every stage of a pipeline in order, skipping what is complete for the same config.

Each stage already skips the videos whose completion marker carries its config hash. On top of that the
runner keeps, per stage, ``RUN/_pipeline/<stage>.json``: the hash of the stage's config chained with the
hashes of every stage before it, the config it was run with, and whether it finished without failures.

- Same chained hash, finished, and every video of the stage before it is done here: the stage is skipped.
- Different chained hash (its config or an earlier stage's changed): the runner logs which keys changed,
  removes the stage's completion markers (markers first, so a crash in between leaves shards incomplete
  rather than stale) and runs it again; every later stage's chained hash changes too, so they follow.
- A stage whose code is not installed is reported as not built; the stages after it are not run.
"""

from __future__ import annotations

import hashlib
import importlib
import json
import logging
import shutil
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from ..config import config_hash, to_dict
from ..errors import ConfigError
from ..layout import STAGES, RunDir
from ..memory import release_free_memory
from ..storage import write_json_atomic
from .executors import Executor, create_executor
from .loading import Pipeline, save_config

log = logging.getLogger(__name__)

STAGE_ENTRY: dict[str, str] = {
    "ingest": "seqbuild.ingest.stage:run_ingest",
    "track": "seqbuild.track.stage:run_track",
    "embed": "seqbuild.embed.stage:run_embed",
    "clean": "seqbuild.clean.stage:run_clean",
    "dedup_overlap": "seqbuild.overlap.stage:run_dedup_overlap",
}
"""Stage name -> library entry point ``module:function`` (imported when the stage runs)."""

GPU_STAGES = ("ingest", "embed")
"""Stages whose workers use a GPU when there is one (detection, embedding)."""

RUNTIME_KEYS = (
    "inputs",
    "workers",
    "device",
    "batch_size",
    "retry_failed",
    "dry_run",
    "timeout",
    "reconnect_attempts",
)
"""Config keys that say where or how fast to run, not what to compute: they do not re-run a stage."""


@dataclass
class StageResult:
    """What the runner did with one stage."""

    stage: str
    status: str  # ran | skipped | not_built | not_run
    summary: dict[str, Any] = field(default_factory=dict)
    seconds: float = 0.0
    reason: str = ""

    @property
    def failures(self) -> int:
        """Number of videos the stage reported as failed."""
        return failure_count(self.summary)


def failure_count(summary: dict[str, Any]) -> int:
    """Failed videos in a stage summary (stages report a count, a list or a dict of errors)."""
    failed = summary.get("failed", 0)
    if isinstance(failed, (list, tuple, dict, set)):
        return len(failed)
    try:
        return int(failed)
    except (TypeError, ValueError):
        return 0


def stage_function(stage: str) -> Callable[..., dict[str, Any]] | None:
    """The entry point of ``stage``, or None when its module is not part of this installation."""
    module_name, fn_name = STAGE_ENTRY[stage].split(":")
    try:
        module = importlib.import_module(module_name)
    except ModuleNotFoundError as exc:
        # Only the stage module itself being absent means "not built"; a missing dependency is an error.
        if exc.name is not None and module_name.startswith(exc.name):
            return None
        raise
    return getattr(module, fn_name, None)


def stage_config_hash(cfg: Any) -> str:
    """Hash of the keys of a stage config that change its outputs."""
    return config_hash(cfg, ignore=RUNTIME_KEYS)


def chained_hash(previous: str, stage: str, cfg: Any) -> str:
    """A stage's hash chained with the hash of the stages before it."""
    return hashlib.sha256(f"{previous}|{stage}|{stage_config_hash(cfg)}".encode()).hexdigest()[:16]


def inputs_are_fixed(inputs: list[str]) -> bool:
    """True when every input is a plain video file (folders, lists and streams can gain new videos)."""
    return all(Path(p).is_file() and not p.endswith(".txt") for p in inputs)


def state_path(run: RunDir, stage: str) -> Path:
    """Where the runner keeps what it knows about ``stage`` of ``run``."""
    return run.root / "_pipeline" / f"{stage}.json"


def read_state(run: RunDir, stage: str) -> dict[str, Any] | None:
    """The runner's record of ``stage`` (None when absent or unreadable)."""
    try:
        return json.loads(state_path(run, stage).read_text())
    except (OSError, ValueError):
        return None


def changed_keys(old: dict[str, Any], new: dict[str, Any]) -> list[str]:
    """Keys whose values differ between two config dicts, as ``key: old -> new``."""
    keys = sorted(set(old) | set(new))
    return [f"{k}: {old.get(k)!r} -> {new.get(k)!r}" for k in keys if old.get(k) != new.get(k)]


def invalidate_stage(run: RunDir, stage: str) -> None:
    """Make every video of ``stage`` incomplete: markers go first, then the stage's (and dataset's) files."""
    store = run.stage(stage)
    done = store.root / "_done"
    if done.exists():
        for marker in done.glob("*.json"):
            marker.unlink(missing_ok=True)
    for table_dir in store.root.iterdir() if store.root.exists() else []:
        if table_dir.is_dir() and not table_dir.name.startswith("_"):
            shutil.rmtree(table_dir, ignore_errors=True)
    if stage == "dedup_overlap" and run.dataset.exists():
        shutil.rmtree(run.dataset, ignore_errors=True)


def make_executor(name: str, stage: str, ray_address: str = "", workers: int = 1) -> Executor | None:
    """The executor for one stage: None lets a local stage use its own pool; Ray gets GPU shares."""
    if name == "local":
        return None
    return create_executor(name, address=ray_address, use_gpu=stage in GPU_STAGES, workers=workers)


def _summary_line(summary: dict[str, Any]) -> str:
    parts = []
    for key, value in summary.items():
        if isinstance(value, (int, float)) and not isinstance(value, bool):
            parts.append(f"{key}={value:.4g}" if isinstance(value, float) else f"{key}={value}")
    return ", ".join(parts)


def run_pipeline(
    run: str | Path,
    pipeline: Pipeline,
    executor: str | None = None,
    ray_address: str | None = None,
    progress: bool = True,
) -> list[StageResult]:
    """Run the stages of ``pipeline['run'].stages`` in order on ``run``; returns what happened to each."""
    rd = RunDir(run)
    rd.root.mkdir(parents=True, exist_ok=True)
    runcfg = pipeline["run"]
    executor_name = executor or runcfg.executor
    address = runcfg.ray_address if ray_address is None else ray_address
    unknown = [s for s in runcfg.stages if s not in STAGES]
    if unknown:
        raise ConfigError(f"run.stages: unknown stage {unknown[0]!r} (known: {', '.join(STAGES)})")
    order = sorted(runcfg.stages, key=STAGES.index)
    if order != list(runcfg.stages):
        raise ConfigError(f"run.stages: stages must be in chain order ({', '.join(STAGES)})")
    save_config(pipeline, rd.config_path)

    results: list[StageResult] = []
    previous_hash = ""
    previous_stage: str | None = None
    blocked_by: str | None = None
    for stage in runcfg.stages:
        cfg = pipeline[stage]
        chain = chained_hash(previous_hash, stage, cfg)
        previous_hash = chain
        if blocked_by is not None:
            reason = f"needs {blocked_by}, which did not complete"
            log.warning("%s: not run (%s)", stage, reason)
            results.append(StageResult(stage, "not_run", reason=reason))
            continue
        fn = stage_function(stage)
        if fn is None:
            reason = f"the {stage} stage is not built yet in this installation"
            log.warning("%s: %s", stage, reason)
            results.append(StageResult(stage, "not_built", reason=reason))
            blocked_by = stage
            continue

        config_now = {k: v for k, v in to_dict(cfg).items() if k not in RUNTIME_KEYS}
        state = read_state(rd, stage)
        store = rd.stage(stage)
        if state is not None and state.get("chain") != chain:
            diff = changed_keys(state.get("config", {}), config_now)
            why = f"config changed ({'; '.join(diff)})" if diff else "an earlier stage's config changed"
            log.warning("%s: %s since the last run: re-running %s and every later stage", stage, why, stage)
            invalidate_stage(rd, stage)
            state = None
        upstream = set(rd.stage(previous_stage).done_shards()) if previous_stage else set()
        inputs_same = stage != "ingest" or (
            (state or {}).get("inputs") == list(cfg.inputs) and inputs_are_fixed(cfg.inputs)
        )
        if (
            state is not None
            and state.get("complete")
            and inputs_same
            and upstream <= set(store.done_shards())
        ):
            log.info("%s: complete for this config, skipped", stage)
            results.append(StageResult(stage, "skipped", summary=state.get("summary", {})))
            previous_stage = stage
            continue

        record = {"stage": stage, "chain": chain, "config": config_now, "complete": False}
        if stage == "ingest":
            record["inputs"] = list(getattr(cfg, "inputs", []))
        write_json_atomic(state_path(rd, stage), record)
        log.info("%s: running (executor %s)", stage, executor_name)
        ex = make_executor(executor_name, stage, address, getattr(cfg, "workers", 1))
        start = time.perf_counter()
        try:
            summary = fn(rd.root, cfg, executor=ex, progress=progress)
        finally:
            if ex is not None:
                ex.close()
            release_free_memory()  # the next stage starts from the working set, not this one's leftovers
        seconds = time.perf_counter() - start
        result = StageResult(stage, "ran", summary=summary or {}, seconds=seconds)
        record.update(complete=result.failures == 0, summary=_jsonable(result.summary), seconds=seconds)
        write_json_atomic(state_path(rd, stage), record)
        log.info("%s: done in %.1f s (%s)", stage, seconds, _summary_line(result.summary))
        if result.failures:
            log.warning("%s: %d video(s) failed; the others were written", stage, result.failures)
        if not store.done_shards():
            blocked_by = stage
        results.append(result)
        previous_stage = stage
    return results


def _jsonable(obj: Any) -> Any:
    return json.loads(json.dumps(obj, default=str))
