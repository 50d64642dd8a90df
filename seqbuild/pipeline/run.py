"""Running stages: one stage (`seqbuild ingest`, `track`, ...) or a pipeline of them (`seqbuild run`).

Both go through :func:`run_stage`, so a stage behaves the same whichever command runs it:

- it takes the stage's lock in the run folder (a second command on the same stage refuses, or waits);
- it records in ``RUN/_pipeline/<stage>.json`` the hash of the stage's output options chained with the
  record of the stage before it, the options it ran with, and whether it finished without failures;
- when that chained hash differs from the recorded one (its options or an earlier stage's changed), it
  runs the stage's input check (a broken gallery, no sources: refused with nothing lost), logs which
  options changed and makes every video of the stage incomplete (markers first, so a crash in between
  leaves shards incomplete rather than stale) before running it again;
- it merges the stage's section into ``RUN/config.toml``, the run's memory.

``seqbuild run`` also skips a stage outright when its record is complete for the same chained hash, every
video of the stage before it is done, and every output still matches the checksum in its marker; each
stage skips its own completed videos in any case. Before a stage runs, temporary files that interrupted
commands left in its folder are removed (under the lock, and only those whose writer is gone).
"""

from __future__ import annotations

import hashlib
import logging
import shutil
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from ..config import output_values, runtime_keys, to_dict
from ..driver import StageSummary
from ..errors import ConfigError
from ..executors import Executor, create_executor
from ..layout import RunDir
from ..memory import release_free_memory
from ..runstate import read_state, stage_lock, write_state
from ..stages import CHAIN, SPECS, StageSpec, stage_names, stage_spec
from ..storage import ensure_folder, remove_stale_temporaries
from .loading import Pipeline, save_config

log = logging.getLogger(__name__)


@dataclass
class StageResult:
    """What the runner did with one stage."""

    stage: str
    status: str  # ran | skipped | not_run
    summary: dict[str, Any] = field(default_factory=dict)
    seconds: float = 0.0
    reason: str = ""

    @property
    def failures(self) -> int:
        """Number of videos the stage reported as failed."""
        return int(self.summary.get("failed", 0) or 0)


def chained_hash(previous: str, spec: StageSpec, cfg: Any) -> str:
    """A stage's output-option hash chained with the chained hash of the stage before it."""
    from ..config import config_hash

    own = config_hash(output_values(cfg))
    return hashlib.sha256(f"{previous}|{spec.name}|{own}".encode()).hexdigest()[:16]


def inputs_are_fixed(inputs: list[str]) -> bool:
    """True when every input is a plain video file (folders, lists and streams can gain new videos)."""
    return all(Path(p).is_file() and not p.endswith(".txt") for p in inputs)


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
    if stage == CHAIN[-1] and run.dataset.exists():
        shutil.rmtree(run.dataset, ignore_errors=True)


def make_executor(name: str, spec: StageSpec, ray_address: str = "", workers: int = 1) -> Executor | None:
    """The executor for one stage: None lets a local stage use its own pool; Ray gets GPU shares."""
    if name == "local" or not spec.per_video:
        return None
    return create_executor(name, address=ray_address, use_gpu=spec.gpu, workers=workers)


def stage_entry(name: str) -> Any:
    """The library entry point of stage ``name`` (imported when the stage runs)."""
    return stage_spec(name).entry_point()


def _previous_chain(run: RunDir, spec: StageSpec) -> str:
    names = stage_names()
    i = names.index(spec.name)
    for earlier in reversed(names[:i]):
        state = read_state(run.root, earlier)
        if state is not None:
            return str(state.get("chain", ""))
    return ""


def _upstream_done(run: RunDir, spec: StageSpec) -> set[str]:
    if not spec.per_video:
        return set()
    i = CHAIN.index(spec.name)
    return set(run.stage(CHAIN[i - 1]).done_shards()) if i else set()


def _whole_shards(run: RunDir, stage: str) -> set[str]:
    """The stage's done shards whose outputs still match the checksums in their markers (a damaged one is
    left out with a warning, so the stage runs and redoes it instead of the next stage failing on it)."""
    store = run.stage(stage)
    return {s for s in store.done_shards() if store.is_done(s, store.marker(s).get("config_hash"))}


