"""ONNX recognition models: the ArcFace 112 crop from the stored crop, `weights export-onnx` in insightface's
convention against the torch model, the model id, and bad models."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from click.testing import CliRunner
from test_train_data import face_image, make_final_dataset, make_identity_folder

from seqbuild._cli.main import cli
from seqbuild.config import build
from seqbuild.embed.models import create_embedder, model_id
from seqbuild.embed.onnx_embedder import ARCFACE_112, arcface_crops, arcface_matrix
from seqbuild.errors import InputError
from seqbuild.ingest.align import apply_transform, template_points
from seqbuild.train.config import TrainConfig
from seqbuild.train.trainer import run_train

pytest.importorskip("onnxruntime", reason="the onnx extra is not installed")


def test_the_arcface_crop_is_the_stored_crops_centre_square_scaled():
    m = arcface_matrix(144)
    assert np.allclose(apply_transform(m, template_points(144)), ARCFACE_112, atol=1e-6)
    # SphereFace's template centred in 112 wide: the 144 canvas's centre 128 square, scaled by 112/128
    assert np.allclose(m, [[112 / 128, 0, -8 * 112 / 128], [0, 112 / 128, -8 * 112 / 128]], atol=1e-6)
    crop = np.zeros((144, 144, 3), np.uint8)
    crop[8:136, 8:136] = 200  # the centre square fills the whole 112 crop
    out = arcface_crops(crop[None])[0]
    assert out.shape == (112, 112, 3) and out[1:-1, 1:-1].min() == 200


@pytest.fixture(scope="module")
def checkpoint(tmp_path_factory):
    """A tiny SeqFace backbone trained for a few steps on 144 crops (128 centre crop, the default)."""
    root = tmp_path_factory.mktemp("onnx")
    make_identity_folder(root / "src", identities=3, per_identity=4, size=144)
    res = CliRunner().invoke(
        cli, ["import-identities", str(root / "src"), "--out", str(root / "ids"), "--aligned"]
    )
    assert res.exit_code == 0, res.output
    make_final_dataset(root / "run", sequences=3, per_sequence=4, size=144)
    cfg = {
        "identities": str(root / "ids"),
        "sequences": [str(root / "run")],
        "backbone": "tiny",
        "embedding_dim": 16,
        "batch_size": 8,
        "workers": 0,
        "device": "cpu",
        "epochs": 1,
        "lr": 0.05,
        "out": str(root / "ckpt"),
        "tensorboard": False,
        "log_every": 1,
    }
    run_train(build(TrainConfig, cfg), progress=False)
    return root / "ckpt" / "last.pt"


def _crops(n=6, seed=0):
    rng = np.random.default_rng(seed)
    return [face_image(k % 3, rng, 144) for k in range(n)]


def test_exported_model_gives_the_torch_models_vectors(checkpoint, tmp_path):
    out = tmp_path / "seqface.onnx"
    res = CliRunner().invoke(cli, ["weights", "export-onnx", str(checkpoint), "--out", str(out)])
    assert res.exit_code == 0, res.output
    import onnxruntime as ort

    (inp,) = ort.InferenceSession(str(out), providers=["CPUExecutionProvider"]).get_inputs()
    assert inp.shape[1:] == [3, 112, 112] and not isinstance(inp.shape[0], int)  # dynamic batch
    torch_model = create_embedder("seqface", weights=str(checkpoint), device="cpu")
    onnx_model = create_embedder(f"onnx:{out}", device="cpu", batch_size=4)
    crops = _crops()
    a, b = torch_model.embed(crops), onnx_model.embed(crops)
    assert a.shape == b.shape == (6, 16)
    assert np.min(np.sum(a * b, axis=1)) > 0.999
    # the id names the file's content, insightface's input scaling and the ArcFace alignment
    mid = model_id(onnx_model)
    assert mid.startswith("onnx@") and mid.endswith("/rgb-127.5-112/arcface112")
    copy = tmp_path / "renamed.onnx"
    copy.write_bytes(out.read_bytes())
    assert model_id(create_embedder("onnx", weights=str(copy), device="cpu")) == mid
    assert mid != model_id(torch_model)


def test_exported_graph_scales_its_input_like_insightface(checkpoint, tmp_path):
    out = tmp_path / "m.onnx"
    from seqbuild.train.export import export_onnx

    export_onnx(checkpoint, out)
    import onnxruntime as ort

    sess = ort.InferenceSession(str(out), providers=["CPUExecutionProvider"])
    model = create_embedder("seqface", weights=str(checkpoint), device="cpu").model
    x = (arcface_crops(np.stack(_crops(2, seed=1))).astype(np.float32) - 127.5) / 127.5
    x = np.ascontiguousarray(x.transpose(0, 3, 1, 2))
    onnx_out = sess.run(None, {sess.get_inputs()[0].name: x})[0]
    ref = model(
        torch.nn.functional.interpolate(torch.from_numpy(x * 127.5 / 128), size=(128, 128), mode="bilinear")
    )
    assert np.allclose(onnx_out, ref.detach().numpy(), atol=1e-4)


class _Net(torch.nn.Module):
    def __init__(self, outputs=1):
        super().__init__()
        self.fc = torch.nn.Linear(3, 8)
        self.outputs = outputs

    def forward(self, x):
        y = self.fc(x.mean(dim=(2, 3)))
        return (y, y * 2) if self.outputs == 2 else y


def _export(module, shape, path):
    with torch.no_grad():
        torch.onnx.export(
            module,
            torch.zeros(shape),
            str(path),
            input_names=["data"],
            dynamic_axes={"data": {0: "batch"}},
            dynamo=False,
        )
    return path


@pytest.mark.filterwarnings("ignore::DeprecationWarning")
def test_bad_onnx_models_are_one_line_errors(tmp_path):
    wrong_input = _export(_Net(), (1, 3, 64, 64), tmp_path / "in64.onnx")
    with pytest.raises(InputError, match=r"in64.onnx: expected one input of shape \(N, 3, 112, 112\)"):
        create_embedder(f"onnx:{wrong_input}", device="cpu")
    two_outputs = _export(_Net(outputs=2), (1, 3, 112, 112), tmp_path / "two.onnx")
    with pytest.raises(InputError, match=r"two.onnx: expected one output of shape \(N, dim\)"):
        create_embedder(f"onnx:{two_outputs}", device="cpu")
    junk = tmp_path / "junk.onnx"
    junk.write_bytes(b"not a model")
    with pytest.raises(InputError, match="junk.onnx: not a loadable ONNX model"):
        create_embedder(f"onnx:{junk}", device="cpu")
    with pytest.raises(InputError, match="missing.onnx: ONNX model not found"):
        create_embedder(f"onnx:{tmp_path / 'missing.onnx'}", device="cpu")
    res = CliRunner().invoke(
        cli,
        ["gallery", "build", str(make_identity_folder(tmp_path / "photos")), "--out", str(tmp_path / "g")]
        + ["--model", f"onnx:{junk}", "--prealigned"],
    )
    assert (
        res.exit_code != 0
        and res.output.strip().count("\n") == 0
        and "not a loadable ONNX model" in res.output
    )


def test_a_gallery_built_with_an_onnx_model_records_its_full_id(checkpoint, tmp_path):
    from seqbuild.overlap.gallery import load_gallery, same_model
    from seqbuild.train.export import export_onnx

    model = export_onnx(checkpoint, tmp_path / "m.onnx")
    photos = make_identity_folder(tmp_path / "photos", identities=2, per_identity=3, size=144)
    args = ["gallery", "build", str(photos), "--out", str(tmp_path / "g"), "--model", f"onnx:{model}"]
    res = CliRunner().invoke(cli, [*args, "--prealigned", "--no-progress"])
    assert res.exit_code == 0, res.output
    gallery = load_gallery(tmp_path / "g")
    onnx_id = model_id(create_embedder(f"onnx:{model}", device="cpu"))
    assert gallery.embedder == onnx_id and gallery.dim == 16
    torch_id = model_id(create_embedder("seqface", weights=str(checkpoint), device="cpu"))
    assert not same_model(gallery.embedder, torch_id)  # same weights, other input and alignment
