"""The ray executor gives the same outputs as the local executor, row for row."""

from __future__ import annotations

import math

import numpy as np
import pyarrow as pa
import pytest
import synthetic

from seqbuild.executors import LocalExecutor, create_executor
from seqbuild.layout import RunDir
from seqbuild.schema import ASSIGNMENTS, DETECTIONS, REMOVALS, SEQUENCES
from seqbuild.storage import write_table

pytest.importorskip("ray")


def walking_faces(video_id: str, seed: int) -> pa.Table:
    """DETECTIONS of a few faces drifting across two shots, every 5th frame (dummy crops)."""
    rng = np.random.default_rng(seed)
    people = [(rng.uniform(100, 900), rng.uniform(100, 500), rng.uniform(60, 120)) for _ in range(3)]
    faces = []
    for frame in range(0, 200, 5):
        shot = frame // 100
        for k, (x, y, s) in enumerate(people):
            if rng.random() < 0.1:  # a missed detection now and then
                continue
            cx, cy = x + 1.5 * frame + 40 * shot * (k + 1), y + 0.5 * frame
            box = (cx - s / 2, cy - s / 2, cx + s / 2, cy + s / 2)
            lm = [
                [cx - s / 5, cy - s / 8],
                [cx + s / 5, cy - s / 8],
                [cx, cy],
                [cx - s / 6, cy + s / 5],
                [cx + s / 6, cy + s / 5],
            ]
            faces.append((frame, shot, box, lm, s))
    return synthetic.detections_table(video_id, faces, source=f"/videos/{video_id}.mp4")


def ingested_run(root, videos: dict[str, pa.Table]) -> RunDir:
    run = RunDir(root)
    for video_id, table in videos.items():
        write_table(run.ingest.table_path("detections", video_id), table, DETECTIONS, "detections", "h")
        run.ingest.mark_done(video_id, "h")
    return run


def stage_rows(run: RunDir, stage: str) -> dict[str, list[dict]]:
    store = run.stage(stage)
    out = {}
    for name, schema in (("assignments", ASSIGNMENTS), ("sequences", SEQUENCES), ("removals", REMOVALS)):
        rows = store.read(name, schema).to_pylist()
        out[name] = sorted(rows, key=lambda r: tuple(str(v) for v in r.values()))
    return out


@pytest.fixture(scope="module")
def local_ray():
    from seqbuild.ray_executor import ensure_ray, shutdown_ray

    ensure_ray(num_cpus=2)
    yield
    shutdown_ray()


def test_ray_executor_tracks_like_the_local_executor(tmp_path, local_ray):
    from seqbuild.track.config import TrackConfig
    from seqbuild.track.stage import run_track

    videos = {f"{i:012x}": walking_faces(f"{i:012x}", i) for i in range(1, 5)}
    local_run = ingested_run(tmp_path / "local", videos)
    ray_run = ingested_run(tmp_path / "ray", videos)
    cfg = TrackConfig()
    local = run_track(local_run.root, cfg, executor=LocalExecutor(1), progress=False)
    executor = create_executor("ray", use_gpu=True)
    assert executor.num_gpus == 0.0  # no GPU in the local instance: tasks ask for none
    remote = run_track(ray_run.root, cfg, executor=executor, progress=False)
    assert remote["done"] == local["done"] == len(videos)
    assert remote["failed"] == 0
    a, b = stage_rows(local_run, "track"), stage_rows(ray_run, "track")
    assert a["assignments"], "the synthetic scene must produce sequences"
    assert a == b
    assert local_run.track.done_shards() == ray_run.track.done_shards() == sorted(videos)


@pytest.mark.slow
def test_ray_executor_streams_results_and_raises_task_errors(local_ray):
    # Builtins, so that Ray workers can import the function (test modules are not importable there).
    executor = create_executor("ray", max_in_flight=2)
    got = dict(executor.map(math.isqrt, [1, 4, 16, 25, 36]))
    assert got == {1: 1, 4: 2, 16: 4, 25: 5, 36: 6}
    with pytest.raises(ValueError, match="nonnegative"):
        dict(executor.map(math.isqrt, [1, -3]))


def test_joining_a_cluster_that_is_not_there_is_one_line(tmp_path, monkeypatch):
    from click.testing import CliRunner

    from seqbuild._cli.main import cli
    from seqbuild.ray_executor import shutdown_ray

    shutdown_ray()  # a local instance started by an earlier test would be used instead of joining
    monkeypatch.delenv("RAY_ADDRESS", raising=False)
    toml = tmp_path / "p.toml"
    toml.write_text('[run]\nstages = ["ingest"]\n[ingest]\ninputs = ["nothing.mp4"]\n')
    result = CliRunner().invoke(
        cli, ["run", str(toml), "--out", str(tmp_path / "run"), "--executor", "ray", "--ray-address", "auto"]
    )
    assert result.exit_code != 0
    assert "no running Ray cluster found" in result.output and "ray start --head" in result.output
    assert "Traceback" not in result.output and "--address` flag" not in result.output
