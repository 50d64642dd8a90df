"""Clean: each removal reason on constructed embeddings, the stage on a constructed run, resume, dry run."""

from __future__ import annotations

import dataclasses
import re
from collections import Counter

import numpy as np
import pyarrow as pa
import pytest
from click.testing import CliRunner

from seqbuild._cli.main import cli
from seqbuild.clean import filters
from seqbuild.clean.config import CleanConfig
from seqbuild.clean.stage import run_clean
from seqbuild.imaging import encode_jpeg
from seqbuild.layout import RunDir
from seqbuild.schema import ASSIGNMENTS, DETECTIONS, REMOVALS, SEQUENCES, SHOTS, embeddings_schema
from seqbuild.storage import read_table, write_table

DIM = 64
RNG = np.random.default_rng(7)


def unit(v: np.ndarray) -> np.ndarray:
    return v / np.linalg.norm(v, axis=-1, keepdims=True)


def person() -> np.ndarray:
    """A random identity direction (random directions in 64-d are nearly orthogonal)."""
    return unit(RNG.normal(size=DIM))


def faces_of(base: np.ndarray, n: int, spread: float = 0.5) -> np.ndarray:
    """``n`` faces of one person: similarity ~0.8 to each other, ~0.9 to the centre."""
    noise = unit(RNG.normal(size=(n, DIM))) * spread
    return unit(base + noise).astype(np.float32)


def cfg(**kw) -> CleanConfig:
    """Fixed thresholds for the constructed embeddings (the defaults may be re-measured)."""
    base = dict(
        noise_threshold=0.5,
        two_identity_threshold=0.45,
        min_group_faces=3,
        near_dup_threshold=0.95,
        min_face_size=40.0,
        min_blur=20.0,
        min_det_score=0.9,
        max_yaw=0.8,
        min_faces=4,
        cut_margin=0.3,
        rerun_threshold=0.9,
        rerun_face_threshold=0.97,
        rerun_min_share=0.6,
        device="cpu",
        model_thresholds="as_set",
    )
    base.update(kw)
    return CleanConfig(**base)


# ---------------------------------------------------------------- pure functions


def test_robust_centre_resists_an_outlier():
    a = person()
    emb = np.concatenate([faces_of(a, 8), unit(person())[None]])
    centre, sims = filters.robust_centre(emb, 0.5)
    assert centre @ a > 0.95
    assert sims[-1] < 0.3 and sims[:-1].min() > 0.7
    plain = unit(emb.mean(axis=0))
    assert centre @ a > plain @ a  # the trimming pass moved the centre towards the person


def test_noise_removal_names_the_figure_and_threshold():
    emb = np.concatenate([faces_of(person(), 6), faces_of(person(), 1)])
    removed, _ = filters.noise_removals(emb, 0.5)
    assert [r.index for r in removed] == [6]
    assert removed[0].reason == "noise" and removed[0].value < 0.5 and removed[0].threshold == 0.5


def test_two_identities_found_and_stray_faces_are_not_a_group():
    a, c = person(), person()
    two = filters.find_two_identities(np.concatenate([faces_of(a, 5), faces_of(c, 4)]), 0.45, 3)
    assert two is not None and sorted(two.sizes) == [4, 5] and two.similarity < 0.45
    assert len(set(two.labels[:5])) == 1 and len(set(two.labels[5:])) == 1 and two.labels[0] != two.labels[5]
    # two strays are left to the noise filter, and one person is never split
    assert filters.find_two_identities(np.concatenate([faces_of(a, 8), faces_of(c, 2)]), 0.45, 3) is None
    assert filters.find_two_identities(faces_of(a, 12), 0.45, 3) is None


def test_near_duplicates_greedy_keeps_first_and_names_it():
    a = faces_of(person(), 3)
    dup = unit(a[0] + 0.02 * unit(RNG.normal(size=DIM))).astype(np.float32)
    emb = np.stack([a[0], a[1], dup, a[2], a[0]])
    removed = filters.near_duplicate_removals(emb, 0.95, ["f0", "f1", "f2", "f3", "f4"])
    assert [r.index for r in removed] == [2, 4]
    assert all(r.detail == "f0" and r.value > 0.95 for r in removed)


