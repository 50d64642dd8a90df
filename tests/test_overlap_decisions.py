"""dedup-overlap's calibrated decisions on a constructed run: outcomes, FPIR in the removals, review policy,
a person's decisions file, the model warning, and bad inputs."""

from __future__ import annotations

import json

import numpy as np
import pytest
from click.testing import CliRunner
from test_overlap_fakes import DIM
from test_overlap_stage import VIDEO, features_gallery, make_run

from seqbuild._cli.main import cli
from seqbuild.errors import InputError
from seqbuild.overlap.config import OverlapConfig
from seqbuild.overlap.stage import run_dedup_overlap
from seqbuild.report.build import write_report
from seqbuild.schema import MATCHES, REMOVALS
from seqbuild.storage import read_table


def unit(x):
    x = np.asarray(x, np.float64)
    return x / np.linalg.norm(x, axis=-1, keepdims=True)


def world(rng, separable=True, strangers=30):
    """Gallery identities and a run: ``strangers`` unknown people and two gallery people (s90, s91).

    ``separable``: identities live in the first half of the dimensions and strangers mostly in the
    other half (a model that tells them apart); otherwise everyone is random (a model that cannot)."""
    half = DIM // 2
    ids = np.eye(DIM)[:4] if separable else unit(rng.standard_normal((4, DIM)))
    seqs = {}
    for k in range(strangers):
        base = rng.standard_normal(DIM)
        if separable:
            base[:half] *= 0.15
        seqs[f"s{k:05d}"] = list(unit(unit(base) + 0.05 * rng.standard_normal((4, DIM))))
    seqs["s00090"] = list(unit(ids[1] + 0.05 * rng.standard_normal((4, DIM))))
    seqs["s00091"] = list(unit(ids[3] + 0.08 * rng.standard_normal((4, DIM))))
    names = [f"p{i}" for i in range(4) for _ in range(3)]
    images = list(unit(np.repeat(ids, 3, 0) + 0.05 * rng.standard_normal((12, DIM))))
    return seqs, names, images


@pytest.fixture
def setup(tmp_path):
    seqs, names, images = world(np.random.default_rng(0))
    run = make_run(tmp_path / "run", seqs=seqs)
    gallery = features_gallery(tmp_path / "optout", names, images)
    return run, gallery


def rows(run, table, schema):
    return read_table(run.dedup_overlap.table_path(table, VIDEO), schema).to_pylist()


def test_calibrated_defaults_remove_gallery_people_keep_strangers_and_record_fpir(setup):
    run, gallery = setup
    summary = run_dedup_overlap(run.root, OverlapConfig(galleries=[str(gallery)]), progress=False)
    g = summary["galleries"]["optout"]
    assert (g["calibration"], g["score"], g["identities"]) == ("run", "csls", 4)
    assert g["fpir"] == pytest.approx(0.001, rel=1e-3) and not summary.get("warnings")
    removed = rows(run, "removals", REMOVALS)
    assert {r["seq_id"].split("-")[1] for r in removed} == {"s00090", "s00091"}
    for r in removed:
        assert r["reason"] in ("gallery_match", "review") and r["decided_by"] == "auto"
        assert r["value"] >= r["threshold"] and 0 < r["fpir"] <= 0.001 + 1e-9
    assert {r["identity"] for r in removed} == {"p1", "p3"}
    matches = rows(run, "matches", MATCHES)
    assert len(matches) == 32 and {m["action"] for m in matches if m["seq_id"].endswith("s00090")} == {
        "removed"
    }
    kept = [m for m in matches if m["action"] == "kept"]
    assert len(kept) == 30 and all(m["score"] < m["threshold"] for m in kept)
    cal = json.loads((run.dedup_overlap.root / "_calibration" / "optout.json").read_text())
    assert cal["n_sequences"] == 32 and cal["gallery_size"] == 4 and cal["source"] == "run"


