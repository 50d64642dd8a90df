"""Embedding options and their defaults."""

from __future__ import annotations

from dataclasses import dataclass

from ..config import option


@dataclass
class EmbedConfig:
    """Options of `seqbuild embed`."""

    model: str = option(
        "facenet",
        "embedder, by registry name (facenet | seqface) or onnx:PATH (an insightface-style ONNX model)",
    )
    weights: str = option("", "weights file; empty = the model's default (offline FaceNet for facenet)")
    device: str = option("auto", "auto | cpu | cuda | cuda:N", affects_output=False)
    batch_size: int = option(
        0,
        "crops per forward pass; 0 = 16 on the CPU (least memory, no slower), 256 on CUDA",
        min=0,
        affects_output=False,
    )
    normalisation: str = option(
        "fixed",
        "facenet input standardisation: fixed = (x - 127.5) / 128 as the model was trained | prewhiten",
        choices=("fixed", "prewhiten"),
    )
    workers: int = option(1, "videos processed in parallel", min=1, affects_output=False)
