"""Every stage declared once, as data: the runner, the CLI, the run layout and the executors read it here.

A :class:`StageSpec` names a stage, its config section and class, the tables it reads and writes, its
entry point (``module:function``, imported only when the stage runs) and whether it wants a GPU. The
per-video stages form the chain in the order they are declared; ``train`` consumes a run's final dataset
as a whole. Nothing else in the project lists stages: ``RunDir`` derives the run layout, ``seqbuild run``
the order, the default ``run.stages`` and the Ray resources, and the config loader the sections.
"""

from __future__ import annotations

import importlib
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from .errors import ConfigError


@dataclass(frozen=True)
class StageSpec:
    """One stage of a run."""

    name: str
    """Stage name: the folder ``RUN/<name>/``, the config section and the key of ``run.stages``."""
    help: str
    """One line on what the stage does."""
    config: str
    """``module:Class`` of the stage's config dataclass (the section ``[name]`` of a pipeline)."""
    entry: str
    """``module:function`` taking ``(run, cfg, executor=None, progress=True)`` and returning a summary."""
    reads: tuple[str, ...] = ()
    """Tables read, as ``stage/table``."""
    writes: tuple[str, ...] = ()
    """Tables written under ``RUN/<name>/`` (one Parquet file per video each)."""
    gpu: bool = False
    """Whether its workers use a GPU when there is one (Ray gives each task a GPU share)."""
    per_video: bool = True
    """Per-video work with completion markers (part of the chain); False for whole-dataset stages."""
    cli: str = ""
    """``module:command`` of the stage's click command (its stage-specific flags)."""
    check: str = ""
    """``module:function`` taking ``(run, cfg)`` that raises a SeqbuildError for inputs the stage cannot use
    (no sources, a broken gallery); run before anything of the stage is invalidated, so that a bad input
    never costs the outputs already written."""

    @property
    def command(self) -> str:
        """The CLI command of the stage."""
        return self.name.replace("_", "-")

    def config_class(self) -> type:
        """The stage's config dataclass."""
        return _load(self.config)

    def entry_point(self) -> Callable[..., Any]:
        """The stage's library entry point."""
        return _load(self.entry)

    def cli_command(self) -> Any:
        """The stage's click command."""
        return _load(self.cli)

    def check_inputs(self, run: Any, cfg: Any) -> None:
        """Refuse inputs the stage cannot use (a no-op for stages without a check)."""
        if self.check:
            _load(self.check)(run, cfg)


def _load(ref: str) -> Any:
    module, name = ref.split(":")
    return getattr(importlib.import_module(module), name)


SPECS: tuple[StageSpec, ...] = (
    StageSpec(
        "ingest",
        "decode videos and streams, find shots, detect faces and align them",
        "seqbuild.ingest.config:IngestConfig",
        "seqbuild.ingest.stage:run_ingest",
        reads=(),
        writes=("videos", "shots", "detections", "removals"),
        gpu=True,
        cli="seqbuild._cli.ingest:ingest",
        check="seqbuild.ingest.stage:check_inputs",
    ),
    StageSpec(
        "track",
        "link each shot's detections into single-person sequences",
        "seqbuild.track.config:TrackConfig",
        "seqbuild.track.stage:run_track",
        reads=("ingest/detections", "ingest/shots"),
        writes=("assignments", "sequences", "removals"),
        cli="seqbuild._cli.track:track",
    ),
    StageSpec(
        "embed",
        "one L2-normalised face embedding per tracked face",
        "seqbuild.embed.config:EmbedConfig",
        "seqbuild.embed.stage:run_embed",
        reads=("ingest/detections", "track/assignments"),
        writes=("embeddings",),
        gpu=True,
        cli="seqbuild._cli.clean:embed",
    ),
    StageSpec(
        "clean",
        "remove low-quality, noisy, near-duplicate and rerun faces and sequences",
        "seqbuild.clean.config:CleanConfig",
        "seqbuild.clean.stage:run_clean",
        reads=(
            "ingest/detections",
            "ingest/shots",
            "track/assignments",
            "track/sequences",
            "embed/embeddings",
        ),
        writes=("assignments", "sequences", "removals"),
        cli="seqbuild._cli.clean:clean",
    ),
    StageSpec(
        "dedup_overlap",
        "remove identities found in reference galleries and write the dataset",
        "seqbuild.overlap.config:OverlapConfig",
        "seqbuild.overlap.stage:run_dedup_overlap",
        reads=("clean/assignments", "clean/sequences", "embed/embeddings", "ingest/detections"),
        writes=("assignments", "sequences", "removals"),
        cli="seqbuild._cli.overlap:dedup_overlap",
        check="seqbuild.overlap.stage:check_inputs",
    ),
    StageSpec(
        "train",
        "train a SeqFace model on the run's dataset and an identity set",
        "seqbuild.train.config:TrainConfig",
        "seqbuild.train.stage:run_train_stage",
        reads=("dataset/faces", "dataset/sequences"),
        writes=(),
        gpu=True,
        per_video=False,
        cli="seqbuild._cli.train:train",
    ),
)

EXTRA_SECTIONS: dict[str, str] = {
    "run": "seqbuild.pipeline.config:RunConfig",
    "import_identities": "seqbuild.train.config:ImportConfig",
}
"""Config sections that belong to no stage (``seqbuild run`` itself, ``seqbuild import-identities``)."""

_BY_NAME = {spec.name: spec for spec in SPECS}


def stage_spec(name: str) -> StageSpec:
    """The spec of stage ``name`` (ConfigError listing the stages otherwise)."""
    try:
        return _BY_NAME[name.replace("-", "_")]
    except KeyError:
        raise ConfigError(f"unknown stage {name!r} (stages: {', '.join(_BY_NAME)})") from None


def stage_names(per_video: bool | None = None) -> tuple[str, ...]:
    """Stage names in run order (only the per-video chain, or only the others, when asked)."""
    return tuple(s.name for s in SPECS if per_video is None or s.per_video == per_video)


CHAIN: tuple[str, ...] = stage_names(per_video=True)
"""The per-video stages in order; each writes ``RUN/<stage>/`` shards."""


def sections() -> dict[str, str]:
    """Every config section -> ``module:Class`` (stages first, in run order)."""
    return {**{s.name: s.config for s in SPECS}, **EXTRA_SECTIONS}


def section_class(section: str) -> type:
    """The config class of a pipeline section."""
    return _load(sections()[section])


def previous_stage(name: str) -> str | None:
    """The per-video stage before ``name`` in the chain (None for the first; the last for train)."""
    spec = stage_spec(name)
    if not spec.per_video:
        return CHAIN[-1]
    i = CHAIN.index(spec.name)
    return CHAIN[i - 1] if i else None
