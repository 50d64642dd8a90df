"""`seqbuild train` end to end on a small final dataset plus identity set; exact resume; checkpoints."""

from __future__ import annotations

import csv
import json

import pytest
import torch
from click.testing import CliRunner
from test_train_data import make_final_dataset, make_identity_folder, make_training_inputs, tiny_train_args

from seqbuild._cli.main import cli
from seqbuild.config import build
from seqbuild.errors import ConfigError, InputError
from seqbuild.train.checkpoint import load_backbone_for_inference, load_checkpoint
from seqbuild.train.config import TrainConfig
from seqbuild.train.trainer import lr_at, run_train


@pytest.fixture(scope="module")
def data(tmp_path_factory):
    return make_training_inputs(tmp_path_factory.mktemp("traindata"), identities=4, sequences=6)


def write_pairs(path) -> None:
    """An LFW-style pairs file over the identity photos of ``data``: 3 same and 3 different pairs per person."""
    lines = ["10\t2"]
    for k in range(4):
        lines += [f"person_{k}\t{i}\t{i + 1}" for i in (1, 3, 5)]
        lines += [f"person_{k}\t{i}\tperson_{(k + 1) % 4}\t{i}" for i in (1, 2, 3)]
    path.write_text("\n".join(lines) + "\n")


def _cfg(data, out, **kw):
    base = {
        "identities": str(data / "ids"),
        "sequences": [str(data / "run")],
        "backbone": "tiny",
        "embedding_dim": 16,
        "image_size": 36,
        "crop_size": 32,
        "batch_size": 8,
        "workers": 0,
        "device": "cpu",
        "epochs": 3,
        "lr": 0.05,
        "dsa_p": 0.5,
        "out": str(out),
        "tensorboard": False,
        "log_every": 1,
        "lr_steps": [3],
    }
    base.update(kw)
    return build(TrainConfig, base)


def _state(path):
    s = load_checkpoint(path)
    return s


def _assert_same(a, b):
    for part in ("model", "chief", "aux"):
        assert a[part].keys() == b[part].keys()
        for k in a[part]:
            assert torch.equal(a[part][k], b[part][k]), f"{part}.{k} differs"
    ma = [v["momentum_buffer"] for v in a["optimizer"]["state"].values()]
    mb = [v["momentum_buffer"] for v in b["optimizer"]["state"].values()]
    assert all(torch.equal(x, y) for x, y in zip(ma, mb, strict=True))
    assert (a["step"], a["epoch"], a["batch_in_epoch"]) == (b["step"], b["epoch"], b["batch_in_epoch"])


def test_resume_gives_the_same_weights_as_an_uninterrupted_run(data, tmp_path):
    full = run_train(_cfg(data, tmp_path / "full", max_steps=7), progress=False)
    assert full["steps"] == 7
    # interrupted at step 3 (mid-epoch: 4 batches per epoch), resumed with a worker process decoding
    part = run_train(_cfg(data, tmp_path / "part", max_steps=3), progress=False)
    assert part["steps"] == 3
    at3 = _state(tmp_path / "part" / "last.pt")
    resumed = run_train(_cfg(data, tmp_path / "part", max_steps=7, workers=1), progress=False)
    assert resumed["steps"] == 7
    a, b = _state(tmp_path / "full" / "last.pt"), _state(tmp_path / "part" / "last.pt")
    _assert_same(a, b)
    assert not torch.equal(a["aux"]["centres"], torch.zeros_like(a["aux"]["centres"]))  # centres moved
    # the comparison can fail: the weights after 3 steps differ from those after 7
    assert not torch.equal(at3["model"]["fc5.weight"], b["model"]["fc5.weight"])


