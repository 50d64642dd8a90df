"""The clean stage: per video, remove low-quality, noisy and near-duplicate faces and sequences that hold
two people; then, over all videos, remove rerun copies of sequences. Every removal is written with its
reason, the figure that triggered it and the threshold.

Three steps, each resumable:
1. per video (executor): filter faces with :mod:`seqbuild.clean.filters`, write the survivors, the
   removals and each surviving sequence's centre to ``RUN/clean/_local/{...}/<video_id>.parquet``;
2. index: the rerun search of :mod:`seqbuild.clean.reruns` over every video's centres file (exact for
   small runs, an IVF index streamed video by video beyond, memory bounded by ``rerun_memory_mb``),
   then a face-level check reading only the sequences concerned; the rerun copies go to
   ``RUN/clean/_reruns.parquet``;
3. filter (per video): local survivors minus rerun copies -> ``RUN/clean/{assignments,sequences,removals}``.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from ..config import config_hash, output_hash
from ..driver import StageSummary, VideoTask, drive
from ..errors import SeqbuildError
from ..executors import Executor
from ..layout import RunDir
from ..reasons import removal_rows
from ..schema import ASSIGNMENTS, REMOVALS, SEQUENCES, SHOTS
from ..storage import ShardStore, read_table, table_metadata, write_table
from . import filters
from .config import CleanConfig
from .reruns import DictFaces, SequenceFaces, TableCentres, centre_matrix, search_reruns

log = logging.getLogger(__name__)

STAGE = "clean"
LOCAL = "_local"
RERUNS_FILE = "_reruns.parquet"
DET_COLUMNS = ["face_id", "frame_idx", "pts", "shot_id", "det_score", "face_size", "blur", "yaw"]


def centres_schema(dim: int) -> pa.Schema:
    """Per surviving sequence: its centre, for the cross-video rerun index."""
    return pa.schema(
        [
            pa.field("seq_id", pa.string(), nullable=False),
            pa.field("video_id", pa.string(), nullable=False),
            pa.field("n_faces", pa.int32(), nullable=False),
            pa.field("first_frame", pa.int64(), nullable=False),
            pa.field("centre", pa.list_(pa.float32(), dim), nullable=False),
        ]
    )


def local_store(run: RunDir) -> ShardStore:
    """Where step 1 writes each video's survivors, removals and centres."""
    return ShardStore(run.clean.root / LOCAL)


def local_hash(run: RunDir, cfg: CleanConfig, video: str) -> str:
    """Hash of a video's step-1 output: the per-video options and the embed and track outputs it used."""
    return output_hash(
        cfg,
        part="",
        embed=run.embed.marker(video).get("config_hash", ""),
        track=run.track.marker(video).get("config_hash", ""),
    )


# ---------------------------------------------------------------- step 1: one video


@dataclass
class SequenceResult:
    """What step 1 decided for one sequence."""

    kept: dict[str, list[int]]  # output seq_id -> row indices of kept faces
    removals: list[dict[str, Any]]
    sims_centre: np.ndarray  # similarity of each face to its (group's) robust centre, for the dry run
    near_dup_max: np.ndarray  # each kept-so-far face's best similarity to an earlier kept face


def _removal_rows(
    video_id: str, seq_id: str, face_ids: list[str], r: filters.Removal
) -> list[dict[str, Any]]:
    return removal_rows(
        STAGE,
        r.reason,
        video_id,
        face_ids,
        seq_id=seq_id,
        value=r.value,
        threshold=r.threshold,
        detail=r.detail,
    )


