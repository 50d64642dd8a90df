"""The dedup-overlap stage on a constructed run: removals, thresholds per gallery, dataset, resume, errors."""

from __future__ import annotations

from collections import Counter

import numpy as np
import pyarrow as pa
import pytest
from click.testing import CliRunner
from test_gallery import make_folder
from test_overlap_fakes import BLUE, DIM, GREEN, MODEL_ID, NAME, RED, colour_vector

from seqbuild._cli.main import cli
from seqbuild.errors import ConfigError, InputError
from seqbuild.imaging import encode_jpeg
from seqbuild.layout import RunDir
from seqbuild.overlap.config import OverlapConfig
from seqbuild.overlap.galleries import thresholds_for
from seqbuild.overlap.gallery import build_gallery
from seqbuild.overlap.stage import run_dedup_overlap, sequence_centres
from seqbuild.schema import ASSIGNMENTS, DETECTIONS, FACES, REMOVALS, SEQUENCES, embeddings_schema
from seqbuild.storage import read_table, write_table

VIDEO = "0123456789ab"
CROP = encode_jpeg(np.zeros((144, 144, 3), np.uint8))


def _mix(a, b, t):
    v = (1 - t) * colour_vector(a) + t * colour_vector(b)
    return v / np.linalg.norm(v)


def make_run(root, video=VIDEO, seqs=None, model=MODEL_ID):
    """A run with ingest, track, embed and clean output for one video; ``seqs`` maps seq -> face vectors."""
    seqs = seqs or {
        "s00000": [colour_vector(RED)] * 4,  # a gallery person (alice)
        "s00001": [_mix(GREEN, BLUE, 0.3)] * 3,  # close to bob (cos 0.92), not equal
        "s00002": [colour_vector(BLUE)] * 2 + [colour_vector(RED)],  # mostly an unknown person, one red face
    }
    run = RunDir(root)
    det, assign, emb, seq_rows = [], [], [], []
    frame = 0
    for n, (suffix, vecs) in enumerate(seqs.items()):
        seq_id = f"{video}-{suffix}"
        first = frame
        for vec in vecs:
            face_id = f"{video}-f{frame:08d}-00"
            det.append(
                {
                    "face_id": face_id,
                    "video_id": video,
                    "source": "/videos/a.mp4",
                    "frame_idx": frame,
                    "pts": frame / 25.0,
                    "shot_id": n,
                    "x1": 10.0,
                    "y1": 10.0,
                    "x2": 90.0,
                    "y2": 90.0,
                    "landmarks": [30.0] * 10,
                    "det_score": 0.99,
                    "face_size": 80.0,
                    "blur": 100.0,
                    "yaw": 0.0,
                    "roll": 0.0,
                    "image": CROP,
                }
            )
            assign.append({"face_id": face_id, "video_id": video, "seq_id": seq_id})
            emb.append({"face_id": face_id, "video_id": video, "model": model, "embedding": vec.tolist()})
            frame += 1
        seq_rows.append(
            {
                "seq_id": seq_id,
                "video_id": video,
                "shot_id": n,
                "first_frame": first,
                "last_frame": frame - 1,
                "first_pts": first / 25.0,
                "last_pts": (frame - 1) / 25.0,
                "n_faces": len(vecs),
                "mean_score": 0.99,
                "mean_face_size": 80.0,
            }
        )
    write_table(
        run.ingest.table_path("detections", video),
        pa.Table.from_pylist(det, DETECTIONS),
        DETECTIONS,
        "detections",
    )
    run.ingest.mark_done(video, "x")
    track_removal = {
        "stage": "track",
        "scope": "sequence",
        "video_id": video,
        "seq_id": f"{video}-s00009",
        "face_id": f"{video}-f00000099-00",
        "reason": "too_short",
        "value": 1.0,
        "threshold": 5.0,
        "detail": None,
    }
    for stage in ("track", "clean"):
        store = run.stage(stage)
        write_table(
            store.table_path("assignments", video),
            pa.Table.from_pylist(assign, ASSIGNMENTS),
            ASSIGNMENTS,
            "a",
        )
        write_table(
            store.table_path("sequences", video), pa.Table.from_pylist(seq_rows, SEQUENCES), SEQUENCES, "s"
        )
        rem = [track_removal] if stage == "track" else []
        write_table(store.table_path("removals", video), pa.Table.from_pylist(rem, REMOVALS), REMOVALS, "r")
        store.mark_done(video, "x")
    schema = embeddings_schema(DIM)
    write_table(
        run.embed.table_path("embeddings", video), pa.Table.from_pylist(emb, schema), schema, "embeddings"
    )
    run.embed.mark_done(video, "x")
    return run


