"""`seqbuild demo` end to end: the whole chain on the demo broadcast, checked against its ground truth."""

from __future__ import annotations

import json

import pytest
from click.testing import CliRunner

from seqbuild.schema import ASSIGNMENTS, DETECTIONS, FACES, REMOVALS
from seqbuild.storage import read_tables

GALLERY = "grace_hopper"
MIN_SECONDS = 2.0
"""Shots at least this long give a person enough faces to make a sequence under the default cleaning."""


def pane_of(gt: dict, frame: int, box: tuple[float, float, float, float]) -> tuple[int, str]:
    """(shot index, identity) of the ground-truth pane holding the box centre ('none' when no pane)."""
    cx, cy = (box[0] + box[2]) / 2, (box[1] + box[3]) / 2
    for shot in gt["shots"]:
        if shot["start"] <= frame < shot["end"]:
            for pane in shot["panes"]:
                x, y, w, h = pane["rect"]
                if x <= cx < x + w and y <= cy < y + h:
                    return shot["index"], pane["identity"]
            return shot["index"], "none"
    return -1, "none"


def labels_by_sequence(gt: dict, faces: list[dict]) -> dict[str, set[tuple[int, str]]]:
    """Each sequence's set of (shot, identity) labels of its faces."""
    out: dict[str, set[tuple[int, str]]] = {}
    for f in faces:
        out.setdefault(f["seq_id"], set()).add(
            pane_of(gt, f["frame_idx"], (f["x1"], f["y1"], f["x2"], f["y2"]))
        )
    return out


def read(run, folder, schema) -> list[dict]:
    return read_tables(sorted((run / folder).glob("*.parquet")), schema).to_pylist()


@pytest.mark.slow
def test_demo_runs_the_whole_chain_and_matches_the_ground_truth(tmp_path):
    from seqbuild._cli.main import cli

    run = tmp_path / "demo"
    result = CliRunner().invoke(cli, ["demo", "--out", str(run), "--no-progress"])
    assert result.exit_code == 0, result.output
    assert "not built" not in result.output
    assert (run / "report" / "index.html").exists()
    gt = json.loads((run / "media" / "demo_broadcast.gt.json").read_text())
    faces = read(run, "dataset/faces", FACES)
    assert faces, "the demo's final dataset is empty"
    ids = [f["face_id"] for f in faces]
    assert len(ids) == len(set(ids))
    by_seq = labels_by_sequence(gt, faces)
    for seq_id, labels in by_seq.items():
        assert len(labels) == 1, f"{seq_id} mixes shots or people: {labels}"
        assert next(iter(labels))[1] != "none", f"{seq_id}: not inside any pane"
    kept = [next(iter(labels)) for labels in by_seq.values()]

    # One sequence per (shot, person) of every long enough first airing, except the gallery's person;
    # nothing from a rerun airing or from the gallery's person.
    expected = {
        (shot["index"], pane["identity"])
        for shot in gt["shots"]
        if shot["kind"] == "shot" and (shot["end"] - shot["start"]) / gt["fps"] >= MIN_SECONDS
        for pane in shot["panes"]
        if pane["identity"] != GALLERY
    }
    assert expected, "the demo shows nobody outside the gallery"
    reruns = {shot["index"] for shot in gt["shots"] if shot["kind"] == "rerun"}
    assert sorted(kept) == sorted(expected), "one sequence per (shot, person)"
    assert not {shot for shot, _ in kept} & reruns
    assert GALLERY not in {identity for _, identity in kept}, "the gallery identity must be removed"

    # The gallery's person is removed by dedup-overlap (its default threshold), and nobody else is;
    # clean removes whole sequences only as rerun copies of a sequence of the same person.
    detections = {d["face_id"]: d for d in read(run, "ingest/detections", DETECTIONS)}
    tracked = [
        {**detections[a["face_id"]], "seq_id": a["seq_id"]}
        for a in read(run, "track/assignments", ASSIGNMENTS)
    ]
    track_labels = labels_by_sequence(gt, tracked)
    overlap = [r for r in read(run, "dedup_overlap/removals", REMOVALS) if r["scope"] == "sequence"]
    assert overlap, "the gallery's person was not removed"
    for r in overlap:
        assert {identity for _, identity in track_labels[r["seq_id"]]} == {GALLERY}, r
    for r in read(run, "clean/removals", REMOVALS):
        if r["reason"] == "rerun":
            ((shot, identity),) = track_labels[r["seq_id"]]
            assert shot in reruns, f"{r['seq_id']} ({identity} in shot {shot}) removed as a rerun"

    # A second run finds every stage complete.
    again = CliRunner().invoke(cli, ["demo", "--out", str(run), "--no-progress"])
    assert again.exit_code == 0 and again.output.count("skipped: complete for these options") == 5
