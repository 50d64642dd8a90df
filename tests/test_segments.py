"""One long file read in parts from keyframes: the dataset is the one a reading of the whole file makes."""

from __future__ import annotations

from pathlib import Path

import pandas as pd
import pytest

from seqbuild.driver import auto_workers
from seqbuild.ingest.config import IngestConfig
from seqbuild.ingest.segments import (
    SegmentMismatch,
    check_tiling,
    plan_segments,
    segment_counts,
    warmup_frames,
)
from seqbuild.layout import RunDir
from seqbuild.pipeline.loading import load_pipeline
from seqbuild.pipeline.run import run_pipeline


def chain(run: Path, video: Path, *sets: str) -> None:
    """ingest, track, embed and clean of ``video`` into ``run`` with the default settings plus ``sets``."""
    stages = 'run.stages=["ingest", "track", "embed", "clean"]'
    results = run_pipeline(
        run, load_pipeline(None, [stages, f'ingest.inputs=["{video}"]', *sets]), progress=False
    )
    assert all(r.status == "ran" and not r.failures for r in results), results


def tables(run: Path, folder: str) -> pd.DataFrame:
    """Every Parquet file of ``run/folder`` as one frame, in a stable order."""
    frames = [pd.read_parquet(f) for f in sorted((run / folder).glob("*.parquet"))]
    return pd.concat(frames, ignore_index=True) if frames else pd.DataFrame()


@pytest.mark.media
def test_dev_broadcast_in_four_parts_gives_the_whole_files_dataset(media, tmp_path):
    video = media / "dev_broadcast.mp4"
    parts = plan_segments(str(video), 4, warmup_frames(IngestConfig()))
    assert len(parts) == 4 and sum(p.seek_frame > 0 for p in parts) >= 2  # parts really seek
    chain(tmp_path / "whole", video, "ingest.split_segments=1", "ingest.workers=1")
    chain(tmp_path / "parts", video, "ingest.split_segments=4", "ingest.workers=1")
    for folder in (
        "ingest/detections",
        "ingest/shots",
        "track/sequences",
        "clean/assignments",
        "clean/sequences",
        "clean/removals",
    ):
        whole, split = tables(tmp_path / "whole", folder), tables(tmp_path / "parts", folder)
        assert len(whole) > 0 or folder == "clean/removals"
        pd.testing.assert_frame_equal(whole, split, obj=folder)
    videos = [pd.read_parquet(tmp_path / r / "ingest" / "videos") for r in ("whole", "parts")]
    cols = ["video_id", "status", "frames_read", "frames_detected", "n_faces", "n_shots", "duration"]
    pd.testing.assert_frame_equal(videos[0][cols], videos[1][cols])
    left = tmp_path / "parts" / "ingest" / "_segments"
    assert not left.exists() or not any(left.iterdir())  # parts are removed once merged


def test_parts_that_do_not_tile_the_video_are_refused():
    part = {"first": 0, "end": 100, "first_pts": 0.0, "end_pts": 4.0, "end_of_video": False}
    gap = {"first": 120, "end": 200, "first_pts": 4.8, "end_pts": None, "end_of_video": True}
    with pytest.raises(SegmentMismatch, match="begins at frame 120"):
        check_tiling([part, gap], "v.mp4")
    shifted = {**gap, "first": 100, "first_pts": 4.04}
    with pytest.raises(SegmentMismatch, match="pts"):
        check_tiling([part, shifted], "v.mp4")
    with pytest.raises(SegmentMismatch, match="end of the video"):
        check_tiling([part, {**gap, "first": 100, "first_pts": 4.0, "end_of_video": False}], "v.mp4")
    check_tiling([part, {**gap, "first": 100, "first_pts": 4.0}], "v.mp4")