def test_quality_rules_each_reason():
    cols = {
        "face_size": np.array([100, 20, 100, 100, 100, 10.0]),
        "blur": np.array([100, 100, 5, 100, 100, 5.0]),
        "det_score": np.array([0.99, 0.99, 0.99, 0.5, 0.99, 0.99]),
        "yaw": np.array([0.0, 0.0, 0.0, 0.0, -0.95, np.nan]),
        "cut_distance": np.array([1.0, 1.0, 1.0, 1.0, 1.0, 1.0]),
    }
    limits = {"min_face_size": 40, "min_blur": 20, "min_det_score": 0.9, "max_yaw": 0.8, "cut_margin": 0.3}
    got = {r.index: (r.reason, r.value, r.threshold) for r in filters.quality_removals(cols, limits)}
    assert got == {
        1: ("small_face", 20.0, 40.0),
        2: ("blurred", 5.0, 20.0),
        3: ("low_det_score", 0.5, 0.9),
        4: ("extreme_yaw", -0.95, 0.8),
        5: ("small_face", 10.0, 40.0),  # one row per face: the first failed rule
    }
    cols["cut_distance"] = np.array([1.0, 1.0, 1.0, 1.0, 1.0, 0.1])
    cols["face_size"][5], cols["blur"][5] = 100.0, 100.0
    got = {r.index: r.reason for r in filters.quality_removals(cols, limits)}
    assert got[5] == "near_cut"


def test_cut_distance():
    d = filters.cut_distance(np.array([0.0, 4.9, 5.0, 5.2, 9.0]), np.array([5.0, 8.0]))
    assert np.allclose(d, [5.0, 0.1, 0.0, 0.2, 1.0])
    assert np.isinf(filters.cut_distance(np.array([1.0]), np.array([]))).all()


def test_face_match_share():
    a = faces_of(person(), 6)
    copy = unit(a + 0.01 * RNG.normal(size=a.shape)).astype(np.float32)
    assert filters.face_match_share(a[:4], copy, 0.97) == 1.0
    assert filters.face_match_share(a, faces_of(person(), 6), 0.97) == 0.0


# ---------------------------------------------------------------- the stage on a constructed run

CROP = encode_jpeg(np.full((144, 144, 3), 128, np.uint8))


def write_video(
    run: RunDir, vid: str, seqs: dict[str, np.ndarray], quality: dict[str, dict] | None = None, shots=None
):
    """Write ingest detections, track assignments/sequences and embed embeddings for one video."""
    quality = quality or {}
    det, assign, seq_rows, emb_rows = [], [], [], []
    frame = 0
    for s, (name, emb) in enumerate(seqs.items()):
        seq_id = f"{vid}-s{s:05d}"
        for k, vec in enumerate(emb):
            face_id = f"{vid}-f{frame:08d}-00"
            q = {
                "face_size": 100.0,
                "blur": 100.0,
                "det_score": 0.99,
                "yaw": 0.0,
                **quality.get(name, {}).get(k, {}),
            }
            det.append(
                {
                    "face_id": face_id,
                    "video_id": vid,
                    "source": f"/videos/{vid}.mp4",
                    "frame_idx": frame,
                    "pts": frame / 25.0,
                    "shot_id": s,
                    "x1": 10.0,
                    "y1": 10.0,
                    "x2": 110.0,
                    "y2": 110.0,
                    "landmarks": [0.0] * 10,
                    "det_score": q["det_score"],
                    "face_size": q["face_size"],
                    "blur": q["blur"],
                    "yaw": q["yaw"],
                    "roll": 0.0,
                    "image": CROP,
                }
            )
            assign.append({"face_id": face_id, "video_id": vid, "seq_id": seq_id})
            emb_rows.append({"face_id": face_id, "video_id": vid, "model": "test", "embedding": vec.tolist()})
            frame += 5
        seq_rows.append(
            {
                "seq_id": seq_id,
                "video_id": vid,
                "shot_id": s,
                "first_frame": frame - 5 * len(emb),
                "last_frame": frame - 5,
                "n_faces": len(emb),
            }
        )
    write_table(
        run.ingest.table_path("detections", vid),
        pa.Table.from_pylist(det, schema=DETECTIONS),
        DETECTIONS,
        "detections",
    )
    if shots is not None:
        write_table(
            run.ingest.table_path("shots", vid), pa.Table.from_pylist(shots, schema=SHOTS), SHOTS, "shots"
        )
    run.ingest.mark_done(vid, "x")
    write_table(
        run.track.table_path("assignments", vid),
        pa.Table.from_pylist(assign, schema=ASSIGNMENTS),
        ASSIGNMENTS,
        "a",
    )
    write_table(
        run.track.table_path("sequences", vid),
        pa.Table.from_pylist(seq_rows, schema=SEQUENCES),
        SEQUENCES,
        "s",
    )
    write_table(run.track.table_path("removals", vid), REMOVALS.empty_table(), REMOVALS, "r")
    run.track.mark_done(vid, "t")
    schema = embeddings_schema(DIM)
    write_table(
        run.embed.table_path("embeddings", vid), pa.Table.from_pylist(emb_rows, schema=schema), schema, "e"
    )
    run.embed.mark_done(vid, "e")
    return [r["face_id"] for r in det]


