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
    # bf16 moves each vector by at most 1 - cosine 2e-4 from fp32 on real faces and kept every decision
    # of clean and dedup-overlap on the benchmark broadcasts (docs/benchmarks.md), at 4x fp32's speed on
    # a CPU with AMX. The precision used is part of the output hash, so a run made with fp32 is not
    # mixed with one made with bf16.
    precision: str = option(
        "auto",
        "arithmetic of the network: auto = fp16 on CUDA, bf16 on a CPU with native bfloat16 (AMX or "
        "AVX512-BF16), else fp32 | fp32 | bf16 | fp16 (CUDA)",
        choices=("auto", "fp32", "bf16", "fp16"),
    )
    workers: int = option(
        0,
        "videos (or parts of videos) embedded in parallel (0 = one per CPU, at most one per 1,000 faces)",
        min=0,
        affects_output=False,
    )
    # As for ingest's MTCNN: two intra-op threads per process gain little over one on a quiet 2-core
    # machine and lose 5-10x on a loaded one (threads waiting for each other at every layer).
    threads: int = option(
        1, "torch CPU threads per worker (0 = torch's default, one per core)", min=0, affects_output=False
    )
