"""Config precedence (defaults < TOML < --set < flags), unknown keys, types and ranges."""

from __future__ import annotations

import pytest

from seqbuild.config import config_hash, load_toml
from seqbuild.errors import ConfigError
from seqbuild.ingest.config import IngestConfig
from seqbuild.pipeline.loading import load_pipeline


def test_precedence_defaults_toml_set_flags(tmp_path):
    toml = tmp_path / "p.toml"
    toml.write_text("[ingest]\ndetect_every = 3\nmin_face = 50\nthreshold = 0.9\n")
    pipe = load_pipeline(toml, ["ingest.min_face=70", "ingest.threshold=0.8"], {"ingest": {"threshold": 0.7}})
    ing = pipe["ingest"]
    assert ing.detect_every == 3  # TOML over default
    assert ing.min_face == 70  # --set over TOML
    assert ing.threshold == 0.7  # flag over --set
    assert ing.max_side == IngestConfig().max_side  # default where nothing is said


def test_unknown_key_and_section_are_named(tmp_path):
    toml = tmp_path / "p.toml"
    toml.write_text("[ingest]\ndetect_evry = 3\n")
    with pytest.raises(ConfigError, match="ingest.detect_evry"):
        load_pipeline(toml)
    toml.write_text("[ingset]\n")
    with pytest.raises(ConfigError, match=r"\[ingset\]"):
        load_pipeline(toml)


def test_types_and_ranges_are_checked():
    with pytest.raises(ConfigError, match="ingest.detect_every: expected an integer"):
        load_pipeline(None, ["ingest.detect_every='x'"])
    with pytest.raises(ConfigError, match="below the minimum"):
        load_pipeline(None, ["ingest.detect_every=0"])
    with pytest.raises(ConfigError, match="not one of"):
        load_pipeline(None, ["clean.split_policy='merge'"])
    with pytest.raises(ConfigError, match="SECTION.KEY=VALUE"):
        load_pipeline(None, ["detect_every=2"])


def test_saved_config_reloads_to_the_same_hash(tmp_path):
    pipe = load_pipeline(None, ["ingest.min_face=64", "ingest.inputs=['a.mp4', 'b.mp4']"])
    path = tmp_path / "config.toml"
    path.write_text(pipe.to_toml())
    again = load_pipeline(path)
    assert again["ingest"].inputs == ["a.mp4", "b.mp4"]
    for section in pipe.sections:
        assert config_hash(again[section]) == config_hash(pipe[section])
    assert config_hash(pipe["ingest"]) != config_hash(load_pipeline(None)["ingest"])


def test_missing_and_malformed_toml(tmp_path):
    with pytest.raises(ConfigError, match="not found"):
        load_toml(tmp_path / "nope.toml")
    bad = tmp_path / "bad.toml"
    bad.write_text("[ingest\n")
    with pytest.raises(ConfigError, match="invalid TOML"):
        load_toml(bad)


def test_shipped_pipelines_load():
    from pathlib import Path

    pipelines = sorted((Path(__file__).resolve().parents[1] / "pipelines").glob("*.toml"))
    assert pipelines, "pipelines/ holds no configs"
    for path in pipelines:
        load_pipeline(path)
