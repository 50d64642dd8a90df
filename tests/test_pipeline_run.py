"""`seqbuild run` and the stage contract: order, skipping complete stages, re-running changed ones, locks."""

from __future__ import annotations

import hashlib
import logging
import multiprocessing as mp
from collections import Counter

import pytest
from click.testing import CliRunner

from seqbuild.config import output_hash
from seqbuild.driver import StageSummary
from seqbuild.errors import ConfigError
from seqbuild.layout import RunDir
from seqbuild.pipeline import run as runner
from seqbuild.pipeline.loading import load_pipeline, save_config
from seqbuild.runstate import RunLockedError, read_state, stage_lock

CALLS: Counter = Counter()


def fake_ingest(run, cfg, executor=None, progress=True):
    """Marks one shard per input done (with its output hash), like a real stage."""
    CALLS["ingest"] += 1
    rd = RunDir(run)
    key = output_hash(cfg)
    summary = StageSummary("ingest", videos=len(cfg.inputs))
    for source in cfg.inputs:
        shard = hashlib.sha1(source.encode()).hexdigest()[:12]
        if not rd.ingest.is_done(shard, key):
            rd.ingest.mark_done(shard, key)
            summary.done += 1
    return summary


def fake_track(run, cfg, executor=None, progress=True):
    """Marks every ingested shard done; a shard named in FAIL fails."""
    CALLS["track"] += 1
    rd = RunDir(run)
    summary = StageSummary("track", videos=len(rd.ingest.done_shards()))
    for shard in rd.ingest.done_shards():
        if shard in FAIL:
            summary.fail(shard, "broken on purpose")
            continue
        rd.track.mark_done(shard, output_hash(cfg))
        summary.done += 1
    return summary


FAIL: set[str] = set()


@pytest.fixture
def fakes(monkeypatch, tmp_path):
    CALLS.clear()
    FAIL.clear()
    stages = {"ingest": fake_ingest, "track": fake_track}
    monkeypatch.setattr(runner, "stage_entry", lambda stage: stages[stage])
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


def test_options_that_do_not_affect_output_do_not_rerun(fakes, tmp_path):
    run = tmp_path / "run"
    runner.run_pipeline(run, pipeline(fakes, "ingest.device='cpu'"), progress=False)
    assert read_state(run, "ingest")["runtime"]["device"] == "cpu"  # recorded, but not hashed
    again = runner.run_pipeline(
        run, pipeline(fakes, "ingest.workers=2", "track.workers=2", "ingest.device='auto'"), progress=False
    )
    assert statuses(again) == {"ingest": "skipped", "track": "skipped"}


def test_changed_config_reruns_that_stage_and_later_ones_and_says_so(fakes, tmp_path, caplog):
    run = tmp_path / "run"
    runner.run_pipeline(run, pipeline(fakes), progress=False)
    caplog.set_level(logging.INFO, logger="seqbuild")
    res = runner.run_pipeline(run, pipeline(fakes, "track.min_iou=0.5"), progress=False)
    assert statuses(res) == {"ingest": "skipped", "track": "ran"}
    assert "track: options changed (min_iou: 0.3 -> 0.5)" in caplog.text
    caplog.clear()
    res = runner.run_pipeline(run, pipeline(fakes, "track.min_iou=0.5", "ingest.min_face=80"), progress=False)
    assert statuses(res) == {"ingest": "ran", "track": "ran"}
    assert "ingest: options changed (min_face: 60 -> 80)" in caplog.text
    assert "track: an earlier stage's options changed" in caplog.text
    assert CALLS == {"ingest": 2, "track": 3}


def test_changed_upstream_invalidates_later_outputs_first(fakes, tmp_path, monkeypatch):
    run = tmp_path / "run"
    runner.run_pipeline(run, pipeline(fakes), progress=False)
    seen = {}

    def spy_track(run_, cfg, executor=None, progress=True):
        seen["markers"] = RunDir(run_).track.done_shards()
        return fake_track(run_, cfg)

    monkeypatch.setattr(runner, "stage_entry", {"ingest": fake_ingest, "track": spy_track}.get)
    runner.run_pipeline(run, pipeline(fakes, "ingest.min_face=80"), progress=False)
    assert seen["markers"] == [], "stale track markers must be gone before track runs again"


def test_a_new_input_reruns_ingest_and_track(fakes, tmp_path):
    run = tmp_path / "run"
    runner.run_pipeline(run, pipeline(fakes[:1]), progress=False)
    res = runner.run_pipeline(run, pipeline(fakes), progress=False)
    assert statuses(res) == {"ingest": "ran", "track": "ran"}
    assert len(RunDir(run).track.done_shards()) == 2


def test_failed_videos_leave_the_stage_incomplete(fakes, tmp_path, allow_error_logs):
    run = tmp_path / "run"
    FAIL.add(hashlib.sha1(fakes[1].encode()).hexdigest()[:12])
    res = runner.run_pipeline(run, pipeline(fakes), progress=False)
    assert res[1].failures == 1
    assert res[1].summary["failures"] == [{"video": sorted(FAIL)[0], "error": "broken on purpose"}]
    FAIL.clear()
    res = runner.run_pipeline(run, pipeline(fakes), progress=False)
    assert statuses(res) == {"ingest": "skipped", "track": "ran"}
    assert len(RunDir(run).track.done_shards()) == 2