def features_gallery(path, identities, vectors, model=MODEL_ID):
    np.save(path.with_suffix(".npy"), np.stack(vectors))
    path.with_suffix(".txt").write_text("\n".join(identities) + "\n")
    build_gallery(path.with_suffix(".npy"), path, OverlapConfig(model=model), progress=False)
    return path


@pytest.fixture
def galleries(tmp_path):
    celebs = features_gallery(
        tmp_path / "celebs", ["alice", "alice"], [colour_vector(RED), _mix(RED, GREEN, 0.05)]
    )
    optout = features_gallery(tmp_path / "optout", ["bob"], [colour_vector(GREEN)])
    return celebs, optout


def test_thresholds_for():
    assert thresholds_for(2, [], [0.4, 0.5]) == [0.4, 0.5]
    assert thresholds_for(3, [0.6], [0.4, 0.5, 0.1]) == [0.6, 0.6, 0.6]
    assert thresholds_for(2, [0.6, 0.7], [0.4, 0.5]) == [0.6, 0.7]
    with pytest.raises(ConfigError, match="3 thresholds for 2 galleries"):
        thresholds_for(2, [0.1, 0.2, 0.3], [0.4, 0.5])


def test_sequence_centre_is_normalised_mean_of_normalised_embeddings():
    vecs = np.array([[3.0, 0, 0], [0, 1.0, 0], [0, 0, 5.0]], np.float32)
    keys, centres = sequence_centres(["b", "a", "b"], vecs)
    assert keys == ["a", "b"]
    assert np.allclose(centres[1], np.array([1, 0, 1]) / np.sqrt(2))


