"""The MegaFace identification protocol with open-set rates, on feature sets of any size.

For each probe identity, one image is the gallery entry and each other image of that identity is a
query (``gallery_images = "each"``, MegaFace's rule, does this for every image in turn; ``"first"``
uses only the first image). The gallery of a search holds that one mate plus the N distractors of the
subset being measured. A query is identified at rank r when fewer than r distractors score at or above
its mate (ties count against the mate). Reported per distractor-set size N: the rank-1 identification
rate (MegaFace's leaderboard curve) and the CMC at the requested ranks.

Open-set rates, as NIST FRVT 1:N reports them: every probe image searched against the N distractors
alone is a non-mated search (its identity is not among them); FPIR(T) is the share of those whose top
score is >= T, FNIR(T) the share of mated searches whose mate is not at rank 1 with a score >= T.
Reported: FNIR at fixed FPIRs, the DET curve, FPIR and FNIR at one threshold (by default the one
`dedup-overlap` uses for the model) for each N, and the same FPIR modelled for larger galleries from a
normal fit of the impostor scores (seqbuild.openset). Verification: true-accept rate of same-identity
probe pairs at fixed false-accept rates of probe-vs-distractor pairs.
"""

from __future__ import annotations

import logging
import os
import tempfile
import time
from collections.abc import Iterator
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from .. import openset
from ..errors import InputError
from .features import (
    IMAGE_KINDS,
    FeatureSet,
    FeatureSource,
    cached_features,
    extract_features,
    open_features,
    source_kind,
)
from .search import DistractorScores, search_distractors

log = logging.getLogger(__name__)

DEFAULT_SIZES = [10, 100, 1_000, 10_000, 100_000, 1_000_000]
REFERENCE_GALLERIES = {"LFW": 5_749, "MS1M-v2": 85_742}
"""Gallery sizes the modelled FPIR is also reported at: identities in LFW and in MS1M-v2."""
MODEL_SIZES = [1, 10, 100, 1_000, 5_749, 10_000, 85_742, 100_000, 1_000_000]


@dataclass
class IdentificationConfig:
    """Options of `seqbuild eval --identification` (one source of defaults)."""

    sizes: list[int] = field(default_factory=lambda: list(DEFAULT_SIZES))
    """Distractor-set sizes; those above the set's size are dropped and the whole set is added."""
    ranks: list[int] = field(default_factory=lambda: [1, 5, 10])
    gallery_images: str = "each"
    """each: every image of an identity in turn is its gallery entry (MegaFace); first: only the first."""
    threshold: float | None = None
    """Threshold of the FPIR/FNIR-vs-N figures; None = dedup-overlap's default for the model."""
    fpir_levels: list[float] = field(default_factory=lambda: [0.1, 0.01, 0.001])
    far_levels: list[float] = field(default_factory=lambda: [1e-6, 1e-5, 1e-4, 1e-3])
    memory_mb: float = 512
    """Bound on the streamed distractor buffers (the probe-side arrays come on top)."""
    impostor_scores: int = 5_000_000
    """Probe-vs-distractor scores kept whole for verification and the impostor fit."""
    fit_methods: list[str] = field(default_factory=lambda: ["robust", "tail"])
    """Impostor-score models reported (seqbuild.openset.fit_impostor methods)."""
    seed: int = 0
    use_gpu: bool | None = None
    det_points: int = 200

    def check(self) -> None:
        """InputError naming the first invalid option."""
        if not self.sizes or any(int(s) < 1 for s in self.sizes):
            raise InputError(f"--sizes: distractor-set sizes must be positive integers, got {self.sizes}")
        if not self.ranks or any(int(r) < 1 for r in self.ranks):
            raise InputError(f"--ranks: ranks must be positive integers, got {self.ranks}")
        if self.gallery_images not in ("each", "first"):
            raise InputError(f"--gallery-images {self.gallery_images!r}: expected each or first")
        if any(not 0 < f < 1 for f in self.fpir_levels + self.far_levels):
            raise InputError("FPIR and FAR levels must lie strictly between 0 and 1")
        if self.memory_mb <= 0:
            raise InputError(f"--memory-mb must be positive, got {self.memory_mb}")
        for method in self.fit_methods:
            if method not in openset.FIT_METHODS:
                raise InputError(f"fit method {method!r}: expected one of {', '.join(openset.FIT_METHODS)}")


