"""Crash safety: kill -9 mid-stage, a full disk, corrupt tables, escaping paths, untrusted pickles."""

from __future__ import annotations

import errno
import os
import signal
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import numpy as np
import pyarrow as pa
import pytest

from seqbuild.dataset import export_stage
from seqbuild.errors import CorruptTableError, InputError
from seqbuild.layout import RunDir
from seqbuild.pipeline.loading import load_pipeline
from seqbuild.pipeline.run import run_pipeline
from seqbuild.schema import DETECTIONS, FACES
from seqbuild.storage import UnsafeNameError, read_table, read_tables, safe_name, write_table

REPO = Path(__file__).resolve().parents[1]


def synthetic_detections(video_id: str, seed: int) -> pa.Table:
    """DETECTIONS of three faces drifting through two shots, every 5th frame, with tiny real JPEG crops."""
    from seqbuild.imaging import encode_jpeg

    rng = np.random.default_rng(seed)
    crop = encode_jpeg(np.full((16, 16, 3), 128, np.uint8))
    cols: dict[str, list] = {name: [] for name in DETECTIONS.names}
    people = [(rng.uniform(100, 900), rng.uniform(100, 500), rng.uniform(60, 120)) for _ in range(3)]
    for frame in range(0, 200, 5):
        shot = frame // 100
        for k, (x, y, s) in enumerate(people):
            cx, cy = x + 1.5 * frame + 40 * shot * (k + 1), y + 0.5 * frame
            cols["face_id"].append(f"{video_id}-f{frame:08d}-{k:02d}")
            cols["video_id"].append(video_id)
            cols["source"].append(f"/videos/{video_id}.mp4")
            cols["frame_idx"].append(frame)
            cols["pts"].append(frame / 25)
            cols["shot_id"].append(shot)
            for name, v in zip(
                ("x1", "y1", "x2", "y2"), (cx - s / 2, cy - s / 2, cx + s / 2, cy + s / 2), strict=True
            ):
                cols[name].append(float(v))
            lm = [
                cx - s / 5,
                cy - s / 8,
                cx + s / 5,
                cy - s / 8,
                cx,
                cy,
                cx - s / 6,
                cy + s / 5,
                cx + s / 6,
                cy + s / 5,
            ]
            cols["landmarks"].append(lm)
            cols["det_score"].append(0.99)
            cols["face_size"].append(float(s))
            cols["blur"].append(100.0)
            cols["yaw"].append(0.0)
            cols["roll"].append(0.0)
            cols["image"].append(crop)
    return pa.table(cols, schema=DETECTIONS)


VIDEOS = [f"{i:012x}" for i in range(1, 5)]


def ingested(root: Path) -> RunDir:
    run = RunDir(root)
    for i, video_id in enumerate(VIDEOS):
        det = synthetic_detections(video_id, i)
        write_table(run.ingest.table_path("detections", video_id), det, DETECTIONS, "detections", "h")
        run.ingest.mark_done(video_id, "h")
    return run


def track_pipeline(path: Path) -> Path:
    path.write_text('[run]\nstages = ["track"]\n')
    return path


def faces_after(run: RunDir, stage: str, out: Path) -> pa.Table:
    export_stage(run, stage, out)
    return read_tables(sorted((out / "faces").glob("*.parquet")), FACES)


KILLING_RUN = textwrap.dedent(
    """
    import os, signal, sys
    import pyarrow.parquet as pq
    original = pq.write_table
    calls = {"n": 0}

    def write_then_die(table, where, **kwargs):
        # Count only the writes of the video named on the command line (empty tables take another path).
        calls["n"] += sys.argv[3] in os.path.basename(str(where))
        original(table, where, **kwargs)
        if calls["n"] == 2:
            # Half of the file is on disk when the process dies, as under a real kill -9 mid-write.
            data = open(where, "rb").read()
            open(where, "wb").write(data[: len(data) // 2])
            os.kill(os.getpid(), signal.SIGKILL)

    pq.write_table = write_then_die
    from seqbuild.pipeline.loading import load_pipeline
    from seqbuild.pipeline.run import run_pipeline
    run_pipeline(sys.argv[1], load_pipeline(sys.argv[2]), progress=False)
    """
)


