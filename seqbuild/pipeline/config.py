"""Run-level options and the map from config sections to stage config classes."""

from __future__ import annotations

import importlib
from dataclasses import dataclass

from ..config import option


@dataclass
class RunConfig:
    """Options of `seqbuild run` that are not a stage's."""

    stages: list[str] = option(
        ["ingest", "track", "embed", "clean", "dedup_overlap"], "stages to run, in order"
    )
    executor: str = option("local", "local | ray", choices=("local", "ray"))
    ray_address: str = option(
        "", "Ray cluster address ('auto' joins a running cluster; empty = start one here)"
    )
    log_level: str = option(
        "INFO", "DEBUG | INFO | WARNING | ERROR", choices=("DEBUG", "INFO", "WARNING", "ERROR")
    )


SECTIONS: dict[str, str] = {
    "run": "seqbuild.pipeline.config:RunConfig",
    "ingest": "seqbuild.ingest.config:IngestConfig",
    "track": "seqbuild.track.config:TrackConfig",
    "embed": "seqbuild.embed.config:EmbedConfig",
    "clean": "seqbuild.clean.config:CleanConfig",
    "dedup_overlap": "seqbuild.overlap.config:OverlapConfig",
    "train": "seqbuild.train.config:TrainConfig",
}
"""Pipeline TOML section -> config class ("module:Class", imported when used)."""


def section_class(section: str) -> type:
    """The config class of a pipeline section."""
    module, name = SECTIONS[section].split(":")
    return getattr(importlib.import_module(module), name)