def distractor_sizes(requested: list[int], count: int) -> list[int]:
    """The requested sizes the distractor set allows, plus the whole set when it is larger than them."""
    sizes = sorted({int(s) for s in requested if int(s) <= count})
    if count > 0 and (not sizes or sizes[-1] < count) and count <= max(int(s) for s in requested):
        sizes.append(int(count))
    return sizes


# --------------------------------------------------------------------------- mated searches


def identity_groups(labels: np.ndarray) -> list[np.ndarray]:
    """Row indices of each identity, in order of first appearance."""
    keys, first, inverse = np.unique(labels.astype(str), return_index=True, return_inverse=True)
    order = np.argsort(first)
    rows = np.argsort(inverse, kind="stable")
    bounds = np.searchsorted(inverse[rows], np.arange(len(keys) + 1))
    return [rows[bounds[i] : bounds[i + 1]] for i in order]


@dataclass
class MatedSearches:
    """Each mated search: the gallery image's row, the query's row and their score."""

    gallery: np.ndarray
    query: np.ndarray
    scores: np.ndarray


def mated_searches(
    vectors: np.ndarray, groups: list[np.ndarray], gallery_images: str = "each"
) -> MatedSearches:
    """The (gallery image, query) pairs of the protocol and their scores (float32, as the search computes)."""
    gal, qry, sc = [], [], []
    for rows in groups:
        if len(rows) < 2:
            continue
        sims = vectors[rows] @ vectors[rows].T
        if gallery_images == "first":
            gi, qi = np.zeros(len(rows) - 1, int), np.arange(1, len(rows))
        else:
            gi, qi = np.nonzero(~np.eye(len(rows), dtype=bool))
        gal.append(rows[gi])
        qry.append(rows[qi])
        sc.append(sims[qi, gi])
    if not gal:
        return MatedSearches(np.zeros(0, int), np.zeros(0, int), np.zeros(0, np.float32))
    return MatedSearches(np.concatenate(gal), np.concatenate(qry), np.concatenate(sc).astype(np.float32))


def genuine_pair_scores(vectors: np.ndarray, groups: list[np.ndarray]) -> np.ndarray:
    """Scores of every unordered pair of images of one identity (the verification genuine pairs)."""
    out = []
    for rows in groups:
        if len(rows) >= 2:
            sims = vectors[rows] @ vectors[rows].T
            out.append(sims[np.triu_indices(len(rows), 1)])
    return np.concatenate(out).astype(np.float32) if out else np.zeros(0, np.float32)


def _chunks(n: int, size: int) -> Iterator[slice]:
    for start in range(0, n, size):
        yield slice(start, min(start + size, n))


def mated_ranks(mated: MatedSearches, topk: np.ndarray) -> np.ndarray:
    """(sizes, searches) rank of each mate among each subset's distractors (k + 1 = beyond the top k)."""
    ranks = np.empty((topk.shape[0], len(mated.scores)), np.int32)
    for j in range(topk.shape[0]):
        for sl in _chunks(len(mated.scores), 1 << 18):
            ranks[j, sl] = openset.mate_ranks(mated.scores[sl], topk[j][mated.query[sl]])
    return ranks


# --------------------------------------------------------------------------- figures


def _num(x: float) -> float | None:
    return float(x) if np.isfinite(x) else None


def verification_figures(
    genuine: np.ndarray, impostors: np.ndarray, far_levels: list[float]
) -> dict[str, Any]:
    """TAR at each FAR of same-identity probe pairs vs probe-vs-distractor pairs."""
    from ..train.evaluate import tar_at_far

    scores = np.concatenate([genuine, impostors.ravel()])
    same = np.zeros(len(scores), bool)
    same[: len(genuine)] = True
    out: dict[str, Any] = {
        "genuine_pairs": int(len(genuine)),
        "impostor_pairs": int(impostors.size),
        "tar_at_far": {},
    }
    for far in far_levels:
        tar, thr = tar_at_far(scores, same, far)
        out["tar_at_far"][f"{far:g}"] = {
            "tar": _num(tar),
            "threshold": _num(thr),
            "resolved": bool(far * impostors.size >= 1),
        }
    return out