@pytest.fixture
def built(tmp_path):
    """A run with two videos: noise, two people, near duplicates, bad quality, too short, and a rerun."""
    run = RunDir(tmp_path / "run")
    a, b, c, d, e = (person() for _ in range(5))
    clean = faces_of(d, 6)
    dup = clean.copy()
    dup[3] = unit(clean[1] + 0.01 * unit(RNG.normal(size=DIM)))
    rerun_src = faces_of(e, 6)
    v1 = {
        "noisy": np.concatenate([faces_of(a, 6), faces_of(b, 1)]),
        # two people whose faces alternate (a box handed back and forth): no point in time separates them
        "two": np.stack([f for pair in zip(faces_of(a, 5), faces_of(c, 5), strict=True) for f in pair]),
        "dup": dup,
        "quality": faces_of(b, 8),
        "short": faces_of(c, 3),
        "aired": rerun_src,
        "jumped": np.concatenate([faces_of(b, 6), faces_of(e, 6)]),  # a track that ran into another person
    }
    quality = {"quality": {0: {"face_size": 12.0}, 1: {"blur": 3.0}, 2: {"det_score": 0.5}, 3: {"yaw": 0.99}}}
    ids1 = write_video(run, "aaaaaaaaaaaa", v1, quality)
    again = unit(rerun_src + 0.005 * RNG.normal(size=rerun_src.shape)).astype(np.float32)
    # a second shot from frame 8 (0.32 s)
    cuts = [{"video_id": "bbbbbbbbbbbb", "shot_id": k, "first_frame": f, "last_frame": f2, "first_pts": f / 25.0}
            for k, (f, f2) in enumerate([(0, 7), (8, 200)])]  # fmt: skip
    other = faces_of(person(), 7)
    ids2 = write_video(run, "bbbbbbbbbbbb", {"other": other, "rerun": again[:5]}, shots=cuts)
    return run, ids1 + ids2


def reasons(run: RunDir) -> dict[tuple[str, str], list[dict]]:
    rem = run.clean.read("removals", REMOVALS).to_pylist()
    out: dict[tuple[str, str], list[dict]] = {}
    for r in rem:
        out.setdefault((r["seq_id"], r["reason"]), []).append(r)
    return out


