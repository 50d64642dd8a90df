"""The dedup-overlap stage: remove sequences whose identity is in a reference gallery, write the dataset.

Two steps, as for every operation that needs all the data: galleries are built first (``gallery build``,
or on the fly into ``RUN/dedup_overlap/_galleries/``), then each video's sequences are filtered against
them. A sequence's centre (normalised mean of the normalised embeddings of the faces the input stage
kept) is searched against every gallery's identity centres (k=1); the sequence is removed when the best
score reaches that gallery's threshold. With ``per_face``, every remaining face is searched as well and
faces that match on their own are removed (a track that drifted onto a gallery person for a while).

Per video it writes ``RUN/dedup_overlap/{assignments,sequences,removals}`` and the final dataset
``RUN/dataset/{faces,sequences,removals}`` (the removals of every stage for that video), then marks
the video done.
"""

from __future__ import annotations

import logging
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from ..config import config_hash, output_hash, to_dict
from ..driver import StageSummary, VideoTask, drive, process_cached
from ..embed.models import model_name
from ..errors import ConfigError, InputError
from ..executors import Executor
from ..layout import RunDir
from ..reasons import removal_rows
from ..runstate import recorded_config
from ..schema import ASSIGNMENTS, DETECTIONS, FACES, REMOVALS, SEQUENCES
from ..storage import ShardStore, read_table, read_tables, write_table
from .config import OverlapConfig
from .gallery import Gallery, build_gallery, is_gallery, load_gallery, same_model
from .search import normalise, search
from .sources import source_fingerprint

log = logging.getLogger(__name__)

STAGE = "dedup_overlap"
_NAME_RE = re.compile(r"^([A-Za-z0-9_.-]+)=(.+)$")


@dataclass(frozen=True)
class GallerySpec:
    """A gallery to search, with its name and the threshold that applies to it."""

    name: str
    path: str
    threshold: float
    fingerprint: str = ""


def parse_gallery_arg(arg: str) -> tuple[str | None, str]:
    """``NAME=PATH`` -> (NAME, PATH); a plain path -> (None, PATH)."""
    m = _NAME_RE.match(arg)
    if m and not Path(arg).exists():
        return m.group(1), m.group(2)
    return None, arg


def thresholds_for(n: int, thresholds: list[float], defaults: list[float]) -> list[float]:
    """One threshold per gallery: as many as galleries, one for all, or none (each gallery's default)."""
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
) -> list[tuple[Gallery, float]]:
    """Load (or build and cache) each configured gallery; pair it with its threshold."""
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
            cache = run.root / STAGE / "_galleries" / f"{gname}-{key}"
            if not is_gallery(cache):
                log.info("building gallery %s from %s into %s", gname, src, cache)
                crop = recorded_config(run, "ingest").get("crop_size")
                build_gallery(src, cache, build_cfg, name=gname, progress=progress, crop_size=crop)
            gallery = load_gallery(cache, gname)
        if model and not same_model(gallery.embedder, model):
            raise InputError(
                f"{gallery.path}: gallery built with model {gallery.embedder!r}, but {run.root} was embedded with"
                f" {model!r}; rebuild it with the run's embedder (`seqbuild gallery build SOURCE --out GALLERY"
                f" --model {model_name(model)} --weights WEIGHTS`) or pass its source folder as --gallery"
            )
        loaded.append(gallery)
    names = [g.name for g in loaded]
    if len(set(names)) != len(names):
        raise ConfigError(
            f"dedup_overlap.galleries: two galleries share a name ({names}); name them NAME=PATH"
        )
    thresholds = thresholds_for(len(loaded), cfg.thresholds, [g.threshold for g in loaded])
    return list(zip(loaded, thresholds, strict=True))


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
class Match:
    """The best gallery match of one query."""

    gallery: str
    identity: str
    score: float
    threshold: float


@dataclass
class GalleryScores:
    """Every query's best identity in one gallery: its row in ``gallery.identities`` (-1: none) and score."""

    gallery: Gallery
    threshold: float
    ids: np.ndarray
    scores: np.ndarray

    def identity(self, i: int) -> str | None:
        """The best identity of query ``i`` (None when the gallery is empty)."""
        j = int(self.ids[i])
        return self.gallery.identities[j] if j >= 0 else None


