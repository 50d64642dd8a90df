"""Verification metrics, pairs parsing, the safe .bin loader, video verification."""

from __future__ import annotations

import os
import pickle

import numpy as np
import pytest
import torch
from test_train_data import face_image

from seqbuild.errors import InputError
from seqbuild.imaging import encode_jpeg
from seqbuild.train.evaluate import (
    best_threshold,
    evaluate_bin,
    evaluate_videos,
    kfold_accuracy,
    load_verification_bin,
    read_pairs,
    tar_at_far,
    verification_report,
)


class MeanColour(torch.nn.Module):
    """A 'model' whose feature is the mean colour of the image: enough to check the evaluation plumbing."""

    dim = 3

    def forward(self, x):
        return x.mean(dim=(2, 3)) + 1e-3


def test_metrics_on_separable_and_known_scores():
    rng = np.random.default_rng(0)
    same = np.array([True] * 300 + [False] * 300)
    scores = np.where(same, rng.uniform(0.6, 1.0, 600), rng.uniform(-1.0, 0.4, 600))
    acc, std = kfold_accuracy(scores, same)
    assert acc == 1.0 and std == 0.0
    t, best = best_threshold(scores, same)
    assert best == 1.0 and 0.4 <= t <= 0.6
    # one flipped pair: best accuracy 599/600
    scores[0] = -0.9
    assert best_threshold(scores, same)[1] == pytest.approx(599 / 600)


def test_tar_at_far_counts_false_accepts():
    neg = np.linspace(0, 1, 2000)  # 2000 negatives: FAR 1e-3 allows 2 above the threshold
    pos = np.array([0.9985, 0.9995, 0.99975, 1.5])
    scores = np.concatenate([pos, neg])
    same = np.array([True] * 4 + [False] * 2000)
    tar, thr = tar_at_far(scores, same, 1e-3)
    assert np.sum(neg >= thr) <= 2 and np.sum(neg >= thr - 1e-6) >= 2
    assert tar == pytest.approx(np.mean(pos >= thr))
    assert 0 < tar < 1


def test_kfold_threshold_is_chosen_without_the_test_fold():
    # scores decide perfectly only with a threshold learned on other folds: a fold whose own best
    # threshold differs must lose accuracy, so 10-fold < best-threshold accuracy here
    rng = np.random.default_rng(1)
    same = rng.random(400) < 0.5
    scores = np.where(same, 0.5, 0.0) + rng.normal(0, 0.3, 400)
    r = verification_report(scores, same)
    assert r["kfold_accuracy"] <= r["best_threshold_accuracy"]
    assert r["pairs"] == 400


def test_read_pairs_formats_and_bad_line(tmp_path):
    p = tmp_path / "pairs.txt"
    p.write_text("10\t300\nAbel\t1\t2\nAbel\t1\tBob\t3\n")
    pairs = read_pairs(p, tmp_path / "img")
    assert pairs[0][2] is True and pairs[1][2] is False
    assert pairs[1][1].name == "Bob_0003.jpg"
    p.write_text("Abel\t1\t2\nAbel\tx\ty\tz\tw\n")
    with pytest.raises(InputError, match=r"pairs.txt:2"):
        read_pairs(p, tmp_path)


def _bin(tmp_path, n_pairs=10):
    rng = np.random.default_rng(0)
    bins, same = [], []
    for k in range(n_pairs):
        a, b = k % 5, (k % 5 if k % 2 == 0 else (k + 1) % 5)
        bins += [encode_jpeg(face_image(a, rng, 36)), encode_jpeg(face_image(b, rng, 36))]
        same.append(a == b)
    path = tmp_path / "lfw.bin"
    path.write_bytes(pickle.dumps((bins, np.array(same, dtype=bool)), protocol=2))
    return path, np.array(same)


def test_bin_loads_and_evaluates(tmp_path):
    path, same = _bin(tmp_path)
    bins, issame = load_verification_bin(path)
    assert len(bins) == 20 and issame.tolist() == same.tolist()
    model = MeanColour()
    model.image_size, model.crop_size = 36, 32
    r = evaluate_bin(model, path)
    assert r["pairs"] == 10 and r["positives"] == int(same.sum())


class _Evil:
    def __reduce__(self):
        return (os.system, ("touch /tmp/seqbuild_pwned_by_bin",))


