"""Synthetic DETECTIONS tables for tests of the stages after ingest (dummy crops, exact boxes)."""

from __future__ import annotations

from collections.abc import Iterable

import numpy as np
import pyarrow as pa

from seqbuild.schema import DETECTIONS


def detections_table(
    video_id: str,
    faces: Iterable[tuple[int, int, np.ndarray, np.ndarray, float]],
    source: str = "/videos/synthetic.mp4",
) -> pa.Table:
    """DETECTIONS rows from (frame, shot, box x1y1x2y2, landmarks (5, 2), face size), numbered per frame."""
    cols: dict[str, list] = {name: [] for name in DETECTIONS.names}
    counts: dict[int, int] = {}
    for frame, shot, box, landmarks, size in faces:
        k = counts.get(frame, 0)
        counts[frame] = k + 1
        cols["face_id"].append(f"{video_id}-f{frame:08d}-{k:02d}")
        cols["video_id"].append(video_id)
        cols["source"].append(source)
        cols["frame_idx"].append(frame)
        cols["pts"].append(frame / 25)
        cols["shot_id"].append(shot)
        for name, v in zip(("x1", "y1", "x2", "y2"), box, strict=True):
            cols[name].append(float(v))
        cols["landmarks"].append(np.asarray(landmarks, np.float32).ravel().tolist())
        cols["det_score"].append(0.99)
        cols["face_size"].append(float(size))
        cols["blur"].append(100.0)
        cols["yaw"].append(0.0)
        cols["roll"].append(0.0)
        cols["image"].append(b"\xff\xd8")
    return pa.table(cols, schema=DETECTIONS)