def test_removes_matching_sequences_with_identity_score_and_gallery(tmp_path, galleries):
    celebs, optout = galleries
    run = make_run(tmp_path / "run")
    cfg = OverlapConfig(galleries=[str(celebs), str(optout)], thresholds=[0.5, 0.9], score="cosine")
    summary = run_dedup_overlap(run.root, cfg, progress=False)

    rem = read_table(run.dedup_overlap.table_path("removals", VIDEO), REMOVALS).to_pylist()
    by_seq: dict[str, list[dict]] = {}
    for r in rem:
        by_seq.setdefault(r["seq_id"].split("-")[1], []).append(r)
    assert set(by_seq) == {"s00000", "s00001"}
    assert len(by_seq["s00000"]) == 4 and len(by_seq["s00001"]) == 3  # one row per face of the sequence
    assert len({r["face_id"] for r in rem}) == len(rem)
    alice = by_seq["s00000"][0]
    assert alice["reason"] == "gallery_match" and alice["scope"] == "sequence" and alice["face_id"]
    assert (alice["gallery"], alice["identity"], alice["decided_by"]) == ("celebs", "alice", "auto")
    assert alice["threshold"] == 0.5 and alice["value"] > 0.99
    bob = by_seq["s00001"][0]
    assert (bob["gallery"], bob["identity"]) == ("optout", "bob") and bob["threshold"] == 0.9
    assert bob["value"] == pytest.approx(float(_mix(GREEN, BLUE, 0.3) @ colour_vector(GREEN)), abs=1e-5)
    # the mostly-blue sequence's centre is far from alice (one red face of three) and stays
    kept = read_table(run.dedup_overlap.table_path("sequences", VIDEO), SEQUENCES)
    assert kept.column("seq_id").to_pylist() == [f"{VIDEO}-s00002"]

    celebs_summary = summary["galleries"]["celebs"]
    assert {k: celebs_summary[k] for k in ("threshold", "sequences", "faces", "path", "calibration")} == {
        "threshold": 0.5,
        "sequences": 1,
        "faces": 4,
        "path": str(celebs),
        "calibration": "fixed",
    }
    assert alice["fpir"] is None  # a fixed threshold on a run too small to fit: no FPIR estimate
    assert summary["galleries"]["optout"]["sequences"] == 1 and summary["galleries"]["optout"]["faces"] == 3
    assert (
        summary["sequences_in"],
        summary["sequences_kept"],
        summary["faces_in"],
        summary["faces_kept"],
    ) == (3, 1, 10, 3)

    faces = read_table(run.dataset / "faces" / f"{VIDEO}.parquet", FACES)
    assert set(faces.column("seq_id").to_pylist()) == {f"{VIDEO}-s00002"} and faces.num_rows == 3
    ds_rem = read_table(run.dataset / "removals" / f"{VIDEO}.parquet", REMOVALS)
    assert Counter(ds_rem.column("stage").to_pylist()) == {"dedup_overlap": 7, "track": 1}
    ds_seq = read_table(run.dataset / "sequences" / f"{VIDEO}.parquet", SEQUENCES)
    assert ds_seq.column("n_faces").to_pylist() == [3]


def test_threshold_per_gallery_decides(tmp_path, galleries):
    celebs, optout = galleries
    run = make_run(tmp_path / "run")
    # bob's sequence scores ~0.92 against optout: kept with 0.95, while celebs at 0.5 still removes alice
    cfg = OverlapConfig(galleries=[str(celebs), str(optout)], thresholds=[0.5, 0.95], score="cosine")
    summary = run_dedup_overlap(run.root, cfg, progress=False)
    assert summary["galleries"]["optout"]["sequences"] == 0
    assert summary["galleries"]["celebs"]["sequences"] == 1
    # a re-run with the same config skips the video; a new threshold redoes it
    again = run_dedup_overlap(run.root, cfg, progress=False)
    assert again["skipped"] == 1 and again["done"] == 0
    cfg2 = OverlapConfig(galleries=[str(celebs), str(optout)], thresholds=[1.0, 0.95], score="cosine")
    third = run_dedup_overlap(run.root, cfg2, progress=False)
    assert third["done"] == 1 and third["galleries"]["celebs"]["sequences"] == 0
    kept = read_table(run.dataset / "sequences" / f"{VIDEO}.parquet", SEQUENCES)
    assert kept.num_rows == 3


def test_per_face_search_removes_single_matching_faces(tmp_path, galleries):
    celebs, optout = galleries
    run = make_run(tmp_path / "run")
    cfg = OverlapConfig(galleries=[str(celebs)], thresholds=[0.9], per_face=True, score="cosine")
    run_dedup_overlap(run.root, cfg, progress=False)
    rem = read_table(run.dedup_overlap.table_path("removals", VIDEO), REMOVALS).to_pylist()
    face_rows = [r for r in rem if r["scope"] == "face"]
    assert [r["face_id"] for r in face_rows] == [f"{VIDEO}-f00000009-00"]  # the red face (last) inside s00002
    seqs = read_table(run.dataset / "sequences" / f"{VIDEO}.parquet", SEQUENCES).to_pylist()
    s2 = next(s for s in seqs if s["seq_id"].endswith("s00002"))
    assert s2["n_faces"] == 2 and s2["last_frame"] == 8
    faces = read_table(run.dataset / "faces" / f"{VIDEO}.parquet", FACES)
    assert f"{VIDEO}-f00000009-00" not in faces.column("face_id").to_pylist()