def gallery_scores(
    vectors: np.ndarray, galleries: list[tuple[Gallery, float]], kind: str, nprobe: int
) -> list[GalleryScores]:
    """Per gallery: each query vector's best identity and score, whatever the threshold (k=1 search
    through the gallery's index of ``kind``, chosen by size for ``auto``)."""
    out = []
    for gallery, threshold in galleries:
        scores, ids = search(gallery.index(kind, nprobe), vectors, k=1)
        out.append(GalleryScores(gallery, threshold, ids[:, 0], scores[:, 0]))
    return out


def best_matches(
    vectors: np.ndarray, galleries: list[tuple[Gallery, float]], kind: str, nprobe: int
) -> list[Match | None]:
    """Per query vector: the match with the largest score among galleries whose threshold it reaches."""
    out: list[Match | None] = [None] * len(vectors)
    if len(vectors) == 0:
        return out
    for g in gallery_scores(vectors, galleries, kind, nprobe):
        for i in range(len(vectors)):
            s, j = float(g.scores[i]), int(g.ids[i])
            if j < 0 or s < g.threshold:
                continue
            if out[i] is None or s > out[i].score:
                out[i] = Match(g.gallery.name, g.gallery.identities[j], s, g.threshold)
    return out


def sequence_centres(seq_ids: list[str], vectors: np.ndarray) -> tuple[list[str], np.ndarray]:
    """Normalised mean of the normalised face embeddings of each sequence: (seq ids, centres)."""
    if len(seq_ids) == 0:
        return [], np.zeros((0, vectors.shape[1] if vectors.ndim == 2 else 0), np.float32)
    keys, inverse = np.unique(np.asarray(seq_ids), return_inverse=True)
    sums = np.zeros((len(keys), vectors.shape[1]), np.float64)
    np.add.at(sums, inverse, normalise(vectors))
    return [str(k) for k in keys], normalise(sums)


def _removals(video: str, seq: str, faces: list[str], m: Match, scope: str) -> list[dict[str, Any]]:
    return removal_rows(
        STAGE,
        "gallery_match",
        video,
        faces,
        seq_id=seq,
        value=m.score,
        threshold=m.threshold,
        scope=scope,
        gallery=m.gallery,
        identity=m.identity,
        decided_by="auto",
    )


def _recount_sequences(seqs: pa.Table, faces: pa.Table) -> pa.Table:
    """Sequences restricted to those with kept faces, their counts and frame ranges recomputed."""
    if seqs.num_rows == 0:
        return seqs
    df = faces.select(["seq_id", "frame_idx", "pts", "det_score", "face_size"]).to_pandas()
    agg = df.groupby("seq_id").agg(
        first_frame=("frame_idx", "min"),
        last_frame=("frame_idx", "max"),
        first_pts=("pts", "min"),
        last_pts=("pts", "max"),
        n_faces=("frame_idx", "size"),
        mean_score=("det_score", "mean"),
        mean_face_size=("face_size", "mean"),
    )
    base = seqs.to_pandas().set_index("seq_id")
    base = base[base.index.isin(agg.index)]
    for col in agg.columns:
        base[col] = agg.loc[base.index, col].to_numpy()
    return pa.Table.from_pandas(base.reset_index()[SEQUENCES.names], schema=SEQUENCES, preserve_index=False)


@dataclass
class DedupOutput:
    """One video's dedup-overlap tables and counts."""

    assignments: pa.Table
    sequences: pa.Table
    removals: pa.Table
    counts: dict[str, Any]


def embedding_matrix(emb: pa.Table, face_ids: list[str], source: Any = "") -> tuple[list[str], np.ndarray]:
    """The vectors of ``face_ids`` found in an embeddings table: (the ids found, in order; their matrix)."""
    row_of = {f: i for i, f in enumerate(emb.column("face_id").to_pylist())}
    found = [f for f in face_ids if f in row_of]
    flat = emb.column("embedding").combine_chunks()
    if not found:
        width = flat.type.list_size if pa.types.is_fixed_size_list(flat.type) else 0
        return [], np.zeros((0, width), np.float32)
    width = flat.type.list_size if pa.types.is_fixed_size_list(flat.type) else len(flat[0].as_py())
    values = flat.flatten().to_numpy(zero_copy_only=False).reshape(-1, width)
    return found, np.ascontiguousarray(values[[row_of[f] for f in found]], dtype=np.float32)


