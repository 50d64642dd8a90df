"""The dedup-overlap stage: remove sequences whose identity is in a reference gallery, write the dataset.

Two steps, as for every operation that needs all the data. Step 1 (whole run): galleries are built
(``gallery build``, or on the fly into ``RUN/dedup_overlap/_galleries/``) and each is calibrated on the
run (:mod:`seqbuild.overlap.calibrate`): an identity score (``score``, CSLS by default) and thresholds
for the target false-positive identification rate at the gallery's size. Step 2 (per video): each
sequence's centre (normalised mean of the normalised embeddings of the faces the input stage kept) is
scored against every gallery's nearest identities; its best match is a ``gallery_match`` (confident,
removed), a ``review`` (removed unless ``review = keep``; a person's decisions file overrides either) or
kept (:mod:`seqbuild.overlap.decide`). With ``per_face``, every remaining face is scored as well, with its
own calibration (a track that drifted onto a gallery person for a while).

Per video it writes ``RUN/dedup_overlap/{assignments,sequences,removals,matches}`` (``matches``: every
searched sequence's best match and what was decided) and the final dataset
``RUN/dataset/{faces,sequences,removals}`` (the removals of every stage for that video), then marks
the video done.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from ..config import output_hash
from ..devices import torch_threads
from ..driver import StageSummary, VideoTask, drive
from ..errors import InputError, SeqbuildError
from ..executors import Executor
from ..layout import RunDir
from ..reasons import removal_rows
from ..schema import ASSIGNMENTS, DETECTIONS, FACES, MATCHES, REMOVALS, SEQUENCES
from ..storage import ShardStore, read_table, read_tables, write_table
from .calibrate import calibrate_run, load_calibration
from .config import OverlapConfig
from .decide import Calibration
from .decisions import check_known, decisions_hash, read_decisions
from .galleries import GalleryDecider, GallerySpec, gallery_decider, resolve_galleries, run_embedder_name
from .gallery import Gallery
from .search import normalise, search

log = logging.getLogger(__name__)

STAGE = "dedup_overlap"


@dataclass
class Match:
    """The best gallery match of one query and the automatic outcome."""

    gallery: str
    identity: str
    score: float
    threshold: float
    """The threshold the outcome rests on: the confident one for a gallery_match, else the kept one."""
    outcome: str
    fpir: float | None
    calibration: Calibration

    @property
    def rank(self) -> tuple[int, float]:
        """Orders matches of several galleries: outcome first, then the margin above the kept threshold."""
        order = {"gallery_match": 2, "review": 1, "kept": 0}[self.outcome]
        return order, self.score - self.calibration.threshold


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
    vectors: np.ndarray,
    galleries: list[GalleryDecider],
    faces: list[np.ndarray] | None = None,
    per_face: bool = False,
) -> list[Match | None]:
    """Per query vector (sequence centres, or single faces with ``per_face``): its best gallery match
    and outcome among the galleries (None when no gallery has a candidate)."""
    out: list[Match | None] = [None] * len(vectors)
    if len(vectors) == 0:
        return out
    for decider in galleries:
        scorer = decider.face_scorer if per_face else decider.scorer
        cal = decider.face_calibration if per_face else decider.calibration
        if scorer is None or cal is None:
            continue
        scores, rows = scorer.best(vectors, faces if not per_face else [v[None] for v in vectors])
        for i in range(len(vectors)):
            s, j = float(scores[i]), int(rows[i])
            if j < 0 or not np.isfinite(s):
                continue
            outcome = cal.outcome(s)
            threshold = cal.confident_threshold if outcome == "gallery_match" else cal.threshold
            m = Match(
                decider.gallery.name,
                decider.gallery.identities[j],
                s,
                threshold,
                outcome,
                cal.fpir(threshold),
                cal,
            )
            if out[i] is None or m.rank > out[i].rank:
                out[i] = m
    return out


def sequence_centres(seq_ids: list[str], vectors: np.ndarray) -> tuple[list[str], np.ndarray]:
    """Normalised mean of the normalised face embeddings of each sequence: (seq ids, centres)."""
    if len(seq_ids) == 0:
        return [], np.zeros((0, vectors.shape[1] if vectors.ndim == 2 else 0), np.float32)
    keys, inverse = np.unique(np.asarray(seq_ids), return_inverse=True)
    sums = np.zeros((len(keys), vectors.shape[1]), np.float64)
    np.add.at(sums, inverse, normalise(vectors))
    return [str(k) for k in keys], normalise(sums)


def _removals(
    video: str, seq: str, faces: list[str], m: Match, scope: str, decided_by: str
) -> list[dict[str, Any]]:
    reason = "gallery_match" if m.outcome == "gallery_match" else "review"
    cal = m.calibration
    detail = f"{cal.score} score; {m.outcome}"
    if m.outcome == "review" and decided_by == "auto":
        detail += " removed by dedup_overlap.review = remove"
    elif m.outcome == "kept":
        detail += " by the score, removed by the person's decision"
    return removal_rows(
        STAGE,
        reason,
        video,
        faces,
        seq_id=seq,
        value=m.score,
        threshold=m.threshold,
        detail=detail,
        scope=scope,
        gallery=m.gallery,
        identity=m.identity,
        fpir=m.fpir,
        decided_by=decided_by,
    )


def decide_action(m: Match | None, review: str, person: tuple[str, str] | None) -> tuple[bool, str]:
    """(removed?, who decided) for a query's best match: a person's decision, else the outcome and the
    review policy."""
    if person is not None:
        return person[0] == "remove", person[1]
    if m is None or m.outcome == "kept":
        return False, "auto"
    return m.outcome == "gallery_match" or review == "remove", "auto"


def _match_row(
    video: str, seq: str, face: str | None, n: int, m: Match | None, score_name: str, removed: bool, by: str
) -> dict[str, Any]:
    cal = m.calibration if m else None
    return {
        "video_id": video,
        "seq_id": seq,
        "face_id": face,
        "n_faces": n,
        "gallery": m.gallery if m else None,
        "identity": m.identity if m else None,
        "score_name": cal.score if cal else score_name,
        "score": m.score if m else None,
        "threshold": cal.threshold if cal else None,
        "confident_threshold": cal.confident_threshold if cal else None,
        "fpir": m.fpir if m else None,
        "outcome": m.outcome if m else "kept",
        "action": "removed" if removed else "kept",
        "decided_by": by,
    }


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
    matches: pa.Table | None = None


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
    galleries: list[GalleryDecider],
    cfg: OverlapConfig,
    decisions: dict[str, tuple[str, str]] | None = None,
) -> DedupOutput:
    """Decide on one video's sequences against the galleries; no I/O.

    ``emb`` holds the faces' embeddings (face_id, embedding); ``det`` the detection figures of its faces
    (face_id, frame_idx, pts, det_score, face_size), used to recount sequences that lose single faces;
    ``decisions`` a person's decisions by seq_id (they override the automatic outcome).
    """
    decisions = decisions or {}
    dim = galleries[0].gallery.dim
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
            f"video {video}: {vectors.shape[1]}-d embeddings, but gallery {galleries[0].gallery.name} is {dim}-d"
        )
    seq_of = dict(zip(all_faces, all_seqs, strict=True))
    face_seqs = [seq_of[f] for f in face_ids]

    seq_keys, centres = sequence_centres(face_seqs, vectors)
    rows_of: dict[str, list[int]] = {}
    for i, q in enumerate(face_seqs):
        rows_of.setdefault(q, []).append(i)
    seq_faces = [normalise(vectors[rows_of[k]]) for k in seq_keys]
    seq_match = dict(zip(seq_keys, best_matches(centres, galleries, seq_faces), strict=True))
    removals: list[dict[str, Any]] = []
    matches: list[dict[str, Any]] = []
    removed_seqs: set[str] = set()
    outcome_of: dict[str, tuple[Match | None, bool]] = {}
    for seq_id in seqs.column("seq_id").to_pylist():
        m = seq_match.get(seq_id)
        removed, by = decide_action(m, cfg.review, decisions.get(seq_id))
        outcome_of[seq_id] = (m, removed)
        matches.append(
            _match_row(video, seq_id, None, len(faces_of.get(seq_id, [])), m, cfg.score, removed, by)
        )
        if not removed:
            continue
        removed_seqs.add(seq_id)
        if m is None:  # a person removed a sequence no gallery scored: recorded as their review
            raise InputError(f"sequence {seq_id}: no gallery candidate to record a removal against")
        if m.outcome == "kept":
            m = Match(m.gallery, m.identity, m.score, m.calibration.threshold, "kept", m.fpir, m.calibration)
        removals += _removals(video, seq_id, faces_of.get(seq_id, []), m, "sequence", by)
    removed_faces: set[str] = set()
    if cfg.per_face and len(face_ids):
        keep_rows = [i for i, q in enumerate(face_seqs) if q not in removed_seqs and q not in decisions]
        found = best_matches(vectors[keep_rows], galleries, per_face=True)
        for i, m in zip(keep_rows, found, strict=True):
            removed, by = decide_action(m, cfg.review, None)
            if removed:
                removed_faces.add(face_ids[i])
                removals += _removals(video, face_seqs[i], [face_ids[i]], m, "face", by)
                matches.append(_match_row(video, face_seqs[i], face_ids[i], 1, m, cfg.score, True, by))

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

    per_gallery: dict[str, dict[str, int]] = {
        d.gallery.name: {"sequences": 0, "faces": 0, "review": 0, "review_kept": 0, "by_person": 0}
        for d in galleries
    }
    for r in removals:
        per_gallery[r["gallery"]]["faces"] += 1
    for seq_id, (m, removed) in outcome_of.items():
        if m is None:
            continue
        g = per_gallery[m.gallery]
        g["sequences"] += int(removed)
        g["review"] += int(m.outcome == "review")
        g["review_kept"] += int(m.outcome == "review" and not removed)
        g["by_person"] += int(seq_id in decisions)
    counts = {
        "sequences_in": seqs.num_rows,
        "sequences_kept": kept_seqs.num_rows,
        "faces_in": assign.num_rows,
        "faces_kept": kept_assign.num_rows,
        "galleries": per_gallery,
    }
    return DedupOutput(
        kept_assign,
        kept_seqs,
        pa.Table.from_pylist(removals, schema=REMOVALS),
        counts,
        pa.Table.from_pylist(matches, schema=MATCHES),
    )


def dedup_video(task: VideoTask) -> dict[str, Any]:
    """Filter one video against the galleries and write its stage tables and final dataset; returns counts."""
    run = RunDir(task.run)
    video = task.video
    cfg: OverlapConfig = task.cfg
    src = run.stage(cfg.input_stage)
    galleries = [gallery_decider(spec, cfg) for spec in task.params["galleries"]]
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
    out = dedup_tables(video, assign, seqs, emb, det, galleries, cfg, task.params.get("decisions"))
    store, h = run.dedup_overlap, task.key
    write_table(store.table_path("matches", video), out.matches, MATCHES, "matches", h)
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
    store = run.dedup_overlap
    write_table(store.linked_path("dataset", "faces", shard), faces, FACES, "faces", config_hash)
    write_table(store.linked_path("dataset", "sequences", shard), seqs, SEQUENCES, "sequences", config_hash)
    write_table(store.linked_path("dataset", "removals", shard), removals, REMOVALS, "removals", config_hash)
    return {"faces": faces.num_rows, "sequences": seqs.num_rows, "removals": removals.num_rows}


def check_inputs(run: str | Path, cfg: OverlapConfig) -> None:
    """Load (or build) every gallery, checking its index; InputError or ConfigError naming the one that
    cannot be used (run before a changed run's dataset is reset)."""
    rd = RunDir(run)
    rd.require(cfg.input_stage, STAGE)
    rd.require("embed", STAGE)
    if cfg.decisions:
        read_decisions(cfg.decisions, cfg.decided_by)
    resolve_galleries(rd, cfg, run_embedder_name(rd), progress=False)


def run_dedup_overlap(
    run: str | Path, cfg: OverlapConfig, executor: Executor | None = None, progress: bool = True
) -> StageSummary:
    """Remove gallery identities from every video of ``run`` and write the final dataset; resumable."""
    rd = RunDir(run)
    src: ShardStore = rd.require(cfg.input_stage, STAGE)
    rd.require("embed", STAGE)
    model = run_embedder_name(rd)
    decisions = read_decisions(cfg.decisions, cfg.decided_by) if cfg.decisions else {}
    with torch_threads(cfg.threads):
        resolved = resolve_galleries(rd, cfg, model, progress)
    videos = src.done_shards()
    upstream = {
        v: [src.marker(v).get("config_hash", ""), rd.embed.marker(v).get("config_hash", "")] for v in videos
    }
    calibrated, known = calibrate_run(rd, cfg, resolved, model, videos, upstream)
    if decisions:
        check_known(decisions, known, cfg.decisions)
    specs = tuple(
        GallerySpec(
            g.name,
            str(g.path),
            t,
            g.fingerprint,
            calibrated[g.name]["calibration"],
            calibrated[g.name]["face_calibration"],
            calibrated[g.name]["key"],
        )
        for g, t in resolved
    )
    summary = StageSummary(STAGE, videos=len(videos))
    for spec in specs:
        cal = load_calibration(spec.calibration)[0]
        summary.details.setdefault("galleries", {})[spec.name] = {
            "identities": cal.gallery_size,
            "score": cal.score,
            "threshold": round(cal.threshold, 4),
            "confident_threshold": round(cal.confident_threshold, 4),
            "fpir": cal.fpir_at_threshold,
            "calibration": cal.source,
            "sequences": 0,
            "faces": 0,
            "review": 0,
            "review_kept": 0,
            "by_person": 0,
            "path": spec.path,
        }
        if cal.warning:
            summary.details.setdefault("warnings", []).append(cal.warning)
    mine_all: dict[str, set[str]] = {}
    if decisions:
        for video in videos:
            try:
                seqs = read_table(src.table_path("sequences", video), columns=["seq_id"])
            except (SeqbuildError, OSError):
                continue  # fails on its own below
            mine_all[video] = set(seqs.column("seq_id").to_pylist())
    tasks = []
    for video in videos:
        seq_ids = sorted(mine_all.get(video, ()))
        mine = {s: decisions[s] for s in seq_ids if s in decisions}
        key = output_hash(
            cfg,
            upstream=src.marker(video).get("config_hash", ""),
            galleries=[(s.name, s.threshold, s.fingerprint, s.key) for s in specs],
            decisions=decisions_hash(decisions, seq_ids),
        )
        if rd.dedup_overlap.is_done(video, key):
            summary.skipped += 1
            continue
        rd.dedup_overlap.clear(video)
        tasks.append(VideoTask(str(rd.root), video, key, cfg, {"galleries": specs, "decisions": mine}))
    return drive(summary, tasks, dedup_video, executor, cfg.workers, progress)
