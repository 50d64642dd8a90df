"""Clean's similarity decisions for the run's model: one model per run, and thresholds that belong to it.

Clean compares embeddings within a sequence (noise, two identities, appearance jumps) and across videos
(reruns), so every video of a run must be embedded by the same model, named by its full id
(``name@weights/input/alignment``, :func:`seqbuild.embed.models.model_id`); a run whose videos disagree
is refused in one line. The default similarity thresholds were measured for FaceNet (``clean/config.py``).
For any other model (an ONNX ArcFace model, a SeqFace checkpoint) they are derived from the run itself
with the open-set functions dedup-overlap uses (:mod:`seqbuild.openset`): a robust fit of impostor scores
(faces against the centres of other sequences; centres against centres), and the threshold at a fixed
false-accept rate, the rate at which FaceNet's measured defaults sit (:data:`DERIVED_FAR`). The
near-duplicate and rerun face thresholds are about the same picture, which any model scores near 1, and
are kept as set.
"""

from __future__ import annotations

import dataclasses
import logging
from typing import Any

import numpy as np

from .. import openset
from ..embed.models import model_name
from ..errors import InputError, SeqbuildError
from ..layout import RunDir
from ..schema import ASSIGNMENTS
from ..storage import read_table
from .config import CleanConfig

log = logging.getLogger(__name__)

MEASURED = ("facenet",)
"""Models whose clean thresholds were measured on real faces (the config defaults)."""

DERIVED_FAR = {
    "noise_threshold": 0.01,
    "jump_threshold": 0.01,
    "two_identity_threshold": 0.001,
    "rerun_threshold": 1e-4,
}
"""False-accept rate of each derived threshold. For FaceNet the measured defaults sit there: a face
against another person's centre has its 99th percentile at 0.63 (noise 0.6, jump 0.6); two people's
centres top out at 0.65 of 60 (two identities 0.75); rerun candidates need centres closer still (0.9)."""

FACE_SCORES = {"noise_threshold", "jump_threshold"}
MAX_IMPOSTOR_MEDIAN = 0.9
"""A model whose centres of different sequences score a median this high against each other does not
tell faces apart (an untrained or collapsed network; a trained face model gives about 0-0.3)."""

MIN_SEQUENCES = 5


def run_model(run: RunDir, videos: list[str]) -> str:
    """The model id of the run's embeddings; InputError when its videos were embedded by different models."""
    seen: dict[str, str] = {}
    for video in videos:
        path = run.embed.table_path("embeddings", video)
        try:
            table = read_table(path, columns=["model"])
        except (SeqbuildError, OSError):
            continue  # the video fails on its own
        if table.num_rows:
            seen.setdefault(str(table.column("model")[0].as_py()), video)
    if len(seen) > 1:
        shown = "; ".join(f"{m} (e.g. video {v})" for m, v in list(seen.items())[:3])
        raise InputError(
            f"{run.root}: its videos were embedded by different models ({shown}); clean compares them across"
            " videos: re-run `seqbuild embed` with one model"
        )
    return next(iter(seen), "")


def _sample(
    run: RunDir, videos: list[str], max_sequences: int, seed: int
) -> tuple[list[np.ndarray], np.ndarray]:
    """Face vectors and centres of up to ``max_sequences`` tracked sequences of the run."""
    faces: list[np.ndarray] = []
    for video in videos:
        try:
            assign = read_table(run.track.table_path("assignments", video), ASSIGNMENTS)
            emb = read_table(run.embed.table_path("embeddings", video), columns=["face_id", "embedding"])
        except (SeqbuildError, OSError):
            continue
        row = {f: i for i, f in enumerate(emb.column("face_id").to_pylist())}
        if not row:
            continue
        dim = emb.schema.field("embedding").type.list_size
        flat = emb.column("embedding").combine_chunks().flatten().to_numpy(zero_copy_only=False)
        vectors = np.asarray(flat, np.float32).reshape(-1, dim)
        by_seq: dict[str, list[int]] = {}
        for f, s in zip(
            assign.column("face_id").to_pylist(), assign.column("seq_id").to_pylist(), strict=True
        ):
            if f in row:
                by_seq.setdefault(s, []).append(row[f])
        for s in sorted(by_seq):
            v = vectors[by_seq[s]]
            faces.append(v / np.maximum(np.linalg.norm(v, axis=1, keepdims=True), 1e-12))
    if len(faces) > max_sequences:
        pick = np.random.default_rng(seed).choice(len(faces), max_sequences, replace=False)
        faces = [faces[i] for i in sorted(pick)]
    centres = np.stack([f.sum(0) / max(np.linalg.norm(f.sum(0)), 1e-12) for f in faces]) if faces else None
    return faces, centres if centres is not None else np.zeros((0, 0), np.float32)