def clean_sequence(
    seq_id: str,
    video_id: str,
    face_ids: list[str],
    emb: np.ndarray,
    quality: dict[str, np.ndarray],
    cfg: CleanConfig,
    device: str = "cpu",
) -> SequenceResult:
    """Apply quality rules, splits where the appearance jumps to another person, then two-identity,
    noise, near-duplicate and length rules to one sequence (rows in time order).

    A sequence-level removal (two identities, too few faces) is one row per face the sequence still held.
    """
    removals: list[dict[str, Any]] = []
    alive = np.arange(len(face_ids))
    keys = ("min_face_size", "min_blur", "min_det_score", "max_yaw", "cut_margin")
    limits = {k: getattr(cfg, k) for k in keys if k != "cut_margin" or cfg.cut_margin > 0}
    dropped = set()
    for r in filters.quality_removals(quality, limits):
        removals += _removal_rows(video_id, seq_id, [face_ids[r.index]], r)
        dropped.add(r.index)
    alive = np.array([i for i in alive if i not in dropped], dtype=np.int64)

    parts: dict[str, np.ndarray] = {seq_id: alive}
    if cfg.jump_threshold > -1 and len(alive):
        jumps = filters.appearance_jumps(
            emb[alive], cfg.two_identity_threshold, cfg.jump_threshold, cfg.min_group_faces
        )
        if jumps:
            cuts = [0, *(j for j, _ in jumps), len(alive)]
            parts = {
                f"{seq_id}-{k + 1}": alive[a:b]
                for k, (a, b) in enumerate(zip(cuts[:-1], cuts[1:], strict=True))
            }

    groups: dict[str, np.ndarray] = {}
    for part_id, rows in parts.items():
        two = (
            filters.find_two_identities(emb[rows], cfg.two_identity_threshold, cfg.min_group_faces)
            if len(rows)
            else None
        )
        if two is None:
            groups[part_id] = rows
            continue
        detail = f"groups of {two.sizes[0]} and {two.sizes[1]} faces"
        if cfg.split_policy == "drop":
            r = filters.Removal("two_identities", two.similarity, cfg.two_identity_threshold, detail=detail)
            removals += _removal_rows(video_id, part_id, [face_ids[i] for i in rows], r)
            continue
        groups.update({f"{part_id}-{k + 1}": rows[two.labels == k] for k in (0, 1)})

    kept: dict[str, list[int]] = {}
    sims_all, dup_all = [], []
    for out_id, rows in groups.items():
        sub = emb[rows]
        if len(rows):
            noise, centre = filters.noise_removals(sub, cfg.noise_threshold)
            sims_all.append(sub @ centre)
        else:
            noise = []
        for r in noise:
            removals += _removal_rows(video_id, out_id, [face_ids[rows[r.index]]], r)
        rows = np.delete(rows, [r.index for r in noise])
        dups = filters.near_duplicate_removals(
            emb[rows], cfg.near_dup_threshold, [face_ids[i] for i in rows], device
        )
        if len(rows) > 1:
            sims = emb[rows] @ emb[rows].T
            dup_all.append(np.array([sims[i, :i].max() for i in range(1, len(rows))]))
        for r in dups:
            removals += _removal_rows(video_id, out_id, [face_ids[rows[r.index]]], r)
        rows = np.delete(rows, [r.index for r in dups])
        if len(rows) < cfg.min_faces:
            r = filters.Removal("too_few_faces", float(len(rows)), float(cfg.min_faces))
            removals += _removal_rows(video_id, out_id, [face_ids[i] for i in rows], r)
            continue
        kept[out_id] = [int(i) for i in rows]
    return SequenceResult(
        kept,
        removals,
        np.concatenate(sims_all) if sims_all else np.zeros(0, np.float32),
        np.concatenate(dup_all) if dup_all else np.zeros(0, np.float32),
    )