def test_malicious_bin_is_refused(tmp_path):
    marker = "/tmp/seqbuild_pwned_by_bin"
    if os.path.exists(marker):
        os.remove(marker)
    path = tmp_path / "evil.bin"
    path.write_bytes(pickle.dumps(([b"x", b"y"], _Evil())))
    with pytest.raises(InputError, match="not allowed"):
        load_verification_bin(path)
    assert not os.path.exists(marker)
    # a float array where the bool labels should be is refused too
    path.write_bytes(pickle.dumps(([b"x", b"y"], np.array([1.0]))))
    with pytest.raises(InputError, match="boolean"):
        load_verification_bin(path)
    path.write_bytes(b"garbage")
    with pytest.raises(InputError, match="evil.bin"):
        load_verification_bin(path)


def test_video_verification_uses_mean_features(tmp_path):
    import cv2

    rng = np.random.default_rng(0)
    for v, kind in [("a1", 0), ("a2", 0), ("b1", 3), ("b2", 3)]:
        (tmp_path / "v" / v).mkdir(parents=True)
        for f in range(3):
            cv2.imwrite(str(tmp_path / "v" / v / f"{f}.png"), face_image(kind, rng, 36)[..., ::-1])
    lines = ["video1,video2,same"]
    lines += ["a1,a2,1", "b1,b2,1", "a1,b1,0", "a2,b2,0"] * 3
    (tmp_path / "pairs.csv").write_text("\n".join(lines))
    model = MeanColour()
    model.image_size, model.crop_size = 36, 32
    r = evaluate_videos(model, tmp_path / "pairs.csv", tmp_path / "v")
    assert r["pairs"] == 12 and r["best_threshold_accuracy"] == 1.0


def _checkpoint(path):
    from seqbuild.train.backbones import create_backbone
    from seqbuild.train.checkpoint import save_checkpoint

    torch.manual_seed(0)
    net = create_backbone("tiny", input_size=32, dim=8)
    state = {"backbone": "tiny", "backbone_kwargs": {"input_size": 32, "dim": 8}, "model": net.state_dict()}
    return save_checkpoint(path, {**state, "crop_size": 32})


def test_eval_pairs_help_documents_the_file_format():
    from click.testing import CliRunner

    from seqbuild._cli.main import cli

    text = " ".join(CliRunner().invoke(cli, ["eval", "--help"], terminal_width=200).output.split())
    assert "'folds pairs_per_fold'" in text  # the header
    assert "'NAME I J'" in text and "'NAME1 I NAME2 J'" in text  # the rows
    assert "IMAGES/NAME/NAME_NNNN.jpg" in text and "NAME_0001.jpg" in text  # the file naming
    assert "144" in text and "128" in text  # what the crops become


def test_eval_missing_image_is_one_line_without_opencv_warnings(tmp_path, capfd):
    from click.testing import CliRunner

    from seqbuild._cli.main import cli

    checkpoint = _checkpoint(tmp_path / "last.pt")
    rng = np.random.default_rng(0)
    for name in ("Abel", "Bob"):
        (tmp_path / "img" / name).mkdir(parents=True)
        for i in (1, 2):
            (tmp_path / "img" / name / f"{name}_{i:04d}.jpg").write_bytes(
                encode_jpeg(face_image(i, rng, 144))
            )
    pairs = tmp_path / "pairs.txt"
    rows = ["Abel\t1\t2", "Bob\t1\t2", "Abel\t1\tBob\t2", "Abel\t2\tBob\t1"] * 5
    pairs.write_text("\n".join(["2\t10", *rows, "Abel\t1\tBob\t3"]) + "\n")  # Bob_0003.jpg does not exist
    args = [
        "eval",
        str(checkpoint),
        "--pairs",
        str(pairs),
        "--images",
        str(tmp_path / "img"),
        "--device",
        "cpu",
    ]
    res = CliRunner().invoke(cli, args)
    assert res.exit_code == 1
    assert res.output.strip().splitlines() == [
        f"error: {tmp_path / 'img' / 'Bob' / 'Bob_0003.jpg'}: cannot open (No such file or directory)"
    ]
    captured = capfd.readouterr()
    assert "WARN" not in captured.err + captured.out  # nothing from OpenCV's own logging on the descriptors
    (tmp_path / "img" / "Bob" / "Bob_0003.jpg").write_bytes(encode_jpeg(face_image(3, rng, 144)))
    res = CliRunner().invoke(cli, args)
    assert res.exit_code == 0 and "pairs.txt: 21 pairs" in res.output, res.output
