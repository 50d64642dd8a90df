"""`seqbuild track`: link each video's detections into single-person face sequences.

Reads ``RUN/ingest/detections/<video_id>.parquet`` and writes ``RUN/track/{assignments,sequences,
removals}/<video_id>.parquet``. Tracks never cross a shot boundary (ingest's ``shot_id``). Every
detection ends up in exactly one place: the assignments of a kept sequence, or a removal row
(scope ``sequence``, one per face, with its seq_id) that says why its sequence was not kept (``too_short``: fewer than
``min_faces`` faces; ``unconfirmed``: the track never reached ``min_hits``) and the figure.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow as pa

from ..config import output_hash
from ..driver import StageSummary, VideoTask, drive
from ..errors import InputError
from ..executors import Executor
from ..layout import RunDir
from ..reasons import removal_rows
from ..schema import ASSIGNMENTS, DETECTIONS, REMOVALS, SEQUENCES
from ..storage import read_table, write_table
from .config import TrackConfig
from .tracker import TRACKERS, create_tracker, infer_frame_step

log = logging.getLogger(__name__)

DETECTION_COLUMNS = [
    "face_id",
    "video_id",
    "frame_idx",
    "pts",
    "shot_id",
    "x1",
    "y1",
    "x2",
    "y2",
    "landmarks",
    "det_score",
    "face_size",
]
"""The detection columns tracking reads (the crops are not loaded)."""


@dataclass
class TrackOutput:
    """One video's track tables and counts."""

    assignments: pa.Table
    sequences: pa.Table
    removals: pa.Table
    stats: dict[str, Any]


def track_detections(detections: pa.Table, video_id: str, cfg: TrackConfig) -> TrackOutput:
    """Track one video's detections (DETECTIONS columns, any order) shot by shot; no I/O."""
    n = detections.num_rows
    cols = {
        c: detections.column(c).to_numpy(zero_copy_only=False) for c in DETECTION_COLUMNS if c != "landmarks"
    }
    frames = cols["frame_idx"].astype(np.int64)
    shots = cols["shot_id"].astype(np.int64)
    boxes = np.stack([cols[c].astype(np.float64) for c in ("x1", "y1", "x2", "y2")], axis=1).reshape(n, 4)
    landmarks = None
    if n:
        flat = detections.column("landmarks").combine_chunks().flatten().to_numpy(zero_copy_only=False)
        landmarks = flat.astype(np.float64).reshape(n, 5, 2)
    step = cfg.frame_step or infer_frame_step(frames, shots)
    tracker = create_tracker(cfg, step)

    # Tracks are keyed (shot, label); their members are row indices into `detections`.
    members: list[np.ndarray] = []
    confirmed: list[bool] = []
    reasons: list[str] = []
    for shot in np.unique(shots):
        rows = np.flatnonzero(shots == shot)
        rows = rows[np.argsort(frames[rows], kind="stable")]
        result = tracker.track(frames[rows], boxes[rows], None if landmarks is None else landmarks[rows])
        for t in range(result.n_tracks):
            members.append(rows[result.labels == t])
            confirmed.append(bool(result.confirmed[t]))
            reasons.append(result.end_reasons[t])
    order = sorted(range(len(members)), key=lambda k: (frames[members[k]].min(), shots[members[k][0]], k))

    face_ids = cols["face_id"]
    pts = cols["pts"].astype(np.float64)
    scores = cols["det_score"].astype(np.float64)
    sizes = cols["face_size"].astype(np.float64) if "face_size" in cols else np.full(n, np.nan)
    fallback = np.sqrt(
        np.clip(boxes[:, 2] - boxes[:, 0], 0, None) * np.clip(boxes[:, 3] - boxes[:, 1], 0, None)
    )
    sizes = np.where(np.isnan(sizes), fallback, sizes)

    assign_rows: dict[str, list] = {"face_id": [], "video_id": [], "seq_id": []}
    seq_rows: dict[str, list] = {name: [] for name in SEQUENCES.names}
    rem_rows: list[dict[str, Any]] = []
    stats = {
        "faces": 0,
        "sequences": 0,
        "removed_sequences": 0,
        "removed_faces": 0,
        "ambiguous_splits": 0,
        "frame_step": int(step),
    }
    for seq_n, k in enumerate(order):
        idx = members[k]
        idx = idx[np.argsort(frames[idx], kind="stable")]
        seq_id = f"{video_id}-s{seq_n:05d}"
        stats["ambiguous_splits"] += reasons[k] == "ambiguous"
        reason = None
        if not confirmed[k]:
            reason, value, limit = "unconfirmed", len(idx), cfg.min_hits
        elif len(idx) < cfg.min_faces:
            reason, value, limit = "too_short", len(idx), cfg.min_faces
        if reason is not None:
            stats["removed_sequences"] += 1
            stats["removed_faces"] += len(idx)
            rem_rows += removal_rows(
                "track",
                reason,
                video_id,
                [str(face_ids[i]) for i in idx],
                seq_id=seq_id,
                value=value,
                threshold=limit,
                detail=f"sequence of {len(idx)} faces",
            )
            continue
        stats["sequences"] += 1
        stats["faces"] += len(idx)
        assign_rows["face_id"] += [str(f) for f in face_ids[idx]]
        assign_rows["video_id"] += [video_id] * len(idx)
        assign_rows["seq_id"] += [seq_id] * len(idx)
        seq_rows["seq_id"].append(seq_id)
        seq_rows["video_id"].append(video_id)
        seq_rows["shot_id"].append(int(shots[idx[0]]))
        seq_rows["first_frame"].append(int(frames[idx[0]]))
        seq_rows["last_frame"].append(int(frames[idx[-1]]))
        seq_rows["first_pts"].append(float(pts[idx[0]]))
        seq_rows["last_pts"].append(float(pts[idx[-1]]))
        seq_rows["n_faces"].append(len(idx))
        seq_rows["mean_score"].append(float(scores[idx].mean()))
        seq_rows["mean_face_size"].append(float(sizes[idx].mean()))
    return TrackOutput(
        pa.table(assign_rows, schema=ASSIGNMENTS),
        pa.table(seq_rows, schema=SEQUENCES),
        pa.Table.from_pylist(rem_rows, schema=REMOVALS),
        stats,
    )


