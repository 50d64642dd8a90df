"""`seqbuild run`: stage order, skipping complete stages, re-running changed ones, not-built stages."""

from __future__ import annotations

import hashlib
import logging
from collections import Counter

import pytest
from click.testing import CliRunner

from seqbuild.config import config_hash
from seqbuild.errors import ConfigError
from seqbuild.layout import RunDir
from seqbuild.pipeline import run as runner
from seqbuild.pipeline.loading import load_pipeline

CALLS: Counter = Counter()


def fake_ingest(run, cfg, executor=None, progress=True):
    """Marks one shard per input done (with its config hash), like a real stage."""
    CALLS["ingest"] += 1
    rd = RunDir(run)
    key = config_hash(cfg, ignore=("inputs", "workers"))
    done = 0
    for source in cfg.inputs:
        shard = hashlib.sha1(source.encode()).hexdigest()[:12]
        if not rd.ingest.is_done(shard, key):
            rd.ingest.mark_done(shard, key)
            done += 1
    return {"videos": len(cfg.inputs), "done": done, "failed": 0}


def fake_track(run, cfg, executor=None, progress=True):
    """Marks every ingested shard done; a shard named in FAIL fails."""
    CALLS["track"] += 1
    rd = RunDir(run)
    failed = []
    for shard in rd.ingest.done_shards():
        if shard in FAIL:
            failed.append(shard)
            continue
        rd.track.mark_done(shard, config_hash(cfg))
    return {"videos": len(rd.ingest.done_shards()), "failed": len(failed)}


FAIL: set[str] = set()


@pytest.fixture
def fakes(monkeypatch, tmp_path):
    CALLS.clear()
    FAIL.clear()
    stages = {"ingest": fake_ingest, "track": fake_track}
    monkeypatch.setattr(runner, "stage_function", lambda stage: stages.get(stage))
    videos = []
    for name in ("a.mp4", "b.mp4"):
        (tmp_path / name).write_bytes(b"x")
        videos.append(str(tmp_path / name))
    return videos


def pipeline(videos, *sets, stages=("ingest", "track")):
    stage_list = ", ".join(f'"{s}"' for s in stages)
    return load_pipeline(None, [f"run.stages=[{stage_list}]", *sets], {"ingest": {"inputs": videos}})


def statuses(results):
    return {r.stage: r.status for r in results}


def test_runs_in_order_then_skips_complete_stages(fakes, tmp_path):
    run = tmp_path / "run"
    first = runner.run_pipeline(run, pipeline(fakes), progress=False)
    assert statuses(first) == {"ingest": "ran", "track": "ran"}
    assert len(RunDir(run).track.done_shards()) == 2
    assert (run / "config.toml").read_text().count("[track]") == 1
    again = runner.run_pipeline(run, pipeline(fakes), progress=False)
    assert statuses(again) == {"ingest": "skipped", "track": "skipped"}
    assert CALLS == {"ingest": 1, "track": 1}


def test_runtime_only_keys_do_not_rerun(fakes, tmp_path):
    run = tmp_path / "run"
    runner.run_pipeline(run, pipeline(fakes), progress=False)
    again = runner.run_pipeline(run, pipeline(fakes, "ingest.workers=2", "track.workers=2"), progress=False)
    assert statuses(again) == {"ingest": "skipped", "track": "skipped"}


def test_changed_config_reruns_that_stage_and_later_ones_and_says_so(fakes, tmp_path, caplog):
    run = tmp_path / "run"
    runner.run_pipeline(run, pipeline(fakes), progress=False)
    caplog.set_level(logging.INFO, logger="seqbuild")
    res = runner.run_pipeline(run, pipeline(fakes, "track.min_iou=0.5"), progress=False)
    assert statuses(res) == {"ingest": "skipped", "track": "ran"}
    assert "track: config changed (min_iou: 0.3 -> 0.5)" in caplog.text
    caplog.clear()
    res = runner.run_pipeline(run, pipeline(fakes, "track.min_iou=0.5", "ingest.min_face=80"), progress=False)
    assert statuses(res) == {"ingest": "ran", "track": "ran"}
    assert "ingest: config changed (min_face: 60 -> 80)" in caplog.text
    assert "track: an earlier stage's config changed" in caplog.text
    assert CALLS == {"ingest": 2, "track": 3}


