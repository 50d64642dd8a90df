"""Training data: identity import, final-dataset reading, mixed batches, augmentation; shared synthetic data."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pyarrow as pa

from seqbuild.imaging import encode_jpeg
from seqbuild.schema import FACES
from seqbuild.storage import write_table


def face_image(kind: int, rng: np.random.Generator, size: int = 36) -> np.ndarray:
    """A synthetic 'face' whose pattern depends on ``kind`` (stripes of a kind-specific colour and angle)."""
    yy, xx = np.mgrid[0:size, 0:size].astype(np.float32)
    angle = kind * 0.7
    wave = np.sin((np.cos(angle) * xx + np.sin(angle) * yy) / (2 + kind % 3))
    colour = np.array([(kind * 70) % 255, (kind * 130) % 255, (kind * 40 + 90) % 255], np.float32)
    img = 127 + 60 * wave[..., None] * (colour / 255.0)[None, None] + rng.normal(0, 8, (size, size, 3))
    return np.clip(img, 0, 255).astype(np.uint8)


def make_identity_folder(
    root: Path, identities: int = 3, per_identity: int = 6, size: int = 36, seed: int = 0
) -> Path:
    """root/<name>/<n>.jpg images, one sub-folder per identity."""
    rng = np.random.default_rng(seed)
    for k in range(identities):
        folder = root / f"person_{k}"
        folder.mkdir(parents=True, exist_ok=True)
        for n in range(per_identity):
            (folder / f"person_{k}_{n + 1:04d}.jpg").write_bytes(encode_jpeg(face_image(k, rng, size)))
    return root


def make_final_dataset(
    run: Path, sequences: int = 4, per_sequence: int = 5, size: int = 36, seed: int = 1, first_kind: int = 10
) -> Path:
    """RUN/dataset/faces/<video>.parquet with FACES rows: ``sequences`` sequences of one synthetic person each."""
    rng = np.random.default_rng(seed)
    video = "abcdef123456"
    rows = []
    for s in range(sequences):
        for f in range(per_sequence):
            frame = s * 100 + f
            rows.append(
                {
                    "face_id": f"{video}-f{frame:08d}-00",
                    "video_id": video,
                    "source": "/x.mp4",
                    "seq_id": f"{video}-s{s:05d}",
                    "frame_idx": frame,
                    "pts": frame / 25.0,
                    "shot_id": s,
                    "x1": 0.0,
                    "y1": 0.0,
                    "x2": 10.0,
                    "y2": 10.0,
                    "landmarks": [1.0] * 10,
                    "det_score": 0.99,
                    "face_size": 10.0,
                    "blur": 100.0,
                    "yaw": 0.0,
                    "roll": 0.0,
                    "image": encode_jpeg(face_image(first_kind + s, rng, size)),
                }
            )
    table = pa.Table.from_pylist(rows, schema=FACES)
    write_table(run / "dataset" / "faces" / f"{video}.parquet", table, FACES, "faces")
    return run / "dataset"


def tiny_train_args(data: Path, out: Path, steps: int) -> list[str]:
    """`seqbuild train` arguments for a few CPU steps of the tiny backbone on :func:`make_training_inputs`."""
    args = ["train", "--identities", str(data / "ids"), "--sequences", str(data / "run"), "--out", str(out)]
    args += ["--backbone", "tiny", "--max-steps", str(steps), "--batch-size", "8", "--workers", "0"]
    args += ["--device", "cpu"]
    for key in ("image_size=36", "crop_size=32", "embedding_dim=16", "tensorboard=false"):
        args += ["--set", f"train.{key}"]
    return args


def make_training_inputs(root: Path, identities: int, sequences: int) -> Path:
    """``root/ids`` (an identity set imported by the CLI) and ``root/run`` (a final dataset): what
    `seqbuild train` reads."""
    from click.testing import CliRunner

    from seqbuild._cli.main import cli

    make_identity_folder(root / "src", identities=identities, per_identity=8)
    res = CliRunner().invoke(
        cli, ["import-identities", str(root / "src"), "--out", str(root / "ids"), "--aligned"]
    )
    assert res.exit_code == 0, res.output
    make_final_dataset(root / "run", sequences=sequences, per_sequence=5)
    return root


# ---------------------------------------------------------------- tests

import json  # noqa: E402

import pytest  # noqa: E402
import torch  # noqa: E402
from click.testing import CliRunner  # noqa: E402

from seqbuild._cli.main import cli  # noqa: E402
from seqbuild.errors import InputError  # noqa: E402
from seqbuild.schema import IDENTITY_IMAGES  # noqa: E402
from seqbuild.storage import read_table  # noqa: E402
from seqbuild.train.data import FaceImages, MixedBatchSampler, read_identities, read_sequences  # noqa: E402


def test_import_identities_folder_writes_parquet_and_lists_skipped(tmp_path):
    src = make_identity_folder(tmp_path / "src", identities=3, per_identity=4)
    (src / "person_1" / "broken.jpg").write_bytes(b"not a jpeg")
    res = CliRunner().invoke(
        cli, ["import-identities", str(src), "--out", str(tmp_path / "ids"), "--aligned"]
    )
    assert res.exit_code == 0, res.output
    assert json.loads(res.stdout.strip().splitlines()[-1]) == {
        "identities": 3,
        "images": 12,
        "skipped": 1,
        "refused": 0,
    }
    files = list((tmp_path / "ids" / "identity_images").glob("*.parquet"))
    table = read_table(files[0], IDENTITY_IMAGES)
    assert sorted(set(table.column("identity").to_pylist())) == ["person_0", "person_1", "person_2"]
    skipped = json.loads((tmp_path / "ids" / "skipped.json").read_text())
    assert skipped[0]["reason"] == "unreadable" and skipped[0]["source"].endswith("broken.jpg")
    ids = read_identities(tmp_path / "ids")
    assert ids.names == ["person_0", "person_1", "person_2"]
    assert np.bincount(ids.labels).tolist() == [4, 4, 4]


def test_import_identities_recordio(tmp_path):
    recordio = pytest.importorskip("seqbuild.recordio")
    rng = np.random.default_rng(0)
    images = [(k % 2, encode_jpeg(face_image(k % 2, rng, 112))) for k in range(6)]
    recordio.write_insightface_rec(tmp_path / "train.rec", images, tmp_path / "train.idx")
    res = CliRunner().invoke(cli, ["import-identities", str(tmp_path), "--out", str(tmp_path / "ids")])
    assert res.exit_code == 0, res.output
    ids = read_identities(tmp_path / "ids")
    assert len(ids) == 6 and len(ids.names) == 2


def test_import_identities_bad_source_is_one_line_error(tmp_path):
    res = CliRunner().invoke(cli, ["import-identities", str(tmp_path / "nope"), "--out", str(tmp_path / "o")])
    assert res.exit_code != 0 and "nope" in res.output and "Traceback" not in res.output


def test_read_sequences_each_seq_id_its_own_label(tmp_path):
    make_final_dataset(tmp_path / "run", sequences=3, per_sequence=4)
    seqs = read_sequences([tmp_path / "run"])  # RUN or RUN/dataset both work
    assert len(seqs.names) == 3 and np.bincount(seqs.labels).tolist() == [4, 4, 4]
    again = read_sequences([tmp_path / "run" / "dataset"])
    assert again.names == seqs.names
    with pytest.raises(InputError, match="final dataset"):
        read_sequences([tmp_path])


def test_mixed_batches_ratio_epoch_and_resume_position():
    s = MixedBatchSampler(n_identity=40, n_sequence=13, batch_size=8, identity_ratio=0.5, seed=3)
    s.set_epoch(0)
    batches = list(s)
    assert len(batches) == 40 // 4
    for b in batches:
        idx = [i for i, _ in b]
        assert sum(i < 40 for i in idx) == 4 and sum(i >= 40 for i in idx) == 4
    first_epoch_ids = sorted(i for b in batches for i, _ in b if i < 40)
    assert first_epoch_ids == list(range(40))  # each identity image once per epoch
    s.set_epoch(0, start_batch=6)
    assert list(s) == batches[6:]  # exact resume position, seeds included
    s.set_epoch(1)
    assert list(s) != batches
    # ranks of a DDP job take disjoint identity images
    r0 = MixedBatchSampler(40, 13, 8, 0.5, seed=3, rank=0, world_size=2)
    r1 = MixedBatchSampler(40, 13, 8, 0.5, seed=3, rank=1, world_size=2)
    a = {i for b in r0 for i, _ in b if i < 40}
    c = {i for b in r1 for i, _ in b if i < 40}
    assert not (a & c) and len(a | c) == 40


def test_sequences_only_when_no_identity_share():
    s = MixedBatchSampler(n_identity=10, n_sequence=0, batch_size=4, identity_ratio=0.5)
    assert all(len(b) == 4 for b in s)


def test_face_images_augmentation_is_seeded_and_test_time_is_centre_crop(tmp_path):
    make_identity_folder(tmp_path / "src", identities=2, per_identity=2)
    CliRunner().invoke(
        cli, ["import-identities", str(tmp_path / "src"), "--out", str(tmp_path / "ids"), "--aligned"]
    )
    make_final_dataset(tmp_path / "run", sequences=2, per_sequence=2)
    ds = FaceImages(
        read_identities(tmp_path / "ids"), read_sequences([tmp_path / "run"]), image_size=36, crop_size=32
    )
    assert ds.labels.tolist() == [0, 0, 1, 1, 2, 2, 3, 3]
    a, la = ds[(5, 123)]
    b, _ = ds[(5, 123)]
    assert torch.equal(a, b) and la == 2 and a.shape == (3, 32, 32)
    others = [ds[(5, s)][0] for s in range(8)]
    assert any(not torch.equal(a, o) for o in others)
    t1, _ = ds[5]
    t2, _ = ds[(5, -1)]
    assert torch.equal(t1, t2)
    assert float(t1.min()) >= -127.5 / 128 and float(t1.max()) <= 127.5 / 128


def test_import_identities_detects_and_aligns_real_photos(tmp_path, media):
    """Unaligned photos go through the ingest detector and aligner into 144x144 crops."""
    import cv2

    from seqbuild.imaging import read_image

    gallery = media / "gallery"
    names = sorted(p.name for p in gallery.iterdir() if p.is_dir())[:2]
    for name in names:
        photo = sorted((gallery / name).iterdir())[0]
        rgb = read_image(str(photo))
        scale = 400 / max(rgb.shape[:2])
        small = cv2.resize(rgb, (round(rgb.shape[1] * scale), round(rgb.shape[0] * scale)))
        (tmp_path / "src" / name).mkdir(parents=True)
        cv2.imwrite(str(tmp_path / "src" / name / "1.jpg"), small[..., ::-1])
    (tmp_path / "src" / names[0] / "blank.jpg").write_bytes(
        encode_jpeg(np.full((200, 200, 3), 128, np.uint8))
    )
    res = CliRunner().invoke(
        cli, ["import-identities", str(tmp_path / "src"), "--out", str(tmp_path / "ids"), "--device", "cpu"]
    )
    assert res.exit_code == 0, res.output
    assert json.loads(res.stdout.strip().splitlines()[-1]) == {
        "identities": 2,
        "images": 2,
        "skipped": 1,
        "refused": 0,
    }
    skipped = json.loads((tmp_path / "ids" / "skipped.json").read_text())
    assert skipped[0]["reason"] == "no_face"
    ids = read_identities(tmp_path / "ids")
    from seqbuild.imaging import decode_jpeg

    crop = decode_jpeg(ids.images[0].as_py())
    assert crop.shape == (144, 144, 3)