def test_log_has_every_loss_component_and_checkpoint_is_weights_only(data, tmp_path):
    run_train(_cfg(data, tmp_path / "o", max_steps=2), progress=False)
    rows = list(csv.DictReader(open(tmp_path / "o" / "train_log.csv")))
    assert [int(r["step"]) for r in rows] == [1, 2]
    for col in ("loss", "chief_loss", "ce_identity", "ce_sequence", "aux_loss", "dsa_pull", "dsa_push", "lr"):
        assert col in rows[0]
    assert abs(float(rows[0]["loss"]) - float(rows[0]["chief_loss"]) - float(rows[0]["aux_loss"])) < 1e-4
    state = torch.load(tmp_path / "o" / "last.pt", weights_only=True)
    assert state["num_identities"] == 4 and state["num_sequences"] == 6
    model = load_backbone_for_inference(tmp_path / "o" / "last.pt", "cpu")
    feats = model(torch.zeros(3, 3, 32, 32))
    assert feats.shape == (3, 16) and not model.training


@pytest.mark.parametrize(
    "chief,aux", [("softmax", ""), ("l2_sphereface", "center"), ("arcface", "margin"), ("cosface", "dsa")]
)
def test_other_losses_train(data, tmp_path, chief, aux):
    out = run_train(_cfg(data, tmp_path / "o", max_steps=2, chief_loss=chief, aux_loss=aux), progress=False)
    assert out["steps"] == 2 and out["final_loss"] == out["final_loss"]  # finite, not NaN


def test_resume_refuses_other_data(data, tmp_path):
    run_train(_cfg(data, tmp_path / "o", max_steps=1), progress=False)
    with pytest.raises(InputError, match="6 sequences"):
        run_train(_cfg(data, tmp_path / "o", max_steps=2, sequences=[]), progress=False)


def test_config_errors():
    with pytest.raises(ConfigError, match="out"):
        run_train(build(TrainConfig, {"identities": "x"}))
    with pytest.raises(ConfigError, match="unknown"):
        build(TrainConfig, {"nope": 1})


def test_lr_schedule():
    assert lr_at(0, 0.1, [10, 20], 0.1) == 0.1
    assert lr_at(10, 0.1, [10, 20], 0.1) == pytest.approx(0.01)
    assert lr_at(25, 0.1, [10, 20], 0.1) == pytest.approx(0.001)


def test_cli_train_then_eval_on_pairs(data, tmp_path):
    out = tmp_path / "ckpt"
    res = CliRunner().invoke(cli, tiny_train_args(data, out, 3))
    assert res.exit_code == 0, res.output
    assert json.loads(res.stdout[res.stdout.index("{") :])["steps"] == 3
    assert (out / "config.toml").exists() and (out / "last.pt").exists()
    # LFW-style pairs over the identity photos
    src = data / "src"
    write_pairs(tmp_path / "pairs.txt")
    res = CliRunner().invoke(
        cli,
        [
            "eval",
            str(out / "last.pt"),
            "--pairs",
            str(tmp_path / "pairs.txt"),
            "--images",
            str(src),
            "--device",
            "cpu",
            "--out",
            str(tmp_path / "r.json"),
        ],
    )
    assert res.exit_code == 0, res.output
    assert "24 pairs" in res.output and "10-fold accuracy" in res.output
    r = json.loads((tmp_path / "r.json").read_text())["pairs.txt"]
    assert r["positives"] == 12 and 0.0 <= r["kfold_accuracy"] <= 1.0


def test_cli_eval_missing_model_is_one_line(tmp_path):
    res = CliRunner().invoke(cli, ["eval", str(tmp_path / "none.pt"), "--device", "cpu"])
    assert res.exit_code != 0 and "none.pt" in res.output and "Traceback" not in res.output


@pytest.mark.parametrize("name,blocks", [("resnet27", [1, 2, 5, 3]), ("resnet64", [3, 8, 16, 3])])
def test_backbones_shapes_and_depth(name, blocks):
    from seqbuild.train.backbones import ResidualBlock, create_backbone

    model = create_backbone(name).eval()
    assert sum(isinstance(m, ResidualBlock) for m in model.modules()) == sum(blocks)
    widths = [m.body[0][0].out_channels for m in model.modules() if isinstance(m, ResidualBlock)]
    expect = [w for w, n in zip([64, 128, 256, 512], blocks, strict=True) for _ in range(n)]
    assert widths == expect
    with torch.no_grad():
        assert model(torch.zeros(1, 3, 128, 128)).shape == (1, 512)