def track_video(task: VideoTask) -> dict[str, Any]:
    """Track one video of a run and write its shard (the per-video work handed to executors)."""
    run = RunDir(task.run)
    path = run.ingest.table_path("detections", task.video)
    if not path.exists():
        raise InputError(f"{path}: ingest detections missing")
    det = read_table(path, DETECTIONS, columns=DETECTION_COLUMNS)
    out = track_detections(det, task.video, task.cfg)
    store = run.track
    store.clear(task.video)
    for name, table, schema in (
        ("assignments", out.assignments, ASSIGNMENTS),
        ("sequences", out.sequences, SEQUENCES),
        ("removals", out.removals, REMOVALS),
    ):
        write_table(store.table_path(name, task.video), table, schema, name, task.key)
    store.mark_done(task.video, task.key, **out.stats)
    return {k: v for k, v in out.stats.items() if k != "frame_step"}


def run_track(
    run: str | Path, cfg: TrackConfig, executor: Executor | None = None, progress: bool = True
) -> StageSummary:
    """Track every video ingested into ``run``; resumable (done videos with the same config are skipped)."""
    rd = RunDir(run)
    ingest = rd.require("ingest", "track")
    TRACKERS.get(cfg.tracker)  # an unknown tracker is a ConfigError before any work starts
    summary = StageSummary("track")
    tasks = []
    for video in ingest.done_shards():
        summary.videos += 1
        key = output_hash(cfg, ingest=ingest.marker(video).get("config_hash", ""))
        if rd.track.is_done(video, key):
            summary.skipped += 1
            continue
        tasks.append(VideoTask(str(rd.root), video, key, cfg))
    return drive(summary, tasks, track_video, executor, cfg.workers, progress)
