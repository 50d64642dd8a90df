"""The hints of dedup-overlap's model errors name options the command has, and following them works."""

from __future__ import annotations

import re
import shlex

import pytest
import torch
from click.testing import CliRunner
from test_gallery import make_folder
from test_overlap_fakes import NAME, ColourEmbedder
from test_overlap_stage import make_run

from seqbuild._cli.main import cli
from seqbuild.embed.models import EMBEDDERS, create_embedder, model_id
from seqbuild.overlap.config import OverlapConfig
from seqbuild.overlap.gallery import build_gallery
from seqbuild.runstate import write_state

OTHER = "test-colour-other"


class OtherColourEmbedder(ColourEmbedder):
    """The colour embedder under another name: a different model id, so its galleries are refused."""

    name = OTHER


if OTHER not in EMBEDDERS:
    EMBEDDERS.register(OTHER)(OtherColourEmbedder)

# Colour squares are the faces of the test detector; gallery photos need its options.
DETECT = ["--set", f"dedup_overlap.detector={NAME}", "--set", "dedup_overlap.min_face=12"]


def _error_line(output: str) -> str:
    lines = [ln for ln in output.splitlines() if ln.startswith("error:")]
    assert len(lines) == 1, output
    return lines[0]


def _suggested_command(line: str) -> list[str]:
    """The command between backticks in an error line, without its leading ``seqbuild``."""
    (command,) = re.findall(r"`(seqbuild [^`]+)`", line)
    return shlex.split(command)[1:]


def make_checkpoint(path, seed=0):
    """A tiny `seqbuild train` checkpoint whose embeddings have the fake runs' 8 dimensions."""
    from seqbuild.train.backbones import create_backbone
    from seqbuild.train.checkpoint import save_checkpoint

    torch.manual_seed(seed)
    net = create_backbone("tiny", input_size=32, dim=8)
    state = {"backbone": "tiny", "backbone_kwargs": {"input_size": 32, "dim": 8}, "model": net.state_dict()}
    return save_checkpoint(path, {**state, "crop_size": 32})


@pytest.fixture
def checkpoint(tmp_path):
    return make_checkpoint(tmp_path / "ck" / "last.pt")


def test_gallery_of_another_model_names_commands_that_work(tmp_path, allow_error_logs):
    photos = make_folder(tmp_path / "photos")
    other = tmp_path / "other-gallery"
    build_gallery(photos, other, OverlapConfig(model=OTHER, detector=NAME, min_face=12), progress=False)
    run = make_run(tmp_path / "run")  # embedded with the test-colour model
    write_state(run.root, "embed", {"options": {"model": NAME, "weights": "", "normalisation": "fixed"}})
    runner = CliRunner()
    res = runner.invoke(cli, ["dedup-overlap", str(run.root), "--gallery", str(other)])
    assert res.exit_code != 0
    line = _error_line(res.output)
    assert f"--gallery {photos}" in line
    # the gallery rebuilt as the line says is accepted
    build = _suggested_command(line)
    assert build[:2] == ["gallery", "build"] and "--model" in build
    res = runner.invoke(cli, [*build, "--detector", NAME, "--set", "dedup_overlap.min_face=12"])
    assert res.exit_code == 0, res.output
    res = runner.invoke(cli, ["dedup-overlap", str(run.root), "--gallery", build[build.index("--out") + 1]])
    assert res.exit_code == 0, res.output
    # and so are its photos passed as --gallery (built with the run's model)
    res = runner.invoke(cli, ["dedup-overlap", str(run.root), "--gallery", str(photos), *DETECT])
    assert res.exit_code == 0, res.output


def test_seqface_run_hints_name_what_dedup_overlap_accepts(tmp_path, checkpoint, allow_error_logs):
    runner = CliRunner()
    dedup_options = runner.invoke(cli, ["dedup-overlap", "--help"]).output
    photos = make_folder(tmp_path / "photos")
    seqface_id = model_id(create_embedder("seqface", weights=str(checkpoint), device="cpu"))
    run = make_run(tmp_path / "run", model=seqface_id)

    # No record of the run's weights: the gallery built from photos needs them, by an option that exists.
    res = runner.invoke(cli, ["dedup-overlap", str(run.root), "--gallery", str(photos), *DETECT])
    assert res.exit_code != 0
    line = _error_line(res.output)
    assert "--set dedup_overlap.weights=PATH" in line
    assert "--weights" not in dedup_options and " --weights" not in line
    weights = ["--set", f"dedup_overlap.weights={checkpoint}"]
    res = runner.invoke(cli, ["dedup-overlap", str(run.root), "--gallery", str(photos), *DETECT, *weights])
    assert res.exit_code == 0, res.output

    # A gallery of another model: the rebuild command names the run's model and checkpoint, and works.
    write_state(
        run.root,
        "embed",
        {"options": {"model": "seqface", "weights": str(checkpoint), "normalisation": "fixed"}},
    )
    facenet_like = tmp_path / "colour-gallery"
    build_gallery(photos, facenet_like, OverlapConfig(model=NAME, detector=NAME, min_face=12), progress=False)
    res = runner.invoke(cli, ["dedup-overlap", str(run.root), "--gallery", str(facenet_like)])
    line = _error_line(res.output)
    build = _suggested_command(line)
    assert build[build.index("--model") + 1] == "seqface" and build[build.index("--weights") + 1] == str(
        checkpoint
    )
    res = runner.invoke(cli, [*build, "--detector", NAME, "--set", "dedup_overlap.min_face=12"])
    assert res.exit_code == 0, res.output
    res = runner.invoke(cli, ["dedup-overlap", str(run.root), "--gallery", build[build.index("--out") + 1]])
    assert res.exit_code == 0, res.output


def test_a_gallery_made_with_another_last_pt_is_refused(tmp_path, allow_error_logs):
    a = make_checkpoint(tmp_path / "a" / "last.pt", seed=0)
    b = make_checkpoint(tmp_path / "b" / "last.pt", seed=1)  # same file name, other weights
    copy = tmp_path / "c" / "last.pt"
    copy.parent.mkdir()
    copy.write_bytes(a.read_bytes())

    def seqface_id(path):
        return model_id(create_embedder("seqface", weights=str(path), device="cpu"))

    assert seqface_id(a) == seqface_id(copy) != seqface_id(b)
    run = make_run(tmp_path / "run", model=seqface_id(a))
    photos = make_folder(tmp_path / "photos")
    gallery = tmp_path / "gallery-b"
    cfg = OverlapConfig(model="seqface", weights=str(b), detector=NAME, min_face=12)
    build_gallery(photos, gallery, cfg, progress=False)
    res = CliRunner().invoke(cli, ["dedup-overlap", str(run.root), "--gallery", str(gallery)])
    assert res.exit_code == 1 and "gallery built with model" in _error_line(res.output)