def derive_thresholds(
    faces: list[np.ndarray], centres: np.ndarray, max_faces: int = 200_000
) -> dict[str, float]:
    """Thresholds at :data:`DERIVED_FAR` from the run's impostor scores (faces and centres of other
    sequences; a person seen in several sequences adds a few genuine scores, which the robust fit of the
    bulk ignores)."""
    n = len(faces)
    owner = np.concatenate([np.full(len(f), i) for i, f in enumerate(faces)])
    all_faces = np.concatenate(faces)
    if len(all_faces) * n > max_faces:
        keep = np.random.default_rng(0).choice(len(all_faces), max(1, max_faces // n), replace=False)
        all_faces, owner = all_faces[keep], owner[keep]
    s = all_faces @ centres.T
    face_imp = s[np.arange(n)[None, :] != owner[:, None]]
    c = centres @ centres.T
    centre_imp = c[np.triu_indices(n, 1)]
    face_fit = openset.fit_impostor(face_imp, "robust")
    centre_fit = openset.fit_impostor(centre_imp, "robust")
    out = {}
    for key, far in DERIVED_FAR.items():
        fit = face_fit if key in FACE_SCORES else centre_fit
        out[key] = float(np.clip(fit.threshold_at_far(far), -1.0, 1.0))
    out["rerun_threshold"] = max(out["rerun_threshold"], out["two_identity_threshold"])
    return out


def thresholds_for_model(
    run: RunDir, cfg: CleanConfig, videos: list[str], max_sequences: int = 5000
) -> tuple[CleanConfig, dict[str, Any]]:
    """``cfg`` with the similarity thresholds of the run's model, and what was done (for the summary)."""
    model = run_model(run, videos)
    info: dict[str, Any] = {"model": model, "thresholds": "as set"}
    if cfg.model_thresholds == "as_set" or not model or model_name(model) in MEASURED:
        return cfg, info
    faces, centres = _sample(run, videos, max_sequences, seed=0)
    if len(faces) < MIN_SEQUENCES:
        log.warning(
            "clean: %d sequences are too few to derive thresholds for model %s; the configured ones"
            " (measured for FaceNet) are used",
            len(faces),
            model,
        )
        return cfg, info
    pairs = (centres @ centres.T)[np.triu_indices(len(centres), 1)]
    if float(np.median(pairs)) >= MAX_IMPOSTOR_MEDIAN:
        raise InputError(
            f"clean: model {model} does not tell this run's faces apart (centres of different sequences score"
            f" a median of {float(np.median(pairs)):.3f} against each other; a trained face model gives about"
            " 0-0.3), so every face would be removed as noise or as a rerun: embed the run with a trained"
            " model, or pass --set clean.model_thresholds=as_set to use the configured thresholds anyway"
        )
    try:
        derived = derive_thresholds(faces, centres)
    except InputError as exc:
        log.warning(
            "clean: thresholds for model %s cannot be derived (%s); the configured ones are used", model, exc
        )
        return cfg, info
    log.info(
        "clean: thresholds for model %s from %d sequences of the run: %s",
        model,
        len(faces),
        ", ".join(f"{k} {v:.3f}" for k, v in derived.items()),
    )
    if cfg.jump_threshold == -1.0:
        derived.pop("jump_threshold")  # splitting is off, and stays off
    return dataclasses.replace(cfg, **derived), {**info, "thresholds": "derived", **derived}
