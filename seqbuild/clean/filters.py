"""Pure cleaning numerics over one sequence's embeddings (rows L2-normalised) and quality figures.

No I/O: each function takes arrays and returns what to keep and, for what it removes, the figure that
triggered the removal. The stage (:mod:`seqbuild.clean.stage`) applies them in order: quality, splits
where the appearance jumps to another person, two identities, noise, near duplicates, then the
minimum sequence length.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np


@dataclass
class Removal:
    """One removed face (index into the sequence) or, with ``index`` None, the whole sequence."""

    reason: str
    value: float
    threshold: float
    index: int | None = None
    detail: str = ""


def normalise(v: np.ndarray) -> np.ndarray:
    """A vector (or rows) scaled to unit length."""
    v = np.asarray(v, dtype=np.float32)
    if v.ndim == 1:
        return v / max(float(np.linalg.norm(v)), 1e-12)
    return v / np.maximum(np.linalg.norm(v, axis=1, keepdims=True), 1e-12)


def robust_centre(emb: np.ndarray, trim_below: float) -> tuple[np.ndarray, np.ndarray]:
    """Centre of a sequence after one trimming pass, and every face's cosine similarity to it.

    The normalised mean is computed, the faces less similar to it than ``trim_below`` are set aside
    (but never more than half: the better-matching half is always kept), and the normalised mean of the
    rest is the centre. One bad face cannot pull the centre far, while a clean sequence loses nothing.
    """
    emb = np.asarray(emb, dtype=np.float32)
    if len(emb) == 0:
        return np.zeros(emb.shape[1], np.float32), np.zeros(0, np.float32)
    first = normalise(emb.mean(axis=0))
    sims = emb @ first
    keep = sims >= trim_below
    if keep.sum() * 2 < len(emb):
        keep = sims >= np.median(sims)
    centre = normalise(emb[keep].mean(axis=0))
    return centre, emb @ centre


def two_means(emb: np.ndarray, iterations: int = 10) -> np.ndarray:
    """Spherical 2-means labels (0/1), seeded by the face least like the mean and the face least like it."""
    emb = np.asarray(emb, dtype=np.float32)
    mean = normalise(emb.mean(axis=0))
    a = int(np.argmin(emb @ mean))
    b = int(np.argmin(emb @ emb[a]))
    centres = np.stack([emb[a], emb[b]])
    labels = np.zeros(len(emb), np.int64)
    for _ in range(iterations):
        new = np.argmax(emb @ centres.T, axis=1)
        if (new == labels).all() and _ > 0:
            break
        labels = new
        for k in (0, 1):
            if (labels == k).any():
                centres[k] = normalise(emb[labels == k].mean(axis=0))
    return labels


@dataclass
class TwoGroups:
    """A sequence found to hold two people: the group label of each face and the centres' similarity."""

    labels: np.ndarray
    similarity: float
    sizes: tuple[int, int] = field(default=(0, 0))


def find_two_identities(emb: np.ndarray, max_similarity: float, min_group: int) -> TwoGroups | None:
    """Two clear groups of faces (each at least ``min_group`` faces) whose centres are less similar than
    ``max_similarity`` (two different people), or None when the sequence looks like one person.

    A few stray faces do not make a second group: they are left to the noise filter.
    """
    emb = np.asarray(emb, dtype=np.float32)
    if len(emb) < 2 * min_group:
        return None
    labels = two_means(emb)
    sizes = (int((labels == 0).sum()), int((labels == 1).sum()))
    if min(sizes) < min_group:
        return None
    c0 = normalise(emb[labels == 0].mean(axis=0))
    c1 = normalise(emb[labels == 1].mean(axis=0))
    sim = float(c0 @ c1)
    if sim >= max_similarity:
        return None
    return TwoGroups(labels=labels, similarity=sim, sizes=sizes)


def appearance_jumps(
    emb: np.ndarray, max_similarity: float, max_step_similarity: float, min_side: int
) -> list[tuple[int, float]]:
    """Where a sequence (faces in time order) turns into another person: split points ``j`` (the
    sequence is cut between faces j-1 and j) with the similarity of the two sides' centres.

    A point qualifies when the faces on either side, at least ``min_side`` each, have centres less
    similar than ``max_similarity`` (two people) and the two faces it separates are less similar than
    ``max_step_similarity`` (an abrupt change, not a drift). The most dissimilar point is taken first,
    then each side is searched again.
    """
    emb = np.asarray(emb, dtype=np.float32)
    out: list[tuple[int, float]] = []

    def search(lo: int, hi: int) -> None:
        n = hi - lo
        if n < 2 * min_side:
            return
        part = emb[lo:hi]
        cum = np.cumsum(part, axis=0)
        js = np.arange(min_side, n - min_side + 1)
        left = normalise(cum[js - 1])
        right = normalise(cum[-1][None] - cum[js - 1])
        centre_sim = (left * right).sum(axis=1)
        step_sim = (part[js - 1] * part[js]).sum(axis=1)
        ok = (centre_sim < max_similarity) & (step_sim < max_step_similarity)
        if not ok.any():
            return
        k = int(np.argmin(np.where(ok, centre_sim, np.inf)))
        j = lo + int(js[k])
        out.append((j, float(centre_sim[k])))
        search(lo, j)
        search(j, hi)

    search(0, len(emb))
    return sorted(out)