def identification_figures(
    probes: FeatureSet,
    scores: DistractorScores,
    cfg: IdentificationConfig,
    threshold: float | None,
) -> dict[str, Any]:
    """Every identification, open-set and verification figure from one distractor pass."""
    groups = identity_groups(probes.labels)
    mated = mated_searches(probes.vectors, groups, cfg.gallery_images)
    if len(mated.scores) == 0:
        raise InputError(
            f"{probes.source}: no identity has two or more images, so there is nothing to identify"
        )
    ranks = mated_ranks(mated, scores.topk)
    nonmated_top = scores.topk[:, :, 0].astype(np.float64)
    sizes = scores.sizes
    out: dict[str, Any] = {
        "protocol": "megaface",
        "gallery_images": cfg.gallery_images,
        "tie_rule": f"a distractor within {openset.TIE_TOLERANCE:g} of the mate's score or above it ranks before it",
        "probes": {
            "source": probes.source,
            "images": int(len(probes)),
            "identities": len(groups),
            "single_image_identities": int(sum(len(g) == 1 for g in groups)),
            "mated_searches": int(len(mated.scores)),
            "nonmated_searches": int(len(probes)),
        },
        "sizes": [int(s) for s in sizes],
        "rank1": [float(np.mean(ranks[j] <= 1)) for j in range(len(sizes))],
        "cmc": {str(r): [float(np.mean(ranks[j] <= r)) for j in range(len(sizes))] for r in cfg.ranks},
    }
    open_set: dict[str, Any] = {"rank": 1, "fnir_at_fpir": {}, "det": []}
    for f in cfg.fpir_levels:
        rows = []
        for j in range(len(sizes)):
            fnir, t = openset.fnir_at_fpir(mated.scores, ranks[j], nonmated_top[j], f)
            rows.append({"fnir": fnir, "threshold": _num(t), "resolved": bool(f * len(probes) >= 1)})
        open_set["fnir_at_fpir"][f"{f:g}"] = rows
    for j in range(len(sizes)):
        det = openset.det_curve(mated.scores, ranks[j], nonmated_top[j], max_points=cfg.det_points)
        open_set["det"].append({"size": int(sizes[j]), **det.to_dict()})
    model_sizes = sorted(set(openset_model_sizes(sizes)))
    impostors = scores.impostor_sample
    if threshold is not None:
        open_set["threshold"] = float(threshold)
        open_set["fpir_at_threshold"] = [
            float(openset.open_set_fpir(nonmated_top[j], threshold)) for j in range(len(sizes))
        ]
        open_set["fnir_at_threshold"] = [
            float(openset.open_set_fnir(mated.scores, ranks[j], threshold)) for j in range(len(sizes))
        ]
        far = float(openset.empirical_far(impostors, threshold))
        open_set["far_at_threshold"] = far
        open_set["independent_fpir_at_threshold"] = {
            str(n): float(openset.fpir_from_far(far, n)) for n in model_sizes
        }
        probewise = openset.probewise_fpir(impostors, threshold, model_sizes)
        open_set["probewise_fpir_at_threshold"] = {
            str(n): float(v) for n, v in zip(model_sizes, probewise, strict=True)
        }
    open_set["models"] = {
        m: impostor_model(impostors, m, threshold, model_sizes, cfg.fpir_levels) for m in cfg.fit_methods
    }
    out["open_set"] = open_set
    out["verification"] = verification_figures(
        genuine_pair_scores(probes.vectors, groups), scores.impostor_sample, cfg.far_levels
    )
    return out


def impostor_model(
    impostors: np.ndarray, method: str, threshold: float | None, sizes: list[int], fpir_levels: list[float]
) -> dict[str, Any]:
    """One fit of the impostor sample: its parameters, tail check, modelled FPIR at ``threshold`` for each
    gallery size, and the threshold for each FPIR level at each size."""
    try:
        fit = openset.fit_impostor(impostors, method)
    except InputError as exc:
        return {"error": str(exc)}
    out: dict[str, Any] = {"fit": fit.to_dict(), "tail_check": openset.tail_check(fit, impostors)}
    if threshold is not None:
        out["far_at_threshold"] = float(fit.far(threshold))
        out["fpir_at_threshold"] = {str(n): float(openset.model_fpir(fit, threshold, n)) for n in sizes}
    out["threshold_for_fpir"] = {
        f"{f:g}": {str(n): float(openset.threshold_for_fpir(fit, f, n)) for n in sizes} for f in fpir_levels
    }
    return out


