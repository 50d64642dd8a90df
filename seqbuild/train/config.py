"""Training options and their defaults."""

from __future__ import annotations

from dataclasses import dataclass

from ..config import option


@dataclass
class TrainConfig:
    """Options of `seqbuild train`."""

    identities: str = option("", "identity dataset (Parquet folder from `seqbuild import-identities`)")
    sequences: list[str] = option([], "final datasets of seqbuild runs (RUN/dataset) used as sequence data")
    backbone: str = option("resnet27", "backbone, by registry name")
    chief_loss: str = option("lsr_sphereface", "chief loss, by registry name")
    aux_loss: str = option("dsa", "auxiliary loss, by registry name ('' = none)")
    epochs: int = option(1, "passes over the identity data", min=1)
    batch_size: int = option(128, "images per batch", min=2)
    lr: float = option(0.1, "learning rate", min=0.0)
    device: str = option("auto", "auto | cpu | cuda | cuda:N")
    out: str = option("", "checkpoint folder")