def test_kill_9_mid_stage_then_rerun_equals_an_uninterrupted_run(tmp_path):
    toml = track_pipeline(tmp_path / "p.toml")
    reference = ingested(tmp_path / "reference")
    run_pipeline(reference.root, load_pipeline(toml), progress=False)
    expected = faces_after(reference, "track", tmp_path / "expected")

    crashed = ingested(tmp_path / "crashed")
    # Killed while writing the second table of the second video.
    proc = subprocess.run(
        [sys.executable, "-c", KILLING_RUN, str(crashed.root), str(toml), VIDEOS[1]],
        cwd=REPO,
        capture_output=True,
        timeout=120,
    )
    assert proc.returncode == -signal.SIGKILL, proc.stderr.decode()[-2000:]
    assert crashed.track.done_shards() == VIDEOS[:1], "the kill must land mid-stage"
    leftovers = list((crashed.track.root).rglob("*.tmp"))
    assert leftovers, "the half-written temporary file is left behind by the kill"

    results = run_pipeline(crashed.root, load_pipeline(toml), progress=False)
    assert results[0].status == "ran" and results[0].failures == 0
    got = faces_after(crashed, "track", tmp_path / "got")
    ids = got.column("face_id").to_pylist()
    assert len(ids) == len(set(ids)), "duplicated faces"
    assert sorted(ids) == sorted(expected.column("face_id").to_pylist())
    key = ["face_id", "seq_id", "frame_idx"]
    assert sorted(got.select(key).to_pylist(), key=str) == sorted(expected.select(key).to_pylist(), key=str)


def test_full_disk_fails_clearly_and_keeps_earlier_outputs(tmp_path, monkeypatch):
    import pyarrow.parquet as pq
    from click.testing import CliRunner

    from seqbuild._cli.main import cli

    toml = track_pipeline(tmp_path / "p.toml")
    run = ingested(tmp_path / "run")
    original = pq.write_table
    calls = {"n": 0}

    def full_disk(table, where, **kwargs):
        calls["n"] += 1
        if VIDEOS[0] not in str(where):  # the first video fits, then the disk is full
            raise OSError(errno.ENOSPC, "No space left on device", str(where))
        return original(table, where, **kwargs)

    monkeypatch.setattr(pq, "write_table", full_disk)
    result = CliRunner().invoke(cli, ["run", str(toml), "--out", str(run.root), "--no-progress"])
    assert result.exit_code == 1
    last = result.output.strip().splitlines()[-1]
    assert last.startswith("error: ") and "no space left on device" in last and "000000000002" in last
    # What was written before stays readable, and nothing half-written is taken for output.
    assert run.track.done_shards() == VIDEOS[:1]
    assert read_table(run.track.table_path("assignments", VIDEOS[0])).num_rows > 0
    assert not list(run.track.root.rglob("*.tmp"))
    assert not run.track.table_path("assignments", VIDEOS[1]).exists()
    assert all(read_table(p).num_rows for p in run.ingest.paths("detections"))
    assert (run.root / "config.toml").exists()

    monkeypatch.setattr(pq, "write_table", original)
    results = run_pipeline(run.root, load_pipeline(toml), progress=False)
    assert results[0].status == "ran" and results[0].failures == 0
    assert run.track.done_shards() == VIDEOS


def test_corrupt_parquet_is_reported_not_read_as_empty(tmp_path):
    from click.testing import CliRunner

    from seqbuild._cli.main import cli

    run = ingested(tmp_path / "run")
    run_pipeline(run.root, load_pipeline(track_pipeline(tmp_path / "p.toml")), progress=False)
    path = run.track.table_path("assignments", VIDEOS[1])
    data = path.read_bytes()
    path.write_bytes(data[:100] + bytes(len(data) - 100))  # damaged in place, same size
    with pytest.raises(CorruptTableError, match=path.name):
        read_table(path)
    with pytest.raises(CorruptTableError):
        export_stage(run, "track", tmp_path / "out")
    result = CliRunner().invoke(
        cli, ["export", str(run.root), "--after", "track", "--out", str(tmp_path / "o")]
    )
    assert result.exit_code == 1
    assert "corrupt" in result.output and path.name in result.output


def test_paths_from_manifests_cannot_escape_the_run(tmp_path):
    run = RunDir(tmp_path / "run")
    assert (
        run.resolve("ingest/detections/a.parquet") == (tmp_path / "run/ingest/detections/a.parquet").resolve()
    )
    for bad in ("../outside.parquet", "/etc/passwd", "ingest/../../x"):
        with pytest.raises(InputError, match="escapes the run directory"):
            run.resolve(bad)
    (tmp_path / "run").mkdir()
    (tmp_path / "run" / "link").symlink_to(tmp_path)
    with pytest.raises(InputError):
        run.resolve("link/secret")
    # A shard id that would leave the store is refused, never rewritten into another file's name.
    for bad in ("../../../etc/passwd", "/etc/passwd", "..", "a/b", "x\ny"):
        with pytest.raises(UnsafeNameError):
            run.track.table_path("assignments", bad)
    assert safe_name("a-b_c.1") == "a-b_c.1"


class _Payload:
    """Unpickling this runs code (touches a file): what a malicious model file would do."""

    def __init__(self, marker: str) -> None:
        self.marker = marker

    def __reduce__(self):
        return (Path.touch, (Path(self.marker),))