def openset_model_sizes(sizes: list[int]) -> list[int]:
    """The gallery sizes the modelled FPIR is reported at: the measured ones plus the references."""
    return [int(s) for s in sizes] + MODEL_SIZES + list(REFERENCE_GALLERIES.values())


# --------------------------------------------------------------------------- model and inputs


def model_label(model: str, weights: str = "") -> str:
    """The model id features of MODEL carry (``name[:weights file]``), for comparing with recorded ones."""
    if Path(model).is_file():
        return f"seqface:{Path(model).name}"
    name, _, spec_weights = model.partition(":")
    w = weights or spec_weights
    return f"{name}:{Path(w).name}" if w else name


def create_model_embedder(model: str, weights: str = "", device: str = "auto") -> Any:
    """The embedder for MODEL: a checkpoint file (seqface) or a registered name, ``name[:weights]``."""
    from ..embed.models import EMBEDDERS, create_embedder

    if Path(model).is_file():
        return create_embedder("seqface", weights=model, device=device)
    name, _, spec_weights = model.partition(":")
    if name not in EMBEDDERS:
        raise InputError(
            f"{model}: neither a checkpoint file nor an embedder (known: {', '.join(EMBEDDERS.names())})"
        )
    return create_embedder(name, weights=weights or spec_weights, device=device)


def default_threshold(model: str, embedder: Any | None = None) -> float | None:
    """dedup-overlap's default centre threshold for the model (None when it has none and no embedder)."""
    from ..overlap.gallery import CENTRE_THRESHOLDS

    name = "seqface" if Path(model).is_file() else model.partition(":")[0]
    if name in CENTRE_THRESHOLDS:
        return CENTRE_THRESHOLDS[name]
    if embedder is not None and getattr(embedder, "same_identity_threshold", None) is not None:
        return float(embedder.same_identity_threshold)
    return None


@dataclass
class Inputs:
    """How features for a run's sources are found or made."""

    model: str
    weights: str = ""
    device: str = "auto"
    aligned: bool = False
    features_dir: Path | None = None
    progress: bool = False
    _embedder: Any = None

    def embedder(self) -> Any:
        """Created on first use only (feature inputs never load a model)."""
        if self._embedder is None:
            self._embedder = create_model_embedder(self.model, self.weights, self.device)
        return self._embedder

    def model_id(self) -> str:
        """The full model id (weights content, input, alignment) that features must have been made with."""
        from ..embed.models import model_id

        return model_id(self.embedder())

    def features(self, src: str | os.PathLike[str], role: str) -> tuple[FeatureSource, dict[str, Any]]:
        """A feature source for ``src``, embedding image sources once into ``features_dir/ROLE.npy``."""
        kind = source_kind(src)
        info: dict[str, Any] = {"source": str(src), "kind": kind}
        if kind not in IMAGE_KINDS:
            source = open_features(src)
            if source.model:
                from ..embed.models import model_name
                from ..overlap.gallery import same_model

                if "@" in source.model:  # a full model id (seqbuild's own features): compared whole
                    expected = self.model_id()
                    same = same_model(source.model, expected)
                else:  # features made elsewhere name their model only: the weights cannot be checked
                    expected = model_label(self.model, self.weights)
                    same = model_name(source.model) == model_name(expected)
                    if same:
                        log.warning(
                            "%s: features name their model (%s) but not its weights", src, source.model
                        )
                if not same:
                    raise InputError(
                        f"{src}: features of model {source.model!r}, but the evaluation is of {expected!r}"
                    )
            info["model"] = source.model
            return source, info
        if self.features_dir is None:
            raise InputError(f"{src}: image inputs need a features folder to embed into")
        stem = self.features_dir / role
        options = {"aligned": self.aligned, "model": self.model, "weights": self.weights}
        if Path(self.model).is_file():  # a retrained checkpoint of the same name must not reuse features
            st = Path(self.model).stat()
            options["model_file"] = f"{st.st_size}:{st.st_mtime_ns}"
        manifest = cached_features(stem, src, self.model_id(), options)
        info["embedded"] = manifest is None
        if manifest is None:
            embedder = self.embedder()
            manifest = extract_features(
                src, stem, embedder, self.model_id(), options, device=self.device, progress=self.progress
            )
        info.update({"features": str(stem.with_suffix(".npy")), "status_counts": manifest["status_counts"]})
        source = open_features(stem.with_suffix(".npy"))
        source.model = manifest["model"]
        info["model"] = manifest["model"]
        return source, info


