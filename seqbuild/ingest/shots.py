"""Shot-cut detection on small frames: HSV-histogram differences with an adaptive noise floor.

Hard cuts are single large jumps of the histogram distance between consecutive frames. Gradual
transitions (cross-dissolves, fades) are runs of moderately raised consecutive distances whose
accumulated change, measured against the frame before the run, becomes large: the twin-comparison
idea of Zhang et al. (1993). After a cut, the detector stays "in transition" until the picture is
quiet again, so a dissolve whose start or end jumps in the histogram counts as one cut, while a short
shot that starts and ends with hard cuts still gives two.
"""

from __future__ import annotations

from collections import deque
from dataclasses import dataclass

import cv2
import numpy as np

from ..registry import Registry

SHOT_DETECTORS: Registry[ShotDetector] = Registry("shot detector")

THUMB_WIDTH = 128
"""Width of the thumbnails the detector reads (height keeps the aspect ratio)."""


def thumbnail_size(width: int, height: int) -> tuple[int, int]:
    """(width, height) of the detector's thumbnail for a frame of the given size."""
    if width <= 0 or height <= 0:
        return THUMB_WIDTH, THUMB_WIDTH
    tw = min(THUMB_WIDTH, width)
    th = max(8, round(tw * height / width / 2) * 2)
    return tw, th


def hsv_histogram(thumb_rgb: np.ndarray, bins: tuple[int, int, int] = (16, 4, 4)) -> np.ndarray:
    """Normalised joint HSV histogram of a small RGB frame (hue weighted most: it survives lighting)."""
    hsv = cv2.cvtColor(thumb_rgb, cv2.COLOR_RGB2HSV)
    hist = cv2.calcHist([hsv], [0, 1, 2], None, list(bins), [0, 180, 0, 256, 0, 256]).ravel()
    total = hist.sum()
    return hist / total if total > 0 else hist


def histogram_distance(a: np.ndarray, b: np.ndarray) -> float:
    """1 - histogram intersection of two normalised histograms: 0 same colours, 1 nothing shared."""
    return float(1.0 - np.minimum(a, b).sum())


@dataclass
class Cut:
    """A shot boundary: the frame where it was found, the score that triggered it, and for a gradual
    transition the frame where the transition began (``start``; equal to ``frame`` for a hard cut)."""

    frame: int
    score: float
    gradual: bool
    start: int = -1

    def __post_init__(self) -> None:
        if self.start < 0:
            self.start = self.frame


class ShotDetector:
    """Streaming cut detector: feed one thumbnail per frame, get a Cut when that frame opens a shot."""

    def update(self, index: int, thumb_rgb: np.ndarray) -> Cut | None:
        """Consume frame ``index``; a Cut if it is the first frame of a new shot."""
        raise NotImplementedError

    @property
    def in_transition(self) -> bool:
        """True while the picture is still changing after a cut (frames of a dissolve)."""
        return False


@SHOT_DETECTORS.register("hsv")
class HSVCutDetector(ShotDetector):
    """Hard cuts and gradual transitions from HSV-histogram distances (see the module docstring).

    ``threshold`` is the histogram distance (0..1) that makes a cut, either in one step (hard cut) or
    accumulated over a run of raised steps no longer than ``window`` frames (gradual transition).
    A step counts as raised when it exceeds ``noise_ratio`` times the median step of the current shot
    (and at least ``min_step``), so busy shots need bigger changes than still ones.
    """

    def __init__(
        self,
        threshold: float = 0.25,
        window: int = 25,
        noise_ratio: float = 3.0,
        min_step: float = 0.04,
        quiet_frames: int = 3,
    ) -> None:
        self.threshold = float(threshold)
        self.window = int(window)
        self.noise_ratio = float(noise_ratio)
        self.min_step = float(min_step)
        self.quiet_frames = int(quiet_frames)
        self._prev: np.ndarray | None = None
        self._steps: deque[float] = deque(maxlen=25)  # recent quiet steps of the current shot
        self._run: deque[np.ndarray] = deque(maxlen=self.window + 1)  # histograms from before a run on
        self._run_misses = 0
        self._in_transition = False
        self._quiet = 0

    def _floor(self) -> float:
        base = float(np.median(self._steps)) if len(self._steps) >= 5 else 0.02
        return max(self.min_step, self.noise_ratio * base)

    def update(self, index: int, thumb_rgb: np.ndarray) -> Cut | None:
        hist = hsv_histogram(thumb_rgb)
        prev, self._prev = self._prev, hist
        if prev is None:
            return None
        step = histogram_distance(prev, hist)
        floor = self._floor()
        if self._in_transition:
            # Inside a transition every change belongs to it; it ends once the picture is quiet again.
            self._quiet = self._quiet + 1 if step < floor else 0
            if self._quiet >= self.quiet_frames:
                self._in_transition = False
                self._run.clear()
            return None
        if step >= self.threshold and step >= floor:
            if self._run:
                # A jump at the end of a run of raised steps: a transition that began with the run.
                return self._cut(index, step, gradual=True, start=index - len(self._run) + 1)
            return self._cut(index, step, gradual=False)
        if step >= floor:
            if not self._run:
                self._run.append(prev)
            self._run.append(hist)
            self._run_misses = 0
            change = histogram_distance(self._run[0], hist)
            if change >= self.threshold and len(self._run) >= 4:
                # _run holds the frame before the first raised step, then one entry per frame since.
                start = index - len(self._run) + 2
                return self._cut(index, change, gradual=True, start=start)
            return None
        if self._run and self._run_misses < 1:
            # One quieter step does not end a run: dissolve steps are uneven after compression.
            self._run_misses += 1
            self._run.append(hist)
            return None
        self._run.clear()
        self._steps.append(step)
        return None

    @property
    def in_transition(self) -> bool:
        """True after a cut until ``quiet_frames`` quiet steps in a row."""
        return self._in_transition

    def _cut(self, index: int, score: float, gradual: bool, start: int = -1) -> Cut:
        self._in_transition = True
        self._quiet = 0
        self._run.clear()
        self._steps.clear()
        return Cut(frame=index, score=float(score), gradual=gradual, start=start)


def create_shot_detector(name: str = "hsv", **kwargs) -> ShotDetector:
    """The shot detector registered as ``name``."""
    return SHOT_DETECTORS.create(name, **kwargs)


def match_cuts(
    detected: list[int], truth: list[tuple[int, int]], tolerance: int = 2
) -> tuple[float, float, int, int]:
    """Precision and recall of detected cut frames against true transitions ``(start, length)``.

    A transition is found when a detected cut lies in ``[start - tolerance, start + length + tolerance]``;
    each detected cut matches at most one transition, and extra cuts inside one transition are false
    positives (a dissolve must count as one cut). Returns (precision, recall, true positives, false positives).
    """
    used: set[int] = set()
    tp = 0
    for start, length in truth:
        lo, hi = start - tolerance, start + length + tolerance
        hit = next((i for i, f in enumerate(detected) if i not in used and lo <= f <= hi), None)
        if hit is not None:
            used.add(hit)
            tp += 1
    fp = len(detected) - len(used)
    precision = tp / len(detected) if detected else 1.0
    recall = tp / len(truth) if truth else 1.0
    return precision, recall, tp, fp