def test_changed_upstream_invalidates_later_outputs_first(fakes, tmp_path, monkeypatch):
    run = tmp_path / "run"
    runner.run_pipeline(run, pipeline(fakes), progress=False)
    seen = {}

    def spy_track(run_, cfg, executor=None, progress=True):
        seen["markers"] = RunDir(run_).track.done_shards()
        return fake_track(run_, cfg)

    monkeypatch.setattr(runner, "stage_function", {"ingest": fake_ingest, "track": spy_track}.get)
    runner.run_pipeline(run, pipeline(fakes, "ingest.min_face=80"), progress=False)
    assert seen["markers"] == [], "stale track markers must be gone before track runs again"


def test_a_new_input_reruns_ingest_and_track(fakes, tmp_path):
    run = tmp_path / "run"
    runner.run_pipeline(run, pipeline(fakes[:1]), progress=False)
    res = runner.run_pipeline(run, pipeline(fakes), progress=False)
    assert statuses(res) == {"ingest": "ran", "track": "ran"}
    assert len(RunDir(run).track.done_shards()) == 2


def test_failed_videos_leave_the_stage_incomplete(fakes, tmp_path, caplog):
    run = tmp_path / "run"
    FAIL.add(hashlib.sha1(fakes[1].encode()).hexdigest()[:12])
    res = runner.run_pipeline(run, pipeline(fakes), progress=False)
    assert res[1].failures == 1
    FAIL.clear()
    res = runner.run_pipeline(run, pipeline(fakes), progress=False)
    assert statuses(res) == {"ingest": "skipped", "track": "ran"}
    assert len(RunDir(run).track.done_shards()) == 2


def test_not_built_stage_stops_the_chain_clearly(fakes, tmp_path, caplog):
    run = tmp_path / "run"
    res = runner.run_pipeline(
        run, pipeline(fakes, stages=("ingest", "track", "embed", "clean")), progress=False
    )
    assert statuses(res) == {"ingest": "ran", "track": "ran", "embed": "not_built", "clean": "not_run"}
    assert "embed: the embed stage is not built yet" in caplog.text


def test_stage_order_and_names_are_checked(fakes, tmp_path):
    with pytest.raises(ConfigError, match="chain order"):
        runner.run_pipeline(tmp_path, pipeline(fakes, stages=("track", "ingest")), progress=False)
    with pytest.raises(ConfigError, match="unknown stage 'dance'"):
        runner.run_pipeline(tmp_path, pipeline(fakes, stages=("ingest", "dance")), progress=False)


def test_stage_function_finds_real_modules_and_reports_missing_ones(monkeypatch):
    assert runner.stage_function("track").__name__ == "run_track"
    monkeypatch.setitem(runner.STAGE_ENTRY, "track", "seqbuild.track.no_such_module:run_track")
    assert runner.stage_function("track") is None


def test_cli_run_saves_config_writes_log_and_exit_codes(fakes, tmp_path):
    from seqbuild._cli.main import cli

    toml = tmp_path / "p.toml"
    videos = ", ".join(f'"{v}"' for v in fakes)
    toml.write_text(f'[run]\nstages = ["ingest", "track"]\n[ingest]\ninputs = [{videos}]\n')
    run = tmp_path / "run"
    result = CliRunner().invoke(cli, ["run", str(toml), "--out", str(run), "--log-level", "DEBUG"])
    assert result.exit_code == 0, result.output
    assert "track" in result.output and "ran in" in result.output
    assert (run / "config.toml").exists()
    log_text = (run / "logs" / "seqbuild.log").read_text()
    assert "track: running" in log_text
    result = CliRunner().invoke(cli, ["run", str(toml), "--out", str(run)])
    assert result.exit_code == 0 and "skipped: complete for this config" in result.output
    toml.write_text(toml.read_text().replace('"track"]', '"track", "embed"]'))
    result = CliRunner().invoke(cli, ["run", str(toml), "--out", str(run)])
    assert result.exit_code == 3 and "not built" in result.output
    result = CliRunner().invoke(cli, ["run", str(toml), "--out", str(run), "--set", "track.bogus=1"])
    assert result.exit_code == 2 and "track.bogus" in result.output