def evaluate_identification(
    model: str,
    probes: str | os.PathLike[str],
    distractors: str | os.PathLike[str],
    cfg: IdentificationConfig | None = None,
    weights: str = "",
    device: str = "auto",
    aligned: bool = False,
    features_dir: str | os.PathLike[str] | None = None,
    progress: bool = False,
) -> dict[str, Any]:
    """Identification of PROBES against DISTRACTORS with MODEL: every figure, as a JSON-ready dict."""
    cfg = cfg or IdentificationConfig()
    cfg.check()
    t0 = time.perf_counter()
    with tempfile.TemporaryDirectory(prefix="seqbuild-features-") as tmp:
        inputs = Inputs(
            model, weights, device, aligned, Path(features_dir) if features_dir else Path(tmp), progress
        )
        probe_source, probe_info = inputs.features(probes, "probes")
        distractor_source, distractor_info = inputs.features(distractors, "distractors")
        if probe_source.dim != distractor_source.dim:
            raise InputError(
                f"{distractors}: {distractor_source.dim}-d features, but the probes are {probe_source.dim}-d"
            )
        probe_set = probe_source.load()
        if len(probe_set) == 0:
            raise InputError(f"{probes}: no probe features")
        if distractor_source.count == 0:
            raise InputError(f"{distractors}: no distractor features")
        _warn_shared_identities(probe_set, distractor_source)
        sizes = distractor_sizes(cfg.sizes, distractor_source.count)
        if not sizes:
            raise InputError(
                f"{distractors}: {distractor_source.count} distractors, fewer than the smallest size {min(cfg.sizes)}"
            )
        k = max(cfg.ranks)
        sample = max(1, cfg.impostor_scores // max(len(probe_set), 1))
        t_search = time.perf_counter()
        scores = search_distractors(
            probe_set.vectors,
            distractor_source,
            sizes,
            k,
            sample,
            cfg.seed,
            cfg.memory_mb,
            cfg.use_gpu,
            progress,
        )
        search_seconds = time.perf_counter() - t_search
        threshold = cfg.threshold if cfg.threshold is not None else default_threshold(model, inputs._embedder)
        result = identification_figures(probe_set, scores, cfg, threshold)
    result["model"] = probe_info.get("model") or distractor_info.get("model") or model_label(model, weights)
    result["probes"].update(probe_info)  # the source as given; "features" where images were embedded
    result["distractors"] = {
        **distractor_info,
        "count": int(distractor_source.count),
        "seed": cfg.seed,
        "impostor_sample": int(scores.impostor_sample.shape[1]),
    }
    if cfg.threshold is None and threshold is not None and "threshold" in result["open_set"]:
        result["open_set"]["threshold_source"] = "dedup-overlap default centre threshold for the model"
    result["run"] = {
        "search": scores.device,
        "batch_rows": scores.batch_rows,
        "memory_mb": cfg.memory_mb,
        "search_seconds": round(search_seconds, 3),
        "total_seconds": round(time.perf_counter() - t0, 3),
    }
    result["config"] = asdict(cfg)
    return result


def _warn_shared_identities(probes: FeatureSet, distractors: FeatureSource) -> None:
    names = set(probes.labels.astype(str))
    shared: set[str] = set()
    for label in distractors.labels():
        if label in names:
            shared.add(label)
            if len(shared) >= 5:
                break
    if shared:
        log.warning(
            "distractors carry identity labels that probes also carry (%s): the protocol assumes none of the "
            "probe people are among the distractors",
            ", ".join(sorted(shared)),
        )
