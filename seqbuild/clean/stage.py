"""The clean stage: per video, remove low-quality, noisy and near-duplicate faces and sequences that hold
two people; then, over all videos, remove rerun copies of sequences. Every removal is written with its
reason, the figure that triggered it and the threshold.

Three steps, each resumable:
1. per video (executor): filter faces with :mod:`seqbuild.clean.filters`, write the survivors, the
   removals and each surviving sequence's centre to ``RUN/clean/_local/{...}/<video_id>.parquet``;
2. index: a FAISS inner-product index over all sequence centres, k nearest neighbours above
   ``rerun_threshold``, then a face-level check; the rerun copies go to ``RUN/clean/_reruns.parquet``;
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

from ..config import config_hash
from ..errors import SeqbuildError
from ..layout import RunDir
from ..pipeline.executors import Executor, LocalExecutor
from ..schema import ASSIGNMENTS, REMOVALS, SEQUENCES, SHOTS
from ..storage import ShardStore, read_table, table_metadata, write_table
from . import filters
from .config import CleanConfig

log = logging.getLogger(__name__)

STAGE = "clean"
LOCAL = "_local"
RERUNS_FILE = "_reruns.parquet"
_HASH_IGNORE = ("workers", "device", "dry_run")
_LOCAL_KEYS = (
    "noise_threshold",
    "split_policy",
    "two_identity_threshold",
    "min_group_faces",
    "jump_threshold",
    "near_dup_threshold",
    "min_face_size",
    "min_blur",
    "min_det_score",
    "max_yaw",
    "cut_margin",
    "min_faces",
)
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


def local_hash(run: RunDir, cfg: CleanConfig, shard: str) -> str:
    """Hash of a video's step-1 output: the per-video options and the embed and track outputs it used."""
    values = {k: getattr(cfg, k) for k in _LOCAL_KEYS}
    values["embed"] = run.embed.marker(shard).get("config_hash", "")
    values["track"] = run.track.marker(shard).get("config_hash", "")
    return config_hash(values)


# ---------------------------------------------------------------- step 1: one video


@dataclass
class SequenceResult:
    """What step 1 decided for one sequence."""

    kept: dict[str, list[int]]  # output seq_id -> row indices of kept faces
    removals: list[dict[str, Any]]
    sims_centre: np.ndarray  # similarity of each face to its (group's) robust centre, for the dry run
    near_dup_max: np.ndarray  # each kept-so-far face's best similarity to an earlier kept face


