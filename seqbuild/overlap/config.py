"""Gallery and dedup-overlap options and their defaults."""

from __future__ import annotations

from dataclasses import dataclass

from ..config import option


@dataclass
class OverlapConfig:
    """Options of `seqbuild dedup-overlap`."""

    galleries: list[str] = option([], "gallery folders (built by `seqbuild gallery build`) or image folders")
    thresholds: list[float] = option([], "one cosine threshold per gallery; empty = the embedder's default")
    index: str = option("flat", "FAISS index: flat (exact) | ivf", choices=("flat", "ivf"))
    per_face: bool = option(False, "also search every face, not only sequence centres")
