"""The trainer as a stage of a run, for `seqbuild run` pipelines that end with training."""

from __future__ import annotations

from dataclasses import replace
from pathlib import Path
from typing import Any

from ..executors import Executor
from ..layout import RunDir
from .config import TrainConfig
from .trainer import run_train


def run_train_stage(
    run: str | Path, cfg: TrainConfig, executor: Executor | None = None, progress: bool = True
) -> dict[str, Any]:
    """Train on RUN's final dataset (unless ``cfg.sequences`` names others); checkpoints in RUN/train
    unless ``cfg.out`` is set. The executor is unused: training runs in this process (or under torchrun)."""
    rundir = RunDir(run)
    sequences = cfg.sequences or [str(rundir.dataset)]
    out = cfg.out or str(rundir.root / "train")
    return run_train(replace(cfg, sequences=sequences, out=out), progress=progress)