def test_stage_entry_uses_the_run_dataset(data, tmp_path):
    import shutil

    from seqbuild.train.stage import run_train_stage

    run = tmp_path / "run"
    shutil.copytree(data / "run", run)
    cfg = _cfg(data, "", sequences=[], max_steps=1)
    out = run_train_stage(run, cfg, progress=False)
    assert out["sequences"] == 6 and (run / "train" / "last.pt").exists()


def test_undecodable_crop_is_skipped_not_fatal(data, tmp_path):
    import pyarrow as pa

    from seqbuild.schema import FACES
    from seqbuild.storage import read_table, write_table

    run = tmp_path / "run"
    make_final_dataset(run, sequences=3, per_sequence=4)
    path = next((run / "dataset" / "faces").glob("*.parquet"))
    table = read_table(path, FACES)
    images = table.column("image").to_pylist()
    images[0] = b"\xff\xd8 broken"
    table = table.set_column(table.schema.get_field_index("image"), "image", pa.array(images, pa.binary()))
    write_table(path, table, FACES, "faces")
    out = run_train(_cfg(data, tmp_path / "o", sequences=[str(run)], max_steps=8, amp="bf16"), progress=False)
    assert out["steps"] == 8 and out["undecodable_images_skipped"] >= 1
    assert out["final_loss"] == out["final_loss"]  # bf16 autocast on CPU, losses in fp32: finite


@pytest.mark.slow
def test_torch_compile_trains_and_checkpoints(data, tmp_path):
    out = run_train(_cfg(data, tmp_path / "c", max_steps=2, compile=True), progress=False)
    assert out["steps"] == 2
    state = load_checkpoint(tmp_path / "c" / "last.pt")
    assert not any("_orig_mod" in k for k in state["model"])


# ---------------------------------------------------------------- step, fp16 safety, clipping


def _tiny_model(centre_update="rate", **cfg):
    from seqbuild.train.backbones import create_backbone
    from seqbuild.train.trainer import SeqFaceModel, build_losses

    torch.manual_seed(0)
    config = build(TrainConfig, {"dsa_p": 1.0, "centre_update": centre_update, **cfg})
    chief, aux = build_losses(config, 3, 4, 8)
    return SeqFaceModel(create_backbone("tiny", dim=8), chief, aux)


def _batch(seed=0):
    g = torch.Generator().manual_seed(seed)
    return torch.randn(6, 3, 32, 32, generator=g), torch.tensor([0, 1, 2, 3, 4, 6])


def _snapshot(model):
    return {k: v.clone() for k, v in model.state_dict().items()}


@pytest.mark.parametrize("centre_update", ["rate", "solver"])
def test_a_step_the_loss_scaler_skips_leaves_centres_and_weights_untouched(centre_update):
    """fp16: after an overflow the GradScaler skips the step; the centre update (and BatchNorm
    statistics) must skip it too, or one overflow poisons the centres for good."""
    from seqbuild.train.trainer import train_step

    model = _tiny_model(centre_update)
    opt = torch.optim.SGD(model.parameters(), lr=0.1, momentum=0.9)
    scaler = torch.amp.GradScaler("cpu")
    x, y = _batch()
    first = train_step(model, opt, x, y, 0, scaler)
    assert first["skipped_step"] == 0.0
    before, scale = _snapshot(model), scaler.get_scale()
    x[2, 0, 0, 0] = float("inf")  # one overflowing activation
    comps = train_step(model, opt, x, y, 1, scaler)
    assert comps["skipped_step"] == 1.0 and scaler.get_scale() < scale
    after = model.state_dict()
    for k, v in before.items():
        assert torch.equal(v, after[k]), f"{k} changed on a skipped step"
    assert torch.isfinite(model.aux.centres).all()
    # and training carries on normally afterwards
    x, y = _batch(1)
    assert train_step(model, opt, x, y, 2, scaler)["skipped_step"] == 0.0
    assert not torch.equal(before["aux.centres"], model.aux.centres)