def _removal_row(video_id: str, seq_id: str, face_id: str | None, r: filters.Removal) -> dict[str, Any]:
    return {
        "stage": STAGE,
        "scope": "face" if face_id else "sequence",
        "video_id": video_id,
        "seq_id": seq_id,
        "face_id": face_id,
        "reason": r.reason,
        "value": float(r.value),
        "threshold": float(r.threshold),
        "detail": r.detail or None,
    }


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

    A sequence-level removal (two identities, too few faces) is written as one row per face the sequence
    still held, with scope ``sequence``, so that every face removed has its own row.
    """
    removals: list[dict[str, Any]] = []
    alive = np.arange(len(face_ids))
    keys = ("min_face_size", "min_blur", "min_det_score", "max_yaw", "cut_margin")
    limits = {k: getattr(cfg, k) for k in keys if k != "cut_margin" or cfg.cut_margin > 0}
    dropped = set()
    for r in filters.quality_removals(quality, limits):
        removals.append(_removal_row(video_id, seq_id, face_ids[r.index], r))
        dropped.add(r.index)
    alive = np.array([i for i in alive if i not in dropped], dtype=np.int64)

    def remove_sequence(out_id: str, rows: np.ndarray, r: filters.Removal) -> None:
        for i in rows:
            row = _removal_row(video_id, out_id, face_ids[i], r)
            row["scope"] = "sequence"
            removals.append(row)

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
            remove_sequence(part_id, rows, r)
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
            removals.append(_removal_row(video_id, out_id, face_ids[rows[r.index]], r))
        rows = np.delete(rows, [r.index for r in noise])
        dups = filters.near_duplicate_removals(
            emb[rows], cfg.near_dup_threshold, [face_ids[i] for i in rows], device
        )
        if len(rows) > 1:
            sims = emb[rows] @ emb[rows].T
            dup_all.append(np.array([sims[i, :i].max() for i in range(1, len(rows))]))
        for r in dups:
            removals.append(_removal_row(video_id, out_id, face_ids[rows[r.index]], r))
        rows = np.delete(rows, [r.index for r in dups])
        if len(rows) < cfg.min_faces:
            r = filters.Removal("too_few_faces", float(len(rows)), float(cfg.min_faces))
            remove_sequence(out_id, rows, r)
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
    """Step 1 for one video, in memory: assignments, sequences, removals and centres tables, plus the
    similarity figures the dry run shows."""
    faces, cols, emb, _ = load_video_inputs(run, shard)
    video_id = shard if not faces.num_rows else faces.column("video_id")[0].as_py()
    seq_ids = np.array(cols["seq_id"])
    assign_rows, seq_rows, removal_rows, centres = [], [], [], []
    sims_centre, near_dup = [], []
    starts = (
        np.flatnonzero(np.r_[True, seq_ids[1:] != seq_ids[:-1]]) if len(seq_ids) else np.zeros(0, np.int64)
    )
    ends = np.r_[starts[1:], len(seq_ids)] if len(seq_ids) else np.zeros(0, np.int64)
    cols["cut_distance"] = filters.cut_distance(cols["pts"], cut_times(run, shard))
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


@dataclass
class CleanTask:
    """One video's step-1 job (picklable, for any executor)."""

    run: str
    shard: str
    cfg: CleanConfig
    config_hash: str
    device: str


def clean_video_task(task: CleanTask) -> dict[str, Any]:
    """Step 1 for one video, written to the local store; returns counts or the error."""
    run = RunDir(task.run)
    store = local_store(run)
    try:
        out = clean_video(run, task.shard, task.cfg, task.device)
        for name in ("assignments", "sequences", "removals"):
            write_table(
                store.table_path(name, task.shard), out[name], getattr_schema(name), name, task.config_hash
            )
        write_table(
            store.table_path("centres", task.shard),
            out["centres"],
            centres_schema(out["dim"]),
            "centres",
            task.config_hash,
        )
        store.mark_done(
            task.shard, task.config_hash, faces_in=out["faces_in"], faces_kept=out["assignments"].num_rows
        )
        return {"faces_in": out["faces_in"], "faces_kept": out["assignments"].num_rows}
    except (SeqbuildError, OSError, pa.ArrowException) as exc:
        return {"error": str(exc)}


def getattr_schema(name: str) -> pa.Schema:
    """The schema of a clean output table by name."""
    return {"assignments": ASSIGNMENTS, "sequences": SEQUENCES, "removals": REMOVALS}[name]


# ---------------------------------------------------------------- step 2: rerun index