def test_automatic_workers_and_parts_follow_the_length_of_the_work(monkeypatch):
    monkeypatch.setattr("seqbuild.driver.usable_cpus", lambda: 4)
    assert auto_workers(3, 10.0, 60.0) == 3  # asked for: kept
    assert auto_workers(0, 45.0, 60.0) == 1  # under a minute of video: no pool
    assert auto_workers(0, 150.0, 60.0) == 2
    assert auto_workers(0, 36_000.0, 60.0) == 4  # never more than the CPUs
    cfg = IngestConfig()
    ten_hours, short = 36_000.0, 45.0
    counts = segment_counts(cfg, {"long.mp4": ten_hours, "short.mp4": short, "url": None}, workers=4)
    assert counts["short.mp4"] == 1  # never parts under a minute
    assert counts["long.mp4"] >= 20  # parts of at most 30 minutes, and every worker busy
    assert "url" not in counts
    one = segment_counts(cfg, {"a.mp4": 600.0}, workers=2)
    assert one == {"a.mp4": 2}  # one 10-minute file on two workers: two parts
    assert segment_counts(IngestConfig(split_segments=3), {"a.mp4": 30.0}) == {"a.mp4": 3}


@pytest.mark.media
def test_an_interrupted_read_in_parts_keeps_its_finished_parts(media, tmp_path, monkeypatch):
    from seqbuild.ingest import segments
    from seqbuild.ingest.stage import run_ingest, source_id

    video = str(media / "dev_broadcast.mp4")
    real, calls = segments.ingest_segment, []

    def interrupted_at_the_third(task, cfg):
        calls.append(task.part)
        if task.part == 2:
            raise KeyboardInterrupt  # Ctrl-C while the third part is read
        return real(task, cfg)

    cfg = IngestConfig(inputs=[video], split_segments=4, workers=1)
    monkeypatch.setattr(segments, "ingest_segment", interrupted_at_the_third)
    with pytest.raises(KeyboardInterrupt):
        run_ingest(tmp_path / "parts", cfg, progress=False)
    assert calls == [0, 1, 2] and not RunDir(tmp_path / "parts").ingest.is_done(source_id(video))

    calls.clear()
    monkeypatch.setattr(
        segments, "ingest_segment", lambda task, cfg: calls.append(task.part) or real(task, cfg)
    )
    summary = run_ingest(tmp_path / "parts", cfg, progress=False)
    assert sorted(calls) == [2, 3] and summary["done"] == 1  # the two finished parts are not read again
    run_ingest(tmp_path / "whole", IngestConfig(inputs=[video], split_segments=1, workers=1), progress=False)
    for folder in ("ingest/detections", "ingest/shots"):
        pd.testing.assert_frame_equal(tables(tmp_path / "whole", folder), tables(tmp_path / "parts", folder))


@pytest.mark.media
def test_a_part_that_cannot_be_decoded_makes_the_file_read_whole(media, tmp_path, monkeypatch, caplog):
    import av

    from seqbuild.ingest import segments
    from seqbuild.ingest.stage import run_ingest

    video = str(media / "dev_broadcast.mp4")
    real = segments.segment_frames

    def damaged_third_part(container, segment, source):
        for n, frame in enumerate(real(container, segment, source)):
            if segment.index == 2 and n == 50:
                raise av.error.InvalidDataError(1094995529, "Invalid data found when processing input")
            yield frame

    monkeypatch.setattr(segments, "segment_frames", damaged_third_part)
    summary = run_ingest(tmp_path / "parts", IngestConfig(inputs=[video], split_segments=4), progress=False)
    assert summary["done"] == 1 and summary["failed"] == 0
    assert "part 3 of 4 could not be decoded" in caplog.text and "reading it whole" in caplog.text
    run_ingest(tmp_path / "whole", IngestConfig(inputs=[video], split_segments=1), progress=False)
    for folder in ("ingest/detections", "ingest/shots", "ingest/videos"):
        whole, parts = tables(tmp_path / "whole", folder), tables(tmp_path / "parts", folder)
        pd.testing.assert_frame_equal(
            whole.drop(columns="wall_seconds", errors="ignore"),
            parts.drop(columns="wall_seconds", errors="ignore"),
        )
