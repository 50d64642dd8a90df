"""Tracking options and their defaults."""

from __future__ import annotations

from dataclasses import dataclass

from ..config import option


@dataclass
class TrackConfig:
    """Options of `seqbuild track`."""

    tracker: str = option("kalman", "tracker, by registry name (kalman | greedy_iou)")
    min_iou: float = option(0.3, "IoU gate between a track's predicted box and a detection", min=0.0, max=1.0)
    max_age: int = option(3, "detector passes without a match before a track ends", min=1)
    min_hits: int = option(1, "matched detections before a track is born", min=1)
    max_scale_jump: float = option(0.35, "relative change of face size the filter may not explain", min=0.0)
    min_faces: int = option(5, "sequences with fewer faces are removed as too_short", min=1)
    workers: int = option(1, "videos processed in parallel", min=1)