def noise_removals(emb: np.ndarray, threshold: float) -> tuple[list[Removal], np.ndarray]:
    """Faces whose similarity to the sequence's robust centre is below ``threshold``; and the centre."""
    centre, sims = robust_centre(emb, threshold)
    out = [Removal("noise", float(s), threshold, int(i)) for i, s in enumerate(sims) if s < threshold]
    return out, centre


def similarity_matrix(emb: np.ndarray, device: str = "cpu") -> np.ndarray:
    """All pairwise cosine similarities of normalised rows by one matrix product (on ``device``)."""
    emb = np.asarray(emb, dtype=np.float32)
    if device == "cpu" or len(emb) < 256:
        return emb @ emb.T
    import torch

    x = torch.from_numpy(emb).to(device)
    return (x @ x.T).float().cpu().numpy()


def near_duplicate_removals(
    emb: np.ndarray, threshold: float, ids: list[str] | None = None, device: str = "cpu"
) -> list[Removal]:
    """Greedy near-duplicate removal (SemDeDup-style): walking the faces in order, drop each face more
    similar than ``threshold`` to a face already kept; the detail names that kept face."""
    n = len(emb)
    if n < 2:
        return []
    sims = similarity_matrix(emb, device)
    kept = np.zeros(n, dtype=bool)
    out = []
    for i in range(n):
        if kept.any():
            row = np.where(kept, sims[i], -np.inf)
            j = int(np.argmax(row))
            if row[j] > threshold:
                out.append(Removal("near_duplicate", float(row[j]), threshold, i, ids[j] if ids else str(j)))
                continue
        kept[i] = True
    return out


QUALITY_RULES = (
    # (reason, column, config key, comparison): a face fails when the comparison holds
    ("small_face", "face_size", "min_face_size", "below"),
    ("blurred", "blur", "min_blur", "below"),
    ("low_det_score", "det_score", "min_det_score", "below"),
    ("extreme_yaw", "yaw", "max_yaw", "abs_above"),
    ("near_cut", "cut_distance", "cut_margin", "below"),
)


def quality_removals(columns: dict[str, np.ndarray], limits: dict[str, float]) -> list[Removal]:
    """Faces failing a quality limit (size, blur, detection score, |yaw|, seconds from a shot cut); the
    first failed rule is given.

    A missing figure (NaN) is not held against a face.
    """
    n = len(next(iter(columns.values()))) if columns else 0
    out: list[Removal] = []
    failed = np.zeros(n, dtype=bool)
    for reason, column, key, how in QUALITY_RULES:
        if column not in columns or key not in limits:
            continue
        values = np.asarray(columns[column], dtype=np.float64)
        limit = float(limits[key])
        with np.errstate(invalid="ignore"):
            bad = np.abs(values) > limit if how == "abs_above" else values < limit
        bad &= ~np.isnan(values) & ~failed
        for i in np.flatnonzero(bad):
            out.append(Removal(reason, float(values[i]), limit, int(i)))
        failed |= bad
    return out


def cut_distance(pts: np.ndarray, cut_times: np.ndarray) -> np.ndarray:
    """Seconds from each face's timestamp to the nearest shot cut (inf without cuts)."""
    pts = np.asarray(pts, dtype=np.float64)
    cuts = np.sort(np.asarray(cut_times, dtype=np.float64))
    if len(cuts) == 0:
        return np.full(len(pts), np.inf)
    pos = np.searchsorted(cuts, pts)
    before = np.abs(pts - cuts[np.clip(pos - 1, 0, len(cuts) - 1)])
    after = np.abs(cuts[np.clip(pos, 0, len(cuts) - 1)] - pts)
    return np.minimum(before, after)


def face_match_share(a: np.ndarray, b: np.ndarray, threshold: float) -> float:
    """Share of the faces of the shorter of two sequences that have a face above ``threshold`` in the other."""
    if len(a) == 0 or len(b) == 0:
        return 0.0
    short, long_ = (a, b) if len(a) <= len(b) else (b, a)
    best = (np.asarray(short, np.float32) @ np.asarray(long_, np.float32).T).max(axis=1)
    return float((best >= threshold).mean())


def histogram(values: np.ndarray, lo: float = -0.2, hi: float = 1.0, bins: int = 12, width: int = 40) -> str:
    """A text histogram of similarities (one line per bin, bar length proportional to the count)."""
    values = np.asarray(values, dtype=np.float64)
    if len(values) == 0:
        return "  (no values)"
    counts, edges = np.histogram(np.clip(values, lo, hi), bins=bins, range=(lo, hi))
    top = max(int(counts.max()), 1)
    lines = []
    for c, e0, e1 in zip(counts, edges[:-1], edges[1:], strict=True):
        lines.append(f"  {e0:+.2f}..{e1:+.2f} {int(c):7d} {'#' * int(round(width * c / top))}")
    return "\n".join(lines)
