"""Videos stored sideways with a display matrix (as phones record) are ingested upright: a rotated copy of
a clip gives the same faces as the clip itself."""

from __future__ import annotations

import itertools
import shutil
import subprocess
from pathlib import Path

import av
import numpy as np
import pandas as pd
import pytest
from test_ingest_stage import _face_patch, cfg_for

from seqbuild.imaging import decode_jpeg
from seqbuild.ingest.stage import run_ingest, source_id


def displayed(picture: np.ndarray, degrees: int, mirror: bool = False) -> np.ndarray:
    """What a player shows for a stored ``picture`` with a display rotation of ``degrees``
    (counterclockwise, PyAV's convention) followed by an optional left-right mirror."""
    out = np.rot90(picture, (degrees // 90) % 4)
    return out[:, ::-1] if mirror else out


def stored_for(picture: np.ndarray, degrees: int, mirror: bool = False) -> np.ndarray:
    """The picture to store so that :func:`displayed` gives ``picture`` back."""
    return np.rot90(picture[:, ::-1] if mirror else picture, -(degrees // 90) % 4)


def write_clip(path: Path, frames: list[np.ndarray], degrees: int = 0, mirror: bool = False) -> Path:
    """An H.264 clip of RGB ``frames`` (lossless, 4:2:0) stored so that it displays as ``frames`` under a
    display rotation of ``degrees`` (and a mirror): the way a phone stores a portrait video."""
    stored = [np.ascontiguousarray(stored_for(f, degrees, mirror)) for f in frames]
    h, w = stored[0].shape[:2]
    with av.open(str(path), "w") as out:
        stream = out.add_stream("libx264", rate=25, options={"qp": "0"})
        stream.width, stream.height, stream.pix_fmt = w, h, "yuv420p"
        if degrees or mirror:
            stream.set_display_rotation(degrees, hflip=mirror)
        for f in stored:
            for packet in stream.encode(av.VideoFrame.from_ndarray(f, format="rgb24")):
                out.mux(packet)
        for packet in stream.encode():
            out.mux(packet)
    return path


def talking_face(n: int = 25, size: tuple[int, int] = (320, 240)) -> list[np.ndarray]:
    """A face drifting over a flat background, upright, in a landscape frame."""
    w, h = size
    patch = _face_patch(140)
    frames = []
    for i in range(n):
        img = np.full((h, w, 3), (200, 190, 60), np.uint8)
        x = 40 + 2 * i
        img[50:190, x : x + 140] = patch
        frames.append(img)
    return frames


def detections(run: Path, source: Path) -> pd.DataFrame:
    path = run / "ingest" / "detections" / f"{source_id(str(source))}.parquet"
    return pd.read_parquet(path).sort_values(["frame_idx", "x1"]).reset_index(drop=True)


def _iou(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    lo, hi = np.maximum(a[:, :2], b[:, :2]), np.minimum(a[:, 2:], b[:, 2:])
    inter = np.prod(np.clip(hi - lo, 0, None), axis=1)
    area_a, area_b = np.prod(a[:, 2:] - a[:, :2], axis=1), np.prod(b[:, 2:] - b[:, :2], axis=1)
    return inter / (area_a + area_b - inter)


def assert_same_faces(run: Path, upright: Path, rotated: Path) -> None:
    """The rotated copy's faces are the upright clip's: found on the same frames, in the same place, with
    the same landmarks, upright, and the same crops.

    The two decodes differ by a fraction of a grey level (4:2:0 chroma is resampled along the other axis),
    which moves MTCNN's boxes and landmarks by a few pixels; the bounds allow that jitter and nothing
    like a sideways face (roll near 90 degrees, boxes elsewhere).
    """
    a, b = detections(run, upright), detections(run, rotated)
    assert len(a) > 0, "the upright clip has no faces: nothing to compare"
    assert a.frame_idx.tolist() == b.frame_idx.tolist()
    box = ["x1", "y1", "x2", "y2"]
    assert _iou(a[box].to_numpy(), b[box].to_numpy()).min() > 0.8
    size = ((a.x2 - a.x1) + (a.y2 - a.y1)).to_numpy() / 2
    marks_a, marks_b = np.stack(a.landmarks.to_numpy()), np.stack(b.landmarks.to_numpy())
    assert (np.abs(marks_a - marks_b).max(axis=1) / size).max() < 0.05
    assert np.abs(a.roll - b.roll).max() < 3.0 and b.roll.abs().max() < 10.0
    similarity = [
        np.corrcoef(decode_jpeg(ja).astype(float).ravel(), decode_jpeg(jb).astype(float).ravel())[0, 1]
        for ja, jb in zip(a.image, b.image, strict=True)
    ]
    assert np.median(similarity) > 0.95
    videos = pd.read_parquet(run / "ingest" / "videos").set_index("source")
    assert (
        videos.loc[str(upright), ["width", "height"]].tolist()
        == videos.loc[str(rotated), ["width", "height"]].tolist()
    )


@pytest.mark.parametrize(("degrees", "mirror"), list(itertools.product((0, 90, 180, -90), (False, True))))
def test_frames_are_turned_upright_by_their_display_matrix(tmp_path, degrees, mirror):
    from seqbuild.ingest.decode import iter_frames, open_container

    rng = np.random.default_rng(0)
    picture = np.repeat(np.repeat(rng.integers(0, 255, (12, 20, 3), dtype=np.uint8), 4, 0), 4, 1)
    with av.open(str(tmp_path / "c.mp4"), "w") as out:  # lossless RGB: the pixels come back exactly
        stream = out.add_stream("libx264rgb", rate=25, options={"qp": "0"})
        stream.width, stream.height, stream.pix_fmt = 80, 48, "rgb24"
        stream.set_display_rotation(degrees, hflip=mirror)
        for packet in [*stream.encode(av.VideoFrame.from_ndarray(picture, format="rgb24")), *stream.encode()]:
            out.mux(packet)
    container = open_container(str(tmp_path / "c.mp4"))
    frame = next(iter_frames(container))
    want = displayed(picture, degrees, mirror)
    assert (frame.width, frame.height) == (want.shape[1], want.shape[0])
    assert np.array_equal(frame.rgb(), want)
    assert frame.thumbnail(want.shape[1] // 2, want.shape[0] // 2).shape == (
        want.shape[0] // 2,
        want.shape[1] // 2,
        3,
    )
    container.close()


@pytest.mark.parametrize(("degrees", "mirror"), [(90, False), (-90, False), (180, False), (90, True)])
def test_a_rotated_copy_of_a_synthetic_clip_gives_the_same_faces(tmp_path, degrees, mirror):
    frames = talking_face()
    upright = write_clip(tmp_path / "upright.mp4", frames)
    rotated = write_clip(tmp_path / "rotated.mp4", frames, degrees, mirror)
    run = tmp_path / "run"
    summary = run_ingest(run, cfg_for([upright, rotated]), progress=False)
    assert summary["ok"] == 2 and summary["faces"] > 0
    assert_same_faces(run, upright, rotated)


def _rotated_copy_of(source: Path, folder: Path, seconds: float = 2.0) -> tuple[Path, Path]:
    """An upright re-encode of ``source`` and a copy stored sideways with a display rotation of 90
    degrees, both lossless: with ffmpeg when it is installed (``transpose`` plus ``rotate`` metadata),
    else with PyAV; the copy is checked to carry the rotation either way."""
    from seqbuild.ingest.decode import iter_frames, open_container

    upright, rotated = folder / "upright.mp4", folder / "rotated.mp4"
    made = False
    if shutil.which("ffmpeg"):
        base = ["ffmpeg", "-v", "error", "-y", "-i", str(source), "-t", str(seconds), "-an"]
        codec = ["-c:v", "libx264", "-qp", "0", "-pix_fmt", "yuv420p"]
        subprocess.run([*base, *codec, str(upright)], check=True)
        sideways = folder / "sideways.mp4"  # the pixels turned; then the matrix that turns them back
        subprocess.run([*base, "-vf", "transpose=clock", *codec, str(sideways)], check=True)
        tag = ["ffmpeg", "-v", "error", "-y", "-i", str(sideways), "-c", "copy", "-metadata:s:v", "rotate=90"]
        subprocess.run([*tag, str(rotated)], check=True)
        container = open_container(str(rotated))
        made = next(iter_frames(container)).orientation.quarter_turns == 1
        container.close()
    if not made:  # no ffmpeg, or one that no longer writes the matrix from `rotate`
        container = open_container(str(source))
        frames = [f.rgb() for f, _ in zip(iter_frames(container), range(int(25 * seconds)), strict=False)]
        container.close()
        write_clip(upright, frames)
        write_clip(rotated, frames, 90)
    return upright, rotated


@pytest.mark.media
def test_a_rotated_copy_of_a_real_clip_gives_the_same_faces(tmp_path, media):
    upright, rotated = _rotated_copy_of(media / "clips" / "talk_d9.mp4", tmp_path)
    run = tmp_path / "run"
    summary = run_ingest(run, cfg_for([upright, rotated]), progress=False)
    assert summary["ok"] == 2
    assert_same_faces(run, upright, rotated)