def find_reruns(centres: pa.Table, faces: dict[str, np.ndarray], cfg: CleanConfig) -> list[dict[str, Any]]:
    """Rerun copies among sequences: FAISS k-NN over centres above ``rerun_threshold``, confirmed when
    ``rerun_min_share`` of the shorter sequence's faces have a match above ``rerun_face_threshold``.
    In each group of copies the first airing is kept (the earliest sequence of the first video in id
    order: within a video, the original before its reruns); the others are returned as removal rows."""
    n = centres.num_rows
    if n < 2:
        return []
    ids = centres.column("seq_id").to_pylist()
    videos = centres.column("video_id").to_pylist()
    first = centres.column("first_frame").to_numpy()
    dim = centres.schema.field("centre").type.list_size
    mat = np.ascontiguousarray(
        np.asarray(
            centres.column("centre").combine_chunks().flatten().to_numpy(zero_copy_only=False), np.float32
        ).reshape(n, dim)
    )
    import faiss

    index = faiss.IndexFlatIP(dim)
    index.add(mat)
    k = min(cfg.rerun_neighbours + 1, n)
    sims, nbrs = index.search(mat, k)
    parent = list(range(n))

    def find(i: int) -> int:
        while parent[i] != i:
            parent[i] = parent[parent[i]]
            i = parent[i]
        return i

    evidence: dict[int, tuple[float, float, int]] = {}
    for i in range(n):
        for s, j in zip(sims[i], nbrs[i], strict=True):
            if j < 0 or j <= i or s < cfg.rerun_threshold:
                continue
            share = filters.face_match_share(faces[ids[i]], faces[ids[j]], cfg.rerun_face_threshold)
            if share >= cfg.rerun_min_share:
                parent[find(i)] = find(j)
                for a, b in ((i, j), (j, i)):
                    if a not in evidence or share > evidence[a][0]:
                        evidence[a] = (share, float(s), b)
    groups: dict[int, list[int]] = {}
    for i in evidence:
        groups.setdefault(find(i), []).append(i)
    rows = []
    for members in groups.values():
        keep = min(members, key=lambda m: (videos[m], int(first[m]), ids[m]))
        for m in members:
            if m == keep:
                continue
            share, centre_sim, _ = evidence[m]
            rows.append(
                {
                    "stage": STAGE,
                    "scope": "sequence",
                    "video_id": videos[m],
                    "seq_id": ids[m],
                    "face_id": None,
                    "reason": "rerun",
                    "value": share,
                    "threshold": cfg.rerun_min_share,
                    "detail": f"copy of {ids[keep]} (centre similarity {centre_sim:.3f})",
                }
            )
    return rows


def _faces_by_sequence(run: RunDir, shards: list[str]) -> dict[str, np.ndarray]:
    store = local_store(run)
    out: dict[str, np.ndarray] = {}
    for shard in shards:
        assign = read_table(store.table_path("assignments", shard), ASSIGNMENTS)
        _, cols, emb, _ = load_video_inputs(run, shard)
        row = {f: i for i, f in enumerate(cols["face_id"])}
        seq = assign.column("seq_id").to_pylist()
        idx = [row[f] for f in assign.column("face_id").to_pylist()]
        for s in set(seq):
            out[s] = emb[[i for i, q in zip(idx, seq, strict=True) if q == s]]
    return out


def build_rerun_index(run: RunDir, cfg: CleanConfig, shards: list[str]) -> tuple[pa.Table, str]:
    """Step 2: the rerun removals over every video's surviving sequences (reused while nothing changed)."""
    store = local_store(run)
    values = {
        k: getattr(cfg, k)
        for k in ("rerun_threshold", "rerun_face_threshold", "rerun_min_share", "rerun_neighbours")
    }
    values["shards"] = {s: store.marker(s).get("config_hash", "") for s in shards}
    h = config_hash(values)
    path = run.clean.root / RERUNS_FILE
    if path.is_file():
        try:
            if table_metadata(path)["config_hash"] == h:
                return read_table(path, REMOVALS), h
        except SeqbuildError:
            pass
    tables = [read_table(store.table_path("centres", s)) for s in shards]
    tables = [t for t in tables if t.num_rows]
    if tables:
        centres = pa.concat_tables(tables)
        rows = find_reruns(centres, _faces_by_sequence(run, shards), cfg)
    else:
        rows = []
    table = pa.Table.from_pylist(rows, schema=REMOVALS)
    write_table(path, table, REMOVALS, "reruns", h)
    return table, h


# ---------------------------------------------------------------- step 3: filter


