"""ONNX face-recognition models (insightface's model zoo and models exported by `seqbuild weights export-onnx`).

The convention is insightface's: one input of shape (N, 3, 112, 112), an RGB face aligned to the 5-point
112x112 ArcFace template, scaled as (x - 127.5) / 127.5; one output of shape (N, dim). A model whose
graph starts with its own Sub and Mul nodes does that scaling itself and is fed raw 0..255 values (as
insightface's own loader decides).

Ingest stores 144x144 crops aligned to the scaled SphereFace template (:mod:`seqbuild.ingest.align`), so
the landmark positions of every stored crop are known exactly: the 112 ArcFace crop is derived from the
stored crop by the similarity transform between the two templates, without going back to the frame.
(The ArcFace template is SphereFace's 96x112 template moved 8 px right, so the transform is a scale of
112/128 and a shift: the 144 crop's centre 128 square, resized to 112.)
"""

from __future__ import annotations

import hashlib
import logging
from pathlib import Path
from typing import Any

import numpy as np

from ..devices import resolve_device
from ..errors import InputError, MissingWeightsError, requires
from ..ingest.align import SPHEREFACE_96x112, template_points, umeyama_similarity
from .models import EMBEDDERS, Embedder, _check_crops, l2_normalise

log = logging.getLogger(__name__)

ARCFACE_112 = SPHEREFACE_96x112 + np.array([8.0, 0.0])
"""insightface's 5-point template in a 112x112 crop (SphereFace's 96x112 template centred in 112 wide)."""

INSIGHTFACE_ALIGNMENT = "arcface112"
INPUT_SIZE = 112
CPU_BATCH = 32
CUDA_BATCH = 256


def arcface_matrix(crop_size: int, size: int = INPUT_SIZE) -> np.ndarray:
    """The 2x3 similarity transform from a stored ``crop_size`` crop's template points to the ArcFace template."""
    return umeyama_similarity(template_points(crop_size), ARCFACE_112 * (size / 112.0))


def arcface_crops(crops: np.ndarray, size: int = INPUT_SIZE) -> np.ndarray:
    """ArcFace-aligned ``size`` x ``size`` crops derived from stored aligned crops (n, S, S, 3) uint8."""
    import cv2

    if len(crops) == 0:
        return np.zeros((0, size, size, 3), np.uint8)
    matrix = arcface_matrix(crops.shape[1], size)
    # Downscaling by 112/128: bilinear on the warp is close to area averaging at that ratio.
    return np.stack(
        [
            cv2.warpAffine(c, matrix, (size, size), flags=cv2.INTER_LINEAR, borderMode=cv2.BORDER_REPLICATE)
            for c in crops
        ]
    )


def file_digest(path: str | Path) -> str:
    """A content hash of a file (16 hex digits): the model id of an ONNX model names its content."""
    h = hashlib.blake2b(digest_size=8)
    with open(path, "rb") as fh:
        while chunk := fh.read(1 << 20):
            h.update(chunk)
    return h.hexdigest()


def _dims(shape: list[Any]) -> list[Any]:
    return [d if isinstance(d, int) and d > 0 else None for d in shape]


def scales_itself(path: str | Path) -> bool:
    """True when the graph begins with Sub and Mul nodes (it standardises its input itself)."""
    try:
        onnx = requires("onnx", "onnx")
        model = onnx.load(str(path), load_external_data=False)
    except Exception:  # no onnx package, or unreadable: onnxruntime has reported a bad file already
        return False
    first = [node.op_type for node in list(model.graph.node)[:8]]
    return "Sub" in first and "Mul" in first


