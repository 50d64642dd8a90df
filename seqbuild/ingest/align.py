"""Alignment of a face to a fixed five-point template by a similarity transform, and crop quality figures.

The template is SphereFace's 96x112 five-point template (the one SeqFace and most margin-loss papers
align with), scaled by 128/112 and centred in a 144x144 canvas: the 128x128 centre crop that training
takes then frames the face exactly as a 96x112 SphereFace crop does (height filled, width centred),
and the 8-pixel border leaves room for the random 128x128 crops of training.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import cv2
import numpy as np

SPHEREFACE_96x112 = np.array(
    [
        [30.2946, 51.6963],  # left eye (as seen in the image)
        [65.5318, 51.5014],  # right eye
        [48.0252, 71.7366],  # nose tip
        [33.5493, 92.3655],  # left mouth corner
        [62.7299, 92.2041],  # right mouth corner
    ],
    dtype=np.float64,
)
"""The classic 5-point template in a 96 (wide) x 112 (high) crop."""

CANVAS = 144
TRAIN_CROP = 128


def template_points(size: int = CANVAS) -> np.ndarray:
    """The five template points, in pixels of a ``size`` x ``size`` crop (float64, shape (5, 2))."""
    scale = TRAIN_CROP / 112.0
    offset = np.array([(CANVAS - 96.0 * scale) / 2.0, (CANVAS - TRAIN_CROP) / 2.0])
    pts = SPHEREFACE_96x112 * scale + offset
    return pts * (size / float(CANVAS))


def umeyama_similarity(src: np.ndarray, dst: np.ndarray) -> np.ndarray:
    """Least-squares similarity transform (scale, rotation, translation) mapping ``src`` onto ``dst``.

    Umeyama (1991), restricted to 2-D and without reflection. Returns the 2x3 matrix M with
    ``dst ~= src @ M[:, :2].T + M[:, 2]``.
    """
    src = np.asarray(src, dtype=np.float64).reshape(-1, 2)
    dst = np.asarray(dst, dtype=np.float64).reshape(-1, 2)
    if src.shape != dst.shape or len(src) < 2:
        raise ValueError(f"need two point sets of equal shape (n >= 2, 2), got {src.shape} and {dst.shape}")
    mu_s, mu_d = src.mean(axis=0), dst.mean(axis=0)
    src_c, dst_c = src - mu_s, dst - mu_d
    var_s = (src_c**2).sum() / len(src)
    if var_s <= 1e-12:
        raise ValueError("source points are all at one place")
    cov = dst_c.T @ src_c / len(src)
    u, sing, vt = np.linalg.svd(cov)
    d = np.ones(2)
    if np.linalg.det(u) * np.linalg.det(vt) < 0:
        d[1] = -1.0
    rot = u @ np.diag(d) @ vt
    scale = float((sing * d).sum() / var_s)
    trans = mu_d - scale * rot @ mu_s
    return np.hstack([scale * rot, trans[:, None]])


def apply_transform(matrix: np.ndarray, points: np.ndarray) -> np.ndarray:
    """Map (n, 2) points through a 2x3 affine matrix."""
    points = np.asarray(points, dtype=np.float64).reshape(-1, 2)
    return points @ matrix[:, :2].T + matrix[:, 2]


def alignment_matrix(landmarks: np.ndarray, size: int = CANVAS) -> np.ndarray:
    """The 2x3 similarity transform from a face's five landmarks (source pixels) to the crop template."""
    return umeyama_similarity(landmarks, template_points(size))


def align_face(image_rgb: np.ndarray, landmarks_5x2: np.ndarray, size: int = CANVAS) -> np.ndarray:
    """The ``size`` x ``size`` RGB crop of the face whose five landmarks are given, aligned to the template."""
    matrix = alignment_matrix(landmarks_5x2, size)
    return cv2.warpAffine(
        image_rgb, matrix, (size, size), flags=cv2.INTER_LINEAR, borderMode=cv2.BORDER_REPLICATE
    )


@dataclass
class FaceQuality:
    """Simple quality figures of one face: size in pixels, sharpness, yaw (-1..1) and roll (degrees)."""

    face_size: float
    blur: float
    yaw: float
    roll: float


def blur_score(crop_rgb: np.ndarray) -> float:
    """Variance of the Laplacian of the grey crop: low means blurred (depends on crop size and content)."""
    grey = cv2.cvtColor(crop_rgb, cv2.COLOR_RGB2GRAY)
    return float(cv2.Laplacian(grey, cv2.CV_64F).var())


def pose_from_landmarks(landmarks: np.ndarray) -> tuple[float, float]:
    """(yaw, roll) from the five landmarks: roll is the eye-line angle in degrees (clockwise positive in
    image coordinates); yaw estimates the head's turn as a fraction of 90 degrees (0 frontal, +-1 profile,
    the sign tells which way).

    The nose tip sits about half an eye distance in front of the eye plane, so its sideways offset from
    the eye/mouth midline, over half the eye distance, grows like tan(angle); 2/pi * atan of that ratio
    turns it back into an angle fraction that does not saturate at three-quarter views.
    """
    pts = np.asarray(landmarks, dtype=np.float64).reshape(5, 2)
    left_eye, right_eye, nose, left_mouth, right_mouth = pts
    eye_vec = right_eye - left_eye
    roll = math.degrees(math.atan2(eye_vec[1], eye_vec[0]))
    half = float(np.hypot(*eye_vec)) / 2.0
    if half < 1e-6:
        return 0.0, roll
    # Undo the roll, then compare the nose with the midline through the eye and mouth centres.
    c, s = math.cos(math.radians(-roll)), math.sin(math.radians(-roll))
    rot = np.array([[c, -s], [s, c]])
    mid = ((left_eye + right_eye) / 2.0 + (left_mouth + right_mouth) / 2.0) / 2.0
    nose_x = (rot @ (nose - mid))[0]
    return float(2.0 / math.pi * math.atan(nose_x / half)), roll


def face_quality(box: np.ndarray, landmarks: np.ndarray, crop_rgb: np.ndarray) -> FaceQuality:
    """Quality figures of one detection (box and landmarks in source pixels, its aligned crop)."""
    w = max(float(box[2] - box[0]), 0.0)
    h = max(float(box[3] - box[1]), 0.0)
    yaw, roll = pose_from_landmarks(landmarks)
    return FaceQuality(face_size=math.sqrt(w * h), blur=blur_score(crop_rgb), yaw=yaw, roll=roll)