def finish_video(run: RunDir, shard: str, reruns: pa.Table, h: str) -> dict[str, int]:
    """Step 3 for one video: its step-1 survivors minus rerun copies, with every removal."""
    store = local_store(run)
    assign = read_table(store.table_path("assignments", shard), ASSIGNMENTS)
    seqs = read_table(store.table_path("sequences", shard), SEQUENCES)
    removals = read_table(store.table_path("removals", shard), REMOVALS)
    if assign.num_rows:
        video_id = assign.column("video_id")[0].as_py()
        mine = reruns.filter(pc.equal(reruns.column("video_id"), video_id))
    else:
        mine = reruns.slice(0, 0)
    gone = mine.column("seq_id")
    assign = assign.filter(pc.invert(pc.is_in(assign.column("seq_id"), value_set=gone)))
    seqs = seqs.filter(pc.invert(pc.is_in(seqs.column("seq_id"), value_set=gone)))
    removals = pa.concat_tables([removals, mine])
    run.clean.clear(shard)
    write_table(run.clean.table_path("assignments", shard), assign, ASSIGNMENTS, "assignments", h)
    write_table(run.clean.table_path("sequences", shard), seqs, SEQUENCES, "sequences", h)
    write_table(run.clean.table_path("removals", shard), removals, REMOVALS, "removals", h)
    run.clean.mark_done(shard, h, faces=assign.num_rows, sequences=seqs.num_rows)
    return {"faces": assign.num_rows, "sequences": seqs.num_rows, "reruns": mine.num_rows}


# ---------------------------------------------------------------- entry points


def _device(cfg: CleanConfig) -> str:
    from ..devices import resolve_device

    return resolve_device(cfg.device)


def run_clean(
    run: str | Path, cfg: CleanConfig, executor: Executor | None = None, progress: bool = True
) -> dict[str, Any]:
    """Clean every embedded video of ``run``; with ``cfg.dry_run`` print what would be removed and write nothing."""
    from tqdm import tqdm

    rundir = RunDir(run)
    shards = rundir.require("embed", "clean").done_shards()
    shards = [s for s in shards if rundir.track.is_done(s)]
    if cfg.dry_run:
        return dry_run(rundir, cfg, shards, progress)
    device = _device(cfg)
    summary: dict[str, Any] = {"videos": len(shards), "done": 0, "skipped": 0, "failed": 0, "errors": []}
    store = local_store(rundir)
    tasks = []
    for shard in shards:
        h = local_hash(rundir, cfg, shard)
        if not store.is_done(shard, h):
            store.clear(shard)
            tasks.append(CleanTask(str(run), shard, cfg, h, device))
    executor = executor or LocalExecutor(cfg.workers)
    bar = tqdm(total=len(tasks), desc="clean", unit="video", disable=not progress)
    failed = set()
    for task, result in executor.map(clean_video_task, tasks):
        bar.update(1)
        if "error" in result:
            failed.add(task.shard)
            summary["errors"].append(f"{task.shard}: {result['error']}")
            log.error("clean %s: %s", task.shard, result["error"])
    bar.close()
    summary["failed"] = len(failed)
    ready = [s for s in shards if s not in failed and store.is_done(s)]
    reruns, rerun_hash = build_rerun_index(rundir, cfg, ready)
    summary["reruns"] = reruns.num_rows
    summary.update({"faces": 0, "sequences": 0})
    for shard in ready:
        h = config_hash({"local": store.marker(shard).get("config_hash", ""), "reruns": rerun_hash})
        if rundir.clean.is_done(shard, h):
            summary["skipped"] += 1
            info = rundir.clean.marker(shard)
        else:
            info = finish_video(rundir, shard, reruns, h)
            summary["done"] += 1
        summary["faces"] += int(info.get("faces", 0))
        summary["sequences"] += int(info.get("sequences", 0))
    removals = rundir.clean.read("removals", REMOVALS, ready)
    summary["removed"] = (
        {d["values"]: d["counts"] for d in pc.value_counts(removals.column("reason")).to_pylist()}
        if removals.num_rows
        else {}
    )
    return summary


def dry_run(run: RunDir, cfg: CleanConfig, shards: list[str], progress: bool = True) -> dict[str, Any]:
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
    counts = (
        {d["values"]: d["counts"] for d in pc.value_counts(all_removals.column("reason")).to_pylist()}
        if all_removals.num_rows
        else {}
    )
    counts["rerun"] = len(rerun_rows)
    echo("\nwith the current thresholds:")
    for reason, c in sorted(counts.items()):
        echo(f"  {reason}: {c}")
    return {"videos": len(shards), "faces": faces_in, "dry_run": True, "would_remove": counts}
