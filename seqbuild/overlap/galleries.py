"""Galleries of a dedup-overlap run: the ``--gallery`` arguments, built or loaded with the run's model,
their per-gallery thresholds, and the decider each video uses (a gallery's index and calibration,
loaded once per process).
"""

from __future__ import annotations

import logging
import re
import shlex
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from ..config import config_hash, to_dict
from ..driver import process_cached
from ..embed.models import model_name, split_model
from ..errors import ConfigError, InputError, MissingWeightsError
from ..layout import RunDir
from ..runstate import recorded_config
from ..storage import read_table, safe_name
from .calibrate import gallery_scorer, load_calibration
from .config import OverlapConfig
from .decide import Calibration, GalleryScorer
from .gallery import Gallery, build_gallery, is_gallery, load_gallery, same_model
from .search import load_index
from .sources import source_fingerprint

log = logging.getLogger(__name__)

STAGE = "dedup_overlap"
_NAME_RE = re.compile(r"^([A-Za-z0-9_.-]+)=(.+)$")


@dataclass(frozen=True)
class GallerySpec:
    """A gallery to search, its fixed threshold (None: calibrated) and its calibration files."""

    name: str
    path: str
    threshold: float | None
    fingerprint: str = ""
    calibration: str = ""
    face_calibration: str = ""
    key: str = ""


def parse_gallery_arg(arg: str) -> tuple[str | None, str]:
    """``NAME=PATH`` -> (NAME, PATH); a plain path -> (None, PATH)."""
    m = _NAME_RE.match(arg)
    if m and not Path(arg).exists():
        return m.group(1), m.group(2)
    return None, arg


def thresholds_for(n: int, thresholds: list[float], defaults: list[float | None]) -> list[float | None]:
    """One threshold per gallery: as many as galleries, one for all, or none (``defaults``)."""
    if not thresholds:
        return list(defaults)
    if len(thresholds) == 1:
        return [float(thresholds[0])] * n
    if len(thresholds) != n:
        raise ConfigError(
            f"dedup_overlap.thresholds: {len(thresholds)} thresholds for {n} galleries (give one per gallery, or one for all)"
        )
    return [float(t) for t in thresholds]


def run_embedder_name(run: RunDir) -> str:
    """The model id of the run's embeddings (the ``model`` column of RUN/embed)."""
    for path in run.embed.paths("embeddings"):
        table = read_table(path, columns=["model"])
        if table.num_rows:
            return str(table.column("model")[0].as_py())
    return ""


def run_embed_options(run: RunDir) -> dict[str, Any]:
    """The embed options the run's embeddings were made with (model, weights, normalisation)."""
    recorded = recorded_config(run, "embed")
    return {k: recorded[k] for k in ("model", "weights", "normalisation") if recorded.get(k) is not None}


def resolve_galleries(
    run: RunDir, cfg: OverlapConfig, model: str, progress: bool = True
) -> list[tuple[Gallery, float | None]]:
    """Load (or build and cache) each configured gallery; pair it with its fixed threshold (None:
    calibrated on the run)."""
    if not cfg.galleries:
        raise ConfigError("dedup_overlap.galleries: no gallery given (--gallery PATH, repeatable)")
    loaded: list[Gallery] = []
    for arg in cfg.galleries:
        name, path = parse_gallery_arg(arg)
        src = Path(path)
        if not src.exists():
            raise InputError(f"{src}: gallery not found")
        if is_gallery(src):
            gallery = load_gallery(src, name)
        else:
            gname = name or (
                src.parent.name if src.name in ("train.rec",) else src.stem if src.is_file() else src.name
            )
            # A gallery built for this run uses the embedder the run was embedded with, unless set here.
            embed_opts = run_embed_options(run)
            build_cfg = OverlapConfig(
                **{
                    **to_dict(cfg),
                    "model": cfg.model or embed_opts.get("model") or model_name(model),
                    "weights": cfg.weights or embed_opts.get("weights", ""),
                    "normalisation": embed_opts.get("normalisation", cfg.normalisation),
                }
            )
            key = config_hash(
                {
                    "fp": source_fingerprint(src),
                    "model": build_cfg.model,
                    "w": build_cfg.weights,
                    "norm": build_cfg.normalisation,
                    "crop": recorded_config(run, "ingest").get("crop_size"),
                    **_build_keys(cfg),
                }
            )
            cache = run.root / STAGE / "_galleries" / safe_name(f"{gname}-{key}", "gallery name")
            if not is_gallery(cache):
                log.info("building gallery %s from %s into %s", gname, src, cache)
                crop = recorded_config(run, "ingest").get("crop_size")
                try:
                    build_gallery(src, cache, build_cfg, name=gname, progress=progress, crop_size=crop)
                except MissingWeightsError:
                    # The run's record does not say which weights it was embedded with (the flag that
                    # names them belongs to `embed`, not to this command).
                    raise MissingWeightsError(
                        f"{src}: building this gallery needs the {model_name(build_cfg.model)} weights"
                        f" {run.root} was embedded with, which its record does not name: add"
                        " --set dedup_overlap.weights=PATH"
                    ) from None
            gallery = load_gallery(cache, gname)
        if model and not same_model(gallery.embedder, model):
            raise InputError(model_mismatch_message(run, gallery, model))
        # A damaged index is one error for the command, not the same failure for every video.
        if (gallery.path / "index.faiss").exists():
            load_index(gallery.path / "index.faiss")
        loaded.append(gallery)
    names = [g.name for g in loaded]
    if len(set(names)) != len(names):
        raise ConfigError(
            f"dedup_overlap.galleries: two galleries share a name ({names}); name them NAME=PATH"
        )
    thresholds = thresholds_for(len(loaded), cfg.thresholds, [None] * len(loaded))
    return list(zip(loaded, thresholds, strict=True))