def run_stage(
    run: str | Path,
    name: str,
    pipeline: Pipeline,
    executor: str = "local",
    ray_address: str = "",
    progress: bool = True,
    wait: bool = False,
    skip_complete: bool = False,
) -> StageResult:
    """Run one stage of ``run`` with its section of ``pipeline`` (see the module docstring)."""
    spec = stage_spec(name)
    rd = RunDir(run)
    ensure_folder(rd.root, "run folder")
    cfg = pipeline[spec.name]
    with stage_lock(rd.root, spec.name, wait=wait):
        if spec.per_video and (rd.root / spec.name).is_dir():
            # Under the lock no other command writes this stage: what a killed run left half-written goes.
            stale = remove_stale_temporaries(rd.root / spec.name)
            if stale:
                log.info("%s: removed %d temporary file(s) left by an interrupted run", spec.name, stale)
        chain = chained_hash(_previous_chain(rd, spec), spec, cfg)
        options = output_values(cfg)
        state = read_state(rd.root, spec.name)
        if state is not None and state.get("chain") != chain:
            spec.check_inputs(rd.root, cfg)  # a bad input is refused before the old outputs are dropped
            diff = changed_keys(state.get("config", {}), options)
            why = f"options changed ({'; '.join(diff)})" if diff else "an earlier stage's options changed"
            if spec.per_video:
                log.warning(
                    "%s: %s since the last run: every video of %s is redone", spec.name, why, spec.name
                )
                invalidate_stage(rd, spec.name)
            else:
                log.warning("%s: %s since the last run", spec.name, why)
            state = None
        if skip_complete and spec.per_video and state is not None and state.get("complete"):
            inputs_same = spec.name != "ingest" or (
                state.get("inputs") == list(cfg.inputs) and inputs_are_fixed(cfg.inputs)
            )
            if inputs_same and _upstream_done(rd, spec) <= _whole_shards(rd, spec.name):
                log.info("%s: complete for these options, skipped", spec.name)
                return StageResult(spec.name, "skipped", summary=state.get("summary", {}))

        runtime = {k: v for k, v in to_dict(cfg).items() if k in runtime_keys(type(cfg))}
        record: dict[str, Any] = {
            "stage": spec.name,
            "chain": chain,
            "config": options,
            "options": to_dict(cfg),
            "runtime": runtime,
            "complete": False,
        }
        if spec.name == "ingest":
            record["inputs"] = list(cfg.inputs)
        write_state(rd.root, spec.name, record)
        save_config(pipeline, rd.config_path, [spec.name])
        log.info("%s: running (executor %s)", spec.name, executor)
        ex = make_executor(executor, spec, ray_address, getattr(cfg, "workers", 1))
        start = time.perf_counter()
        try:
            summary = stage_entry(spec.name)(rd.root, cfg, executor=ex, progress=progress)
        finally:
            if ex is not None:
                ex.close()
            release_free_memory()  # the next stage starts from the working set, not this one's leftovers
        seconds = time.perf_counter() - start
        data = summary.to_dict() if isinstance(summary, StageSummary) else dict(summary or {})
        result = StageResult(spec.name, "ran", summary=data, seconds=seconds)
        record.update(complete=result.failures == 0, summary=data, seconds=round(seconds, 3))
        write_state(rd.root, spec.name, record)
        line = summary.line() if isinstance(summary, StageSummary) else ""
        log.info("%s: done in %.1f s (%s)", spec.name, seconds, line)
        if result.failures:
            log.warning("%s: %d video(s) failed; the others were written", spec.name, result.failures)
        return result


def run_pipeline(
    run: str | Path,
    pipeline: Pipeline,
    executor: str | None = None,
    ray_address: str | None = None,
    progress: bool = True,
    wait: bool = False,
) -> list[StageResult]:
    """Run the stages of ``pipeline['run'].stages`` in order on ``run``; returns what happened to each."""
    rd = RunDir(run)
    ensure_folder(rd.root, "run folder")
    runcfg = pipeline["run"]
    executor_name = executor or runcfg.executor
    address = runcfg.ray_address if ray_address is None else ray_address
    names = [s.name for s in SPECS]
    unknown = [s for s in runcfg.stages if s not in names]
    if unknown:
        raise ConfigError(f"run.stages: unknown stage {unknown[0]!r} (known: {', '.join(names)})")
    if sorted(runcfg.stages, key=names.index) != list(runcfg.stages):
        raise ConfigError(f"run.stages: stages must be in chain order ({', '.join(names)})")
    save_config(pipeline, rd.config_path, ["run"])

    results: list[StageResult] = []
    blocked_by: str | None = None
    for name in runcfg.stages:
        if blocked_by is not None:
            reason = f"needs {blocked_by}, which did not complete"
            log.warning("%s: not run (%s)", name, reason)
            results.append(StageResult(name, "not_run", reason=reason))
            continue
        result = run_stage(
            rd.root, name, pipeline, executor_name, address, progress, wait=wait, skip_complete=True
        )
        results.append(result)
        spec = stage_spec(name)
        if spec.per_video and not rd.stage(name).done_shards():
            blocked_by = name
    return results
