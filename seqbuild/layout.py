"""The run directory: where each stage reads and writes (docs/dataset-format.md shows the tree)."""

from __future__ import annotations

from pathlib import Path

from .errors import InputError
from .storage import ShardStore

STAGES = ("ingest", "track", "embed", "clean", "dedup_overlap")
"""Stages of the chain in order; each writes ``RUN/<stage>/``."""


class RunDir:
    """Paths of one run: ``RUN/<stage>/<table>/<video_id>.parquet`` shards plus the final ``RUN/dataset``."""

    def __init__(self, root: str | Path) -> None:
        self.root = Path(root)

    def stage(self, name: str) -> ShardStore:
        """The shard store of stage ``name``."""
        if name not in STAGES:
            raise ValueError(f"unknown stage {name!r}")
        return ShardStore(self.root / name)

    @property
    def ingest(self) -> ShardStore:
        """Ingest output: videos, shots, detections (with crops)."""
        return self.stage("ingest")

    @property
    def track(self) -> ShardStore:
        """Track output: assignments, sequences, removals."""
        return self.stage("track")

    @property
    def embed(self) -> ShardStore:
        """Embed output: embeddings keyed by face_id."""
        return self.stage("embed")

    @property
    def clean(self) -> ShardStore:
        """Clean output: assignments and sequences that survived, removals."""
        return self.stage("clean")

    @property
    def dedup_overlap(self) -> ShardStore:
        """Dedup-overlap output: assignments and sequences that survived, removals."""
        return self.stage("dedup_overlap")

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