def load_video_inputs(run: RunDir, shard: str) -> tuple[pa.Table, dict[str, Any], np.ndarray, pa.Table]:
    """A video's tracked faces (detection figures, in sequence and frame order), its embeddings aligned
    with them, and its track sequences."""
    assign = read_table(run.track.table_path("assignments", shard), ASSIGNMENTS)
    seqs = read_table(run.track.table_path("sequences", shard), SEQUENCES)
    det = read_table(run.ingest.table_path("detections", shard), columns=DET_COLUMNS)
    faces = assign.join(det, keys="face_id", join_type="inner")
    if faces.num_rows != assign.num_rows:
        raise SeqbuildError(
            f"{run.ingest.table_path('detections', shard)}: {assign.num_rows - faces.num_rows} tracked faces have no detection"
        )
    faces = faces.take(pc.sort_indices(faces, [("seq_id", "ascending"), ("frame_idx", "ascending")]))
    emb_path = run.embed.table_path("embeddings", shard)
    emb_table = read_table(emb_path)
    # Arrow cannot join fixed-size lists: look the vectors up by position.
    position = {f: i for i, f in enumerate(emb_table.column("face_id").to_pylist())}
    dim = emb_table.schema.field("embedding").type.list_size
    flat = emb_table.column("embedding").combine_chunks().flatten().to_numpy(zero_copy_only=False)
    vectors = (
        np.asarray(flat, dtype=np.float32).reshape(-1, dim)
        if emb_table.num_rows
        else np.zeros((0, dim), np.float32)
    )
    try:
        index = np.array([position[f] for f in faces.column("face_id").to_pylist()], dtype=np.int64)
    except KeyError as exc:
        raise SeqbuildError(
            f"{emb_path}: no embedding for face {exc.args[0]}; re-run `seqbuild embed`"
        ) from None
    cols = {
        c: faces.column(c).to_numpy(zero_copy_only=False)
        for c in faces.column_names
        if c not in ("face_id", "video_id", "seq_id")
    }
    cols["face_id"] = faces.column("face_id").to_pylist()
    cols["seq_id"] = faces.column("seq_id").to_pylist()
    return (
        faces,
        cols,
        filters.normalise(vectors[index]) if len(index) else np.zeros((0, dim), np.float32),
        seqs,
    )


def cut_times(run: RunDir, shard: str) -> np.ndarray:
    """Timestamps (pts, seconds) of a video's shot cuts from ingest's shots table (none if it is absent)."""
    path = run.ingest.table_path("shots", shard)
    if not path.is_file():
        return np.zeros(0)
    shots = read_table(path, SHOTS)
    first = (
        shots.filter(pc.greater(shots.column("shot_id"), 0))
        .column("first_pts")
        .to_numpy(zero_copy_only=False)
    )
    return np.asarray(first, dtype=np.float64)[~np.isnan(np.asarray(first, dtype=np.float64))]


def _sequence_rows(seq_id: str, video_id: str, cols: dict[str, Any], rows: list[int]) -> dict[str, Any]:
    frames = cols["frame_idx"][rows]
    pts = cols["pts"][rows]
    return {
        "seq_id": seq_id,
        "video_id": video_id,
        "shot_id": int(cols["shot_id"][rows[0]]),
        "first_frame": int(frames.min()),
        "last_frame": int(frames.max()),
        "first_pts": float(pts.min()),
        "last_pts": float(pts.max()),
        "n_faces": len(rows),
        "mean_score": float(np.mean(cols["det_score"][rows])),
        "mean_face_size": float(np.nanmean(cols["face_size"][rows]))
        if np.isfinite(cols["face_size"][rows]).any()
        else None,
    }


def clean_video(run: RunDir, shard: str, cfg: CleanConfig, device: str = "cpu") -> dict[str, Any]:
    """Step 1 for one video: read its tracked faces, embeddings and cuts, then :func:`clean_faces`."""
    faces, cols, emb, _ = load_video_inputs(run, shard)
    video_id = shard if not faces.num_rows else faces.column("video_id")[0].as_py()
    return clean_faces(video_id, cols, emb, cut_times(run, shard), cfg, device)