def test_stage_order_and_names_are_checked(fakes, tmp_path):
    with pytest.raises(ConfigError, match="chain order"):
        runner.run_pipeline(tmp_path, pipeline(fakes, stages=("track", "ingest")), progress=False)
    with pytest.raises(ConfigError, match="unknown stage 'dance'"):
        runner.run_pipeline(tmp_path, pipeline(fakes, stages=("ingest", "dance")), progress=False)


def test_the_run_remembers_its_inputs_and_settings(fakes, tmp_path, caplog):
    """A second `run` on an existing run folder needs neither its inputs nor its settings again."""
    run = tmp_path / "run"
    runner.run_pipeline(run, pipeline(fakes, "track.min_iou=0.4"), progress=False)
    remembered = load_pipeline(None, ['run.stages=["ingest", "track"]'], run=run)
    assert remembered["ingest"].inputs == fakes
    assert remembered["track"].min_iou == 0.4
    res = runner.run_pipeline(run, remembered, progress=False)
    assert statuses(res) == {"ingest": "skipped", "track": "skipped"}
    caplog.set_level(logging.INFO, logger="seqbuild")
    explicit = load_pipeline(None, ["track.min_iou=0.5"], run=run)
    assert explicit["track"].min_iou == 0.5
    assert "track.min_iou changed from 0.4" in caplog.text


def _hold_lock(run, ready, release):
    with stage_lock(run, "track"):
        ready.set()
        release.wait(30)


def test_a_second_command_on_the_same_stage_is_refused_naming_the_holder(tmp_path):
    ctx = mp.get_context("spawn")
    ready, release = ctx.Event(), ctx.Event()
    holder = ctx.Process(target=_hold_lock, args=(str(tmp_path), ready, release))
    holder.start()
    try:
        assert ready.wait(30)
        with pytest.raises(RunLockedError, match=f"pid {holder.pid}"):
            with stage_lock(tmp_path, "track"):
                pass
        with stage_lock(tmp_path, "ingest"):  # other stages are free
            pass
    finally:
        release.set()
        holder.join(30)
    with stage_lock(tmp_path, "track", wait=True):  # free again once the holder is gone
        pass


def test_cli_run_saves_config_writes_log_and_exit_codes(fakes, tmp_path):
    from seqbuild._cli.main import cli

    toml = tmp_path / "p.toml"
    videos = ", ".join(f'"{v}"' for v in fakes)
    toml.write_text(f'[run]\nstages = ["ingest", "track"]\n[ingest]\ninputs = [{videos}]\n')
    run = tmp_path / "run"
    result = CliRunner().invoke(cli, ["run", str(toml), "--out", str(run), "--log-level", "debug"])
    assert result.exit_code == 0, result.output
    assert "track" in result.output and "ran in" in result.output
    assert (run / "config.toml").exists()
    log_text = (run / "logs" / "seqbuild.log").read_text()
    assert "track: running" in log_text
    result = CliRunner().invoke(cli, ["run", str(toml), "--out", str(run)])
    assert result.exit_code == 0 and "skipped: complete for these options" in result.output
    # The run remembers its inputs: a pipeline file that names none still runs on them.
    bare = tmp_path / "bare.toml"
    bare.write_text('[run]\nstages = ["ingest", "track"]\n')
    result = CliRunner().invoke(cli, ["run", str(bare), "--out", str(run)])
    assert result.exit_code == 0, result.output
    result = CliRunner().invoke(cli, ["run", str(toml), "--out", str(run), "--set", "track.bogus=1"])
    assert result.exit_code == 2 and "track.bogus" in result.output


def test_remembered_thresholds_follow_their_galleries(tmp_path, caplog):
    """Thresholds are per gallery: the ones a run remembers are not applied to other galleries given anew."""
    run = tmp_path / "run"
    run.mkdir()
    two = load_pipeline(None, ["dedup_overlap.galleries=a,b", "dedup_overlap.thresholds=[0.5, 0.4]"])
    save_config(two, run / "config.toml")
    assert load_pipeline(None, [], run=run)["dedup_overlap"].thresholds == [0.5, 0.4]  # remembered
    assert load_pipeline(None, ["dedup_overlap.galleries=a,b"], run=run)["dedup_overlap"].thresholds == [
        0.5,
        0.4,
    ]
    caplog.set_level(logging.INFO, logger="seqbuild")
    one = load_pipeline(None, ["dedup_overlap.galleries=c"], run=run)["dedup_overlap"]
    assert one.galleries == ["c"] and one.thresholds == []  # calibrated again, not 2 thresholds for 1
    assert "dedup_overlap.thresholds [0.5, 0.4] not used" in caplog.text
    given = load_pipeline(None, ["dedup_overlap.galleries=c", "dedup_overlap.thresholds=[0.3]"], run=run)
    assert given["dedup_overlap"].thresholds == [0.3]


def test_a_one_off_request_is_not_remembered_by_the_run(tmp_path):
    from seqbuild.pipeline.loading import run_memory

    (tmp_path / "config.toml").write_text("[ingest]\nretry_failed = true\nmin_face = 40\n")
    memory = run_memory(tmp_path)
    assert memory["ingest"] == {"min_face": 40}  # retrying what failed was for that command only
