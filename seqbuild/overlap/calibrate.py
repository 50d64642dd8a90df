"""Step 1 of dedup-overlap: one operating point per gallery, from the whole run.

The run's sequences (a random sample of ``cohort_size`` at most) are read once; per gallery they give
the identities' cohort statistics (what ``csls`` and ``snorm`` discount) and the impostor sample, the
gallery's own images give the genuine scores and a second impostor spread, and
:func:`seqbuild.overlap.decide.calibrate` turns them into thresholds for the target FPIR at the
gallery's size. Written to ``RUN/dedup_overlap/_calibration/<gallery>.json`` (plus ``.npz`` with the
statistics) and reused while the run's input, the gallery and the options are the same.
"""

from __future__ import annotations

import json
import logging
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from ..config import config_hash, output_values
from ..errors import SeqbuildError
from ..layout import RunDir
from ..schema import ASSIGNMENTS
from ..storage import atomic_path, read_table, write_json_atomic
from .config import OverlapConfig
from .decide import (
    MIN_IMPOSTOR_SCORES,
    Calibration,
    GalleryScorer,
    IdentityStats,
    calibrate,
    create_score,
    identity_stats,
    typical_stats,
)
from .gallery import Gallery, read_gallery_images

log = logging.getLogger(__name__)

FOLDER = "_calibration"
FACE_SUFFIX = ".faces"

# Options that say how decisions are made from the scores, not how the scores are calibrated.
_DECISION_ONLY = ("review", "decisions", "decided_by", "per_face", "workers")


@dataclass
class RunSample:
    """The run's sequences as the calibration sees them."""

    seq_ids: set[str]
    """Every searched sequence of the run (decisions are checked against them)."""
    centres: np.ndarray
    """Centres of the sampled sequences."""
    faces: list[np.ndarray]
    """Face vectors of the sampled sequences."""
    n_sequences: int


def _unit(x: np.ndarray) -> np.ndarray:
    return x / np.maximum(np.linalg.norm(x, axis=-1, keepdims=True), 1e-12)


def video_sequences(run: RunDir, stage: str, video: str) -> tuple[list[str], list[str]]:
    """(face ids, their seq ids) of one video's searched sequences."""
    a = read_table(
        run.stage(stage).table_path("assignments", video), ASSIGNMENTS, columns=["face_id", "seq_id"]
    )
    return a.column("face_id").to_pylist(), a.column("seq_id").to_pylist()


def sample_run(run: RunDir, cfg: OverlapConfig, videos: list[str], seed: int = 0) -> RunSample:
    """Every searched sequence id, and the centres and faces of a random sample of ``cohort_size``."""
    from .stage import embedding_matrix

    per_video: dict[str, list[str]] = {}
    all_ids: set[str] = set()
    for video in videos:
        try:
            _, seqs = video_sequences(run, cfg.input_stage, video)
        except (SeqbuildError, OSError) as exc:
            # The video fails on its own in step 2, with this error; the others are calibrated without it.
            log.warning("video %s is left out of the calibration: %s", video, exc)
            continue
        per_video[video] = sorted(set(seqs))
        all_ids.update(per_video[video])
    ordered = sorted(all_ids)
    rng = np.random.default_rng(seed)
    chosen = (
        set(ordered)
        if len(ordered) <= cfg.cohort_size
        else {ordered[i] for i in rng.choice(len(ordered), cfg.cohort_size, replace=False)}
    )
    centres, faces = [], []
    for video in per_video:
        if not chosen.intersection(per_video[video]):
            continue
        face_ids, seqs = video_sequences(run, cfg.input_stage, video)
        path = run.embed.table_path("embeddings", video)
        try:
            emb = read_table(path, columns=["face_id", "embedding"])
        except (SeqbuildError, OSError) as exc:
            log.warning("video %s is left out of the calibration: %s", video, exc)
            continue
        found, vectors = embedding_matrix(emb, face_ids)
        seq_of = dict(zip(face_ids, seqs, strict=True))
        rows: dict[str, list[int]] = {}
        for i, f in enumerate(found):
            if seq_of[f] in chosen:
                rows.setdefault(seq_of[f], []).append(i)
        for seq in sorted(rows):
            v = _unit(vectors[rows[seq]].astype(np.float64))
            faces.append(v.astype(np.float32))
            centres.append(_unit(v.sum(axis=0)).astype(np.float32))
    dim = centres[0].shape[0] if centres else 0
    return RunSample(
        all_ids, np.stack(centres) if centres else np.zeros((0, dim), np.float32), faces, len(all_ids)
    )


