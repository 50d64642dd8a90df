"""Association of tracks and detections: gated cost matrix, Hungarian assignment, ambiguity check.

A pair (track, detection) is feasible only when the detection overlaps the track's predicted box
(IoU gate), its size is one the filter could reach (scale gate), the filter explains its position
(Mahalanobis gate) and its landmarks sit where the track's last face had them (landmark gate).
Gated pairs are never assigned, whatever the Hungarian algorithm returns. A match is kept only if
no other pairing is nearly as good: crossing faces whose swap cannot be told apart end both tracks.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
from scipy.optimize import linear_sum_assignment

GATED = 1e6
"""Cost of an infeasible pair (finite so that linear_sum_assignment always has a solution)."""


@dataclass(frozen=True)
class Gates:
    """Limits a (track, detection) pair must meet to be feasible."""

    min_iou: float = 0.3
    max_scale_jump: float = 0.35
    max_mahalanobis: float = 4.5
    max_landmark_shift: float = 0.3


def iou_matrix(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """Intersection over union of every box of ``a`` (m, 4) with every box of ``b`` (n, 4)."""
    a = np.asarray(a, dtype=np.float64).reshape(-1, 4)
    b = np.asarray(b, dtype=np.float64).reshape(-1, 4)
    x1 = np.maximum(a[:, None, 0], b[None, :, 0])
    y1 = np.maximum(a[:, None, 1], b[None, :, 1])
    x2 = np.minimum(a[:, None, 2], b[None, :, 2])
    y2 = np.minimum(a[:, None, 3], b[None, :, 3])
    inter = np.clip(x2 - x1, 0, None) * np.clip(y2 - y1, 0, None)
    area_a = (a[:, 2] - a[:, 0]) * (a[:, 3] - a[:, 1])
    area_b = (b[:, 2] - b[:, 0]) * (b[:, 3] - b[:, 1])
    union = area_a[:, None] + area_b[None, :] - inter
    return np.where(union > 0, inter / np.maximum(union, 1e-12), 0.0)


def box_scale(boxes: np.ndarray) -> np.ndarray:
    """sqrt(w * h) of each box (n, 4)."""
    boxes = np.asarray(boxes, dtype=np.float64).reshape(-1, 4)
    return np.sqrt(
        np.clip(boxes[:, 2] - boxes[:, 0], 1e-6, None) * np.clip(boxes[:, 3] - boxes[:, 1], 1e-6, None)
    )


def normalised_landmarks(boxes: np.ndarray, landmarks: np.ndarray) -> np.ndarray:
    """Landmarks (n, 5, 2) in box coordinates: (0, 0) top-left corner, (1, 1) bottom-right."""
    boxes = np.asarray(boxes, dtype=np.float64).reshape(-1, 4)
    lm = np.asarray(landmarks, dtype=np.float64).reshape(-1, 5, 2)
    wh = np.clip(boxes[:, 2:] - boxes[:, :2], 1e-6, None)
    return (lm - boxes[:, None, :2]) / wh[:, None, :]


def landmark_shift(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """Mean distance between the five normalised landmarks of every face of ``a`` and of ``b`` (m, n)."""
    a = np.asarray(a, dtype=np.float64).reshape(-1, 5, 2)
    b = np.asarray(b, dtype=np.float64).reshape(-1, 5, 2)
    return np.linalg.norm(a[:, None] - b[None, :], axis=-1).mean(axis=-1)


def scale_jump(predicted: np.ndarray, detected: np.ndarray) -> np.ndarray:
    """Relative size change max(a/b, b/a) - 1 between predicted boxes (m, 4) and detections (n, 4)."""
    ratio = box_scale(detected)[None, :] / box_scale(predicted)[:, None]
    return np.maximum(ratio, 1.0 / ratio) - 1.0


def gated_cost(
    predicted: np.ndarray,
    detected: np.ndarray,
    gates: Gates,
    mahalanobis: np.ndarray | None = None,
    shift: np.ndarray | None = None,
    last: np.ndarray | None = None,
) -> np.ndarray:
    """Cost (1 - IoU + landmark shift) of each (track, detection) pair, GATED where infeasible.

    With ``last`` (each track's last detected box), IoU and size are also compared with it and the
    closer of the two counts: a head that bobs between detector passes defeats any motion model, yet
    a face that stays where it was last seen is plainly the same track.
    """
    iou = iou_matrix(predicted, detected)
    jump = scale_jump(predicted, detected)
    if last is not None:
        iou = np.maximum(iou, iou_matrix(last, detected))
        jump = np.minimum(jump, scale_jump(last, detected))
    shift = np.zeros_like(iou) if shift is None else np.asarray(shift, dtype=np.float64)
    cost = 1.0 - iou + shift
    feasible = (iou >= gates.min_iou) & (jump <= gates.max_scale_jump)
    feasible &= shift <= gates.max_landmark_shift
    if mahalanobis is not None:
        feasible &= np.asarray(mahalanobis) <= gates.max_mahalanobis
    return np.where(feasible, cost, GATED)


def assign(cost: np.ndarray) -> list[tuple[int, int]]:
    """Minimum-cost matching (Hungarian) restricted to feasible pairs, as (track, detection) rows."""
    cost = np.asarray(cost, dtype=np.float64)
    if cost.size == 0:
        return []
    rows, cols = linear_sum_assignment(cost)
    return [(int(r), int(c)) for r, c in zip(rows, cols, strict=True) if cost[r, c] < GATED]


def ambiguous_tracks(cost: np.ndarray, matches: list[tuple[int, int]], margin: float) -> set[int]:
    """Tracks whose identity after this step cannot be told apart from another's (to be ended).

    A match (t, d) is ambiguous when another feasible pairing costs less than ``margin`` more:
    an unmatched track t' could take d (both end: d may be t' reappearing, we cannot say), t could
    take an unmatched detection d' (t ends: two faces compete for one track), or swapping two matches
    (t1, d1), (t2, d2) into (t1, d2), (t2, d1) costs almost the same (crossing paths: both end).
    """
    cost = np.asarray(cost, dtype=np.float64)
    out: set[int] = set()
    feasible = cost < GATED
    matched_d = {d for _, d in matches}
    matched_t = {t for t, _ in matches}
    for t, d in matches:
        c = cost[t, d]
        # A matched rival is judged by the swap test below, which weighs both of its pairings.
        others_t = [u for u in np.flatnonzero(feasible[:, d]) if u != t and u not in matched_t]
        close_t = [u for u in others_t if cost[u, d] - c < margin]
        if close_t:
            out.add(t)
            out.update(int(u) for u in close_t)
        others_d = [e for e in np.flatnonzero(feasible[t]) if e != d and e not in matched_d]
        if any(cost[t, e] - c < margin for e in others_d):
            out.add(t)
    for i, (t1, d1) in enumerate(matches):
        for t2, d2 in matches[i + 1 :]:
            if feasible[t1, d2] and feasible[t2, d1]:
                swapped = cost[t1, d2] + cost[t2, d1]
                if swapped - (cost[t1, d1] + cost[t2, d2]) < margin:
                    out.update((t1, t2))
    return out
