"""Options of `seqbuild run` itself (the stage sections are declared in :mod:`seqbuild.stages`)."""

from __future__ import annotations

from dataclasses import dataclass

from ..config import option
from ..stages import CHAIN


@dataclass
class RunConfig:
    """Options of `seqbuild run` that are not a stage's."""

    stages: list[str] = option(list(CHAIN), 'stages to run, in order (add "train" to train on the dataset)')
    executor: str = option("local", "local | ray", choices=("local", "ray"), affects_output=False)
    ray_address: str = option(
        "",
        "Ray cluster address ('auto' joins a running cluster; empty = start one here)",
        affects_output=False,
    )
    log_level: str = option(
        "INFO",
        "DEBUG | INFO | WARNING | ERROR",
        choices=("DEBUG", "INFO", "WARNING", "ERROR"),
        affects_output=False,
    )
