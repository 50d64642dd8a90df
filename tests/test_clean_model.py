"""Clean with the run's model: one model per run, thresholds measured for FaceNet or derived from the run."""

from __future__ import annotations

import numpy as np
import pyarrow as pa
import pytest
from test_clean import DIM, write_video

from seqbuild.clean.config import CleanConfig
from seqbuild.clean.model import DERIVED_FAR, derive_thresholds, run_model, thresholds_for_model
from seqbuild.clean.stage import run_clean
from seqbuild.errors import InputError
from seqbuild.layout import RunDir
from seqbuild.schema import embeddings_schema
from seqbuild.storage import read_table, write_table

RNG = np.random.default_rng(11)  # its own: test_clean's module generator must not be advanced from here


def person() -> np.ndarray:
    v = RNG.normal(size=DIM)
    return v / np.linalg.norm(v)


def faces_of(base: np.ndarray, n: int, spread: float = 0.5) -> np.ndarray:
    noise = RNG.normal(size=(n, DIM))
    noise = spread * noise / np.linalg.norm(noise, axis=1, keepdims=True)
    v = base + noise
    return (v / np.linalg.norm(v, axis=1, keepdims=True)).astype(np.float32)


def _relabel(run: RunDir, video: str, model: str) -> None:
    path = run.embed.table_path("embeddings", video)
    table = read_table(path)
    table = table.set_column(2, "model", pa.array([model] * table.num_rows, pa.string()))
    write_table(path, table, embeddings_schema(DIM), "e")
    run.embed.mark_done(video, "e")  # the marker records what the shard's files hold


def _run(tmp_path, people=12, model="onnx@abc/rgb-127.5-112/arcface112"):
    run = RunDir(tmp_path / "run")
    for v in ("aaaaaaaaaaaa", "bbbbbbbbbbbb"):
        write_video(run, v, {f"p{k}": faces_of(person(), 6, spread=0.4) for k in range(people // 2)})
        _relabel(run, v, model)
    return run


def test_videos_embedded_by_different_models_are_refused(tmp_path):
    run = _run(tmp_path)
    _relabel(run, "bbbbbbbbbbbb", "facenet@123/fixed-160/sphereface144")
    with pytest.raises(InputError, match="embedded by different models .*onnx@abc.*facenet@123"):
        run_model(run, ["aaaaaaaaaaaa", "bbbbbbbbbbbb"])
    with pytest.raises(InputError, match="different models"):
        run_clean(run.root, CleanConfig(device="cpu"), progress=False)


def test_thresholds_are_derived_for_a_model_without_measured_ones(tmp_path):
    run = _run(tmp_path)
    videos = ["aaaaaaaaaaaa", "bbbbbbbbbbbb"]
    cfg, info = thresholds_for_model(run, CleanConfig(), videos)
    assert info["thresholds"] == "derived" and info["model"].startswith("onnx@")
    assert set(DERIVED_FAR) <= set(info)
    # random 64-d people: impostor scores near 0, so the derived thresholds sit far below FaceNet's
    assert cfg.noise_threshold == info["noise_threshold"] < CleanConfig().noise_threshold
    assert cfg.rerun_threshold >= cfg.two_identity_threshold
    # faces of one person stay above the derived noise threshold
    genuine = faces_of(person(), 20, spread=0.4)
    centre = genuine.sum(0) / np.linalg.norm(genuine.sum(0))
    assert (genuine @ centre).min() > cfg.noise_threshold
    # the same run labelled FaceNet keeps the measured defaults; as_set keeps the configured values
    facenet = _run(tmp_path / "f", model="facenet@123/fixed-160/sphereface144")
    assert thresholds_for_model(facenet, CleanConfig(), videos)[0] == CleanConfig()
    as_set = CleanConfig(model_thresholds="as_set")
    assert thresholds_for_model(run, as_set, videos)[0] == as_set
    summary = run_clean(run.root, CleanConfig(device="cpu"), progress=False)
    assert summary["model"]["thresholds"] == "derived"


def test_derived_thresholds_follow_the_impostor_distribution():
    rng = np.random.default_rng(0)

    def world(spread):
        people = rng.standard_normal((30, DIM))
        faces = [p + spread * rng.standard_normal((6, DIM)) for p in people]
        faces = [f / np.linalg.norm(f, axis=1, keepdims=True) for f in faces]
        centres = np.stack([f.sum(0) / np.linalg.norm(f.sum(0)) for f in faces])
        return faces, centres

    wide = derive_thresholds(*world(0.3))
    # people sharing a common direction (a model whose impostor scores are higher) need higher thresholds
    faces, centres = world(0.3)
    shift = rng.standard_normal(DIM) * 1.5
    faces = [(f + shift) / np.linalg.norm(f + shift, axis=1, keepdims=True) for f in faces]
    centres = np.stack([f.sum(0) / np.linalg.norm(f.sum(0)) for f in faces])
    high = derive_thresholds(faces, centres)
    assert high["noise_threshold"] > wide["noise_threshold"] + 0.2


def test_a_model_that_does_not_tell_faces_apart_is_one_error_not_an_empty_dataset(tmp_path):
    run = RunDir(tmp_path / "run")
    common = person()
    for v in ("aaaaaaaaaaaa", "bbbbbbbbbbbb"):  # every face close to one vector: a collapsed network
        write_video(run, v, {f"p{k}": faces_of(common, 6, spread=0.05) for k in range(4)})
        _relabel(run, v, "seqface@0123/fixed-centre128/sphereface144")
    with pytest.raises(InputError, match="does not tell this run's faces apart"):
        thresholds_for_model(run, CleanConfig(), ["aaaaaaaaaaaa", "bbbbbbbbbbbb"])
    as_set = CleanConfig(model_thresholds="as_set")  # asked for: the configured thresholds are used
    assert thresholds_for_model(run, as_set, ["aaaaaaaaaaaa", "bbbbbbbbbbbb"])[0] == as_set
