"""`seqbuild demo` end to end: the whole chain on the demo broadcast, checked against its ground truth."""

from __future__ import annotations

import json

import pytest
from click.testing import CliRunner

from seqbuild.schema import FACES
from seqbuild.storage import read_tables


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


@pytest.mark.slow
def test_demo_runs_the_whole_chain_and_matches_the_ground_truth(tmp_path):
    from seqbuild._cli.main import cli

    run = tmp_path / "demo"
    result = CliRunner().invoke(cli, ["demo", "--out", str(run), "--no-progress"])
    assert result.exit_code == 0, result.output
    assert "not built" not in result.output
    assert (run / "report" / "index.html").exists()
    gt = json.loads((run / "media" / "demo_broadcast.gt.json").read_text())
    faces = read_tables(sorted((run / "dataset" / "faces").glob("*.parquet")), FACES).to_pylist()
    assert faces, "the demo's final dataset is empty"
    ids = [f["face_id"] for f in faces]
    assert len(ids) == len(set(ids))
    by_seq: dict[str, set] = {}
    for f in faces:
        shot, identity = pane_of(gt, f["frame_idx"], (f["x1"], f["y1"], f["x2"], f["y2"]))
        assert identity != "none", f"{f['face_id']}: not inside any pane"
        by_seq.setdefault(f["seq_id"], set()).add((shot, identity))
    for seq_id, labels in by_seq.items():
        assert len(labels) == 1, f"{seq_id} mixes shots or people: {labels}"
    identities = {identity for labels in by_seq.values() for _, identity in labels}
    assert "grace_hopper" not in identities, "the gallery identity must be removed"
    # A second run finds every stage complete.
    again = CliRunner().invoke(cli, ["demo", "--out", str(run), "--no-progress"])
    assert again.exit_code == 0 and again.output.count("skipped: complete for these options") == 5