def dedup_tables(
    video: str,
    assign: pa.Table,
    seqs: pa.Table,
    emb: pa.Table,
    det: pa.Table,
    galleries: list[tuple[Gallery, float]],
    cfg: OverlapConfig,
) -> DedupOutput:
    """Filter one video's sequences against the galleries; no I/O.

    ``emb`` holds the faces' embeddings (face_id, embedding); ``det`` the detection figures of its faces
    (face_id, frame_idx, pts, det_score, face_size), used to recount sequences that lose single faces.
    """
    dim = galleries[0][0].dim
    all_faces = assign.column("face_id").to_pylist()
    all_seqs = assign.column("seq_id").to_pylist()
    faces_of: dict[str, list[str]] = {}
    for f, q in zip(all_faces, all_seqs, strict=True):
        faces_of.setdefault(q, []).append(f)
    face_ids, vectors = embedding_matrix(emb, all_faces)
    if len(face_ids) < len(all_faces):
        log.warning(
            "%s: %d kept faces have no embedding and are checked through their sequence only",
            video,
            len(all_faces) - len(face_ids),
        )
    if len(face_ids) and vectors.shape[1] != dim:
        raise InputError(
            f"video {video}: {vectors.shape[1]}-d embeddings, but gallery {galleries[0][0].name} is {dim}-d"
        )
    seq_of = dict(zip(all_faces, all_seqs, strict=True))
    face_seqs = [seq_of[f] for f in face_ids]

    seq_keys, centres = sequence_centres(face_seqs, vectors)
    seq_match = dict(zip(seq_keys, best_matches(centres, galleries, cfg.index, cfg.nprobe), strict=True))
    removals: list[dict[str, Any]] = []
    removed_seqs: set[str] = set()
    for seq_id in seqs.column("seq_id").to_pylist():
        m = seq_match.get(seq_id)
        if m is not None:
            removed_seqs.add(seq_id)
            removals += _removals(video, seq_id, faces_of.get(seq_id, []), m, "sequence")
    removed_faces: set[str] = set()
    if cfg.per_face and len(face_ids):
        keep_rows = [i for i, q in enumerate(face_seqs) if q not in removed_seqs]
        matches = best_matches(vectors[keep_rows], galleries, cfg.index, cfg.nprobe)
        for i, m in zip(keep_rows, matches, strict=True):
            if m is not None:
                removed_faces.add(face_ids[i])
                removals += _removals(video, face_seqs[i], [face_ids[i]], m, "face")

    gone_seqs = pa.array(sorted(removed_seqs), pa.string())
    keep = pc.invert(pc.is_in(assign.column("seq_id"), gone_seqs))
    keep = pc.and_(
        keep, pc.invert(pc.is_in(assign.column("face_id"), pa.array(sorted(removed_faces), pa.string())))
    )
    kept_assign = assign.filter(keep)
    kept_seqs = seqs.filter(pc.invert(pc.is_in(seqs.column("seq_id"), gone_seqs)))
    if removed_faces:
        # Sequences whose faces matched one by one keep only the others (every removed face has its row).
        kept_det = det.join(kept_assign.select(["face_id", "seq_id"]), keys="face_id", join_type="inner")
        kept_seqs = _recount_sequences(kept_seqs, kept_det)

    per_gallery: dict[str, dict[str, int]] = {g.name: {"sequences": 0, "faces": 0} for g, _ in galleries}
    for r in removals:
        per_gallery[r["gallery"]]["faces"] += 1
    for seq_id in removed_seqs:
        per_gallery[seq_match[seq_id].gallery]["sequences"] += 1
    counts = {
        "sequences_in": seqs.num_rows,
        "sequences_kept": kept_seqs.num_rows,
        "faces_in": assign.num_rows,
        "faces_kept": kept_assign.num_rows,
        "galleries": per_gallery,
    }
    return DedupOutput(kept_assign, kept_seqs, pa.Table.from_pylist(removals, schema=REMOVALS), counts)