def clean_faces(
    video_id: str,
    cols: dict[str, Any],
    emb: np.ndarray,
    cuts: np.ndarray,
    cfg: CleanConfig,
    device: str = "cpu",
) -> dict[str, Any]:
    """Step 1 for one video's tracked faces, no I/O: assignments, sequences, removals and centres tables,
    plus the similarity figures the dry run shows.

    ``cols`` holds the faces' columns (face_id, seq_id, frame_idx, pts, shot_id, det_score, face_size,
    blur, yaw), grouped by sequence and in time order within each; ``emb`` their normalised embeddings
    row for row; ``cuts`` the times (s) of the video's shot boundaries.
    """
    seq_ids = np.array(cols["seq_id"])
    assign_rows, seq_rows, removal_rows, centres = [], [], [], []
    sims_centre, near_dup = [], []
    starts = (
        np.flatnonzero(np.r_[True, seq_ids[1:] != seq_ids[:-1]]) if len(seq_ids) else np.zeros(0, np.int64)
    )
    ends = np.r_[starts[1:], len(seq_ids)] if len(seq_ids) else np.zeros(0, np.int64)
    cols = {**cols, "cut_distance": filters.cut_distance(cols["pts"], cuts)}
    qual_cols = ("face_size", "blur", "det_score", "yaw", "cut_distance")
    for a, b in zip(starts, ends, strict=True):
        seq_id = str(seq_ids[a])
        rows = np.arange(a, b)
        result = clean_sequence(
            seq_id,
            video_id,
            [cols["face_id"][i] for i in rows],
            emb[rows],
            {c: np.asarray(cols[c][rows], dtype=np.float64) for c in qual_cols},
            cfg,
            device,
        )
        removal_rows += result.removals
        sims_centre.append(result.sims_centre)
        near_dup.append(result.near_dup_max)
        for out_id, local in result.kept.items():
            idx = [int(rows[i]) for i in local]
            assign_rows += [
                {"face_id": cols["face_id"][i], "video_id": video_id, "seq_id": out_id} for i in idx
            ]
            seq_rows.append(_sequence_rows(out_id, video_id, cols, idx))
            centres.append(
                {
                    "seq_id": out_id,
                    "video_id": video_id,
                    "n_faces": len(idx),
                    "first_frame": int(cols["frame_idx"][idx].min()),
                    "centre": filters.normalise(emb[idx].mean(axis=0)),
                }
            )
    dim = emb.shape[1]
    return {
        "video_id": video_id,
        "assignments": pa.Table.from_pylist(assign_rows, schema=ASSIGNMENTS),
        "sequences": pa.Table.from_pylist(seq_rows, schema=SEQUENCES),
        "removals": pa.Table.from_pylist(removal_rows, schema=REMOVALS),
        "centres": pa.Table.from_pylist(
            [{**c, "centre": c["centre"].tolist()} for c in centres], schema=centres_schema(dim)
        ),
        "faces_in": len(seq_ids),
        "sims_centre": np.concatenate(sims_centre) if sims_centre else np.zeros(0),
        "near_dup": np.concatenate(near_dup) if near_dup else np.zeros(0),
        "dim": dim,
    }


def clean_video_task(task: VideoTask) -> dict[str, Any]:
    """Step 1 for one video, written to the local store; returns counts."""
    run = RunDir(task.run)
    store = local_store(run)
    out = clean_video(run, task.video, task.cfg, task.params["device"])
    for name, schema in (("assignments", ASSIGNMENTS), ("sequences", SEQUENCES), ("removals", REMOVALS)):
        write_table(store.table_path(name, task.video), out[name], schema, name, task.key)
    write_table(
        store.table_path("centres", task.video),
        out["centres"],
        centres_schema(out["dim"]),
        "centres",
        task.key,
    )
    store.mark_done(task.video, task.key, faces_in=out["faces_in"], faces_kept=out["assignments"].num_rows)
    return {}


RERUNS = pa.schema(
    [
        pa.field("seq_id", pa.string(), nullable=False),
        pa.field("video_id", pa.string(), nullable=False),
        pa.field("value", pa.float64()),
        pa.field("threshold", pa.float64()),
        pa.field("detail", pa.string()),
    ]
)
"""``RUN/clean/_reruns.parquet``: the rerun copies found over the whole run, one row per sequence."""


# ---------------------------------------------------------------- step 2: rerun index


def find_reruns(centres: pa.Table, faces: dict[str, np.ndarray], cfg: CleanConfig) -> list[dict[str, Any]]:
    """Rerun copies among sequences held in memory: a k-NN search over centres above ``rerun_threshold``,
    confirmed when ``rerun_min_share`` of the shorter sequence's faces have a match above
    ``rerun_face_threshold``. In each group of copies the first airing is kept (the earliest sequence of
    the first video in id order: within a video, the original before its reruns); the others are
    returned as RERUNS rows. The same search as a run's step 2 (:func:`seqbuild.clean.reruns.search_reruns`)."""
    if centres.num_rows < 2:
        return []
    return search_reruns(TableCentres(centres), DictFaces(faces, centres), cfg)


