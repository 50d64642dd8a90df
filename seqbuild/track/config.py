"""Tracking options and their defaults.

Every distance is relative to the face size or expressed in frames, never in pixels, so that the
same defaults hold for 360p and 4K video and for any detector spacing (ingest's ``detect_every``).
"""

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
    max_mahalanobis: float = option(
        4.5,
        "gate on the Mahalanobis distance of a detection from the filter's prediction "
        "(4 dof; 4.5 keeps ~99.95% of true matches under the motion model)",
        min=0.0,
    )
    max_landmark_shift: float = option(
        0.3,
        "gate on the mean move of the five landmarks inside the box between consecutive faces "
        "(fraction of the box side)",
        min=0.0,
    )
    ambiguity_margin: float = option(
        0.15,
        "when another pairing costs less than this much more (cost = 1 - IoU + landmark shift), "
        "the match is ambiguous and the tracks involved end rather than risk a swap",
        min=0.0,
    )
    frame_step: int = option(
        0, "frames between detector passes (0 = read from the detections' frame numbers)", min=0
    )
    min_faces: int = option(5, "sequences with fewer faces are removed as too_short", min=1)
    workers: int = option(1, "videos processed in parallel", min=1, affects_output=False)