def test_non_finite_loss_without_a_scaler_stops_before_any_update():
    from seqbuild.train.losses import TrainingDivergedError
    from seqbuild.train.trainer import train_step

    model = _tiny_model()
    opt = torch.optim.SGD(model.parameters(), lr=0.1)
    x, y = _batch()
    x[0, 0, 0, 0] = float("nan")
    before = _snapshot(model)
    with pytest.raises(TrainingDivergedError, match="step 5: non-finite loss"):
        train_step(model, opt, x, y, 5)
    params_after = dict(model.named_parameters())
    assert all(torch.equal(before[k], params_after[k]) for k in params_after)


def test_gradient_clip_bounds_the_update():
    from seqbuild.train.trainer import train_step

    model = _tiny_model()
    opt = torch.optim.SGD(model.parameters(), lr=0.5, momentum=0.9, weight_decay=0.0)
    before = [p.detach().clone() for p in model.parameters()]
    x, y = _batch()
    comps = train_step(model, opt, x, y, 0, clip_grad_norm=1e-3)
    assert comps["grad_norm"] > 1e-3  # the raw gradient was larger than the clip
    moved = torch.sqrt(
        sum(((p.detach() - b) ** 2).sum() for p, b in zip(model.parameters(), before, strict=True))
    )
    assert float(moved) <= 0.5 * 1e-3 * 1.0001


def test_lr_warmup():
    assert lr_at(0, 0.1, [], 0.1, warmup=4) == pytest.approx(0.025)
    assert lr_at(3, 0.1, [], 0.1, warmup=4) == pytest.approx(0.1)
    assert lr_at(10, 0.1, [5], 0.1, warmup=4) == pytest.approx(0.01)


def test_build_training_puts_every_trainable_tensor_in_the_optimiser(data, tmp_path):
    from seqbuild.train.trainer import build_training

    tr = build_training(_cfg(data, tmp_path / "b"))
    in_opt = {id(p) for g in tr.optimiser.param_groups for p in g["params"]}
    assert {id(p) for p in tr.model.parameters()} == in_opt
    assert {id(p) for p in tr.model.chief.parameters()} <= in_opt  # the class weights train too
    assert tr.counts == {"identities": 4, "identity_images": 32, "sequences": 6, "sequence_images": 30}
    assert tr.step == 0 and tr.net is tr.model  # no DDP wrapper in a single process


# ---------------------------------------------------------------- fine-tuning


def test_init_loads_the_head_when_the_identity_list_matches(data, tmp_path, caplog):
    """Phase 2 of the recipe trains the same identities: the classifier comes with the backbone."""
    import logging

    run_train(
        _cfg(data, tmp_path / "p1", max_steps=3, chief_loss="l2_sphereface", aux_loss=""), progress=False
    )
    p1 = load_checkpoint(tmp_path / "p1" / "last.pt")
    caplog.set_level(logging.INFO, logger="seqbuild.train")
    # lr 0: the fine-tuning step changes nothing, so the weights seen are the ones loaded
    out = run_train(
        _cfg(data, tmp_path / "p2", max_steps=1, lr=0.0, init=str(tmp_path / "p1" / "last.pt")),
        progress=False,
    )
    p2 = load_checkpoint(tmp_path / "p2" / "last.pt")
    assert torch.equal(p2["chief"]["weight"], p1["chief"]["weight"])
    assert torch.equal(p2["model"]["fc5.weight"], p1["model"]["fc5.weight"])
    assert out["initialised_from"]["loaded"] == ["backbone", "head"]
    assert "loaded backbone, head (same identity list: 4 classes" in caplog.text


