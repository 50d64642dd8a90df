"""Face detectors by name: each finds faces with five landmarks in batches of RGB frames.

The ``mtcnn`` detector is facenet-pytorch's MTCNN with the weights that ship inside the package (no
download). Frames larger than ``max_side`` are shrunk before the image pyramid is built, and the pyramid
starts at ``min_face`` (in source pixels), so big frames and a large minimum face both cut the work;
boxes and landmarks are mapped back to source pixels.
"""

from __future__ import annotations

import threading
from dataclasses import dataclass, field

import cv2
import numpy as np

from ..config import default_of
from ..devices import resolve_device
from ..registry import Registry

DETECTORS: Registry[FaceDetector] = Registry("face detector")

PNET_WINDOW = 12
"""MTCNN's smallest face in pixels (the P-net window): the pyramid never needs to go below it."""


@dataclass
class Face:
    """One detected face in source pixels: box (x1, y1, x2, y2), probability, five landmarks (5, 2).

    Landmarks are ordered left eye, right eye, nose, left mouth corner, right mouth corner (left/right
    as seen in the image).
    """

    box: np.ndarray
    score: float
    landmarks: np.ndarray = field(repr=False)

    @property
    def size(self) -> float:
        """Square root of the box area (the face side in pixels)."""
        w = max(float(self.box[2] - self.box[0]), 0.0)
        h = max(float(self.box[3] - self.box[1]), 0.0)
        return float(np.sqrt(w * h))


class FaceDetector:
    """Finds faces in a batch of RGB uint8 frames."""

    name = "base"
    batch_size: int = 8
    """Frames a caller gathers before calling :meth:`detect`."""

    def detect(self, frames: list[np.ndarray]) -> list[list[Face]]:
        """One list of faces per frame, in the frames' own pixels."""
        raise NotImplementedError


def downscale_factor(height: int, width: int, max_side: int) -> float:
    """The factor (<= 1) that brings the longest side of a frame down to ``max_side``."""
    longest = max(height, width)
    return 1.0 if longest <= max_side else max_side / float(longest)


@DETECTORS.register("mtcnn")
class MTCNNDetector(FaceDetector):
    """facenet-pytorch MTCNN (packaged weights), batched over frames of one size, every face kept."""

    name = "mtcnn"

    def __init__(
        self,
        device: str = "auto",
        min_face: int | None = None,
        threshold: float | None = None,
        max_side: int | None = None,
        stage_thresholds: tuple[float, float] = (0.6, 0.7),
        factor: float = 0.709,
        batch_size: int | None = None,
    ) -> None:
        import torch
        from facenet_pytorch import MTCNN

        from .config import IngestConfig

        min_face = default_of(IngestConfig, "min_face") if min_face is None else min_face
        threshold = default_of(IngestConfig, "threshold") if threshold is None else threshold
        max_side = default_of(IngestConfig, "max_side") if max_side is None else max_side
        batch_size = default_of(IngestConfig, "batch_size") if batch_size is None else batch_size

        self.device = resolve_device(device)
        self.min_face = int(min_face)
        self.threshold = float(threshold)
        self.max_side = int(max_side)
        self.factor = float(factor)
        self.batch_size = int(batch_size) or (16 if self.device.startswith("cuda") else 8)
        # The last stage's own threshold stays loose (MTCNN's default); `threshold` filters afterwards,
        # so a face's stored score is always O-net's probability.
        self.stage_thresholds = [float(stage_thresholds[0]), float(stage_thresholds[1]), 0.7]
        self._torch = torch
        self._model = MTCNN(
            keep_all=True,
            device=torch.device(self.device),
            min_face_size=self.min_face,
            thresholds=self.stage_thresholds,
            factor=self.factor,
            select_largest=False,
        ).eval()
        # MTCNN modules hold no per-call state, but torch intra-op pools are not meant to be shared by
        # concurrent callers: a lock keeps one detector object safe to use from several threads.
        self._lock = threading.Lock()

    def detect(self, frames: list[np.ndarray]) -> list[list[Face]]:
        """Detect faces in ``frames`` (RGB uint8), batching frames of equal size."""
        out: list[list[Face]] = [[] for _ in frames]
        groups: dict[tuple[int, int], list[int]] = {}
        for i, frame in enumerate(frames):
            if frame.ndim != 3 or frame.shape[2] != 3:
                raise ValueError(f"frame {i}: expected an RGB image (H, W, 3), got shape {frame.shape}")
            groups.setdefault(frame.shape[:2], []).append(i)
        for (h, w), idx in groups.items():
            for start in range(0, len(idx), self.batch_size):
                chunk = idx[start : start + self.batch_size]
                for i, faces in zip(
                    chunk, self._detect_same_size([frames[i] for i in chunk], h, w), strict=True
                ):
                    out[i] = faces
        return out

    def _detect_same_size(self, frames: list[np.ndarray], h: int, w: int) -> list[list[Face]]:
        from .mtcnn import detect_faces_batch

        scale = downscale_factor(h, w, self.max_side)
        if scale < 1.0:
            size = (max(1, round(w * scale)), max(1, round(h * scale)))
            frames = [cv2.resize(f, size, interpolation=cv2.INTER_AREA) for f in frames]
        batch = np.ascontiguousarray(np.stack(frames))
        # The pyramid starts where a face of `min_face` source pixels fills the P-net window; below
        # 12 pixels MTCNN would upsample, which finds nothing it can align well.
        minsize = max(float(PNET_WINDOW), self.min_face * scale)
        with self._lock, self._torch.inference_mode():
            boxes, points = detect_faces_batch(
                batch,
                minsize,
                self._model.pnet,
                self._model.rnet,
                self._model.onet,
                self.stage_thresholds,
                self.factor,
                self._model.device,
            )
        result: list[list[Face]] = []
        for frame_boxes, frame_points in zip(boxes, points, strict=True):
            faces = []
            frame_boxes = np.asarray(frame_boxes, dtype=np.float64).reshape(-1, 5)
            frame_points = np.asarray(frame_points, dtype=np.float64).reshape(-1, 5, 2)
            for b, p in zip(frame_boxes, frame_points, strict=True):
                if b[4] < self.threshold:
                    continue
                face = Face(
                    box=(b[:4] / scale).astype(np.float32),
                    score=float(b[4]),
                    landmarks=(p / scale).astype(np.float32),
                )
                if face.size < self.min_face:
                    continue
                faces.append(face)
            faces.sort(key=lambda f: -f.score)
            result.append(faces)
        return result


def create_detector(name: str = "mtcnn", **kwargs) -> FaceDetector:
    """The face detector registered as ``name``; options not given take ingest's defaults (IngestConfig)."""
    return DETECTORS.create(name, **kwargs)
