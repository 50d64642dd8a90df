"""The dataset report: counts, distributions and contact sheets, checked in a real headless browser."""

from __future__ import annotations

import os
import re

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pytest

from seqbuild.demo import load_photo, render_view
from seqbuild.imaging import encode_jpeg
from seqbuild.layout import RunDir
from seqbuild.reasons import removal_rows
from seqbuild.report import collect_counts, write_report
from seqbuild.report.render import find_chromium, render_screenshot
from seqbuild.schema import ASSIGNMENTS, DETECTIONS, REMOVALS, SEQUENCES, embeddings_schema
from seqbuild.storage import read_table, write_table


def synthetic_run(root, n_videos: int = 2) -> RunDir:
    """A run with ingest (real photo crops), track (the real tracker), embeddings and a clean-like removal."""
    from seqbuild.track.config import TrackConfig
    from seqbuild.track.stage import run_track

    run = RunDir(root)
    photos = [load_photo("astronaut"), load_photo("grace_hopper")]
    rng = np.random.default_rng(0)
    for v in range(n_videos):
        video_id = f"{v + 1:012x}"
        cols: dict[str, list] = {name: [] for name in DETECTIONS.names}
        for frame in range(0, 120, 5):
            for k, (photo, cx) in enumerate(zip(photos, (300.0, 900.0), strict=True)):
                s = 100.0 + k * 30
                x, y = cx + frame * 0.5, 300.0
                crop = render_view(
                    photo, (225 + 40 * k + frame * 0.2, 120 + 110 * k), 200 + 60 * k, (144, 144)
                )
                cols["face_id"].append(f"{video_id}-f{frame:08d}-{k:02d}")
                cols["video_id"].append(video_id)
                cols["source"].append(f"/videos/{video_id}.mp4")
                cols["frame_idx"].append(frame)
                cols["pts"].append(frame / 25)
                cols["shot_id"].append(0)
                for name, val in zip(
                    ("x1", "y1", "x2", "y2"), (x - s / 2, y - s / 2, x + s / 2, y + s / 2), strict=True
                ):
                    cols[name].append(val)
                lm = [
                    x - s / 5,
                    y - s / 8,
                    x + s / 5,
                    y - s / 8,
                    x,
                    y,
                    x - s / 6,
                    y + s / 5,
                    x + s / 6,
                    y + s / 5,
                ]
                cols["landmarks"].append(lm)
                cols["det_score"].append(0.99)
                cols["face_size"].append(s + float(rng.normal(0, 5)))
                cols["blur"].append(float(rng.uniform(50, 500)))
                cols["yaw"].append(0.0)
                cols["roll"].append(0.0)
                cols["image"].append(encode_jpeg(crop))
        det = pa.table(cols, schema=DETECTIONS)
        write_table(run.ingest.table_path("detections", video_id), det, DETECTIONS, "detections", "h")
        run.ingest.mark_done(video_id, "h")
    run_track(run.root, TrackConfig(), progress=False)
    for video_id in run.track.done_shards():
        ids = read_table(run.track.table_path("assignments", video_id), columns=["face_id"])
        face_ids = ids.column("face_id").to_pylist()
        base = np.where(np.array([f.endswith("-00") for f in face_ids])[:, None], 1.0, -1.0) * np.eye(8)[0]
        vectors = base + rng.normal(0, 0.2, (len(face_ids), 8))
        vectors /= np.linalg.norm(vectors, axis=1, keepdims=True)
        emb = pa.table(
            {
                "face_id": face_ids,
                "video_id": [video_id] * len(face_ids),
                "model": ["test"] * len(face_ids),
                "embedding": pa.array(vectors.astype(np.float32).tolist(), pa.list_(pa.float32(), 8)),
            }
        )
        write_table(
            run.embed.table_path("embeddings", video_id), emb, embeddings_schema(8), "embeddings", "e"
        )
        run.embed.mark_done(video_id, "e")
    # dedup-overlap removes one whole sequence as a gallery match and keeps the rest.
    for video_id in run.track.done_shards():
        assign = read_table(run.track.table_path("assignments", video_id), ASSIGNMENTS)
        seqs = read_table(run.track.table_path("sequences", video_id), SEQUENCES)
        matched = seqs.column("seq_id")[0].as_py()
        matched_faces = (
            assign.filter(pc.equal(assign.column("seq_id"), matched)).column("face_id").to_pylist()
        )
        rows = removal_rows(
            "dedup_overlap",
            "gallery_match",
            video_id,
            matched_faces,
            seq_id=matched,
            value=0.83,
            threshold=0.6,
            gallery="demo",
            identity="grace_hopper",
        )
        rem = pa.Table.from_pylist(rows, schema=REMOVALS)
        keep_a = pc.not_equal(assign.column("seq_id"), matched)
        keep_s = pc.not_equal(seqs.column("seq_id"), matched)
        store = run.dedup_overlap
        write_table(
            store.table_path("assignments", video_id), assign.filter(keep_a), ASSIGNMENTS, "assignments"
        )
        write_table(store.table_path("sequences", video_id), seqs.filter(keep_s), SEQUENCES, "sequences")
        write_table(store.table_path("removals", video_id), rem, REMOVALS, "removals")
        store.mark_done(video_id, "d")
    return run


