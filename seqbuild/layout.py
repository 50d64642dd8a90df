"""The run directory: where each stage reads and writes (docs/dataset-format.md shows the tree)."""

from __future__ import annotations

from pathlib import Path

from .errors import InputError
from .stages import CHAIN
from .storage import ShardStore

STAGES = CHAIN
"""Per-video stages of the chain in order (from :mod:`seqbuild.stages`); each writes ``RUN/<stage>/``."""


class RunDir:
    """Paths of one run: ``RUN/<stage>/<table>/<video_id>.parquet`` shards plus the final ``RUN/dataset``.

    Each per-video stage's store is also an attribute named after the stage (``run.ingest``, ``run.clean``).
    """

    def __init__(self, root: str | Path) -> None:
        self.root = Path(root)

    def stage(self, name: str) -> ShardStore:
        """The shard store of stage ``name`` (the last stage's shards include their files in the dataset)."""
        if name not in STAGES:
            raise ValueError(f"unknown stage {name!r}")
        linked = {"dataset": self.dataset} if name == STAGES[-1] else None
        return ShardStore(self.root / name, linked=linked)

    def __getattr__(self, name: str) -> ShardStore:
        if name in STAGES:
            return self.stage(name)
        raise AttributeError(name)

    @property
    def dataset(self) -> Path:
        """The final dataset: ``faces/``, ``sequences/``, ``removals/`` Parquet folders."""
        return self.root / "dataset"

    @property
    def config_path(self) -> Path:
        """The merged config of the last run, as TOML."""
        return self.root / "config.toml"

    @property
    def log_path(self) -> Path:
        """The run log."""
        return self.root / "logs" / "seqbuild.log"

    def require(self, stage: str, for_stage: str) -> ShardStore:
        """The store of ``stage``, or an InputError saying ``for_stage`` needs it run first."""
        store = self.stage(stage)
        if not store.done_shards():
            raise InputError(
                f"{self.root}: no completed {stage} output; run `seqbuild {stage.replace('_', '-')}` "
                f"before `seqbuild {for_stage.replace('_', '-')}`"
            )
        return store

    def resolve(self, relative: str) -> Path:
        """A path named inside a manifest, refused if it would escape the run directory."""
        root = self.root.resolve()
        path = (root / relative).resolve()
        if path != root and root not in path.parents:
            raise InputError(f"{relative!r}: path escapes the run directory {self.root}")
        return path