def dedup_video(task: VideoTask) -> dict[str, Any]:
    """Filter one video against the galleries and write its stage tables and final dataset; returns counts."""
    run = RunDir(task.run)
    video = task.video
    cfg: OverlapConfig = task.cfg
    src = run.stage(cfg.input_stage)
    galleries = [(_gallery(spec), spec.threshold) for spec in task.params["galleries"]]
    assign = read_table(src.table_path("assignments", video), ASSIGNMENTS)
    seqs = read_table(src.table_path("sequences", video), SEQUENCES)
    emb_path = run.embed.table_path("embeddings", video)
    if not emb_path.exists():
        raise InputError(f"{emb_path}: no embeddings for video {video}; run `seqbuild embed` first")
    emb = read_table(emb_path, columns=["face_id", "embedding"])
    det = read_table(
        run.ingest.table_path("detections", video),
        DETECTIONS,
        columns=["face_id", "frame_idx", "pts", "det_score", "face_size"],
    )
    out = dedup_tables(video, assign, seqs, emb, det, galleries, cfg)
    store, h = run.dedup_overlap, task.key
    write_table(store.table_path("assignments", video), out.assignments, ASSIGNMENTS, "assignments", h)
    write_table(store.table_path("sequences", video), out.sequences, SEQUENCES, "sequences", h)
    write_table(store.table_path("removals", video), out.removals, REMOVALS, "removals", h)
    write_dataset_shard(run, video, h)
    store.mark_done(video, h)
    return out.counts


def write_dataset_shard(run: RunDir, shard: str, config_hash: str = "") -> dict[str, int]:
    """Write RUN/dataset/{faces,sequences,removals}/<shard>.parquet from the dedup-overlap output."""
    from ..dataset import faces_for_shard
    from ..layout import STAGES

    faces = faces_for_shard(run, STAGE, shard)
    seqs = read_table(run.dedup_overlap.table_path("sequences", shard), SEQUENCES)
    removal_paths = [p for stage in STAGES if (p := run.stage(stage).table_path("removals", shard)).exists()]
    removals = read_tables(removal_paths, REMOVALS)
    root = run.dataset
    write_table(root / "faces" / f"{shard}.parquet", faces, FACES, "faces", config_hash)
    write_table(root / "sequences" / f"{shard}.parquet", seqs, SEQUENCES, "sequences", config_hash)
    write_table(root / "removals" / f"{shard}.parquet", removals, REMOVALS, "removals", config_hash)
    return {"faces": faces.num_rows, "sequences": seqs.num_rows, "removals": removals.num_rows}


def run_dedup_overlap(
    run: str | Path, cfg: OverlapConfig, executor: Executor | None = None, progress: bool = True
) -> StageSummary:
    """Remove gallery identities from every video of ``run`` and write the final dataset; resumable."""
    rd = RunDir(run)
    src: ShardStore = rd.require(cfg.input_stage, STAGE)
    rd.require("embed", STAGE)
    model = run_embedder_name(rd)
    resolved = resolve_galleries(rd, cfg, model, progress)
    specs = tuple(GallerySpec(g.name, str(g.path), float(t), g.fingerprint) for g, t in resolved)
    videos = src.done_shards()
    summary = StageSummary(STAGE, videos=len(videos))
    summary.details["galleries"] = {
        s.name: {"threshold": s.threshold, "sequences": 0, "faces": 0, "path": s.path} for s in specs
    }
    tasks = []
    for video in videos:
        key = output_hash(
            cfg,
            upstream=src.marker(video).get("config_hash", ""),
            galleries=[(s.name, s.threshold, s.fingerprint) for s in specs],
        )
        if rd.dedup_overlap.is_done(video, key):
            summary.skipped += 1
            continue
        rd.dedup_overlap.clear(video)
        tasks.append(VideoTask(str(rd.root), video, key, cfg, {"galleries": specs}))
    return drive(summary, tasks, dedup_video, executor, cfg.workers, progress)
