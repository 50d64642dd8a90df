"""The ingest stage on synthetic videos: tables and ids, shots, bad inputs, resume after kill -9, CLI."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import av
import numpy as np
import pandas as pd
import pytest
from click.testing import CliRunner

from seqbuild.config import build
from seqbuild.ingest.config import IngestConfig
from seqbuild.ingest.stage import expand_inputs, run_ingest, source_id
from seqbuild.layout import RunDir

REPO = Path(__file__).resolve().parents[1]


def _face_patch(size: int) -> np.ndarray:
    import cv2
    from skimage import data

    face = data.astronaut()[20:220, 125:325]  # her head, about 100 px of face in 200 px
    return cv2.resize(face, (size, size), interpolation=cv2.INTER_AREA)


def make_video(
    path: Path, frames: int = 50, cut_at: int | None = 25, fps: int = 25, size=(320, 240), faststart=False
) -> Path:
    """A small H.264 video: a face drifting over a flat background; at ``cut_at`` a hard cut to another
    background with the face elsewhere."""
    w, h = size
    patch = _face_patch(150)
    with av.open(str(path), "w", options={"movflags": "faststart"} if faststart else {}) as out:
        stream = out.add_stream("libx264", rate=fps)
        stream.width, stream.height, stream.pix_fmt = w, h, "yuv420p"
        for i in range(frames):
            second = cut_at is not None and i >= cut_at
            img = np.full((h, w, 3), (40, 120, 200) if second else (200, 190, 60), np.uint8)
            x = (150 if second else 20) + (i % 10)
            img[40:190, x : x + 150] = patch[:, ::-1] if second else patch
            frame = av.VideoFrame.from_ndarray(img, format="rgb24")
            for packet in stream.encode(frame):
                out.mux(packet)
        for packet in stream.encode():
            out.mux(packet)
    return path


def cfg_for(inputs, **kw) -> IngestConfig:
    base = {"inputs": [str(i) for i in inputs], "device": "cpu", "detect_every": 5, "min_face": 40}
    base.update(kw)
    return build(IngestConfig, base)


@pytest.fixture(scope="module")
def clip(tmp_path_factory) -> Path:
    return make_video(tmp_path_factory.mktemp("media") / "clip.mp4")


def read(run: Path, table: str) -> pd.DataFrame:
    files = sorted((run / "ingest" / table).glob("*.parquet"))
    return pd.concat([pd.read_parquet(f) for f in files], ignore_index=True) if files else pd.DataFrame()


def test_ingest_writes_the_contract_tables(tmp_path, clip):
    summary = run_ingest(tmp_path, cfg_for([clip]), progress=False)
    vid = source_id(str(clip))
    assert summary["ok"] == 1 and summary["failed"] == 0 and summary["frames"] == 50
    for table in ("videos", "shots", "detections"):
        assert (tmp_path / "ingest" / table / f"{vid}.parquet").exists()
    assert RunDir(tmp_path).ingest.is_done(vid)
    videos = read(tmp_path, "videos")
    row = videos.iloc[0]
    assert row.status == "ok" and row.kind == "file" and row.frames_read == 50 and row.fps == 25
    assert (row.width, row.height) == (320, 240) and row.duration == pytest.approx(2.0, abs=0.05)
    shots = read(tmp_path, "shots")
    assert list(shots.first_frame) == [0, 25] and list(shots.last_frame) == [24, 49]
    det = read(tmp_path, "detections")
    # Detected on frames 0,5,..,20 of shot 0 and 25,30,..,45 of shot 1 (a shot's first frame always).
    assert sorted(set(det.frame_idx)) == [0, 5, 10, 15, 20, 25, 30, 35, 40, 45]
    assert (det.groupby("frame_idx").size() == 1).all()
    assert set(det[det.frame_idx < 25].shot_id) == {0} and set(det[det.frame_idx >= 25].shot_id) == {1}
    assert det.face_id.is_unique
    assert det.face_id.iloc[0] == f"{vid}-f{det.frame_idx.iloc[0]:08d}-00"
    np.testing.assert_allclose(det.pts, det.frame_idx / 25.0, atol=1e-6)
    # Boxes in source pixels: the face moves from the left to the right half at the cut.
    cx = (det.x1 + det.x2) / 2
    assert (cx[det.frame_idx < 25] < 160).all() and (cx[det.frame_idx >= 25] > 160).all()
    from seqbuild.imaging import decode_jpeg

    assert decode_jpeg(det.image.iloc[0]).shape == (144, 144, 3)
    assert det.landmarks.iloc[0].shape == (10,)


def test_rerun_skips_done_and_config_change_redoes(tmp_path, clip):
    run_ingest(tmp_path, cfg_for([clip]), progress=False)
    again = run_ingest(tmp_path, cfg_for([clip]), progress=False)
    assert again["skipped"] == 1 and again["done"] == 0
    changed = run_ingest(tmp_path, cfg_for([clip], detect_every=10), progress=False)
    assert changed["done"] == 1
    det = read(tmp_path, "detections")
    assert sorted(set(det.frame_idx)) == [0, 10, 20, 25, 35, 45]


def test_expand_inputs(tmp_path, clip):
    folder = tmp_path / "videos"
    (folder / "sub").mkdir(parents=True)
    a = make_video(folder / "a.mp4", frames=3, cut_at=None)
    b = make_video(folder / "sub" / "b.mkv", frames=3, cut_at=None)
    (folder / "notes.md").write_text("not a video")
    lst = tmp_path / "list.txt"
    lst.write_text(f"# sources\n\nvideos/a.mp4\n{clip}\nudp://127.0.0.1:9\n")
    got = expand_inputs([str(folder), str(lst), str(tmp_path / "missing.mp4")])
    assert got == [str(a), str(b), str(clip), "udp://127.0.0.1:9", str(tmp_path / "missing.mp4")]


def _bad_inputs(tmp_path: Path, clip: Path) -> dict[str, str]:
    text = tmp_path / "notes.mp4"
    text.write_text("this is not a video\n" * 50)
    truncated = tmp_path / "truncated.mp4"
    data = clip.read_bytes()
    truncated.write_bytes(data[: len(data) // 2])  # index at the end: cannot even be opened
    whole = make_video(tmp_path / "whole.mp4", faststart=True)
    cut_short = tmp_path / "cut_short.mp4"
    data = whole.read_bytes()
    cut_short.write_bytes(data[: len(data) // 2])  # index first: the first frames still decode
    return {
        "missing": str(tmp_path / "nope.mp4"),
        "not_video": str(text),
        "truncated": str(truncated),
        "truncated_index_first": str(cut_short),
        "url": "http://127.0.0.1:9/stream.ts",  # discard port: nothing answers
    }


def test_bad_inputs_fail_alone_with_one_line_errors(tmp_path, clip, allow_error_logs):
    bad = _bad_inputs(tmp_path, clip)
    run = tmp_path / "run"
    cfg = cfg_for([clip, *bad.values()], reconnect_attempts=0, timeout=2.0)
    summary = run_ingest(run, cfg, progress=False)
    assert summary["ok"] == 1 and summary["failed"] == 5
    videos = read(run, "videos").set_index("source")
    assert videos.loc[str(clip), "status"] == "ok"
    for name, source in bad.items():
        row = videos.loc[source]
        assert row.status in ("failed", "partial"), name
        assert source in row.error and "\n" not in row.error, (name, row.error)
    assert "not found" in videos.loc[bad["missing"], "error"]
    assert videos.loc[bad["not_video"], "status"] == "failed"
    assert videos.loc[bad["truncated"], "status"] == "failed"
    # Cut short after the index: what decodes is kept, and the row says the video is incomplete.
    short = videos.loc[bad["truncated_index_first"]]
    assert short.status == "partial" and 0 < short.frames_read < 50 and "truncated" in short.error
    logged = [r.getMessage() for r in allow_error_logs.records if r.levelname == "ERROR"]
    for source in bad.values():
        assert any(source in m for m in logged), source
    # The good video's output is complete and untouched by the failures.
    assert len(read(run, "detections")) > 0
    # A plain re-run processes nothing, but still reports the sources that failed before (with their
    # recorded errors), so it does not end as a success; --retry-failed re-runs exactly those sources.
    again = run_ingest(run, cfg, progress=False)
    assert again["done"] == 0 and again["skipped"] == 1 and again["failed"] == 5
    assert all("failed in an earlier run" in f["error"] for f in again["failures"])
    assert {f["video"] for f in again["failures"]} == {source_id(s) for s in bad.values()}
    retry = run_ingest(run, build(IngestConfig, {**cfg.__dict__, "retry_failed": True}), progress=False)
    assert retry["done"] == 0 and retry["skipped"] == 1 and retry["failed"] == 5
    assert not any("earlier run" in f["error"] for f in retry["failures"])


def test_cli_exit_code_and_config(tmp_path, clip, allow_error_logs):
    from seqbuild._cli.main import cli

    run = tmp_path / "run"
    args = ["ingest", str(clip), "--out", str(run), "--device", "cpu", "--min-face", "40", "--no-progress"]
    ok = CliRunner().invoke(cli, args)
    assert ok.exit_code == 0, ok.output
    assert "ok=1" in ok.stdout and "failed=0" in ok.stdout
    assert "min_face = 40" in (run / "config.toml").read_text()
    bad = CliRunner().invoke(cli, [*args[:2], str(tmp_path / "nope.mp4"), *args[2:]])
    assert bad.exit_code == 1
    assert "nope.mp4: file not found" in bad.output
    unknown = CliRunner().invoke(cli, [*args, "--set", "ingest.no_such_key=1"])
    assert unknown.exit_code == 2 and "no_such_key" in unknown.output


@pytest.mark.slow
@pytest.mark.timeout(300)
def test_resume_after_kill_9_has_no_duplicates_or_gaps(tmp_path):
    videos = [make_video(tmp_path / f"v{i}.mp4", frames=60, cut_at=30) for i in range(4)]
    reference = tmp_path / "reference"
    run_ingest(reference, cfg_for(videos), progress=False)
    run = tmp_path / "run"
    cmd = [sys.executable, "-m", "seqbuild", "ingest", *map(str, videos), "--out", str(run)]
    cmd += ["--device", "cpu", "--detect-every", "5", "--min-face", "40", "--no-progress"]
    proc = subprocess.Popen(cmd, cwd=REPO, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    done_dir = run / "ingest" / "_done"
    deadline = time.monotonic() + 200
    while time.monotonic() < deadline and proc.poll() is None:
        if done_dir.exists() and any(done_dir.glob("*.json")):
            break
        time.sleep(0.05)
    assert proc.poll() is None, "ingest finished before it could be killed"
    time.sleep(0.3)  # well inside the next video
    os.kill(proc.pid, signal.SIGKILL)
    proc.wait()
    killed_done = len(list(done_dir.glob("*.json")))
    assert 1 <= killed_done < 4
    summary = run_ingest(run, cfg_for(videos), progress=False)
    assert summary["skipped"] == killed_done and summary["done"] == 4 - killed_done
    got, want = read(run, "detections"), read(reference, "detections")
    assert got.face_id.is_unique
    assert sorted(got.face_id) == sorted(want.face_id)
    assert len(read(run, "videos")) == 4 and len(read(run, "shots")) == len(read(reference, "shots"))
    assert not list((run / "ingest").rglob("*.tmp"))


def test_work_items_pickle_for_other_executors(tmp_path, clip):
    """The per-source function and its work item survive pickling (Ray and process pools need it)."""
    import pickle

    from seqbuild.driver import VideoTask
    from seqbuild.ingest.stage import ingest_source

    class PicklingExecutor:
        def map(self, fn, items):
            fn = pickle.loads(pickle.dumps(fn))
            for item in items:
                assert isinstance(item, VideoTask)
                yield item, pickle.loads(pickle.dumps(fn(pickle.loads(pickle.dumps(item)))))

    summary = run_ingest(tmp_path, cfg_for([clip]), executor=PicklingExecutor(), progress=False)
    assert summary["ok"] == 1 and summary["faces"] > 0
    assert ingest_source.__module__ == "seqbuild.ingest.stage"


@pytest.mark.slow
def test_cli_on_a_real_clip_gives_aligned_crops(tmp_path, media):
    """`seqbuild ingest hamilton_stage.mp4 --out RUN`: tables in the layout, crops with eyes on the template."""
    from seqbuild._cli.main import cli
    from seqbuild.imaging import decode_jpeg
    from seqbuild.ingest.align import template_points
    from seqbuild.ingest.detect import create_detector

    source = media / "clips" / "hamilton_stage.mp4"
    run = tmp_path / "RUN"
    result = CliRunner().invoke(
        cli, ["ingest", str(source), "--out", str(run), "--device", "cpu", "--no-progress"]
    )
    assert result.exit_code == 0, result.output
    vid = source_id(str(source))
    for table in ("videos", "shots", "detections"):
        assert (run / "ingest" / table / f"{vid}.parquet").exists()
    det = read(run, "detections")
    shots = read(run, "shots")
    assert len(shots) >= 3 and len(det) >= 20
    detector = create_detector("mtcnn", device="cpu", min_face=40, threshold=0.9)
    crops = [decode_jpeg(b) for b in det.sort_values("det_score", ascending=False).image.head(24)]
    again = detector.detect(crops)
    template = template_points(144)[:2]
    good = 0
    for faces in again:
        if faces:
            eyes = faces[0].landmarks[:2]
            level = abs(eyes[0, 1] - eyes[1, 1]) < 4.0
            placed = np.max(np.linalg.norm(eyes - template, axis=1)) < 8.0
            good += level and placed
    assert good >= 0.8 * len(crops), f"{good} of {len(crops)} crops aligned"


class _ScriptedTransitions:
    """A transition detector that reports given transitions at given frames (as a real one does, late)."""

    latency = 3

    def __init__(self, script: dict) -> None:
        self.script, self.last = script, -1

    def update(self, index, thumb):
        self.last = index
        return self.script.get(index, [])

    def finish(self):
        return []

    @property
    def final_before(self):
        return self.last - 20


class _OneFace:
    """A face detector that finds the same face in every frame."""

    def detect(self, frames):
        from seqbuild.ingest.detect import Face

        marks = np.array([[38, 45], [62, 45], [50, 58], [40, 70], [60, 70]], np.float32)
        return [
            [Face(box=np.array([25, 25, 75, 85], np.float32), score=0.99, landmarks=marks)] for _ in frames
        ]


class _Frame:
    def __init__(self, index: int) -> None:
        self.index, self.pts = index, index / 25.0
        self.frame = type("F", (), {"width": 100, "height": 100})()
        self.width = self.height = 100

    def thumbnail(self, width, height):
        return np.zeros((height, width, 3), np.uint8)

    def rgb(self):
        return np.full((100, 100, 3), 128, np.uint8)


def test_frames_of_a_dissolve_recognised_late_never_reach_the_face_detector(tmp_path):
    from seqbuild.ingest.builder import ShardBuilder
    from seqbuild.ingest.shots import Transition
    from seqbuild.ingest.stage import ingest_hash

    cfg = cfg_for(["x.mp4"], detect_every=4, batch_size=4)
    store = RunDir(tmp_path).ingest
    builder = ShardBuilder("vid", "x.mp4", cfg, store, ingest_hash(cfg))
    builder.detector = _OneFace()
    builder.shot_detector = _ScriptedTransitions(
        {
            13: [Transition("cut", 10, 10, 9, 0.9)],  # known `latency` frames after it
            47: [Transition("dissolve", 30, 30, 41, 0.8)],  # known only once it is over
        }
    )
    for i in range(60):
        builder.feed(_Frame(i), i)
    builder.commit({"kind": "file", "status": "ok", "fps": 25.0, "duration": 2.4, "wall_seconds": 0.1})
    det = pd.read_parquet(store.table_path("detections", "vid")).sort_values("frame_idx")
    # Every 4th frame of a shot and each shot's first; frames 30, 34 and 38 were due but are blends.
    assert list(det.frame_idx) == [0, 4, 8, 10, 14, 18, 22, 26, 42, 46, 50, 54, 58]
    assert builder.frames_blended == 3
    shot_of = dict(zip(det.frame_idx, det.shot_id, strict=True))
    assert [shot_of[f] for f in (8, 10, 26, 42, 58)] == [0, 1, 1, 2, 2]
    shots = pd.read_parquet(store.table_path("shots", "vid"))
    assert list(shots.first_frame) == [0, 10, 30] and list(shots.last_frame) == [9, 29, 59]
    assert list(shots.transition.fillna("-")) == ["-", "cut", "dissolve"]
    assert shots.transition_first.iloc[2] == 30 and shots.transition_last.iloc[2] == 41
    assert pd.isna(shots.transition_first.iloc[1])
