"""Ingest options and their defaults."""

from __future__ import annotations

from dataclasses import dataclass

from ..config import option


@dataclass
class IngestConfig:
    """Options of `seqbuild ingest`."""

    inputs: list[str] = option(
        [], "video files, folders of videos, .txt lists of paths/URLs, or stream URLs", affects_output=False
    )
    detector: str = option("mtcnn", "face detector, by registry name")
    device: str = option("auto", "auto | cpu | cuda | cuda:N", choices=None, affects_output=False)
    # 8 frames is 0.27-0.32 s at broadcast rates (25-30 fps): short enough for a constant-velocity
    # tracker to bridge and for any person on screen for 2 s to be seen several times (each shot's first
    # frame is always searched as well); sparse enough that 720p broadcast ingests at 3.8x real time on
    # 2 CPU cores (decoding and cut detection, not MTCNN, are then most of the cost). Consecutive frames
    # are near duplicates, which clean would remove anyway. See docs/benchmarks.md for the measurements.
    detect_every: int = option(
        8, "run the detector on every k-th frame of a shot (and always on a shot's first frame)", min=1
    )
    # A face whose MTCNN box is 60 px is enlarged about 1.6x into the 144x144 crop (a box there is about
    # 96 px: the template's eye distance is 40 px, a box is about 2.4 eye distances): smaller faces give
    # mostly interpolated crops and less reliable landmarks, so they are neither searched for nor kept.
    min_face: int = option(
        60, "smallest face (square root of the box area) in source pixels, searched and kept", min=12
    )
    threshold: float = option(0.95, "MTCNN face probability threshold", min=0.0, max=1.0)
    max_side: int = option(
        1280, "frames larger than this (longest side) are downscaled before detection", min=64
    )
    # On a CPU, batches of 8 720p frames were as fast as 16 and peaked 170-200 MiB lower (the detector's
    # intermediate tensors), with the same detections; on CUDA larger batches keep the GPU busy.
    batch_size: int = option(
        0, "frames per detector batch (0 = 8 on the CPU, 16 on CUDA)", min=0, affects_output=False
    )
    crop_size: int = option(144, "side of the aligned square crop", min=32)
    jpeg_quality: int = option(95, "JPEG quality of stored crops", min=10, max=100)
    shot_detector: str = option("transitions", "shot transition detector, by registry name")
    # In standard deviations of the standardised 32-px thumbnail (or 1 - colour-histogram intersection):
    # cuts between different shots measure 0.4-1.2 on the developer broadcasts, steps inside a shot
    # under 0.05, and a talking-head clip that jumps back to its first frame about 0.2.
    cut_threshold: float = option(
        0.3,
        "content change (standardised thumbnail or colour histogram) that makes a cut, in one step or over a dissolve",
        min=0.0,
        max=2.0,
    )
    max_transition: int = option(
        48, "longest dissolve or fade half found, in frames (1.9 s at 25 fps)", min=8, max=400
    )
    workers: int = option(
        0,
        "videos (or parts of long videos) processed in parallel (0 = one per CPU, at most one per "
        "minute of video)",
        min=0,
        affects_output=False,
    )
    # Parts own the shots that start in them and are merged into the video's one shard, with the
    # frames, shots and faces a reading of the whole file gives (tests check it; the merge checks that
    # the parts tile the video and reads the file whole otherwise): the output does not change.
    split_segments: int = option(
        0,
        "split each video file into this many parts, read in parallel from keyframes and merged into its "
        "one shard (0 = automatic: parts of at most split_minutes, and a long file shares the workers when "
        "there are few files; 1 = never split)",
        min=0,
        affects_output=False,
    )
    split_minutes: float = option(
        30.0,
        "automatic splitting: longest part of a file in minutes (0 = no limit); parts are at least 1 minute",
        min=0.0,
        affects_output=False,
    )
    # MTCNN's small convolutions gain little from intra-op threads: one torch thread per worker used
    # 30-40 ms of CPU per 720p frame here against 90-110 ms with two (spinning, contended threads),
    # and decoding already runs in its own thread beside the detector.
    threads: int = option(
        1, "torch CPU threads per worker for detection (0 = torch's default)", min=0, affects_output=False
    )
    retry_failed: bool = option(
        False,
        "read again the sources that failed before (this command only: a run does not remember it)",
        affects_output=False,
        remember=False,
    )
    duration: float = option(
        0.0, "live streams: stop after this many seconds (0 = until the stream ends)", min=0.0
    )
    segment_seconds: float = option(60.0, "live streams: commit a segment every this many seconds", min=1.0)
    reconnect_attempts: int = option(
        5, "live streams: reconnections tried after a drop", min=0, affects_output=False
    )
    timeout: float = option(10.0, "network timeout in seconds for URLs", min=0.1, affects_output=False)
