"""The stage contract: every stage fact comes from the StageSpec declarations, each config fact from its option."""

from __future__ import annotations

import dataclasses
import re
from pathlib import Path

import pytest

from seqbuild import executors, stages
from seqbuild.config import output_hash, runtime_keys
from seqbuild.driver import StageSummary
from seqbuild.layout import RunDir
from seqbuild.pipeline import run as runner
from seqbuild.pipeline.loading import load_pipeline
from seqbuild.reasons import REASONS, reasons_markdown, removal_rows

REPO = Path(__file__).resolve().parents[1]


def _fake_stage(name):
    """A stage that marks every video of the stage before it done (ingest: one video per input)."""

    def run(run_dir, cfg, executor=None, progress=True):
        rd = RunDir(run_dir)
        spec = stages.stage_spec(name)
        summary = StageSummary(name)
        if not spec.per_video:
            summary.counts["videos_trained_on"] = len(rd.stage(stages.CHAIN[-1]).done_shards())
            return summary
        before = stages.previous_stage(name)
        videos = (
            [f"v{i}" for i in range(len(cfg.inputs))] if before is None else rd.stage(before).done_shards()
        )
        for video in videos:
            rd.stage(name).mark_done(video, output_hash(cfg))
            summary.done += 1
        summary.videos = len(videos)
        return summary

    return run


def test_a_pipeline_is_built_from_the_stage_declarations_alone(tmp_path, monkeypatch):
    """Default run.stages, config sections, CLI commands, run layout and the runner all come from SPECS."""
    from seqbuild._cli.main import cli

    names = [s.name for s in stages.SPECS]
    monkeypatch.setattr(runner, "stage_entry", _fake_stage)
    pipeline = load_pipeline(
        None, [f"run.stages={names!r}".replace("'", '"')], {"ingest": {"inputs": ["a", "b"]}}
    )
    assert load_pipeline(None)["run"].stages == list(stages.CHAIN)
    for spec in stages.SPECS:
        assert dataclasses.is_dataclass(pipeline[spec.name])  # a config section per stage
        assert cli.commands[spec.command] is spec.cli_command()  # a command per stage
        if spec.per_video:
            assert RunDir(tmp_path).stage(spec.name).root == tmp_path / spec.name
    results = runner.run_pipeline(tmp_path, pipeline, progress=False)
    assert [r.stage for r in results] == names and all(r.status == "ran" for r in results)
    for name in stages.CHAIN:
        assert RunDir(tmp_path).stage(name).done_shards() == ["v0", "v1"]
    assert results[-1].summary["videos_trained_on"] == 2
    toml = (tmp_path / "config.toml").read_text()
    assert all(f"[{name}]" in toml for name in names)


def test_ray_gets_gpu_shares_for_the_stages_declared_to_want_one(monkeypatch):
    seen = {}

    class Recording(executors.Executor):
        def __init__(self, use_gpu=False, **_):
            seen["gpu"] = use_gpu

    monkeypatch.setitem(executors.EXECUTORS._factories, "ray", Recording)
    for spec in stages.SPECS:
        seen.clear()
        ex = runner.make_executor("ray", spec)
        if spec.per_video:
            assert isinstance(ex, Recording) and seen["gpu"] == spec.gpu
        else:
            assert ex is None  # training is not mapped over videos


@pytest.mark.parametrize("spec", stages.SPECS, ids=lambda s: s.name)
def test_only_options_marked_as_affecting_output_change_its_hash(spec):
    cls = spec.config_class()
    base = cls()
    runtime = set(runtime_keys(cls))
    for f in dataclasses.fields(cls):
        value = getattr(base, f.name)
        if isinstance(value, bool):
            other = not value
        elif isinstance(value, (int, float)):
            other = (
                value + 1 if f.metadata.get("max") is None or value + 1 <= f.metadata["max"] else value - 1
            )
        elif isinstance(value, list):
            other = [*value, "x"] if not value or isinstance(value[0], str) else []
        elif f.metadata.get("choices"):
            other = next(c for c in f.metadata["choices"] if c != value)
        else:
            other = f"{value}-other"
        changed = dataclasses.replace(base, **{f.name: other})
        same = output_hash(changed) == output_hash(base)
        assert same == (f.name in runtime), f"{spec.name}.{f.name}"


def test_every_written_reason_is_declared_and_documented():
    doc = (REPO / "docs" / "dataset-format.md").read_text()
    block = re.search(r"<!-- reasons:start -->\n(.*?)\n<!-- reasons:end -->", doc, re.S)
    assert block and block.group(1) == reasons_markdown(), "regenerate the table with seqbuild.reasons"
    source = "\n".join(p.read_text() for p in (REPO / "seqbuild").rglob("*.py"))
    for name in re.findall(r'Removal\(\s*"(\w+)"', source) + re.findall(
        r'removal_rows\([^)]*?"(\w+)",', source
    ):
        if name in ("track", "clean", "ingest", "dedup_overlap"):
            continue
        assert name in REASONS, name
    with pytest.raises(Exception, match="not declared"):
        removal_rows("clean", "bogus", "v", ["f"])
    with pytest.raises(Exception, match="belongs to stage clean"):
        removal_rows("track", "noise", "v", ["f"])
    rows = removal_rows("track", "too_short", "v", ["a", "b"], seq_id="v-s00000", value=2, threshold=5)
    assert [r["face_id"] for r in rows] == ["a", "b"] and {r["scope"] for r in rows} == {"sequence"}
