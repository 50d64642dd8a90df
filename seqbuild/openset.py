"""Open-set identification rates: impostor-score fits, FAR, FPIR at a gallery size, FNIR at FPIR, DET.

Pure numerics (numpy, scipy.special) on similarity scores, higher = more alike; no I/O. The same
functions serve `seqbuild eval --identification` and any stage that has to choose or check an identity
decision threshold for a gallery of a given size.

Terms, as NIST FRVT 1:N and ISO/IEC 19795-1 use them:

* a *mated* search is of a person who is in the gallery; a *non-mated* search is of a person who is not;
* FAR(T): share of single non-mated comparisons (one probe, one gallery entry) scoring >= T;
* FPIR(N, T): share of non-mated searches against a gallery of N entries that return any candidate
  scoring >= T, i.e. whose top score is >= T (a stranger matched anyway);
* FNIR(T): share of mated searches whose mate is not returned at rank <= R with a score >= T (R = 1 here:
  an identity decision acts on the top candidate).

If a probe's impostor scores against the N entries were independent draws with the same FAR,
``FPIR(N, T) = 1 - (1 - FAR(T))^N`` (:func:`fpir_from_far`). Real probes differ (some look like many
people), which makes the formula conservative when FAR is averaged over probes; a heavier-than-normal
upper tail makes a normal fit optimistic. Check both with :func:`tail_check` and, where searches exist,
against the empirical :func:`open_set_fpir`.

The impostor model is a normal distribution fitted to the *bulk* of the scores (median and MAD by
default): scores of a run's sequences against a gallery are almost all non-mated, and the few genuine
matches must not inflate the fit. Its tail beyond the data is an extrapolation.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import asdict, dataclass

import numpy as np

from .errors import InputError

TIE_TOLERANCE = 1e-5
"""Scores closer than this are ties (float32 cosines computed by different routines differ by ~1e-6); a
distractor tied with the mate counts against it: the system cannot tell them apart."""

MAD_TO_SD = 1.482602218505602
"""Standard deviation of a normal distribution per unit of median absolute deviation."""

FIT_METHODS = ("robust", "moments", "tail")
TAIL_SHARE = 0.01
"""Share of the highest impostor scores a ``tail`` fit models with a generalised Pareto distribution."""
MIN_TAIL_SCORES = 50

ArrayLike = float | Sequence[float] | np.ndarray


def _scores(x: ArrayLike) -> np.ndarray:
    """A flat float array without copying float32 input (impostor samples run to millions of scores)."""
    a = np.asarray(x)
    return (a if a.dtype.kind == "f" else a.astype(np.float64)).ravel()


def _ndtr_sf(z: np.ndarray) -> np.ndarray:
    from scipy.special import ndtr

    return ndtr(-z)


def _ndtr_isf(p: np.ndarray) -> np.ndarray:
    from scipy.special import ndtri

    return -ndtri(p)


# --------------------------------------------------------------------------- impostor model


@dataclass(frozen=True)
class ImpostorFit:
    """A model of non-mated scores, FAR(T) = P(score >= T): a normal distribution (``loc``, ``scale``) and,
    for ``method = "tail"``, a generalised Pareto tail above ``tail_threshold`` (the scores' upper
    ``tail_share`` quantile) with shape ``tail_shape`` and scale ``tail_scale``."""

    loc: float
    scale: float
    n: int
    method: str = "robust"
    tail_threshold: float | None = None
    tail_share: float | None = None
    tail_shape: float | None = None
    tail_scale: float | None = None

    def _normal_far(self, t: np.ndarray) -> np.ndarray:
        return _ndtr_sf((t - self.loc) / self.scale)

    def far(self, threshold: ArrayLike) -> np.ndarray:
        """Modelled share of single non-mated comparisons scoring >= ``threshold``."""
        t = np.asarray(threshold, np.float64)
        normal = self._normal_far(t)
        if self.tail_threshold is None:
            return normal
        u, p_u, xi, beta = self.tail_threshold, self.tail_share, self.tail_shape, self.tail_scale
        y = np.maximum(t - u, 0.0)
        with np.errstate(divide="ignore", invalid="ignore", over="ignore"):
            if abs(xi) < 1e-9:
                tail = p_u * np.exp(-y / beta)
            else:
                base = 1 + xi * y / beta
                tail = np.where(base > 0, p_u * np.power(np.maximum(base, 1e-300), -1 / xi), 0.0)
        return np.where(t >= u, tail, np.maximum(normal, p_u))

    def threshold_at_far(self, far: ArrayLike) -> np.ndarray:
        """The threshold whose modelled FAR is ``far``."""
        p = np.clip(np.asarray(far, np.float64), 0.0, 1.0)
        normal = self.loc + self.scale * _ndtr_isf(p)
        if self.tail_threshold is None:
            return normal
        u, p_u, xi, beta = self.tail_threshold, self.tail_share, self.tail_shape, self.tail_scale
        with np.errstate(divide="ignore", invalid="ignore", over="ignore"):
            ratio = p / p_u
            if abs(xi) < 1e-9:
                tail = u - beta * np.log(ratio)
            else:
                tail = u + beta / xi * (np.power(ratio, -xi) - 1)
        return np.where(p < p_u, tail, np.minimum(normal, u))

    def to_dict(self) -> dict[str, float | int | str | None]:
        """Plain values for JSON reports."""
        return asdict(self)


def fit_impostor(scores: ArrayLike, method: str = "robust", tail_share: float = TAIL_SHARE) -> ImpostorFit:
    """Fit non-mated scores. ``robust``: normal with median and 1.4826 MAD (the bulk: a few mated scores
    among them do not move it); ``moments``: normal with mean and standard deviation; ``tail``: the robust
    normal plus a generalised Pareto distribution fitted (by moments) to the scores above their upper
    ``tail_share`` quantile, no lighter than exponential, for score distributions whose tail is heavier
    than the bulk's normal (FaceNet on real faces: docs/benchmarks.md). A tail fit sees the top scores, so mated scores must not be among
    them (pass impostor scores only, e.g. without each search's best candidate)."""
    s = _scores(scores)
    s = s[np.isfinite(s)]
    if len(s) < 2:
        raise InputError(f"an impostor fit needs at least 2 finite scores, got {len(s)}")
    if method in ("robust", "tail"):
        loc = float(np.median(s))
        scale = MAD_TO_SD * float(np.median(np.abs(s - loc)))
    elif method == "moments":
        loc, scale = float(np.mean(s)), float(np.std(s, ddof=1))
    else:
        raise InputError(f"impostor fit method {method!r}: expected one of {', '.join(FIT_METHODS)}")
    if not scale > 0:
        raise InputError(f"impostor scores have no spread ({len(s)} scores around {loc:.4f}): cannot fit")
    if method != "tail":
        return ImpostorFit(loc, scale, int(len(s)), method)
    if not 0 < tail_share < 0.5:
        raise InputError(f"tail share must lie between 0 and 0.5, got {tail_share}")
    exceed_count = int(np.floor(tail_share * len(s)))
    if exceed_count < MIN_TAIL_SCORES:
        raise InputError(
            f"a tail fit needs at least {MIN_TAIL_SCORES} scores in its top {tail_share:g} share "
            f"({int(np.ceil(MIN_TAIL_SCORES / tail_share))} scores); got {len(s)}"
        )
    top = np.partition(s, len(s) - exceed_count - 1)[len(s) - exceed_count - 1 :].astype(np.float64)
    u = float(top.min())
    y = top[top > u] - u
    mean, var = float(np.mean(y)), float(np.var(y, ddof=1))
    if not (mean > 0 and var > 0):
        raise InputError(f"the top {tail_share:g} of the impostor scores have no spread: cannot fit a tail")
    # Method-of-moments estimates; a negative shape (a tail with an end point) is clipped to 0, the
    # exponential tail: fitted to a few hundred scores, an end point would declare every score above it
    # impossible (on real FaceNet scores it fell below the sample's own maximum).
    ratio = mean * mean / var
    xi = 0.5 * (1 - ratio)
    if xi <= 0:
        xi, beta = 0.0, mean
    else:
        beta = 0.5 * mean * (ratio + 1)
    return ImpostorFit(loc, scale, int(len(s)), method, u, len(y) / len(s), xi, beta)


def tail_check(
    fit: ImpostorFit,
    scores: ArrayLike,
    quantiles: Sequence[float] = (0.99, 0.999, 0.9999),
    min_count: int = 10,
) -> list[dict[str, float]]:
    """Observed vs modelled FAR at the scores' upper quantiles (those with at least ``min_count`` scores
    above them): ratio > 1 means the real tail is heavier than the fit, so modelled FPIRs are optimistic."""
    s = np.sort(_scores(scores))
    out = []
    for q in quantiles:
        if len(s) * (1 - q) < min_count:
            continue
        t = float(np.quantile(s, q))
        observed = float(empirical_far(s, t, presorted=True))
        modelled = float(fit.far(t))
        out.append(
            {
                "quantile": float(q),
                "threshold": t,
                "observed_far": observed,
                "model_far": modelled,
                "ratio": observed / modelled if modelled > 0 else float("inf"),
            }
        )
    return out


# --------------------------------------------------------------------------- FAR <-> FPIR at a size


def fpir_from_far(far: ArrayLike, gallery_size: ArrayLike) -> np.ndarray:
    """FPIR against ``gallery_size`` independent entries: 1 - (1 - FAR)^N (stable for tiny FAR, huge N)."""
    p = np.clip(np.asarray(far, np.float64), 0.0, 1.0)
    n = np.asarray(gallery_size, np.float64)
    with np.errstate(divide="ignore"):
        return -np.expm1(n * np.log1p(-p))


def far_for_fpir(fpir: ArrayLike, gallery_size: ArrayLike) -> np.ndarray:
    """The per-comparison FAR that gives ``fpir`` against ``gallery_size`` entries: 1 - (1 - FPIR)^(1/N)."""
    f = np.clip(np.asarray(fpir, np.float64), 0.0, 1.0)
    n = np.asarray(gallery_size, np.float64)
    if np.any(n < 1):
        raise InputError(f"gallery size must be at least 1, got {gallery_size}")
    with np.errstate(divide="ignore"):
        return -np.expm1(np.log1p(-f) / n)


def model_fpir(fit: ImpostorFit, threshold: ArrayLike, gallery_size: ArrayLike) -> np.ndarray:
    """Modelled FPIR of ``threshold`` against ``gallery_size`` entries (broadcasts over both)."""
    return fpir_from_far(fit.far(threshold), gallery_size)


def threshold_for_fpir(fit: ImpostorFit, fpir: ArrayLike, gallery_size: ArrayLike) -> np.ndarray:
    """The threshold whose modelled FPIR against ``gallery_size`` entries is ``fpir``."""
    return fit.threshold_at_far(far_for_fpir(fpir, gallery_size))


def probewise_fpir(impostor_scores: np.ndarray, threshold: float, gallery_size: ArrayLike) -> np.ndarray:
    """FPIR against ``gallery_size`` entries from each probe's own FAR: the mean over probes (rows of
    ``impostor_scores``, one probe's scores against a cohort each) of 1 - (1 - FAR_probe)^N. Probes differ
    (a few resemble many people), and this keeps that: the pooled formula spreads their false matches
    over every probe. It is bounded by the share of probes with any cohort score >= threshold, so the
    cohort must be large enough to see each probe's FAR."""
    s = np.asarray(impostor_scores)
    if s.ndim != 2 or s.shape[1] == 0:
        raise InputError(f"probe-wise FPIR needs a (probes, cohort) score matrix, got shape {s.shape}")
    far = np.mean(s >= threshold, axis=1)
    n = np.asarray(gallery_size, np.float64)
    return np.mean(fpir_from_far(far[:, None], n.reshape(1, -1)), axis=0).reshape(n.shape)


# --------------------------------------------------------------------------- empirical rates


def empirical_far(scores: ArrayLike, threshold: ArrayLike, presorted: bool = False) -> np.ndarray:
    """Share of ``scores`` at or above each threshold."""
    s = _scores(scores)
    if not presorted:
        s = np.sort(s)
    t = np.asarray(threshold, np.float64)
    if len(s) == 0:
        return np.full(t.shape, np.nan)
    return (len(s) - np.searchsorted(s, t, side="left")) / len(s)


def open_set_fpir(nonmated_top: ArrayLike, threshold: ArrayLike) -> np.ndarray:
    """Empirical FPIR: share of non-mated searches whose top score is >= threshold."""
    return empirical_far(nonmated_top, threshold)


def open_set_fnir(
    mated_scores: ArrayLike, mated_ranks: ArrayLike, threshold: ArrayLike, rank: int = 1
) -> np.ndarray:
    """Empirical FNIR: share of mated searches whose mate is not at rank <= ``rank`` with score >= T
    (a mate beyond ``rank`` is a miss at every threshold, -inf included)."""
    s = np.asarray(mated_scores, np.float64).ravel()
    hit = np.asarray(mated_ranks).ravel() <= rank
    t = np.asarray(threshold, np.float64)
    if len(s) == 0:
        return np.full(t.shape, np.nan)
    below = np.searchsorted(np.sort(s[hit]), t, side="left")
    return (np.count_nonzero(~hit) + below) / len(s)


def threshold_at_fpir(nonmated_top: ArrayLike, fpir: float) -> float:
    """The lowest threshold whose empirical FPIR is <= ``fpir`` (-inf when every search may match)."""
    s = np.sort(np.asarray(nonmated_top, np.float64).ravel())[::-1]
    if len(s) == 0:
        raise InputError("no non-mated searches: FPIR is undefined")
    allowed = int(np.floor(fpir * len(s) + 1e-9))
    if allowed >= len(s):
        return float("-inf")
    # Just above the (allowed+1)-th highest top score: it and every score below it are rejected.
    return float(np.nextafter(s[allowed], np.inf))


def fnir_at_fpir(
    mated_scores: ArrayLike,
    mated_ranks: ArrayLike,
    nonmated_top: ArrayLike,
    fpir: float,
    rank: int = 1,
) -> tuple[float, float]:
    """(FNIR, threshold) at the lowest threshold whose empirical FPIR is <= ``fpir``."""
    t = threshold_at_fpir(nonmated_top, fpir)
    return float(open_set_fnir(mated_scores, mated_ranks, t, rank)), t


@dataclass(frozen=True)
class DetCurve:
    """Detection and identification error trade-off: FPIR and FNIR at each threshold (ascending)."""

    thresholds: np.ndarray
    fpir: np.ndarray
    fnir: np.ndarray

    def to_dict(self) -> dict[str, list[float]]:
        """Plain lists for JSON reports (infinite thresholds become None)."""
        return {
            "threshold": [float(t) if np.isfinite(t) else None for t in self.thresholds],
            "fpir": [float(v) for v in self.fpir],
            "fnir": [float(v) for v in self.fnir],
        }


def det_curve(
    mated_scores: ArrayLike,
    mated_ranks: ArrayLike,
    nonmated_top: ArrayLike,
    rank: int = 1,
    max_points: int = 0,
) -> DetCurve:
    """FPIR and FNIR at every distinct score (or ``max_points`` thresholds spread over them)."""
    s = np.asarray(mated_scores, np.float64).ravel()
    r = np.asarray(mated_ranks).ravel()
    top = np.asarray(nonmated_top, np.float64).ravel()
    hits = s[r <= rank]
    candidates = np.unique(np.concatenate([hits[np.isfinite(hits)], top[np.isfinite(top)]]))
    if max_points and len(candidates) > max_points:
        candidates = candidates[np.linspace(0, len(candidates) - 1, max_points).round().astype(int)]
    thresholds = np.concatenate([[-np.inf], candidates, [np.inf]])
    return DetCurve(thresholds, open_set_fpir(top, thresholds), open_set_fnir(s, r, thresholds, rank))


# --------------------------------------------------------------------------- genuine scores, operating point


def leave_one_out_genuine(vectors: np.ndarray, labels: Sequence[object]) -> tuple[np.ndarray, np.ndarray]:
    """Each vector against the normalised mean of the *other* vectors of its label -> (scores, row index).

    The genuine-score estimate a gallery can give about itself; labels with one vector give none."""
    x = np.asarray(vectors, np.float64)
    x = x / np.maximum(np.linalg.norm(x, axis=1, keepdims=True), 1e-12)
    keys, inverse, counts = np.unique(
        np.asarray(labels, dtype=object).astype(str), return_inverse=True, return_counts=True
    )
    sums = np.zeros((len(keys), x.shape[1]))
    np.add.at(sums, inverse, x)
    rows = np.flatnonzero(counts[inverse] >= 2)
    others = sums[inverse[rows]] - x[rows]
    norms = np.linalg.norm(others, axis=1)
    scores = np.einsum("ij,ij->i", x[rows], others) / np.maximum(norms, 1e-12)
    return scores, rows


@dataclass(frozen=True)
class OperatingPoint:
    """A threshold chosen for a target FPIR at a gallery size, and what it costs in genuine matches."""

    gallery_size: int
    target_fpir: float
    threshold: float
    genuine_kept: float | None
    min_genuine_share: float
    feasible: bool | None
    threshold_for_genuine: float | None
    fpir_for_genuine: float | None

    def to_dict(self) -> dict[str, float | int | bool | None]:
        """Plain values for JSON reports."""
        return asdict(self)


def operating_point(
    fit: ImpostorFit,
    gallery_size: int,
    target_fpir: float,
    genuine: ArrayLike | None = None,
    min_genuine_share: float = 0.95,
) -> OperatingPoint:
    """The modelled threshold for ``target_fpir`` at ``gallery_size`` and, given genuine scores, whether
    it keeps ``min_genuine_share`` of them (``feasible``); ``fpir_for_genuine`` is the modelled FPIR at the
    highest threshold that does keep that share: the expected share of strangers matched if it is used."""
    threshold = float(threshold_for_fpir(fit, target_fpir, gallery_size))
    g = np.sort(np.asarray(genuine if genuine is not None else [], np.float64).ravel())[::-1]
    g = g[np.isfinite(g)]
    if len(g) == 0:
        return OperatingPoint(
            int(gallery_size), float(target_fpir), threshold, None, float(min_genuine_share), None, None, None
        )
    kept = float(np.mean(g >= threshold))
    k = max(int(np.ceil(min_genuine_share * len(g) - 1e-9)), 1)
    t_gen = float(g[k - 1])
    return OperatingPoint(
        int(gallery_size),
        float(target_fpir),
        threshold,
        kept,
        float(min_genuine_share),
        kept >= min_genuine_share,
        t_gen,
        float(model_fpir(fit, t_gen, gallery_size)),
    )


# --------------------------------------------------------------------------- ranks


def mate_ranks(
    mated_scores: ArrayLike, top_distractors: np.ndarray, tolerance: float = TIE_TOLERANCE
) -> np.ndarray:
    """Rank of each mate among the distractors: 1 + the number of its top-k distractor scores at or above
    it (within ``tolerance``: ties count against the mate); k + 1 means "beyond rank k"."""
    s = np.asarray(mated_scores, np.float64)
    top = np.asarray(top_distractors, np.float64)
    return 1 + np.sum(top >= (s[..., None] - tolerance), axis=-1)