class RunCentres:
    """Step 1's per-video centres files of a run, one block per video (a CentreSource)."""

    def __init__(self, run: RunDir, videos: list[str]) -> None:
        self.store = local_store(run)
        self.videos = list(videos)

    def read(self, block: int, columns: list[str] | None = None) -> pa.Table:
        """The centres table of the block's video (only ``columns`` when given)."""
        return read_table(self.store.table_path("centres", self.videos[block]), columns=columns)


class RunFaces:
    """Faces of some of step 1's surviving sequences of one video of a run (a FaceSource).

    The face ids come from step 1's assignments, in time order; the vectors from embed's table, made
    unit length exactly as step 1 made them.
    """

    def __init__(self, run: RunDir) -> None:
        self.run = run
        self.store = local_store(run)

    def read(self, video: str, seq_ids: list[str]) -> dict[str, SequenceFaces]:
        """{seq_id: SequenceFaces} for ``seq_ids`` of ``video``."""
        wanted = pa.array(seq_ids, pa.string())
        assign = read_table(self.store.table_path("assignments", video), ASSIGNMENTS)
        assign = assign.filter(pc.is_in(assign.column("seq_id"), value_set=wanted))
        centres = read_table(self.store.table_path("centres", video), columns=["seq_id", "centre"])
        centres = centres.filter(pc.is_in(centres.column("seq_id"), value_set=wanted))
        emb_path = self.run.embed.table_path("embeddings", video)
        emb = read_table(emb_path, columns=["face_id", "embedding"])
        dim = emb.schema.field("embedding").type.list_size
        position = {f: i for i, f in enumerate(emb.column("face_id").to_pylist())}
        face_ids = assign.column("face_id").to_pylist()
        try:
            index = np.array([position[f] for f in face_ids], dtype=np.int64)
        except KeyError as exc:
            raise SeqbuildError(
                f"{emb_path}: no embedding for face {exc.args[0]}; re-run `seqbuild embed`"
            ) from None
        flat = emb.column("embedding").combine_chunks().flatten().to_numpy(zero_copy_only=False)
        vectors = np.asarray(flat, dtype=np.float32).reshape(-1, dim)
        unit = filters.normalise(vectors[index]) if len(index) else np.zeros((0, dim), np.float32)
        rows: dict[str, list[int]] = {}
        for i, s in enumerate(assign.column("seq_id").to_pylist()):
            rows.setdefault(s, []).append(i)
        mats = centre_matrix(centres, dim)
        centre_of = dict(zip(centres.column("seq_id").to_pylist(), mats, strict=True))
        return {s: SequenceFaces(unit[r], centre_of[s]) for s, r in rows.items()}


def build_rerun_index(run: RunDir, cfg: CleanConfig, videos: list[str]) -> tuple[pa.Table, str]:
    """Step 2: the rerun copies among every video's surviving sequences (reused while nothing changed)."""
    store = local_store(run)
    h = output_hash(cfg, part="reruns", videos={v: store.marker(v).get("config_hash", "") for v in videos})
    path = run.clean.root / RERUNS_FILE
    if path.is_file():
        try:
            if table_metadata(path)["config_hash"] == h:
                return read_table(path, RERUNS), h
        except SeqbuildError:
            pass
    rows = (
        search_reruns(RunCentres(run, videos), RunFaces(run), cfg, scratch_dir=run.clean.root)
        if videos
        else []
    )
    table = pa.Table.from_pylist(rows, schema=RERUNS)
    write_table(path, table, RERUNS, "reruns", h)
    return table, h


# ---------------------------------------------------------------- step 3: filter