@pytest.fixture(scope="module")
def report_run(tmp_path_factory):
    run = synthetic_run(tmp_path_factory.mktemp("run") / "run")
    page = write_report(run.root)
    return run, page


def test_report_counts_and_embeds_its_images(report_run):
    run, page = report_run
    text = page.read_text()
    counts = {r["stage"]: r for r in collect_counts(run)}
    assert counts["ingest"]["detections"] == 2 * 24 * 2
    assert counts["track"]["faces"] + counts["track"]["removals"] == counts["ingest"]["detections"]
    assert counts["embed"]["embeddings"] == counts["track"]["faces"]
    assert counts["dedup_overlap"]["sequences"] == counts["track"]["sequences"] - 2  # one match per video
    for stage in ("ingest", "track", "embed"):
        assert f"<td>{stage}</td>" in text
    assert "gallery_match" in text and "Gallery matches" in text
    images = re.findall(r'src="data:image/png;base64,([A-Za-z0-9+/=]+)"', text)
    assert len(images) >= 5  # four distributions and at least two contact sheets
    assert 'src="http' not in text and "src='http" not in text  # self-contained
    for name in ("sequence_length", "face_size", "blur", "similarity", "sheet_kept"):
        assert (page.parent / f"{name}.png").stat().st_size > 1000


def test_contact_sheet_shows_the_crops(report_run):
    import cv2

    _, page = report_run
    sheet = cv2.imread(str(page.parent / "sheet_kept.png"))
    assert sheet is not None
    crops_area = sheet[:, 300:]  # right of the labels
    assert crops_area.std() > 20, "the contact sheet has no picture content"


def test_report_of_a_run_without_ingest_is_a_clear_error(tmp_path):
    from seqbuild.errors import InputError

    with pytest.raises(InputError, match="no completed ingest"):
        write_report(tmp_path)


def test_report_reports_a_corrupt_table(tmp_path):
    from seqbuild.errors import CorruptTableError

    run = synthetic_run(tmp_path / "run", n_videos=1)
    path = run.track.paths("sequences")[0]
    data = path.read_bytes()
    path.write_bytes(data[:40] + bytes(len(data) - 40))  # damaged in place: same size, so still listed
    with pytest.raises(CorruptTableError, match=str(path.name)):
        write_report(run.root)


def test_report_renders_in_headless_chromium(report_run, tmp_path):
    if find_chromium() is None:
        if os.environ.get("SEQBUILD_REQUIRE_CHROMIUM"):
            pytest.fail("chromium is required here (SEQBUILD_REQUIRE_CHROMIUM) but not installed")
        pytest.skip("chromium not installed (Debian: apt-get install chromium); report not rendered")
    import cv2

    _, page = report_run
    shot = tmp_path / "report.png"
    assert render_screenshot(page, shot, width=1280, height=2000), "chromium wrote no screenshot"
    img = cv2.imread(str(shot))
    assert img is not None, "chromium wrote no screenshot"
    assert img.shape[:2] == (2000, 1280)
    gray = cv2.cvtColor(img, cv2.COLOR_BGR2GRAY)
    assert gray.std() > 15, "the rendered report is blank"
    # The contact sheets' photos render: many distinct colours, not just text on white.
    colours = np.unique(img.reshape(-1, 3) // 8, axis=0)
    assert len(colours) > 500