def test_model_files_are_loaded_without_unpickling_code(tmp_path):
    import torch

    from seqbuild.train.checkpoint import load_checkpoint

    marker = tmp_path / "pwned"
    evil = tmp_path / "evil.pt"
    torch.save({"format": "x", "state": _Payload(str(marker))}, evil)
    with pytest.raises(InputError, match=evil.name):
        load_checkpoint(evil)
    assert not marker.exists()
    from seqbuild.embed.models import _load_state_file

    with pytest.raises(InputError, match=evil.name):
        _load_state_file(evil)
    assert not marker.exists()


# --- the real chain, killed in the middle of each stage ------------------------------------------


def _clips(folder: Path) -> list[str]:
    from seqbuild.demo import DemoSpec, Move, Shot, make_demo_broadcast

    a, h = "astronaut", "grace_hopper"
    specs = [
        [
            Shot(20, [Move(a, zoom=(3.2, 2.8))]),
            Shot(20, [Move(h, zoom=(2.6, 2.6), pan=((0.0, 0.2), (0.15, 0.2)))]),
        ],
        [Shot(20, [Move(h, zoom=(2.4, 2.8))]), Shot(10, [])],
        [Shot(25, [Move(a, zoom=(2.6, 2.4)), Move(h, zoom=(2.4, 2.6))])],
    ]
    out = []
    for i, shots in enumerate(specs):
        made = make_demo_broadcast(
            folder, name=f"clip{i}", spec=DemoSpec(shots=shots, seed=i), gallery_identities=("grace_hopper",)
        )
        out.append(str(made.video))
    return out


def _built_stages() -> list[str]:
    from seqbuild.stages import CHAIN

    return list(CHAIN)


def _chain_toml(path: Path, clips: list[str], stages: list[str]) -> Path:
    names = ", ".join(f'"{s}"' for s in stages)
    inputs = ", ".join(f'"{c}"' for c in clips)
    gallery = Path(clips[0]).parent / "gallery"
    path.write_text(
        f"[run]\nstages = [{names}]\n[ingest]\ninputs = [{inputs}]\ndetect_every = 5\n"
        '[track]\nmin_faces = 2\n[embed]\ndevice = "cpu"\n[clean]\nmin_faces = 2\n'
        f'[dedup_overlap]\ngalleries = ["{gallery}"]\n'
    )
    return path


def _final_faces(run: RunDir, stages: list[str], out: Path) -> list[tuple]:
    last = [s for s in stages if s in ("track", "clean", "dedup_overlap")][-1]
    if last == "dedup_overlap":
        table = read_tables(sorted((run.dataset / "faces").glob("*.parquet")), FACES)
    else:
        table = faces_after(run, last, out)
    return sorted(zip(table.column("face_id").to_pylist(), table.column("seq_id").to_pylist(), strict=True))


@pytest.fixture(scope="module")
def chain(tmp_path_factory):
    stages = _built_stages()
    if "track" not in stages:
        pytest.skip(f"needs ingest and track; built: {stages}")
    root = tmp_path_factory.mktemp("chain")
    clips = _clips(root / "media")
    toml = _chain_toml(root / "chain.toml", clips, stages)
    reference = RunDir(root / "reference")
    results = run_pipeline(reference.root, load_pipeline(toml), progress=False)
    assert all(r.status == "ran" and not r.failures for r in results), results
    return stages, toml, _final_faces(reference, stages, root / "ref_export")


@pytest.mark.slow
@pytest.mark.parametrize("stage", ["ingest", "track", "embed", "clean", "dedup_overlap"])
def test_kill_9_during_each_real_stage(chain, stage, tmp_path):
    stages, toml, expected = chain
    if stage not in stages:
        pytest.skip(f"stage {stage} is not built")
    run = RunDir(tmp_path / "run")
    proc = subprocess.Popen(
        [sys.executable, "-m", "seqbuild", "run", str(toml), "--out", str(run.root), "--no-progress"],
        cwd=REPO,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    folder = run.root / stage
    deadline = time.monotonic() + 300
    # Kill as soon as the stage has written anything (its first file, temporary or not).
    while time.monotonic() < deadline and proc.poll() is None:
        if folder.exists() and any(p.is_file() for p in folder.rglob("*")):
            break
        time.sleep(0.005)
    assert proc.poll() is None, "the run ended before the stage started"
    os.kill(proc.pid, signal.SIGKILL)
    proc.wait(timeout=30)
    assert proc.returncode == -signal.SIGKILL
    assert len(run.stage(stage).done_shards()) < 3 or stage != stages[-1]

    results = run_pipeline(run.root, load_pipeline(toml), progress=False)
    assert not any(r.failures for r in results)
    got = _final_faces(run, stages, tmp_path / "export")
    ids = [f for f, _ in got]
    assert len(ids) == len(set(ids)), "duplicated faces after the re-run"
    assert got == expected