def finish_video(run: RunDir, video: str, reruns: pa.Table, h: str) -> dict[str, int]:
    """Step 3 for one video: its step-1 survivors minus rerun copies, with every removal."""
    store = local_store(run)
    assign = read_table(store.table_path("assignments", video), ASSIGNMENTS)
    seqs = read_table(store.table_path("sequences", video), SEQUENCES)
    removals = read_table(store.table_path("removals", video), REMOVALS)
    mine = reruns.filter(pc.is_in(reruns.column("seq_id"), value_set=seqs.column("seq_id")))
    gone = mine.column("seq_id")
    copied = assign.filter(pc.is_in(assign.column("seq_id"), value_set=gone))
    rerun_rows = []
    for r in mine.to_pylist():
        faces = copied.filter(pc.equal(copied.column("seq_id"), r["seq_id"])).column("face_id").to_pylist()
        rerun_rows += removal_rows(
            STAGE,
            "rerun",
            r["video_id"],
            faces,
            seq_id=r["seq_id"],
            value=r["value"],
            threshold=r["threshold"],
            detail=r["detail"],
        )
    assign = assign.filter(pc.invert(pc.is_in(assign.column("seq_id"), value_set=gone)))
    seqs = seqs.filter(pc.invert(pc.is_in(seqs.column("seq_id"), value_set=gone)))
    removals = pa.concat_tables([removals, pa.Table.from_pylist(rerun_rows, schema=REMOVALS)])
    run.clean.clear(video)
    write_table(run.clean.table_path("assignments", video), assign, ASSIGNMENTS, "assignments", h)
    write_table(run.clean.table_path("sequences", video), seqs, SEQUENCES, "sequences", h)
    write_table(run.clean.table_path("removals", video), removals, REMOVALS, "removals", h)
    run.clean.mark_done(video, h, faces=assign.num_rows, sequences=seqs.num_rows, reruns=mine.num_rows)
    return {"faces": assign.num_rows, "sequences": seqs.num_rows, "reruns": mine.num_rows}


# ---------------------------------------------------------------- entry points


def _device(cfg: CleanConfig) -> str:
    from ..devices import resolve_device

    return resolve_device(cfg.device)


def run_clean(
    run: str | Path, cfg: CleanConfig, executor: Executor | None = None, progress: bool = True
) -> StageSummary:
    """Clean every embedded video of ``run``; with ``cfg.dry_run`` print what would be removed and write nothing."""
    from .model import thresholds_for_model

    rundir = RunDir(run)
    videos = rundir.require("embed", "clean").done_shards()
    videos = [v for v in videos if rundir.track.is_done(v)]
    cfg, model_info = thresholds_for_model(rundir, cfg, videos)
    if cfg.dry_run:
        return dry_run(rundir, cfg, videos, progress)
    device = _device(cfg)
    summary = StageSummary("clean", videos=len(videos))
    summary.details["model"] = model_info
    store = local_store(rundir)
    tasks = []
    for video in videos:
        h = local_hash(rundir, cfg, video)
        if not store.is_done(video, h):
            store.clear(video)
            tasks.append(VideoTask(str(rundir.root), video, h, cfg, {"device": device}))
    # Step 1 is counted by the driver; step 3 below is bookkeeping over its outputs.
    drive(summary, tasks, clean_video_task, executor, cfg.workers, progress)
    summary.done = 0
    failed = {f["video"] for f in summary.failures}
    ready = [v for v in videos if v not in failed and store.is_done(v)]
    reruns, rerun_hash = build_rerun_index(rundir, cfg, ready)
    for video in ready:
        h = config_hash({"local": store.marker(video).get("config_hash", ""), "reruns": rerun_hash})
        if rundir.clean.is_done(video, h):
            summary.skipped += 1
            info = rundir.clean.marker(video)
        else:
            info = finish_video(rundir, video, reruns, h)
            summary.done += 1
        summary.add({k: int(info.get(k, 0)) for k in ("faces", "sequences", "reruns")})
    removals = rundir.clean.read("removals", REMOVALS, ready)
    summary.details["removed_faces"] = (
        {d["values"]: d["counts"] for d in pc.value_counts(removals.column("reason")).to_pylist()}
        if removals.num_rows
        else {}
    )
    return summary


