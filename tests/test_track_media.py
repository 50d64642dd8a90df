"""Tracking on real video: a crowd walking towards the camera (many faces at once, all moving)."""

from __future__ import annotations

import numpy as np
import pyarrow as pa
import pytest

from seqbuild.schema import DETECTIONS
from seqbuild.track.assign import iou_matrix
from seqbuild.track.config import TrackConfig
from seqbuild.track.stage import track_detections

SECONDS = 2.0
DETECT_EVERY = 5


def detect_clip(path, seconds: float, every: int) -> pa.Table:
    """DETECTIONS rows (without crops) of every ``every``-th frame of the first ``seconds`` of a video."""
    import av

    from seqbuild.ingest.detect import create_detector

    detector = create_detector("mtcnn", device="cpu")
    frames, idx = [], []
    with av.open(str(path)) as container:
        stream = container.streams.video[0]
        fps = float(stream.average_rate)
        for i, frame in enumerate(container.decode(stream)):
            if i >= seconds * fps:
                break
            if i % every == 0:
                frames.append(frame.to_ndarray(format="rgb24"))
                idx.append(i)
    cols: dict[str, list] = {name: [] for name in DETECTIONS.names}
    for i, faces in zip(idx, detector.detect(frames), strict=True):
        for k, f in enumerate(faces):
            cols["face_id"].append(f"v-f{i:08d}-{k:02d}")
            cols["video_id"].append("v")
            cols["source"].append(str(path))
            cols["frame_idx"].append(i)
            cols["pts"].append(i / fps)
            cols["shot_id"].append(0)
            for name, v in zip(("x1", "y1", "x2", "y2"), f.box, strict=True):
                cols[name].append(float(v))
            cols["landmarks"].append(np.asarray(f.landmarks, dtype=np.float64).ravel().tolist())
            cols["det_score"].append(float(f.score))
            cols["face_size"].append(f.size)
            for name in ("blur", "yaw", "roll"):
                cols[name].append(None)
            cols["image"].append(b"")
    return pa.table(cols, schema=DETECTIONS)


@pytest.mark.media
def test_crowd_sequences_never_jump_between_people(media):
    table = detect_clip(media / "clips" / "crowd_walk.mp4", SECONDS, DETECT_EVERY)
    out = track_detections(table, "v", TrackConfig(min_faces=3))
    boxes = {
        fid: np.array([x1, y1, x2, y2])
        for fid, x1, y1, x2, y2 in zip(
            *(table.column(c).to_pylist() for c in ("face_id", "x1", "y1", "x2", "y2")), strict=True
        )
    }
    frame_of = dict(
        zip(table.column("face_id").to_pylist(), table.column("frame_idx").to_pylist(), strict=True)
    )
    by_frame: dict[int, list[str]] = {}
    for fid, frame in frame_of.items():
        by_frame.setdefault(frame, []).append(fid)
    by_seq: dict[str, list[str]] = {}
    for fid, sid in zip(*(out.assignments.column(c).to_pylist() for c in ("face_id", "seq_id")), strict=True):
        by_seq.setdefault(sid, []).append(fid)
    # The clip holds several people at once: the check below is about real multi-face tracking.
    assert len(by_seq) >= 3, f"only {len(by_seq)} sequences in a crowd"
    pairs = 0
    for sid, fids in by_seq.items():
        fids.sort(key=frame_of.get)
        assert len({frame_of[f] for f in fids}) == len(fids), f"{sid}: two faces in one frame"
        for a, b in zip(fids[:-1], fids[1:], strict=True):
            ba, bb = boxes[a], boxes[b]
            size = np.sqrt((ba[2] - ba[0]) * (ba[3] - ba[1]))
            move = np.hypot(*((ba[:2] + ba[2:]) / 2 - (bb[:2] + bb[2:]) / 2))
            # Consecutive boxes overlap (faces of two people in a crowd do not), or the centre moved
            # less than half a face per detector pass.
            gap_passes = (frame_of[b] - frame_of[a]) / DETECT_EVERY
            overlap = iou_matrix(ba[None], bb[None])[0, 0]
            assert overlap > 0 or move <= 0.5 * size * gap_passes, (sid, a, b, overlap, move / size)
            # No other face of that frame sits closer to where this person was.
            rivals = [boxes[o] for o in by_frame[frame_of[b]] if o != b]
            if rivals:
                assert iou_matrix(ba[None], np.stack(rivals)).max() <= overlap, (sid, a, b)
            scale = np.sqrt((bb[2] - bb[0]) * (bb[3] - bb[1])) / size
            assert 1 / 1.5 < scale < 1.5, (sid, a, b, scale)
            pairs += 1
    assert pairs >= 10
