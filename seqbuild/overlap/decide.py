"""Identity decisions of dedup-overlap: a score per (sequence, gallery identity), an operating point
calibrated to the gallery's size, and three outcomes.

Scores (registered by name in :data:`SCORES`; all on a "higher = more alike" scale):

* ``cosine``: cosine of the sequence centre (normalised mean of its normalised face embeddings) and the
  identity centre;
* ``vote``: per-face voting: the score ``t`` at which a share ``vote_share`` of the sequence's faces
  score at least ``t`` against the identity centre (a majority vote at threshold ``t`` passes exactly
  when this score is >= ``t``; with ``vote_share`` 0.5 it is the median face score);
* ``csls``: cross-domain similarity local scaling (Conneau et al. 2018), 2 cos(s, g) - r_G(s) - r_S(g):
  r_G(s) is the mean cosine of the sequence to its ``csls_k`` nearest gallery identities, r_S(g) that of
  the identity to its ``csls_k`` nearest sequences of the run (the cohort). An identity that resembles
  many people (a hub) and a sequence that resembles many identities are both discounted;
* ``snorm``: symmetric score normalisation, the mean of the score standardised by the identity's scores
  against the cohort of the run's sequences and by the sequence's scores against the gallery
  identities (medians and robust spreads: the few genuine scores among them do not move them).

Operating point (per gallery and model): the impostor distribution of the score is fitted to the run's
own sequences against the gallery (almost all of them are strangers to it: the bulk is fitted, and each
sequence's best candidate, which may be its mate, is left out), with :mod:`seqbuild.openset`, the same
functions ``seqbuild eval --identification`` uses. The threshold is the one whose modelled false-positive
identification rate against the gallery's N identities, FPIR(N, T) = 1 - (1 - FAR(T))^N, is the target
``fpir``; a stricter ``confident_fpir`` gives the confident threshold. A sequence scoring at or above the
confident threshold is a ``gallery_match``; between the two thresholds it is a ``review``; below, kept.
Genuine scores come from the gallery itself (each image against the centre of its identity's other
images); when no threshold that keeps ``min_genuine_share`` of them reaches the target FPIR, the model
cannot do the job at this gallery size, and :func:`capability_warning` says so with the figures.
"""

from __future__ import annotations

import dataclasses
import logging
import math
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass, field
from typing import Any

import numpy as np

from .. import openset
from ..errors import InputError
from ..registry import Registry

log = logging.getLogger(__name__)

OUTCOMES = ("gallery_match", "review", "kept")
MIN_IMPOSTOR_SCORES = 20
"""Fewer impostor scores than this (a run of a handful of sequences) cannot calibrate a threshold: the
gallery's fixed default threshold is used, and the calibration says so."""


def _unit(x: np.ndarray) -> np.ndarray:
    x = np.asarray(x, np.float32)
    if x.ndim == 1:
        x = x[None]
    return x / np.maximum(np.linalg.norm(x, axis=1, keepdims=True), 1e-12)


# --------------------------------------------------------------------------- cohort statistics


@dataclass
class IdentityStats:
    """Per gallery identity: its scores against a cohort of the run's sequences (what ``csls`` and
    ``snorm`` discount)."""

    top_mean: np.ndarray
    """Mean cosine of each identity to its ``k`` nearest cohort sequences (CSLS's r_S)."""
    loc: np.ndarray
    """Median cosine of each identity against the cohort."""
    scale: np.ndarray
    """Robust spread (1.4826 MAD) of each identity's cosines against the cohort."""
    k: int
    cohort: int
    """Number of cohort sequences."""

    def to_arrays(self) -> dict[str, np.ndarray]:
        """The arrays, for saving with numpy."""
        return {"top_mean": self.top_mean, "loc": self.loc, "scale": self.scale}


def typical_stats(stats: IdentityStats) -> IdentityStats:
    """Every identity given the median identity's statistics.

    The gallery's photos are scored against it for their genuine scores: an identity whose person is in
    the run has its own sequences among its nearest ones, which would make its photos look like poor
    matches of themselves, while the check they serve is about the model at the gallery's size."""

    def flat(x: np.ndarray, empty: float) -> np.ndarray:
        return np.full_like(x, np.median(x) if len(x) else empty)

    return dataclasses.replace(
        stats, top_mean=flat(stats.top_mean, 0.0), loc=flat(stats.loc, 0.0), scale=flat(stats.scale, 1.0)
    )