def test_review_policy_decides_the_middle_band(setup):
    run, gallery = setup
    # A confident FPIR no score can reach: every match is a review.
    cfg = OverlapConfig(galleries=[str(gallery)], confident_fpir=1e-300, review="keep")
    summary = run_dedup_overlap(run.root, cfg, progress=False)
    assert (
        summary["galleries"]["optout"]["review"] == 2 and summary["galleries"]["optout"]["review_kept"] == 2
    )
    assert rows(run, "removals", REMOVALS) == []
    assert {
        m["outcome"] for m in rows(run, "matches", MATCHES) if m["seq_id"].endswith(("s00090", "s00091"))
    } == {"review"}
    page = write_report(run.root).read_text()
    assert "Sequences to review" in page and "Warning:" not in page
    cfg = OverlapConfig(galleries=[str(gallery)], confident_fpir=1e-300, review="remove")
    run_dedup_overlap(run.root, cfg, progress=False)
    removed = rows(run, "removals", REMOVALS)
    assert {r["reason"] for r in removed} == {"review"} and len({r["seq_id"] for r in removed}) == 2


def test_a_persons_decisions_override_and_are_recorded(setup, tmp_path):
    run, gallery = setup
    csv = tmp_path / "decisions.csv"
    csv.write_text(f"seq_id,decision\n{VIDEO}-s00090,keep\n{VIDEO}-s00005,remove\n")
    cfg = OverlapConfig(galleries=[str(gallery)], decisions=str(csv), decided_by="ana")
    summary = run_dedup_overlap(run.root, cfg, progress=False)
    removed = rows(run, "removals", REMOVALS)
    assert {r["seq_id"].split("-")[1] for r in removed} == {"s00091", "s00005"}
    by_seq = {r["seq_id"].split("-")[1]: r for r in removed}
    assert by_seq["s00005"]["decided_by"] == "ana" and by_seq["s00005"]["reason"] == "review"
    assert by_seq["s00091"]["decided_by"] == "auto"
    matches = {m["seq_id"].split("-")[1]: m for m in rows(run, "matches", MATCHES)}
    assert (matches["s00090"]["action"], matches["s00090"]["decided_by"]) == ("kept", "ana")
    assert summary["galleries"]["optout"]["by_person"] == 2
    # the same file again changes nothing; a changed decision redoes the video
    assert run_dedup_overlap(run.root, cfg, progress=False)["skipped"] == 1
    csv.write_text(f"seq_id,decision,decided_by\n{VIDEO}-s00090,remove,bo\n")
    run_dedup_overlap(run.root, OverlapConfig(galleries=[str(gallery)], decisions=str(csv)), progress=False)
    removed = {r["seq_id"].split("-")[1]: r for r in rows(run, "removals", REMOVALS)}
    assert set(removed) == {"s00090", "s00091"} and removed["s00090"]["decided_by"] == "bo"


def test_bad_decisions_are_one_line_and_nothing_is_removed(setup, tmp_path):
    run, gallery = setup
    csv = tmp_path / "d.csv"
    csv.write_text(f"seq_id,decision\n{VIDEO}-s00001,remove\nnot-a-sequence,remove\n")
    cfg = OverlapConfig(galleries=[str(gallery)], decisions=str(csv), decided_by="ana")
    with pytest.raises(
        InputError, match=r"1 sequence\(s\) not in this run.*not-a-sequence; nothing was applied"
    ):
        run_dedup_overlap(run.root, cfg, progress=False)
    assert not run.dedup_overlap.done_shards() and not (run.root / "dataset").exists()
    csv.write_text(f"seq_id,decision\n{VIDEO}-s00001,maybe\n")
    with pytest.raises(InputError, match=r"d.csv:2: decision 'maybe'"):
        run_dedup_overlap(run.root, cfg, progress=False)
    csv.write_text(f"seq_id,decision\n{VIDEO}-s00001,keep\n")
    with pytest.raises(InputError, match="who decided"):
        run_dedup_overlap(
            run.root, OverlapConfig(galleries=[str(gallery)], decisions=str(csv)), progress=False
        )


