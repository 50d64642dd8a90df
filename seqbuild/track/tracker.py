"""Trackers that link one shot's detections, in frame order, into single-person tracks.

``kalman`` (default): a constant-velocity Kalman filter per track, Hungarian assignment on a gated
cost, and splits wherever identity is in doubt (a jump the filter cannot explain, an ambiguous
crossing). ``greedy_iou``: the plain baseline of VoxCeleb-style pipelines (a detection continues the
track whose last box it overlaps most, IoU >= 0.5, gaps of at most 25 frames).

Trackers think in frames, not detector calls: detections may come every k-th frame (ingest's
``detect_every``), and gaps are measured in frames, so the same settings work for any k.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np

from ..registry import Registry
from .assign import (
    Gates,
    ambiguous_tracks,
    assign,
    gated_cost,
    iou_matrix,
    landmark_shift,
    normalised_landmarks,
)
from .config import TrackConfig
from .kalman import BoxKalman


@dataclass
class TrackResult:
    """Tracks of one shot: ``labels[i]`` is detection i's track; per track, confirmed and why it ended."""

    labels: np.ndarray
    confirmed: np.ndarray
    end_reasons: list[str] = field(default_factory=list)

    @property
    def n_tracks(self) -> int:
        """Number of tracks (confirmed or not)."""
        return len(self.end_reasons)


class Tracker:
    """Links the detections of one shot into tracks."""

    def track(
        self, frames: np.ndarray, boxes: np.ndarray, landmarks: np.ndarray | None = None
    ) -> TrackResult:
        """Track detections at ``frames`` (n,) with ``boxes`` (n, 4) and optional ``landmarks`` (n, 5, 2)."""
        raise NotImplementedError


TRACKERS: Registry[Tracker] = Registry("tracker")
"""Trackers by name; each factory takes (TrackConfig, frame_step)."""


def create_tracker(cfg: TrackConfig, frame_step: int) -> Tracker:
    """The tracker named by ``cfg.tracker`` for detections every ``frame_step`` frames."""
    return TRACKERS.create(cfg.tracker, cfg, frame_step)


def infer_frame_step(frames: np.ndarray, shots: np.ndarray | None = None) -> int:
    """Frames between detector passes, read from the data: the most common gap between detection frames.

    Gaps are taken inside shots only (a shot's first frame is an extra detector pass, so the spacing
    near cuts is irregular); ties go to the smaller gap; 1 when there is nothing to measure.
    """
    frames = np.asarray(frames, dtype=np.int64)
    shots = np.zeros_like(frames) if shots is None else np.asarray(shots)
    gaps: list[np.ndarray] = []
    for shot in np.unique(shots):
        uniq = np.unique(frames[shots == shot])
        if len(uniq) > 1:
            gaps.append(np.diff(uniq))
    if not gaps:
        return 1
    values, counts = np.unique(np.concatenate(gaps), return_counts=True)
    return int(values[np.argmax(counts)])


@dataclass
class _Track:
    index: int
    last_frame: int
    hits: int
    landmarks: np.ndarray | None
    last_box: np.ndarray
    kf: BoxKalman | None = None


def _frame_groups(frames: np.ndarray) -> list[tuple[int, np.ndarray]]:
    order = np.argsort(frames, kind="stable")
    sorted_frames = frames[order]
    starts = np.flatnonzero(np.r_[True, np.diff(sorted_frames) != 0])
    ends = np.r_[starts[1:], len(order)]
    return [(int(sorted_frames[s]), order[s:e]) for s, e in zip(starts, ends, strict=True)]