def calibration_key(
    cfg: OverlapConfig, gallery: Gallery, fixed: float | None, model: str, upstream: dict
) -> str:
    """What a gallery's calibration depends on: the options, the gallery, the model and every video's input."""
    opts = {k: v for k, v in output_values(cfg).items() if k not in _DECISION_ONLY}
    return config_hash(
        {"opts": opts, "gallery": gallery.fingerprint, "fixed": fixed, "model": model, "videos": upstream}
    )


def gallery_images(gallery: Gallery) -> tuple[np.ndarray, np.ndarray]:
    """The vectors of a gallery's usable images and their identity rows."""
    table = read_gallery_images(gallery.path)
    status = table.column("status").to_pylist()
    names = table.column("identity").to_pylist()
    keep = [i for i, s in enumerate(status) if s == "ok"]
    row_of = {name: i for i, name in enumerate(gallery.identities)}
    keep = [i for i in keep if names[i] in row_of]
    if not keep:
        return np.zeros((0, gallery.dim), np.float32), np.zeros(0, np.int64)
    emb = table.column("embedding").take(keep)
    vectors = np.asarray(emb.combine_chunks().flatten().to_numpy(zero_copy_only=False), np.float32)
    return vectors.reshape(len(keep), gallery.dim), np.array([row_of[names[i]] for i in keep], np.int64)


def gallery_scorer(
    gallery: Gallery, cfg: OverlapConfig, score: str, stats: IdentityStats | None
) -> GalleryScorer:
    """The scorer of one gallery: its index searched for candidates (see :mod:`seqbuild.overlap.search`)."""
    from .search import search

    def find(queries: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray]:
        return search(gallery.index(cfg.index, cfg.nprobe), queries, k=k)

    return GalleryScorer(
        gallery.centres,
        create_score(score, vote_share=cfg.vote_share),
        stats,
        find,
        top=cfg.candidates,
        query_k=cfg.csls_query_k,
    )


def calibrate_gallery(
    gallery: Gallery,
    fixed: float | None,
    cfg: OverlapConfig,
    model: str,
    queries: np.ndarray,
    faces: list[np.ndarray] | None,
    cohort: np.ndarray,
    n_sequences: int,
) -> tuple[Calibration, IdentityStats]:
    """The operating point of ``gallery`` for the run (``queries``: sequence centres or single faces)."""
    stats = identity_stats(gallery.centres, cohort, cfg.csls_k)
    images, rows = gallery_images(gallery)
    score = cfg.score

    typical = typical_stats(stats)

    def attempt(score: str) -> Calibration:
        scorer = gallery_scorer(gallery, cfg, score, stats)
        impostor = scorer.impostor_sample(queries, faces, include_best=len(gallery.identities) < 2)
        # Genuine: against a typical identity's neighbourhood (:func:`typical_stats`); cohort impostors:
        # against each identity's own, whose spread across identities is part of the impostor scores.
        genuine, _ = gallery_scorer(gallery, cfg, score, typical).gallery_self_scores(images, rows)
        _, cohort_scores = scorer.gallery_self_scores(images, rows)
        return calibrate(
            gallery.name,
            model,
            score,
            len(gallery.identities),
            impostor,
            genuine,
            cfg.fpir,
            cfg.confident_fpir,
            cfg.calibration,
            cfg.min_genuine_share,
            fixed_threshold=fixed,
            default_threshold=gallery.threshold,
            n_sequences=n_sequences,
            cohort=cohort_scores,
        )

    cal = attempt(score)
    if cal.source == "default" and score != "cosine":
        # Too few sequences to calibrate: the gallery's default threshold is a cosine, so the score is too.
        cal = attempt("cosine")
    return cal, stats


def _paths(run: RunDir, name: str, faces: bool) -> tuple[Path, Path]:
    from ..storage import safe_name

    base = run.dedup_overlap.root / FOLDER / (safe_name(name) + (FACE_SUFFIX if faces else ""))
    return base.with_suffix(base.suffix + ".json"), base.with_suffix(base.suffix + ".npz")


def save_calibration(
    run: RunDir, cal: Calibration, stats: IdentityStats, key: str, faces: bool = False, path: str = ""
) -> Path:
    """Write a calibration and its statistics (atomically); returns the JSON's path."""
    json_path, npz_path = _paths(run, cal.gallery, faces)
    with atomic_path(npz_path) as tmp, open(tmp, "wb") as fh:
        np.savez(fh, **stats.to_arrays(), k=np.array([stats.k, stats.cohort]))
    record = {"key": key, "gallery_path": path, **cal.to_dict()}
    write_json_atomic(json_path, json.loads(json.dumps(record, default=_plain)))
    return json_path


def _plain(value: Any) -> Any:
    return value.item() if hasattr(value, "item") else str(value)