def model_mismatch_message(run: RunDir, gallery: Gallery, model: str) -> str:
    """One line for a gallery made with another model than the run's, with commands that work: its photos
    as --gallery (built with the run's model), or `gallery build` with the run's model and weights."""
    opts = run_embed_options(run)
    spec = str(opts.get("model") or model_name(model))
    args = ["--model", spec]
    weights = str(opts.get("weights") or "")
    if weights and not split_model(spec)[1]:
        args += ["--weights", weights]
    elif not opts and model_name(model) in ("seqface", "onnx"):
        args += ["--weights", "PATH"]  # not recorded: the checkpoint the run was embedded with
    if opts.get("normalisation", "fixed") != "fixed":
        args += ["--set", f"dedup_overlap.normalisation={opts['normalisation']}"]
    source = str(gallery.manifest.get("source") or "")
    photos = gallery.manifest.get("source_kind") in ("folder", "rec") and Path(source).exists()
    out = f"{gallery.path}-{model_name(spec)}"
    build = shlex.join(["seqbuild", "gallery", "build", source if photos else "PHOTOS", "--out", out, *args])
    head = (
        f"{gallery.path}: gallery built with model {gallery.embedder!r}, but {run.root} was embedded with"
        f" {model!r}"
    )
    if photos:
        return (
            f"{head}; pass its photos instead (--gallery {shlex.quote(source)}: built with the run's model) or"
            " rebuild it"
            f" (`{build}`, then --gallery {shlex.quote(out)})"
        )
    return f"{head}; rebuild it from its photos with the run's model (`{build}`, then --gallery {shlex.quote(out)})"


def _build_keys(cfg: OverlapConfig) -> dict[str, Any]:
    keys = (
        "detector",
        "min_face",
        "det_threshold",
        "max_side",
        "dominant_ratio",
        "prealigned",
        "index",
        "nprobe",
    )
    return {k: getattr(cfg, k) for k in keys}


def _gallery(spec: GallerySpec) -> Gallery:
    # Workers handle many videos: load each gallery (and its index) once per process.
    return process_cached(
        ("gallery", spec.path, spec.fingerprint), lambda: load_gallery(spec.path, spec.name)
    )


@dataclass
class GalleryDecider:
    """One gallery with its scorer and the calibration(s) that decide on its matches."""

    gallery: Gallery
    scorer: GalleryScorer
    calibration: Calibration
    face_scorer: GalleryScorer | None = None
    face_calibration: Calibration | None = None


def gallery_decider(spec: GallerySpec, cfg: OverlapConfig) -> GalleryDecider:
    """The decider of a gallery from its saved calibration (made once per process)."""

    def make() -> GalleryDecider:
        gallery = _gallery(spec)
        cal, stats, _ = load_calibration(spec.calibration)
        decider = GalleryDecider(gallery, gallery_scorer(gallery, cfg, cal.score, stats), cal)
        if spec.face_calibration:
            fcal, fstats, _ = load_calibration(spec.face_calibration)
            decider.face_scorer = gallery_scorer(gallery, cfg, fcal.score, fstats)
            decider.face_calibration = fcal
        return decider

    return process_cached(("decider", spec.calibration, spec.key, spec.face_calibration), make)
