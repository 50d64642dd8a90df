"""The pipeline a researcher writes by hand for a first face-track dataset (VoxCeleb-style), as a baseline.

It follows the usual recipe: PySceneDetect's ``ContentDetector`` for the shots, facenet-pytorch's stock
``MTCNN`` on every frame (batches of 16 RGB frames, the package's defaults), a greedy IoU tracker that
links each face to the best-overlapping track of the previous frame (IoU >= 0.5) and ends tracks at shot
boundaries, tracks of at least 25 frames kept, and each kept face cropped, resized to 144 x 144 and
JPEG-encoded. Nothing is shared with seqbuild's code. Used by ``benchmarks/bench_e2e.py`` for the
speed ratio; its own quality is not reported.

Run: ``python -m benchmarks.baseline_voxceleb VIDEO [--seconds N]`` (prints one JSON object).
"""

from __future__ import annotations

import argparse
import json
import time

import numpy as np

BATCH = 16
IOU_LINK = 0.5
MIN_TRACK = 25
CROP = 144


def iou(a: np.ndarray, b: np.ndarray) -> float:
    """Intersection over union of two x1, y1, x2, y2 boxes."""
    w = max(0.0, min(a[2], b[2]) - max(a[0], b[0]))
    h = max(0.0, min(a[3], b[3]) - max(a[1], b[1]))
    inter = w * h
    union = (a[2] - a[0]) * (a[3] - a[1]) + (b[2] - b[0]) * (b[3] - b[1]) - inter
    return inter / union if union > 0 else 0.0


def shot_starts(video: str, seconds: float | None) -> set[int]:
    """First frames of the shots PySceneDetect's ContentDetector finds."""
    from scenedetect import ContentDetector, detect

    end = seconds if seconds else None
    scenes = detect(video, ContentDetector(), end_time=end)
    return {start.frame_num for start, _ in scenes}


def run(video: str, seconds: float | None = None) -> dict:
    """Shots, detection on every frame, greedy IoU tracks and crops; figures and wall times."""
    import av
    import cv2
    import torch
    from facenet_pytorch import MTCNN

    t0 = time.perf_counter()
    starts = shot_starts(video, seconds)
    t_shots = time.perf_counter() - t0
    mtcnn = MTCNN(keep_all=True, device="cpu")
    tracks: list[dict] = []
    open_tracks: list[dict] = []
    frames = faces = 0
    batch: list[np.ndarray] = []
    crops: list[bytes] = []

    def flush(first: int) -> None:
        nonlocal faces, open_tracks
        if not batch:
            return
        with torch.inference_mode():
            boxes, _ = mtcnn.detect(batch)
        for k, (img, found) in enumerate(zip(batch, boxes, strict=True)):
            index = first + k
            if index in starts:
                open_tracks = []
            found = [] if found is None else list(found)
            faces += len(found)
            used: set[int] = set()
            next_open = []
            for box in found:
                best, best_iou = None, IOU_LINK
                for j, track in enumerate(open_tracks):
                    overlap = iou(track["boxes"][-1], box)
                    if j not in used and overlap >= best_iou:
                        best, best_iou = j, overlap
                if best is None:
                    track = {"boxes": [], "images": []}
                    tracks.append(track)
                else:
                    used.add(best)
                    track = open_tracks[best]
                x1, y1, x2, y2 = (int(round(v)) for v in box)
                patch = img[max(0, y1) : max(0, y2), max(0, x1) : max(0, x2)]
                if patch.size:
                    patch = cv2.resize(patch, (CROP, CROP), interpolation=cv2.INTER_AREA)
                    track["images"].append(cv2.imencode(".jpg", patch[:, :, ::-1])[1].tobytes())
                track["boxes"].append(box)
                next_open.append(track)
            open_tracks = next_open
        batch.clear()

    with av.open(video) as container:
        stream = container.streams.video[0]
        stream.thread_type = "AUTO"
        fps = float(stream.average_rate)
        limit = int(seconds * fps) if seconds else None
        for frame in container.decode(stream):
            if limit is not None and frames >= limit:
                break
            batch.append(frame.to_ndarray(format="rgb24"))
            frames += 1
            if len(batch) == BATCH:
                flush(frames - BATCH)
        flush(frames - len(batch))
    kept = [t for t in tracks if len(t["boxes"]) >= MIN_TRACK]
    crops = [c for t in kept for c in t["images"]]
    wall = time.perf_counter() - t0
    return {
        "video_seconds": frames / fps,
        "frames": frames,
        "faces_detected": faces,
        "tracks_kept": len(kept),
        "faces_kept": len(crops),
        "shots": len(starts),
        "shot_seconds": t_shots,
        "wall": wall,
    }


if __name__ == "__main__":
    ap = argparse.ArgumentParser()
    ap.add_argument("video")
    ap.add_argument("--seconds", type=float, default=None, help="only the first N seconds")
    args = ap.parse_args()
    print(json.dumps(run(args.video, args.seconds)))