def read_calibrations(run: RunDir) -> list[dict[str, Any]]:
    """Every saved sequence-level calibration of a run, as plain dicts (for the report)."""
    folder = run.dedup_overlap.root / FOLDER
    out = []
    for path in sorted(folder.glob("*.json")) if folder.is_dir() else []:
        if path.name.endswith(FACE_SUFFIX + ".json"):
            continue
        try:
            out.append(json.loads(path.read_text()))
        except (OSError, ValueError):
            log.warning("%s: unreadable calibration", path)
    return out


def load_calibration(json_path: str | Path) -> tuple[Calibration, IdentityStats, str]:
    """A saved calibration, its statistics and its key."""
    json_path = Path(json_path)
    data = json.loads(json_path.read_text())
    key = data.pop("key", "")
    data.pop("gallery_path", None)
    with np.load(json_path.with_suffix(".npz")) as z:
        k, cohort = (int(v) for v in z["k"])
        stats = IdentityStats(z["top_mean"], z["loc"], z["scale"], k, cohort)
    return Calibration.from_dict(data), stats, key


def saved_key(json_path: Path) -> str | None:
    """The key of a saved calibration (None when absent or unreadable)."""
    try:
        if not json_path.with_suffix(".npz").exists():
            return None
        return str(json.loads(json_path.read_text()).get("key"))
    except (OSError, ValueError):
        return None


def calibrate_run(
    run: RunDir,
    cfg: OverlapConfig,
    galleries: list[tuple[Gallery, float | None]],
    model: str,
    videos: list[str],
    upstream: dict[str, str],
) -> tuple[dict[str, dict[str, Any]], set[str]]:
    """Calibrate every gallery (or reuse a saved calibration); per gallery its JSON path(s) and key, and
    the ids of every searched sequence."""
    keys = {g.name: calibration_key(cfg, g, fixed, model, upstream) for g, fixed in galleries}
    wanted = [(g, f) for g, f in galleries]
    sample: RunSample | None = None
    out: dict[str, dict[str, Any]] = {}
    for gallery, fixed in wanted:
        key = keys[gallery.name]
        seq_path, _ = _paths(run, gallery.name, False)
        face_path, _ = _paths(run, gallery.name, True)
        fresh = saved_key(seq_path) == key and (not cfg.per_face or saved_key(face_path) == key)
        if not fresh:
            if sample is None:
                sample = sample_run(run, cfg, videos)
            cal, stats = calibrate_gallery(
                gallery, fixed, cfg, model, sample.centres, sample.faces, sample.centres, sample.n_sequences
            )
            save_calibration(run, cal, stats, key, path=str(gallery.path))
            if cfg.per_face:
                flat = np.concatenate(sample.faces) if sample.faces else sample.centres[:0]
                if len(flat) > cfg.cohort_size:
                    pick = np.random.default_rng(1).choice(len(flat), cfg.cohort_size, replace=False)
                    flat = flat[np.sort(pick)]
                face_cal, face_stats = calibrate_gallery(
                    gallery,
                    fixed,
                    cfg,
                    model,
                    flat,
                    [f[None] for f in flat],
                    sample.centres,
                    sample.n_sequences,
                )
                save_calibration(run, face_cal, face_stats, key, faces=True, path=str(gallery.path))
        cal, _, _ = load_calibration(seq_path)
        describe(cal)
        out[gallery.name] = {
            "calibration": str(seq_path),
            "face_calibration": str(face_path) if cfg.per_face else "",
            "key": key,
        }
    if sample is None:
        all_ids: set[str] = set()
        for video in videos:
            try:
                all_ids.update(video_sequences(run, cfg.input_stage, video)[1])
            except (SeqbuildError, OSError):
                continue  # fails on its own in step 2
        return out, all_ids
    return out, sample.seq_ids


def describe(cal: Calibration) -> None:
    """Log one line on a calibration, and its warning when the model cannot do the job."""
    how = {
        "run": f"calibrated on {cal.n_sequences} sequences ({cal.n_impostor} impostor scores)",
        "fixed": "fixed threshold (dedup_overlap.thresholds)",
        "default": f"too few sequences to calibrate ({cal.n_impostor} impostor scores < {MIN_IMPOSTOR_SCORES}):"
        " the gallery's default cosine threshold",
    }[cal.source]
    fpir = "" if cal.fpir_at_threshold is None else f", estimated FPIR {cal.fpir_at_threshold:.2g}"
    log.info(
        "gallery %s (%d identities, %s score): keep below %.3f, review below %.3f%s; %s",
        cal.gallery,
        cal.gallery_size,
        cal.score,
        cal.threshold,
        cal.confident_threshold,
        fpir,
        how,
    )
    if cal.warning:
        log.warning("%s", cal.warning)
