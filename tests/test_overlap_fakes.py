"""A colour-square detector and a colour embedder, registered by name, for gallery and dedup-overlap tests.

A synthetic "photo" is a black image with coloured squares; each square is a "face" whose identity is
its colour. The embedder maps an aligned crop to its mean centre colour (unit length, zero-padded to
``DIM``), so two colours' cosine is known exactly (red vs green: 0).
"""

from __future__ import annotations

import cv2
import numpy as np

from seqbuild.embed.models import EMBEDDERS, Embedder, model_id
from seqbuild.ingest.align import align_face
from seqbuild.ingest.detect import DETECTORS, Face, FaceDetector

NAME = "test-colour"
DIM = 8
RED, GREEN, BLUE, YELLOW = (220, 0, 0), (0, 220, 0), (0, 0, 220), (220, 220, 0)


def square_landmarks(x1: float, y1: float, x2: float, y2: float) -> np.ndarray:
    """Five plausible landmarks inside a box."""
    w, h = x2 - x1, y2 - y1
    rel = np.array([[0.3, 0.4], [0.7, 0.4], [0.5, 0.55], [0.35, 0.75], [0.65, 0.75]])
    return (rel * [w, h] + [x1, y1]).astype(np.float32)


def photo(squares: list[tuple[tuple[int, int, int], int, int, int]], size: int = 200) -> np.ndarray:
    """A black RGB image with squares (colour, x, y, side)."""
    img = np.zeros((size, size, 3), np.uint8)
    for colour, x, y, side in squares:
        img[y : y + side, x : x + side] = colour
    return img


class ColourDetector(FaceDetector):
    """Every coloured blob of at least ``min_face`` side is a face."""

    name = NAME

    def __init__(self, min_face: int = 10, **_: object) -> None:
        self.min_face = min_face
        self.calls = 0

    def detect(self, frames: list[np.ndarray]) -> list[list[Face]]:
        self.calls += len(frames)
        out = []
        for frame in frames:
            mask = (frame.max(axis=2) > 30).astype(np.uint8)
            n, _, stats, _ = cv2.connectedComponentsWithStats(mask)
            faces = []
            for x, y, w, h, _area in stats[1:n]:
                if min(w, h) < self.min_face:
                    continue
                box = np.array([x, y, x + w, y + h], np.float32)
                faces.append(Face(box=box, score=0.99, landmarks=square_landmarks(*box)))
            out.append(faces)
        return out


class ColourEmbedder(Embedder):
    """Unit vector of the crop's mean centre colour, zero-padded to DIM."""

    name = NAME
    dim = DIM
    same_identity_threshold = 0.9

    def __init__(self, **_: object) -> None:
        self.calls = 0

    def embed(self, crops: list[np.ndarray]) -> np.ndarray:
        self.calls += len(crops)
        out = np.zeros((len(crops), DIM), np.float32)
        for i, crop in enumerate(crops):
            out[i, :3] = crop[60:84, 60:84].reshape(-1, 3).mean(axis=0)
        return out / np.maximum(np.linalg.norm(out, axis=1, keepdims=True), 1e-12)


if NAME not in DETECTORS:
    DETECTORS.register(NAME)(ColourDetector)
if NAME not in EMBEDDERS:
    EMBEDDERS.register(NAME)(ColourEmbedder)


def colour_vector(colour: tuple[int, int, int]) -> np.ndarray:
    """The embedding ColourEmbedder gives a face of ``colour``."""
    v = np.zeros(DIM, np.float32)
    v[:3] = colour
    return v / np.linalg.norm(v)


def test_fakes_find_and_embed_coloured_squares():
    img = photo([(RED, 20, 20, 60), (GREEN, 120, 120, 40)])
    faces = ColourDetector().detect([img])[0]
    assert sorted(round(f.size) for f in faces) == [40, 60]
    big = max(faces, key=lambda f: f.size)
    crop = align_face(img, big.landmarks)
    vec = ColourEmbedder().embed([crop])[0]
    assert float(vec @ colour_vector(RED)) > 0.99
    assert abs(float(vec @ colour_vector(GREEN))) < 0.01


MODEL_ID = model_id(ColourEmbedder())
"""The full model id the colour embedder writes into embeddings and galleries."""