def robust_loc_scale(
    scores: np.ndarray, axis: int = -1, floor: float = 1e-3
) -> tuple[np.ndarray, np.ndarray]:
    """Median and 1.4826 x median absolute deviation along ``axis`` (the spread floored at ``floor``)."""
    s = np.asarray(scores, np.float64)
    loc = np.median(s, axis=axis)
    mad = np.median(np.abs(s - np.expand_dims(loc, axis)), axis=axis)
    return loc, np.maximum(openset.MAD_TO_SD * mad, floor)


def identity_stats(identity_centres: np.ndarray, cohort_centres: np.ndarray, k: int = 5) -> IdentityStats:
    """Each identity's scores against the cohort sequences (all identities at once, in blocks)."""
    g = _unit(identity_centres)
    c = _unit(cohort_centres)
    n = len(g)
    top = np.zeros(n)
    loc = np.zeros(n)
    scale = np.full(n, 1e-3)
    if len(c) == 0:
        return IdentityStats(top, loc, scale, k, 0)
    kk = min(k, len(c))
    block = max(1, int(4_000_000 // max(len(c), 1)))
    for start in range(0, n, block):
        s = g[start : start + block] @ c.T
        part = np.partition(s, len(c) - kk, axis=1)[:, len(c) - kk :]
        top[start : start + block] = part.mean(axis=1)
        lo, sc = robust_loc_scale(s, axis=1)
        loc[start : start + block], scale[start : start + block] = lo, sc
    return IdentityStats(top, loc, scale, kk, len(c))


# --------------------------------------------------------------------------- candidates and scores


@dataclass
class Candidates:
    """The gallery identities a batch of queries is scored against, and what each score needs."""

    ids: np.ndarray
    """(Q, K) identity rows, -1 where a query has fewer candidates."""
    cos: np.ndarray
    """(Q, K) cosine of each query centre to each candidate identity centre."""
    query_top: np.ndarray
    """(Q,) mean cosine of each query to its ``k`` nearest identities (CSLS's r_G)."""
    query_loc: np.ndarray
    """(Q,) median cosine of each query against the identities (or a sample of them)."""
    query_scale: np.ndarray
    """(Q,) robust spread of those cosines."""
    face_cos: list[np.ndarray] | None = None
    """Per query, (faces, K) cosines of its faces to its candidates (for ``vote``)."""


def exact_search(identity_centres: np.ndarray) -> Callable[[np.ndarray, int], tuple[np.ndarray, np.ndarray]]:
    """A top-k search over ``identity_centres`` by cosine, in blocks (numpy; for tests and small galleries)."""
    g = _unit(identity_centres)

    def search(queries: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray]:
        q = _unit(queries) if len(queries) else np.zeros((0, g.shape[1]), np.float32)
        kk = min(k, len(g))
        ids = np.full((len(q), k), -1, np.int64)
        cos = np.full((len(q), k), -np.inf, np.float32)
        block = max(1, int(4_000_000 // max(len(g), 1)))
        for start in range(0, len(q), block):
            s = q[start : start + block] @ g.T
            order = np.argsort(-s, axis=1, kind="stable")[:, :kk]
            ids[start : start + block, :kk] = order
            cos[start : start + block, :kk] = np.take_along_axis(s, order, axis=1)
        return cos, ids

    return search


@dataclass
class GalleryScorer:
    """Scores queries (sequence centres, or single faces) against one gallery's identities.

    ``search(queries, k) -> (cosines, rows)`` finds each query's ``top`` nearest identities (the
    gallery's FAISS index in the stage); the query-side statistics of ``snorm`` are taken against a fixed
    sample of at most ``probe_sample`` identities (all of a small gallery).
    """

    centres: np.ndarray
    scorer: IdentityScore
    stats: IdentityStats | None = None
    search: Callable[[np.ndarray, int], tuple[np.ndarray, np.ndarray]] | None = None
    top: int = 10
    query_k: int = 3
    probe_sample: int = 2000
    seed: int = 0

    def __post_init__(self) -> None:
        self.centres = _unit(self.centres)
        if self.search is None:
            self.search = exact_search(self.centres)
        n = len(self.centres)
        rng = np.random.default_rng(self.seed)
        self.probe_rows = (
            np.arange(n)
            if n <= self.probe_sample
            else np.sort(rng.choice(n, self.probe_sample, replace=False))
        )

    @property
    def size(self) -> int:
        """Number of identities."""
        return len(self.centres)

    def candidates(self, queries: np.ndarray, faces: Sequence[np.ndarray] | None = None) -> Candidates:
        """Each query's ``top`` candidates with what every score needs (``faces``: per query, its faces)."""
        q = _unit(queries) if len(queries) else np.zeros((0, self.centres.shape[1]), np.float32)
        k = max(self.top, self.query_k)
        cos, ids = self.search(q, min(k, self.size))
        cos = np.where(ids >= 0, cos, -np.inf).astype(np.float32)
        kk = min(self.query_k, cos.shape[1])
        top = cos[:, :kk]
        query_top = np.where(np.isfinite(top), top, 0.0).mean(axis=1) if kk else np.zeros(len(q))
        loc, scale = (
            robust_loc_scale(q @ self.centres[self.probe_rows].T, axis=1)
            if len(q)
            else (np.zeros(0), np.zeros(0))
        )
        return self._with_faces(Candidates(ids, cos, query_top, loc, scale), faces)

    def _with_faces(self, cand: Candidates, faces: Sequence[np.ndarray] | None) -> Candidates:
        if faces is not None and self.scorer.needs_faces:
            cand.face_cos = [
                _unit(f) @ self.centres[np.maximum(cand.ids[i], 0)].T
                if len(f)
                else np.zeros((0, cand.ids.shape[1]))
                for i, f in enumerate(faces)
            ]
        return cand

    def scores(self, cand: Candidates) -> np.ndarray:
        """(Q, K) scores of the candidates."""
        return self.scorer.score(cand, self.stats)

    def best(
        self, queries: np.ndarray, faces: Sequence[np.ndarray] | None = None
    ) -> tuple[np.ndarray, np.ndarray]:
        """Per query: (its best score, that identity's row; -1 when none)."""
        cand = self.candidates(queries, faces)
        return best(self.scores(cand), cand)

    def impostor_sample(
        self,
        queries: np.ndarray,
        faces: Sequence[np.ndarray] | None = None,
        max_pairs: int = 2_000_000,
        seed: int = 0,
        include_best: bool = False,
    ) -> np.ndarray:
        """Scores of the queries against identities other than each query's best candidate (its possible
        mate): all identities of a small gallery, a random sample of them for a large one.
        ``include_best`` keeps the best ones too (a one-identity gallery has no other)."""
        if len(queries) == 0 or (self.size < 2 and not include_best):
            return np.zeros(0)
        cand = self.candidates(queries, faces)
        s_best, j_best = best(self.scores(cand), cand)
        n_cols = max(1, min(self.size, max_pairs // max(len(queries), 1)))
        rng = np.random.default_rng(seed)
        cols = (
            np.arange(self.size)
            if n_cols >= self.size
            else np.sort(rng.choice(self.size, n_cols, replace=False))
        )
        q = _unit(queries)
        ids = np.tile(cols, (len(q), 1))
        sub = Candidates(
            ids,
            (q @ self.centres[cols].T).astype(np.float32),
            cand.query_top,
            cand.query_loc,
            cand.query_scale,
        )
        sub = self._with_faces(sub, faces)
        s = self.scorer.score(sub, self.stats)
        mask = np.ones(ids.shape, bool) if include_best else ids != j_best[:, None]
        out = s[mask]
        return out[np.isfinite(out)]

    def gallery_self_scores(
        self, image_vectors: np.ndarray, image_rows: np.ndarray, max_images: int = 20000, seed: int = 0
    ) -> tuple[np.ndarray, np.ndarray]:
        """The gallery scored against itself -> (genuine, impostor), in this scorer's scale.

        Genuine: each image against the centre of its identity's *other* images (leave-one-out; images
        of one-image identities give none), the other identities' centres around it as usual: gallery
        photos against photos, an optimistic stand-in for video against photos. Impostor: each image
        against other identities (the cohort whose spread :func:`fit_run_impostors` uses). At most
        ``max_images`` images (a random sample) are scored."""
        x = _unit(image_vectors) if len(image_vectors) else np.zeros((0, self.centres.shape[1]), np.float32)
        rows = np.asarray(image_rows, np.int64)
        if len(x) > max_images:
            pick = np.sort(np.random.default_rng(seed).choice(len(x), max_images, replace=False))
            x, rows = x[pick], rows[pick]
        if len(x) == 0:
            return np.zeros(0), np.zeros(0)
        loo, loo_rows = openset.leave_one_out_genuine(x, rows)
        # Leave-one-out centre of each image's own identity, as a cosine; the rest from the search.
        own = np.full(len(x), np.nan)
        own[loo_rows] = loo
        k = max(self.top, self.query_k) + 1
        cos, ids = self.search(x, min(k, self.size))
        cos = np.where(ids >= 0, cos, -np.inf)
        is_own = ids == rows[:, None]
        cos = np.where(is_own, np.where(np.isfinite(own), own, -np.inf)[:, None], cos)
        # Keep the own identity as the first column (with its leave-one-out score), then the others.
        others = np.where(is_own, -np.inf, cos)
        order = np.argsort(-others, axis=1, kind="stable")[:, : k - 1]
        other_cos = np.take_along_axis(others, order, axis=1)
        other_ids = np.take_along_axis(ids, order, axis=1)
        all_cos = np.concatenate([np.where(np.isfinite(own), own, -np.inf)[:, None], other_cos], axis=1)
        all_ids = np.concatenate([rows[:, None], other_ids], axis=1)
        srt = -np.sort(-all_cos, axis=1)[:, : self.query_k]
        query_top = np.where(np.isfinite(srt), srt, 0.0).mean(axis=1)
        loc, scale = robust_loc_scale(x @ self.centres[self.probe_rows].T, axis=1)
        cand = Candidates(
            all_ids, all_cos.astype(np.float32), query_top, loc, scale, [c[None] for c in all_cos]
        )
        scored = self.scorer.score(cand, self.stats)
        genuine = scored[:, 0][np.isfinite(own)]
        # Impostors: each image against a sample of other identities (not only its nearest ones).
        n_cols = max(1, min(self.size, 2_000_000 // len(x)))
        rng = np.random.default_rng(seed)
        cols = (
            np.arange(self.size)
            if n_cols >= self.size
            else np.sort(rng.choice(self.size, n_cols, replace=False))
        )
        sub_ids = np.tile(cols, (len(x), 1))
        sub_cos = (x @ self.centres[cols].T).astype(np.float32)
        sub = Candidates(sub_ids, sub_cos, query_top, loc, scale, [c[None] for c in sub_cos])
        imp = self.scorer.score(sub, self.stats)[sub_ids != rows[:, None]]
        return genuine[np.isfinite(genuine)], imp[np.isfinite(imp)]


class IdentityScore:
    """A score of queries against their candidate identities: higher = more likely the same person."""

    name: str = ""
    needs_faces: bool = False

    def __init__(self, csls_k: int = 5, vote_share: float = 0.5, **_: Any) -> None:
        self.csls_k = csls_k
        self.vote_share = vote_share

    def score(self, cand: Candidates, stats: IdentityStats | None) -> np.ndarray:
        """(Q, K) scores of ``cand`` (-inf where there is no candidate)."""
        raise NotImplementedError


SCORES: Registry[IdentityScore] = Registry("identity score")


@SCORES.register("cosine")
class CosineScore(IdentityScore):
    """Cosine of sequence centre and identity centre."""

    name = "cosine"

    def score(self, cand: Candidates, stats: IdentityStats | None) -> np.ndarray:
        """The candidates' centre cosines."""
        return cand.cos.astype(np.float64)


@SCORES.register("vote")
class VoteScore(IdentityScore):
    """Per-face voting: the threshold at which ``vote_share`` of the faces still agree."""

    name = "vote"
    needs_faces = True

    def score(self, cand: Candidates, stats: IdentityStats | None) -> np.ndarray:
        """Per candidate, the (1 - vote_share) quantile of the sequence's face cosines to it."""
        if cand.face_cos is None:
            raise ValueError("the vote score needs the faces' cosines")
        out = np.full(cand.cos.shape, -np.inf)
        for i, fc in enumerate(cand.face_cos):
            n = len(fc)
            if n:
                # The highest t that at least ceil(share * n) faces reach: the ceil(share * n)-th largest.
                need = max(1, int(np.ceil(self.vote_share * n - 1e-9)))
                out[i] = np.sort(fc, axis=0)[n - need]
        return np.where(cand.ids >= 0, out, -np.inf)


@SCORES.register("csls")
class CslsScore(IdentityScore):
    """2 cos - r_G(sequence) - r_S(identity)."""

    name = "csls"

    def score(self, cand: Candidates, stats: IdentityStats | None) -> np.ndarray:
        """CSLS of each candidate."""
        if stats is None:
            raise ValueError("the csls score needs the identities' cohort statistics")
        r_s = stats.top_mean[np.maximum(cand.ids, 0)]
        out = 2.0 * cand.cos - cand.query_top[:, None] - r_s
        return np.where(cand.ids >= 0, out, -np.inf)


@SCORES.register("snorm")
class SnormScore(IdentityScore):
    """Symmetric normalisation: mean of the identity-side and sequence-side standardised scores."""

    name = "snorm"

    def score(self, cand: Candidates, stats: IdentityStats | None) -> np.ndarray:
        """S-norm of each candidate."""
        if stats is None:
            raise ValueError("the snorm score needs the identities' cohort statistics")
        rows = np.maximum(cand.ids, 0)
        z_id = (cand.cos - stats.loc[rows]) / stats.scale[rows]
        z_q = (cand.cos - cand.query_loc[:, None]) / cand.query_scale[:, None]
        return np.where(cand.ids >= 0, 0.5 * (z_id + z_q), -np.inf)


def create_score(name: str, **kwargs: Any) -> IdentityScore:
    """The score registered as ``name``."""
    return SCORES.create(name, **kwargs)


def best(scores: np.ndarray, cand: Candidates) -> tuple[np.ndarray, np.ndarray]:
    """Per query: (the best score, its identity row; -1 when there is none)."""
    if scores.shape[1] == 0:
        return np.full(len(scores), -np.inf), np.full(len(scores), -1, np.int64)
    j = np.argmax(scores, axis=1)
    s = scores[np.arange(len(scores)), j]
    ids = cand.ids[np.arange(len(scores)), j]
    return s, np.where(np.isfinite(s), ids, -1)


# --------------------------------------------------------------------------- calibration


@dataclass
class Calibration:
    """The operating point of one gallery for one run, model and score (written to the run and the report)."""

    gallery: str
    model: str
    score: str
    gallery_size: int
    target_fpir: float
    confident_fpir: float
    threshold: float
    """Below this a sequence is kept (its modelled FPIR at the gallery's size is the target)."""
    confident_threshold: float
    """At or above this a sequence is a ``gallery_match``; between the two, ``review``."""
    source: str
    """``run`` (fitted to the run's sequences), ``fixed`` (a configured threshold) or ``default``
    (too few sequences to fit: the gallery's default cosine threshold)."""
    threshold_for_target: float | None = None
    """The threshold whose modelled FPIR is the target (``threshold`` is lower only when the model
    cannot reach the target while keeping ``min_genuine_share`` of genuine matches)."""
    fit: dict[str, Any] | None = None
    n_impostor: int = 0
    n_cohort: int = 0
    n_sequences: int = 0
    fpir_at_threshold: float | None = None
    fpir_at_confident: float | None = None
    genuine: dict[str, Any] = field(default_factory=dict)
    """Leave-one-out genuine scores of the gallery: count, quantiles, the share kept at ``threshold``."""
    feasible: bool | None = None
    threshold_for_genuine: float | None = None
    fpir_for_genuine: float | None = None
    min_genuine_share: float = 0.95
    tail_check: list[dict[str, float]] = field(default_factory=list)
    warning: str | None = None

    def to_dict(self) -> dict[str, Any]:
        """Plain values for JSON."""
        return asdict(self)

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> Calibration:
        """Inverse of :meth:`to_dict`."""
        return cls(**data)

    def impostor_fit(self) -> openset.ImpostorFit | None:
        """The fitted impostor model (None for a fixed or default threshold without a fit)."""
        return openset.ImpostorFit(**self.fit) if self.fit else None

    def fpir(self, threshold: float) -> float | None:
        """Modelled FPIR of ``threshold`` at this gallery's size (None without a fit)."""
        fit = self.impostor_fit()
        return None if fit is None else float(openset.model_fpir(fit, threshold, self.gallery_size))

    def outcome(self, score: float) -> str:
        """``gallery_match``, ``review`` or ``kept`` for a best score."""
        if not np.isfinite(score) or score < self.threshold:
            return "kept"
        return "gallery_match" if score >= self.confident_threshold else "review"


def impostor_sample(scores: np.ndarray, ids: np.ndarray) -> np.ndarray:
    """The scores of every query's candidates except its best one (which may be its mate)."""
    s = np.where(ids >= 0, scores, -np.inf)
    if s.shape[1] < 2:
        return np.zeros(0)
    order = np.argsort(-s, axis=1)[:, 1:]
    rest = np.take_along_axis(s, order, axis=1).ravel()
    return rest[np.isfinite(rest)]


def _quantiles(x: np.ndarray) -> dict[str, Any]:
    x = np.asarray(x, np.float64)
    if len(x) == 0:
        return {"n": 0}
    q = np.quantile(x, [0.0, 0.05, 0.5, 1.0])
    return {
        "n": int(len(x)),
        "min": float(q[0]),
        "p05": float(q[1]),
        "median": float(q[2]),
        "max": float(q[3]),
    }


def calibrate(
    gallery: str,
    model: str,
    score: str,
    gallery_size: int,
    impostor: np.ndarray,
    genuine: np.ndarray,
    target_fpir: float,
    confident_fpir: float,
    method: str = "robust",
    min_genuine_share: float = 0.95,
    fixed_threshold: float | None = None,
    default_threshold: float | None = None,
    n_sequences: int = 0,
    cohort: np.ndarray | None = None,
) -> Calibration:
    """The operating point of one gallery from impostor and genuine scores in the score's scale.

    ``impostor``: the run's sequences against the gallery (each one's best candidate left out);
    ``cohort``: the gallery's own images against the other identities, in the same scale (see
    :func:`fit_run_impostors`).

    ``fixed_threshold`` (a configured threshold) replaces the fitted ones; with fewer than
    :data:`MIN_IMPOSTOR_SCORES` impostor scores ``default_threshold`` (the gallery's default cosine)
    is used instead of a fit.
    """
    impostor = np.asarray(impostor, np.float64)
    impostor = impostor[np.isfinite(impostor)]
    genuine = np.asarray(genuine, np.float64)
    genuine = genuine[np.isfinite(genuine)]
    cohort = np.asarray(cohort if cohort is not None else [], np.float64)
    cohort = cohort[np.isfinite(cohort)]
    fit = None
    if len(impostor) >= MIN_IMPOSTOR_SCORES:
        fit = fit_run_impostors(gallery, impostor, cohort, method)
    common = {
        "gallery": gallery,
        "model": model,
        "score": score,
        "gallery_size": int(gallery_size),
        "target_fpir": float(target_fpir),
        "confident_fpir": float(confident_fpir),
        "n_impostor": int(len(impostor)),
        "n_cohort": int(len(cohort)),
        "n_sequences": int(n_sequences),
        "min_genuine_share": float(min_genuine_share),
        "genuine": _quantiles(genuine),
    }
    if fixed_threshold is not None or fit is None:
        if fixed_threshold is None and default_threshold is None:
            raise InputError(f"gallery {gallery}: too few sequences to calibrate and no default threshold")
        t = float(fixed_threshold if fixed_threshold is not None else default_threshold)
        cal = Calibration(
            **common,
            threshold=t,
            confident_threshold=t,
            threshold_for_target=t,
            source="fixed" if fixed_threshold is not None else "default",
            fit=None if fit is None else fit.to_dict(),
        )
        if fit is not None:
            cal.fpir_at_threshold = cal.fpir_at_confident = cal.fpir(t)
        if len(genuine):
            cal.genuine["kept"] = float(np.mean(genuine >= t))
        return cal
    op = openset.operating_point(
        fit, gallery_size, target_fpir, genuine if len(genuine) else None, min_genuine_share
    )
    # When no threshold reaches the target FPIR and keeps the genuine share, the one that keeps the share
    # bounds what is kept: the sequences between it and the target's threshold go to review (leaking a
    # gallery identity is the costlier error), and the warning says what that costs.
    t_target = float(op.threshold)
    t = t_target if op.threshold_for_genuine is None else min(t_target, float(op.threshold_for_genuine))
    t_conf = float(openset.threshold_for_fpir(fit, confident_fpir, gallery_size))
    cal = Calibration(
        **common,
        threshold=t,
        confident_threshold=max(t_conf, t),
        threshold_for_target=t_target,
        source="run",
        fit=fit.to_dict(),
        feasible=op.feasible,
        threshold_for_genuine=op.threshold_for_genuine,
        fpir_for_genuine=op.fpir_for_genuine,
    )
    cal.fpir_at_threshold = cal.fpir(t)
    cal.fpir_at_confident = cal.fpir(cal.confident_threshold)
    if len(genuine):
        cal.genuine["kept"] = float(op.genuine_kept)
    if fit.method == "robust" or fit.method == "tail":
        cal.tail_check = openset.tail_check(fit, impostor, min_count=5)
    cal.warning = capability_warning(cal)
    return cal


def fit_run_impostors(
    gallery: str, impostor: np.ndarray, cohort: np.ndarray, method: str = "robust"
) -> openset.ImpostorFit | None:
    """The impostor model of one run against one gallery.

    Location: the run's own scores (median), which carry the run's footage, faces and gallery. Spread:
    the larger of the run's robust spread and that of the cohort (the gallery's images against its other
    identities). A run of a few people gives few, correlated scores whose spread is too small (on the
    shared media the run's MAD gave about half the spread of the pooled scores), and a threshold fitted
    to it removes strangers; the gallery's images give a spread of the same model that does not depend on
    the run's size. ``tail`` adds a generalised Pareto tail fitted to the run's scores when there are
    enough of them (:data:`seqbuild.openset.MIN_TAIL_SCORES` in the top share); ``moments`` uses the
    run's mean and standard deviation alone."""
    try:
        if method == "moments":
            return openset.fit_impostor(impostor, "moments")
        chosen = method
        if method == "tail" and len(impostor) * openset.TAIL_SHARE < openset.MIN_TAIL_SCORES:
            chosen = "robust"  # too few scores to see a tail: the bulk fit (the calibration says so)
        fit = openset.fit_impostor(impostor, chosen)
    except InputError as exc:
        log.warning("gallery %s: impostor scores cannot be fitted (%s)", gallery, exc)
        return None
    if len(cohort) >= MIN_IMPOSTOR_SCORES:
        try:
            spread = openset.fit_impostor(cohort, "robust").scale
        except InputError:
            spread = 0.0
        if spread > fit.scale:
            fit = dataclasses.replace(fit, scale=float(spread))
    return fit


def capability_warning(cal: Calibration) -> str | None:
    """One line when no threshold keeping ``min_genuine_share`` of genuine matches reaches the target
    FPIR at this gallery's size (None when one does, or when it cannot be told)."""
    if cal.feasible is not False or cal.fpir_for_genuine is None:
        return None
    share = cal.fpir_for_genuine
    return (
        f"gallery {cal.gallery} ({cal.gallery_size:,} identities): model {cal.model} cannot separate strangers"
        f" from gallery people at this size: keeping {cal.min_genuine_share:.0%} of genuine matches would"
        f" remove about {share:.1%} of innocent sequences (target {cal.target_fpir:.2%}); use a stronger model"
        " (e.g. an ArcFace model: --model onnx:w600k_r50.onnx) or a smaller gallery"
    )


def fpir_table(cal: Calibration, sizes: Sequence[int]) -> list[dict[str, float]]:
    """Modelled FPIR at this calibration's threshold for other gallery sizes (for the report)."""
    fit = cal.impostor_fit()
    if fit is None:
        return []
    out = []
    for n in sizes:
        out.append(
            {
                "gallery_size": int(n),
                "fpir_at_threshold": float(openset.model_fpir(fit, cal.threshold, n)),
                "threshold_for_target": float(openset.threshold_for_fpir(fit, cal.target_fpir, n)),
            }
        )
    return out


def finite_or_none(x: float | None) -> float | None:
    """``x`` as a float, None when it is None or not finite (JSON has no infinity)."""
    return None if x is None or not math.isfinite(float(x)) else float(x)