def test_stage_removes_each_reason_and_accounts_for_every_face(built):
    run, all_ids = built
    summary = run_clean(run.root, cfg(), progress=False)
    assert summary["done"] == 2 and summary["failed"] == 0
    got = reasons(run)
    v1 = "aaaaaaaaaaaa"
    assert [r["face_id"] for r in got[(f"{v1}-s00000", "noise")]] == [f"{v1}-f{30:08d}-00"]
    assert got[(f"{v1}-s00001", "two_identities")][0]["scope"] == "sequence"
    assert got[(f"{v1}-s00001", "two_identities")][0]["value"] < 0.45
    nd = got[(f"{v1}-s00002", "near_duplicate")]
    assert len(nd) == 1 and nd[0]["value"] > 0.95 and nd[0]["detail"].endswith("-00")
    for reason in ("small_face", "blurred", "low_det_score", "extreme_yaw"):
        assert len(got[(f"{v1}-s00003", reason)]) == 1
    short = got[(f"{v1}-s00004", "too_few_faces")]
    assert len(short) == 3 and short[0]["value"] == 3.0 and all(r["face_id"] for r in short)
    assert len(got[(f"{v1}-s00001", "two_identities")]) == 10  # one row per face of the sequence
    rerun = [r for (s, reason), rs in got.items() if reason == "rerun" for r in rs]
    assert {r["seq_id"] for r in rerun} == {"bbbbbbbbbbbb-s00001"}  # the first airing stays
    assert all(f"{v1}-s00005" in r["detail"] and r["scope"] == "sequence" for r in rerun)
    near = got[("bbbbbbbbbbbb-s00000", "near_cut")]
    # faces every 0.2 s, a cut at 0.32 s: the faces at 0.2, 0.4 and 0.6 s are within 0.3 s, the one at 0 s is not
    assert sorted(r["face_id"][-5:-3] for r in near) == ["05", "10", "15"]
    assert all(r["value"] <= 0.3 for r in near)
    assert all(r["threshold"] is not None and r["value"] is not None for rs in got.values() for r in rs)

    kept = run.clean.read("assignments", ASSIGNMENTS)
    kept_ids = set(kept.column("face_id").to_pylist())
    removed = [r["face_id"] for rs in got.values() for r in rs]
    assert len(removed) == len(set(removed)), "one removal row per face"
    track = run.track.read("assignments", ASSIGNMENTS).to_pylist()
    for row in track:  # no silent loss: each face is kept or has exactly one removal row
        f = row["face_id"]
        assert (f in kept_ids) + (f in set(removed)) == 1, f
    assert {r["face_id"] for r in track} == kept_ids | set(removed)
    seqs = run.clean.read("sequences", SEQUENCES)
    counts = {
        s: n
        for s, n in zip(seqs.column("seq_id").to_pylist(), seqs.column("n_faces").to_pylist(), strict=True)
    }
    assert counts[f"{v1}-s00000"] == 6 and counts[f"{v1}-s00002"] == 5 and counts[f"{v1}-s00003"] == 4
    # the track that ran from one person into another is cut where the appearance jumps, both kept
    assert counts[f"{v1}-s00006-1"] == 6 and counts[f"{v1}-s00006-2"] == 6 and f"{v1}-s00006" not in counts


def test_appearance_jumps_cut_between_two_people_not_at_a_stray_face():
    a, b = person(), person()
    emb = np.concatenate([faces_of(a, 7), faces_of(b, 5)])
    assert [j for j, _ in filters.appearance_jumps(emb, 0.45, 0.5, 3)] == [7]
    three = np.concatenate([faces_of(a, 4), faces_of(b, 4), faces_of(person(), 4)])
    assert [j for j, _ in filters.appearance_jumps(three, 0.45, 0.5, 3)] == [4, 8]
    stray = np.concatenate([faces_of(a, 6), faces_of(b, 1), faces_of(a, 6)])  # one odd face: noise's job
    assert filters.appearance_jumps(stray, 0.45, 0.5, 3) == []
    tail = np.concatenate([faces_of(a, 9), faces_of(b, 2)])  # fewer than min_side on one side
    assert filters.appearance_jumps(tail, 0.45, 0.5, 3) == []
    assert filters.appearance_jumps(faces_of(a, 12), 0.45, 0.5, 3) == []


def test_jump_split_can_be_switched_off(built):
    run, _ = built
    run_clean(run.root, cfg(jump_threshold=-1), progress=False)
    got = reasons(run)
    assert got[("aaaaaaaaaaaa-s00006", "two_identities")][0]["scope"] == "sequence"


def test_split_policy_splits_two_people(built):
    run, _ = built
    run_clean(run.root, cfg(split_policy="split"), progress=False)
    seqs = set(run.clean.read("sequences", SEQUENCES).column("seq_id").to_pylist())
    assert {"aaaaaaaaaaaa-s00001-1", "aaaaaaaaaaaa-s00001-2"} <= seqs
    assert "aaaaaaaaaaaa-s00001" not in seqs


def test_resume_skips_done_and_redoes_on_config_change(built):
    run, _ = built
    run_clean(run.root, cfg(), progress=False)
    again = run_clean(run.root, cfg(), progress=False)
    assert again["skipped"] == 2 and again["done"] == 0
    changed = run_clean(run.root, cfg(noise_threshold=0.95), progress=False)
    assert changed["done"] == 2
    assert len([r for (s, reason), rs in reasons(run).items() if reason == "noise" for r in rs]) > 1