class KalmanTracker(Tracker):
    """Kalman filter per track + Hungarian assignment on a gated cost; splits rather than guesses."""

    def __init__(self, gates: Gates, max_gap: int, min_hits: int, margin: float, frame_step: int) -> None:
        self.gates = gates
        self.max_gap = int(max_gap)
        self.min_hits = int(min_hits)
        self.margin = float(margin)
        self.frame_step = max(1, int(frame_step))

    def track(
        self, frames: np.ndarray, boxes: np.ndarray, landmarks: np.ndarray | None = None
    ) -> TrackResult:
        """Track one shot's detections (see the module docstring)."""
        frames = np.asarray(frames, dtype=np.int64)
        boxes = np.asarray(boxes, dtype=np.float64).reshape(-1, 4)
        norm_lm = None if landmarks is None else normalised_landmarks(boxes, landmarks)
        labels = np.full(len(frames), -1, dtype=np.int64)
        confirmed: list[bool] = []
        reasons: list[str] = []
        live: list[_Track] = []

        def end(tr: _Track, reason: str) -> None:
            reasons[tr.index] = reason if confirmed[tr.index] else "unconfirmed"

        def start(i: int, frame: int) -> None:
            index = len(reasons)
            confirmed.append(self.min_hits <= 1)
            reasons.append("open")
            labels[i] = index
            lm = None if norm_lm is None else norm_lm[i]
            live.append(_Track(index, frame, 1, lm, boxes[i], BoxKalman(boxes[i], frame)))

        for frame, idx in _frame_groups(frames):
            kept = []
            for tr in live:
                limit = self.max_gap if confirmed[tr.index] else self.frame_step
                if frame - tr.last_frame > limit:
                    end(tr, "lost")
                else:
                    kept.append(tr)
            live = kept
            det = boxes[idx]
            matched_d: set[int] = set()
            if live:
                predicted = np.stack([tr.kf.predict_to(frame) for tr in live])
                maha = np.stack([tr.kf.mahalanobis(det) for tr in live])
                shift = None
                if norm_lm is not None:
                    shift = landmark_shift(np.stack([tr.landmarks for tr in live]), norm_lm[idx])
                last = np.stack([tr.last_box for tr in live])
                cost = gated_cost(predicted, det, self.gates, mahalanobis=maha, shift=shift, last=last)
                matches = assign(cost)
                doubtful = ambiguous_tracks(cost, matches, self.margin)
                for t in sorted(doubtful):
                    end(live[t], "ambiguous")
                for t, d in matches:
                    if t in doubtful:
                        continue
                    tr, i = live[t], int(idx[d])
                    tr.kf.update(boxes[i])
                    tr.last_frame, tr.hits, tr.last_box = frame, tr.hits + 1, boxes[i]
                    if norm_lm is not None:
                        tr.landmarks = norm_lm[i]
                    if tr.hits >= self.min_hits:
                        confirmed[tr.index] = True
                    labels[i] = tr.index
                    matched_d.add(d)
                live = [tr for t, tr in enumerate(live) if t not in doubtful]
            for d, i in enumerate(idx):
                if d not in matched_d:
                    start(int(i), frame)
        for tr in live:
            end(tr, "shot_end")
        return TrackResult(labels, np.array(confirmed, dtype=bool), reasons)


class GreedyIoUTracker(Tracker):
    """Baseline: each detection continues the live track whose last box it overlaps most (greedy)."""

    def __init__(self, min_iou: float = 0.5, max_gap: int = 25) -> None:
        self.min_iou = float(min_iou)
        self.max_gap = int(max_gap)

    def track(
        self, frames: np.ndarray, boxes: np.ndarray, landmarks: np.ndarray | None = None
    ) -> TrackResult:
        """Track one shot's detections, greedily by IoU with each track's last box."""
        frames = np.asarray(frames, dtype=np.int64)
        boxes = np.asarray(boxes, dtype=np.float64).reshape(-1, 4)
        labels = np.full(len(frames), -1, dtype=np.int64)
        reasons: list[str] = []
        live: list[_Track] = []
        for frame, idx in _frame_groups(frames):
            kept = []
            for tr in live:
                if frame - tr.last_frame > self.max_gap:
                    reasons[tr.index] = "lost"
                else:
                    kept.append(tr)
            live = kept
            used_t: set[int] = set()
            used_d: set[int] = set()
            if live:
                iou = iou_matrix(np.stack([tr.last_box for tr in live]), boxes[idx])
                pairs = np.argwhere(iou >= self.min_iou)
                for t, d in sorted(pairs.tolist(), key=lambda p: -iou[p[0], p[1]]):
                    if t in used_t or d in used_d:
                        continue
                    used_t.add(t)
                    used_d.add(d)
                    tr, i = live[t], int(idx[d])
                    tr.last_frame, tr.last_box, tr.hits = frame, boxes[i], tr.hits + 1
                    labels[i] = tr.index
            for d, i in enumerate(idx):
                if d not in used_d:
                    labels[i] = len(reasons)
                    live.append(_Track(len(reasons), frame, 1, None, boxes[i]))
                    reasons.append("open")
        for tr in live:
            reasons[tr.index] = "shot_end"
        return TrackResult(labels, np.ones(len(reasons), dtype=bool), reasons)


@TRACKERS.register("kalman")
def _kalman_tracker(cfg: TrackConfig, frame_step: int) -> Tracker:
    gates = Gates(
        min_iou=cfg.min_iou,
        max_scale_jump=cfg.max_scale_jump,
        max_mahalanobis=cfg.max_mahalanobis,
        max_landmark_shift=cfg.max_landmark_shift,
    )
    # max_age counts missed detector passes: the next pass after them may still match.
    max_gap = (cfg.max_age + 1) * frame_step
    return KalmanTracker(gates, max_gap, cfg.min_hits, cfg.ambiguity_margin, frame_step)


@TRACKERS.register("greedy_iou")
def _greedy_iou_tracker(cfg: TrackConfig, frame_step: int) -> Tracker:
    # The baseline keeps its published settings (IoU >= 0.5, gaps <= 25 frames) whatever the config.
    return GreedyIoUTracker(min_iou=0.5, max_gap=25)