def test_image_folder_gallery_is_built_on_the_fly_and_cached(tmp_path, allow_error_logs):
    photos = make_folder(tmp_path / "photos")
    run = make_run(tmp_path / "run")
    cfg = OverlapConfig(galleries=[f"lfw={photos}"], detector=NAME, min_face=12)
    summary = run_dedup_overlap(run.root, cfg, progress=False)
    cached = list((run.root / "dedup_overlap" / "_galleries").iterdir())
    assert len(cached) == 1 and cached[0].name.startswith("lfw-")
    # default threshold: the gallery's (the fake embedder's 0.9); alice (red) and bob? bob's seq is 0.92 to green
    assert summary["galleries"]["lfw"]["threshold"] == 0.9
    rem = read_table(run.dedup_overlap.table_path("removals", VIDEO), REMOVALS).to_pylist()
    assert {(r["gallery"], r["identity"]) for r in rem} == {("lfw", "alice"), ("lfw", "bob")}
    mtime = (cached[0] / "manifest.json").stat().st_mtime_ns
    run.dedup_overlap.clear(VIDEO)
    run_dedup_overlap(run.root, cfg, progress=False)
    assert (cached[0] / "manifest.json").stat().st_mtime_ns == mtime  # reused, not rebuilt


def test_embedder_mismatch_and_missing_input_are_clear_errors(tmp_path, galleries):
    celebs, _ = galleries
    run = make_run(tmp_path / "run", model="facenet")
    with pytest.raises(InputError, match="built with model 'test-colour@.*embedded with 'facenet'"):
        run_dedup_overlap(run.root, OverlapConfig(galleries=[str(celebs)]), progress=False)
    with pytest.raises(InputError, match="no completed clean output"):
        run_dedup_overlap(tmp_path / "empty", OverlapConfig(galleries=[str(celebs)]), progress=False)
    with pytest.raises(ConfigError, match="no gallery given"):
        run_dedup_overlap(run.root, OverlapConfig(), progress=False)


def test_a_damaged_video_fails_alone(tmp_path, galleries, allow_error_logs):
    celebs, _ = galleries
    run = make_run(tmp_path / "run")
    make_run(tmp_path / "run", video="bbbbbbbbbbbb")
    damaged = run.clean.table_path("assignments", "bbbbbbbbbbbb")
    damaged.write_bytes(b"PAR1 garbage".ljust(damaged.stat().st_size, b"\0"))  # same size: still listed
    summary = run_dedup_overlap(
        run.root, OverlapConfig(galleries=[str(celebs)], thresholds=[0.5]), progress=False
    )
    assert summary["done"] == 1 and [f["video"] for f in summary["failures"]] == ["bbbbbbbbbbbb"]
    assert "assignments/bbbbbbbbbbbb.parquet" in summary["failures"][0]["error"]
    assert (run.dataset / "faces" / f"{VIDEO}.parquet").exists()
    assert not run.dedup_overlap.is_done("bbbbbbbbbbbb")


def test_dedup_overlap_cli(tmp_path, galleries, allow_error_logs):
    celebs, optout = galleries
    run = make_run(tmp_path / "run")
    args = [
        "dedup-overlap",
        str(run.root),
        "--gallery",
        str(celebs),
        "--gallery",
        f"opt={optout}",
        "--score",
        "cosine",
    ]
    res = CliRunner().invoke(cli, [*args, "--threshold", "0.5", "--threshold", "0.9"])
    assert res.exit_code == 0, res.output
    assert "gallery celebs (1 identities, cosine score, keep below 0.500" in res.output
    assert "removed 1 sequences, 4 faces" in res.output and "removed 1 sequences, 3 faces" in res.output
    assert (run.root / "config.toml").exists()
    res = CliRunner().invoke(cli, [*args, "--threshold", "0.5", "--threshold", "0.9", "--threshold", "0.1"])
    assert res.exit_code == 2 and "3 thresholds for 2 galleries" in res.output
