"""Ingest options and their defaults."""

from __future__ import annotations

from dataclasses import dataclass

from ..config import option


@dataclass
class IngestConfig:
    """Options of `seqbuild ingest`."""

    inputs: list[str] = option([], "video files, folders of videos, .txt lists of paths/URLs, or stream URLs")
    detector: str = option("mtcnn", "face detector, by registry name")
    device: str = option("auto", "auto | cpu | cuda | cuda:N", choices=None)
    detect_every: int = option(
        5, "run the detector on every k-th frame (and on each shot's first frame)", min=1
    )
    min_face: int = option(60, "smallest face side in source pixels kept and searched for", min=12)
    threshold: float = option(0.95, "MTCNN face probability threshold", min=0.0, max=1.0)
    max_side: int = option(
        1280, "frames larger than this (longest side) are downscaled before detection", min=64
    )
    batch_size: int = option(16, "frames per detector batch", min=1)
    crop_size: int = option(144, "side of the aligned square crop", min=32)
    jpeg_quality: int = option(95, "JPEG quality of stored crops", min=10, max=100)
    shot_detector: str = option("hsv", "shot-cut detector, by registry name")
    cut_threshold: float = option(
        0.25,
        "HSV-histogram distance (0..1) that makes a cut, in one step or over a dissolve",
        min=0.0,
        max=1.0,
    )
    workers: int = option(1, "videos processed in parallel", min=1)
    retry_failed: bool = option(False, "re-run only the sources that failed before")
    duration: float = option(
        0.0, "live streams: stop after this many seconds (0 = until the stream ends)", min=0.0
    )
    segment_seconds: float = option(60.0, "live streams: commit a segment every this many seconds", min=1.0)
    reconnect_attempts: int = option(5, "live streams: reconnections tried after a drop", min=0)
    timeout: float = option(10.0, "network timeout in seconds for URLs", min=0.1)