def test_a_model_that_cannot_do_the_job_is_told(tmp_path, caplog):
    seqs, names, images = world(np.random.default_rng(3), separable=False)
    run = make_run(tmp_path / "run", seqs=seqs)
    gallery = features_gallery(tmp_path / "big", names, images)
    res = CliRunner().invoke(
        cli, ["dedup-overlap", str(run.root), "--gallery", str(gallery), "--no-progress"]
    )
    assert res.exit_code == 0, res.output
    warnings = [line for line in res.output.splitlines() if line.startswith("warning:")]
    assert len(warnings) == 1 and "gallery big (4 identities)" in warnings[0]
    assert "test-colour@" in warnings[0] and "innocent sequences" in warnings[0]
    cal = json.loads((run.dedup_overlap.root / "_calibration" / "big.json").read_text())
    assert cal["feasible"] is False and f"{cal['fpir_for_genuine']:.1%}" in warnings[0]
    page = write_report(run.root).read_text()
    top = page.index("Warning:")
    assert top < page.index("Identity decisions") < page.index("Counts per stage")
    assert "gallery big (4 identities)" in page[top : top + 400] and "85742" in page


def test_cli_decisions_and_decided_by(setup, tmp_path):
    run, gallery = setup
    csv = tmp_path / "d.csv"
    csv.write_text(f"seq_id,decision\n{VIDEO}-s00091,keep\n")
    args = ["dedup-overlap", str(run.root), "--gallery", str(gallery), "--decisions", str(csv)]
    res = CliRunner().invoke(cli, [*args, "--decided-by", "cy", "--no-progress"])
    assert res.exit_code == 0, res.output
    assert "decided by a person 1" in res.output
    removed = rows(run, "removals", REMOVALS)
    assert {r["seq_id"].split("-")[1] for r in removed} == {"s00090"}
    bad = tmp_path / "bad.csv"
    bad.write_text("seq_id,decision\nnobody,keep\n")
    res = CliRunner().invoke(
        cli, ["dedup-overlap", str(run.root), "--decisions", str(bad), "--decided-by", "cy"]
    )
    assert res.exit_code != 0 and res.output.count("error:") == 1 and "nobody" in res.output


def test_per_face_decisions_have_their_own_calibration(tmp_path):
    rng = np.random.default_rng(7)
    seqs, names, images = world(rng)
    # a stranger's track (8 faces) that drifted onto gallery person p2 for its last one
    stranger = unit(unit(rng.standard_normal(DIM) * np.r_[np.full(DIM // 2, 0.15), np.ones(DIM // 2)]))
    seqs["s00005"] = list(unit(stranger + 0.05 * rng.standard_normal((7, DIM)))) + [np.eye(DIM)[2]]
    run = make_run(tmp_path / "run", seqs=seqs)
    gallery = features_gallery(tmp_path / "optout", names, images)
    run_dedup_overlap(run.root, OverlapConfig(galleries=[str(gallery)], per_face=True), progress=False)
    assert (run.dedup_overlap.root / "_calibration" / "optout.faces.json").exists()
    face_rows = [r for r in rows(run, "removals", REMOVALS) if r["scope"] == "face"]
    drifted = [r for r in face_rows if r["seq_id"].endswith("s00005")]
    assert any(r["identity"] == "p2" and r["fpir"] is not None for r in drifted)
    # the rest of its sequence stays, and no sequence is removed whole for one drifted face
    kept = read_table(run.dedup_overlap.table_path("sequences", VIDEO)).column("seq_id").to_pylist()
    assert f"{VIDEO}-s00005" in kept
    assert len(face_rows) <= 4  # single faces of strangers: at most a few at FPIR 0.001 per face