def test_init_keeps_a_fresh_head_for_another_identity_list(data, tmp_path, caplog):
    import logging

    make_identity_folder(tmp_path / "src5", identities=5, per_identity=4)
    res = CliRunner().invoke(
        cli, ["import-identities", str(tmp_path / "src5"), "--out", str(tmp_path / "ids5"), "--aligned"]
    )
    assert res.exit_code == 0, res.output
    run_train(_cfg(data, tmp_path / "p1", max_steps=2, aux_loss=""), progress=False)
    caplog.set_level(logging.INFO, logger="seqbuild.train")
    cfg = _cfg(
        data,
        tmp_path / "p2",
        max_steps=1,
        lr=0.0,
        identities=str(tmp_path / "ids5"),
        init=str(tmp_path / "p1" / "last.pt"),
    )
    out = run_train(cfg, progress=False)
    assert out["initialised_from"]["loaded"] == ["backbone"]
    assert "head not loaded: its identity list" in caplog.text
    assert load_checkpoint(tmp_path / "p2" / "last.pt")["chief"]["weight"].shape[0] == 5


# ---------------------------------------------------------------- validation while training


def _write_bin(path, images, issame):
    import pickle

    import numpy as np

    from seqbuild.imaging import encode_jpeg

    with open(path, "wb") as fh:
        pickle.dump(([encode_jpeg(im) for im in images], np.asarray(issame, bool)), fh, protocol=4)


def test_validation_every_n_steps_on_bin_and_pairs(data, tmp_path):
    import numpy as np

    from seqbuild.imaging import read_image

    src = data / "src"
    write_pairs(tmp_path / "pairs.txt")
    images, issame = [], []
    for k in range(4):
        for i in (1, 2, 3):
            images += [
                read_image(str(src / f"person_{k}" / f"person_{k}_{i:04d}.jpg")),
                read_image(str(src / f"person_{k}" / f"person_{k}_{i + 1:04d}.jpg")),
            ]
            images += [
                read_image(str(src / f"person_{k}" / f"person_{k}_{i:04d}.jpg")),
                read_image(str(src / f"person_{(k + 1) % 4}" / f"person_{(k + 1) % 4}_{i:04d}.jpg")),
            ]
            issame += [True, False]
    _write_bin(tmp_path / "tiny.bin", images, issame)
    cfg = _cfg(
        data,
        tmp_path / "o",
        max_steps=5,
        val_every=2,
        val_bins=[str(tmp_path / "tiny.bin")],
        val_pairs=str(tmp_path / "pairs.txt"),
        val_images=str(src),
    )
    out = run_train(cfg, progress=False)
    rows = list(csv.DictReader(open(tmp_path / "o" / "val_log.csv")))
    assert [(int(r["step"]), r["set"]) for r in rows] == [
        (s, n) for s in (2, 4, 5) for n in ("tiny.bin", "pairs.txt")
    ]
    for r in rows:
        assert int(r["pairs"]) == 24
        assert 0.0 <= float(r["kfold_accuracy"]) <= 1.0 and 0.5 <= float(r["best_threshold_accuracy"]) <= 1.0
    assert set(out["validation"]) == {"tiny.bin", "pairs.txt"}
    # the same figures as `seqbuild eval` gives for that checkpoint (same functions, same crops)
    from seqbuild.train.evaluate import evaluate_bin

    model = load_backbone_for_inference(tmp_path / "o" / "last.pt", "cpu")
    again = evaluate_bin(model, tmp_path / "tiny.bin")
    assert np.isclose(again["kfold_accuracy"], float(rows[-2]["kfold_accuracy"]))


def test_validation_set_errors_name_the_file(data, tmp_path):
    with pytest.raises(InputError, match="missing.bin"):
        run_train(
            _cfg(data, tmp_path / "o", max_steps=1, val_bins=[str(tmp_path / "missing.bin")]), progress=False
        )