def test_missing_embedding_fails_that_video_only(built, allow_error_logs):
    run, _ = built
    path = run.embed.table_path("embeddings", "bbbbbbbbbbbb")
    t = read_table(path)
    write_table(path, t.slice(0, t.num_rows - 1), embeddings_schema(DIM), "e")
    run.embed.mark_done("bbbbbbbbbbbb", run.embed.marker("bbbbbbbbbbbb")["config_hash"])  # a whole output
    summary = run_clean(run.root, cfg(), progress=False)
    assert summary["failed"] == 1 and "no embedding for face" in summary["failures"][0]["error"]
    assert run.clean.is_done("aaaaaaaaaaaa") and not run.clean.is_done("bbbbbbbbbbbb")


def test_dry_run_prints_histograms_and_writes_nothing(built):
    run, _ = built
    before = sorted(p.relative_to(run.root) for p in run.root.rglob("*"))
    result = CliRunner().invoke(
        cli, ["clean", str(run.root), "--dry-run", "--set", "clean.device=cpu"] + _flags()
    )
    assert result.exit_code == 0, result.output
    assert "robust centre" in result.output and "#" in result.output
    assert "near_dup_threshold" in result.output and "would remove" in result.output
    assert sorted(p.relative_to(run.root) for p in run.root.rglob("*")) == before
    # What the dry run announces per reason is what the real run then removes.
    predicted = {m[0]: int(m[1]) for m in re.findall(r"^  (\w+): (\d+) faces", result.output, re.M)}
    run_clean(run.root, cfg(), progress=False)
    removed = Counter(r["reason"] for rs in reasons(run).values() for r in rs)
    assert predicted == dict(removed) and predicted["rerun"] > 0 and predicted["too_few_faces"] == 3


def _flags() -> list[str]:
    c = cfg()
    skip = {"device", "dry_run", "split_policy"}
    return [
        x
        for f in dataclasses.fields(c)
        if f.name not in skip
        for x in ("--set", f"clean.{f.name}={getattr(c, f.name)}")
    ]


def test_cli_clean_runs_and_reports(built):
    run, _ = built
    result = CliRunner().invoke(cli, ["clean", str(run.root), "--no-progress"] + _flags())
    assert result.exit_code == 0, result.output
    assert "reruns=1" in result.output and run.clean.is_done("aaaaaaaaaaaa")
    assert (run.root / "config.toml").is_file()


def test_cli_clean_without_embed_is_one_line_error(tmp_path):
    result = CliRunner().invoke(cli, ["clean", str(tmp_path / "nothing")])
    assert result.exit_code != 0
    assert "seqbuild embed" in result.output and len(result.output.strip().splitlines()) == 1


def test_find_reruns_keeps_the_first_airing_and_needs_face_level_match():
    from seqbuild.clean.stage import centres_schema, find_reruns

    a = faces_of(person(), 8)
    later_copy = unit(a + 0.005 * RNG.normal(size=a.shape)).astype(np.float32)
    same_person_other_footage = faces_of(unit(a.mean(axis=0)), 8, spread=0.15)  # close centre, new pictures
    faces = {"v-s00000": a[:5], "v-s00003": later_copy, "v-s00004": same_person_other_footage}
    rows = [
        {
            "seq_id": s,
            "video_id": "v",
            "n_faces": len(f),
            "first_frame": 100 * k,
            "centre": unit(f.mean(axis=0)).tolist(),
        }
        for k, (s, f) in enumerate(faces.items())
    ]
    centres = pa.Table.from_pylist(rows, schema=centres_schema(DIM))
    assert float(np.dot(rows[0]["centre"], rows[2]["centre"])) > 0.9  # a rerun candidate by centre...
    out = find_reruns(centres, faces, cfg(rerun_face_threshold=0.98, rerun_min_share=0.5))
    assert [r["seq_id"] for r in out] == ["v-s00003"]  # ...but not a copy
    assert "copy of v-s00000" in out[0]["detail"] and out[0]["value"] >= 0.5


def test_video_without_tracked_faces_is_cleaned_to_empty_tables(tmp_path):
    run = RunDir(tmp_path / "run")
    write_video(run, "cccccccccccc", {})
    write_video(run, "dddddddddddd", {"x": faces_of(person(), 6)})
    summary = run_clean(run.root, cfg(), progress=False)
    assert summary["done"] == 2 and summary["failed"] == 0 and summary["faces"] == 6
    assert read_table(run.clean.table_path("assignments", "cccccccccccc"), ASSIGNMENTS).num_rows == 0