def dry_run(run: RunDir, cfg: CleanConfig, shards: list[str], progress: bool = True) -> StageSummary:
    """Compute everything in memory, print the similarity histograms and what each threshold would
    remove (also at nearby thresholds), and write nothing."""
    import click

    sims_centre, near_dup, removals, centre_tabs, faces = [], [], [], [], {}
    faces_in = 0
    for shard in shards:
        out = clean_video(run, shard, cfg, "cpu")
        faces_in += out["faces_in"]
        sims_centre.append(out["sims_centre"])
        near_dup.append(out["near_dup"])
        removals.append(out["removals"])
        if out["centres"].num_rows:
            centre_tabs.append(out["centres"])
            _, cols, emb, _ = load_video_inputs(run, shard)
            row = {f: i for i, f in enumerate(cols["face_id"])}
            a = out["assignments"]
            for s, f in zip(a.column("seq_id").to_pylist(), a.column("face_id").to_pylist(), strict=True):
                faces.setdefault(s, []).append(emb[row[f]])
    faces = {s: np.stack(v) for s, v in faces.items()}
    centres = pa.concat_tables(centre_tabs) if centre_tabs else None
    rerun_rows = find_reruns(centres, faces, cfg) if centres is not None else []
    all_removals = pa.concat_tables(removals) if removals else REMOVALS.empty_table()
    sc = np.concatenate(sims_centre) if sims_centre else np.zeros(0)
    nd = np.concatenate(near_dup) if near_dup else np.zeros(0)
    nn = np.zeros(0)
    if centres is not None and centres.num_rows > 1:
        n, dim = centres.num_rows, centres.schema.field("centre").type.list_size
        mat = np.asarray(
            centres.column("centre").combine_chunks().flatten().to_numpy(zero_copy_only=False), np.float32
        ).reshape(n, dim)
        s = mat @ mat.T
        np.fill_diagonal(s, -1)
        nn = s.max(axis=1)
    echo = click.echo
    echo(f"dry run over {len(shards)} videos, {faces_in} tracked faces: nothing is written")
    echo(f"\nsimilarity of each face to its sequence's robust centre (noise below {cfg.noise_threshold}):")
    echo(filters.histogram(sc))
    for th in sorted({round(cfg.noise_threshold + d, 2) for d in (-0.2, -0.1, 0.0, 0.1, 0.2)}):
        echo(f"  noise_threshold {th:+.2f} would remove {int((sc < th).sum())} faces")
    echo(
        f"\nbest similarity of each face to an earlier face of its sequence (near duplicate above {cfg.near_dup_threshold}):"
    )
    echo(filters.histogram(nd, lo=0.5, hi=1.0, bins=10))
    for th in sorted({round(min(cfg.near_dup_threshold + d, 1.0), 3) for d in (-0.04, -0.02, 0.0, 0.02)}):
        echo(
            f"  near_dup_threshold {th:.3f}: {int((nd > th).sum())} faces above (greedy removal takes at most this many)"
        )
    echo(
        f"\nsimilarity of each sequence centre to its nearest other centre (rerun candidates above {cfg.rerun_threshold}):"
    )
    echo(filters.histogram(nn))
    faces_by: dict[str, int] = {}
    seqs_by: dict[str, set] = {}
    for r in all_removals.select(["reason", "scope", "seq_id"]).to_pylist():
        faces_by[r["reason"]] = faces_by.get(r["reason"], 0) + 1
        if r["scope"] == "sequence":
            seqs_by.setdefault(r["reason"], set()).add(r["seq_id"])
    if rerun_rows:
        faces_by["rerun"] = sum(len(faces[r["seq_id"]]) for r in rerun_rows)
        seqs_by["rerun"] = {r["seq_id"] for r in rerun_rows}
    counts = {
        reason: {"faces": n, "sequences": len(seqs_by.get(reason, ()))} for reason, n in faces_by.items()
    }
    echo("\nwith the current thresholds:")
    for reason, c in sorted(counts.items()):
        whole = f" ({c['sequences']} whole sequences)" if c["sequences"] else ""
        echo(f"  {reason}: {c['faces']} faces{whole}")
    summary = StageSummary("clean", videos=len(shards), counts={"faces": faces_in})
    summary.details.update(dry_run=True, would_remove=counts)
    return summary
