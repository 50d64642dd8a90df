"""No face is lost silently: every face ingest detected is in the final dataset or has exactly one row in
a removals table (a row without face_id stands for the faces its sequence held at that stage's input)."""

from __future__ import annotations

from collections import Counter
from pathlib import Path

import pandas as pd
import pytest
from click.testing import CliRunner

STAGE_INPUT = {
    "clean": Path("clean") / "_local" / "assignments",
    "dedup_overlap": Path("clean") / "assignments",
}
"""Where the sequences a stage removes whole (rerun copies, gallery matches) are listed with their faces."""


def _read(folder: Path) -> pd.DataFrame:
    files = sorted(folder.glob("*.parquet"))
    return pd.concat([pd.read_parquet(f) for f in files], ignore_index=True) if files else pd.DataFrame()


def removed_face_ids(run: Path) -> list[str]:
    """One entry per face per removal row of the final dataset's removals (sequence rows expanded)."""
    removals = _read(run / "dataset" / "removals")
    members = {stage: _read(run / folder) for stage, folder in STAGE_INPUT.items()}
    out: list[str] = []
    for row in removals.itertuples(index=False):
        if isinstance(row.face_id, str):
            out.append(row.face_id)
            continue
        held = members.get(row.stage)
        assert held is not None and len(held), f"{row.stage} removed {row.seq_id} without naming its faces"
        faces = held[held.seq_id == row.seq_id].face_id.tolist()
        assert faces, f"{row.stage}: {row.seq_id} ({row.reason}) held no face at that stage's input"
        out += faces
    return out


@pytest.mark.slow
def test_detections_equal_kept_plus_removed_by_face_id(tmp_path):
    from seqbuild._cli.main import cli

    run = tmp_path / "demo"
    result = CliRunner().invoke(cli, ["demo", "--out", str(run), "--no-progress"])
    assert result.exit_code == 0, result.output
    detected = _read(run / "ingest" / "detections").face_id
    kept = _read(run / "dataset" / "faces").face_id
    removed = removed_face_ids(run)
    assert detected.is_unique and kept.is_unique
    twice = [f for f, n in Counter(removed).items() if n > 1]
    assert not twice, f"faces with more than one removal row: {twice[:5]}"
    assert not set(kept) & set(removed), "a kept face also has a removal row"
    assert set(kept) | set(removed) == set(detected), (
        f"{len(set(detected) - set(kept) - set(removed))} detected faces neither kept nor removed"
    )
    # The run exercises removals of several stages, so the check is not vacuous.
    stages = set(_read(run / "dataset" / "removals").stage)
    assert {"track", "dedup_overlap"} <= stages or {"clean", "dedup_overlap"} <= stages, stages