@EMBEDDERS.register("onnx")
class OnnxEmbedder(Embedder):
    """A recognition model in ONNX, run by onnxruntime (CUDA provider when present and asked for)."""

    name = "onnx"
    alignment = INSIGHTFACE_ALIGNMENT
    same_identity_threshold = 0.3
    """A placeholder for ArcFace-family models (insightface verifies at about 0.2-0.3 on 112 crops);
    measure it for the model at hand (`seqbuild eval`)."""

    def __init__(self, weights: str = "", device: str = "auto", batch_size: int = 0, **_: Any) -> None:
        if not weights:
            raise MissingWeightsError("the onnx embedder needs a model file: name it in the model, onnx:PATH")
        path = Path(weights)
        if not path.is_file():
            raise InputError(f"{path}: ONNX model not found")
        ort = requires("onnxruntime", "onnx")
        self.weights = str(path)
        self.device = resolve_device(device)
        available = ort.get_available_providers()
        providers = ["CPUExecutionProvider"]
        if self.device.startswith("cuda") and "CUDAExecutionProvider" in available:
            index = int(self.device.split(":", 1)[1]) if ":" in self.device else 0
            providers = [("CUDAExecutionProvider", {"device_id": index}), "CPUExecutionProvider"]
        elif self.device.startswith("cuda"):
            log.warning("%s: onnxruntime has no CUDA provider here; running on the CPU", path)
        options = ort.SessionOptions()
        options.log_severity_level = 3
        try:
            self.session = ort.InferenceSession(str(path), sess_options=options, providers=providers)
        except Exception as exc:
            first = str(exc).strip().splitlines()[0][:160] if str(exc).strip() else type(exc).__name__
            raise InputError(f"{path}: not a loadable ONNX model ({first})") from None
        inputs, outputs = self.session.get_inputs(), self.session.get_outputs()
        shape = _dims(inputs[0].shape) if len(inputs) == 1 else []
        if len(inputs) != 1 or len(shape) != 4 or shape[1:] != [3, INPUT_SIZE, INPUT_SIZE]:
            got = ", ".join(f"{i.name} {i.shape}" for i in inputs)
            raise InputError(
                f"{path}: expected one input of shape (N, 3, {INPUT_SIZE}, {INPUT_SIZE}) (an insightface"
                f" recognition model), got {got or 'none'}"
            )
        out_shape = _dims(outputs[0].shape) if outputs else []
        if len(outputs) != 1 or len(out_shape) != 2 or out_shape[1] is None:
            got = ", ".join(f"{o.name} {o.shape}" for o in outputs)
            raise InputError(
                f"{path}: expected one output of shape (N, dim) (a face embedding), got {got or 'none'}"
            )
        if inputs[0].type != "tensor(float)":
            raise InputError(f"{path}: expected a float32 input, got {inputs[0].type}")
        self.input_name = inputs[0].name
        self.fixed_batch = shape[0]
        self.dim = int(out_shape[1])
        default = CUDA_BATCH if providers[0] != "CPUExecutionProvider" else CPU_BATCH
        self.batch_size = self.fixed_batch or (int(batch_size) if batch_size > 0 else default)
        self.raw_input = scales_itself(path)
        self.weights_digest = file_digest(path)
        self.input_spec = f"rgb{'-raw' if self.raw_input else '-127.5'}-{INPUT_SIZE}"

    def prepare(self, batch: np.ndarray) -> np.ndarray:
        """Stored crops (n, S, S, 3) uint8 -> the model's input (n, 3, 112, 112) float32."""
        x = arcface_crops(batch).astype(np.float32)
        if not self.raw_input:
            x = (x - 127.5) / 127.5
        return np.ascontiguousarray(x.transpose(0, 3, 1, 2))

    def embed(self, crops: list[np.ndarray]) -> np.ndarray:
        """Embeddings of stored aligned crops, L2-normalised."""
        batch = _check_crops(crops)
        out = np.zeros((len(batch), self.dim), np.float32)
        for start in range(0, len(batch), self.batch_size):
            x = self.prepare(batch[start : start + self.batch_size])
            try:
                (y,) = self.session.run(None, {self.input_name: x})[:1]
            except Exception as exc:
                first = str(exc).strip().splitlines()[0][:160]
                raise InputError(f"{self.weights}: the model failed on a batch of crops ({first})") from None
            y = np.asarray(y, np.float32)
            if y.shape != (len(x), self.dim):
                raise InputError(
                    f"{self.weights}: output of shape {y.shape} for {len(x)} crops (expected ({len(x)}, {self.dim}))"
                )
            out[start : start + len(x)] = y
        return l2_normalise(out)
