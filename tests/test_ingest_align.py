"""Alignment numerics (similarity transform, template) and detection + alignment on a real photo."""

from __future__ import annotations

import math

import cv2
import numpy as np
import pytest

from seqbuild.ingest.align import (
    align_face,
    apply_transform,
    face_quality,
    pose_from_landmarks,
    template_points,
    umeyama_similarity,
)


def _similarity(scale: float, angle_deg: float, tx: float, ty: float) -> np.ndarray:
    a = math.radians(angle_deg)
    rot = np.array([[math.cos(a), -math.sin(a)], [math.sin(a), math.cos(a)]])
    return np.hstack([scale * rot, [[tx], [ty]]])


@pytest.mark.parametrize(
    "scale,angle,tx,ty", [(1.0, 0.0, 0.0, 0.0), (0.37, 23.0, 140.0, -12.5), (2.6, -71.0, 3.0, 9.0)]
)
def test_umeyama_recovers_a_known_similarity(scale, angle, tx, ty):
    rng = np.random.default_rng(0)
    src = rng.uniform(0, 300, size=(5, 2))
    truth = _similarity(scale, angle, tx, ty)
    dst = apply_transform(truth, src)
    est = umeyama_similarity(src, dst)
    np.testing.assert_allclose(est, truth, atol=1e-8)


def test_umeyama_is_least_squares_under_noise():
    rng = np.random.default_rng(1)
    src = rng.uniform(0, 200, size=(5, 2))
    truth = _similarity(0.8, 10.0, 20.0, 30.0)
    dst = apply_transform(truth, src) + rng.normal(0, 2.0, size=(5, 2))
    est = umeyama_similarity(src, dst)
    residual = np.sum((apply_transform(est, src) - dst) ** 2)
    # Any perturbed similarity fits worse than the least-squares one.
    for delta in ([0.01, 0, 0], [0, 1.0, 0], [0, 0, 1.0]):
        other = _similarity(0.8 + delta[0], 10.0 + delta[1], 20.0 + delta[2], 30.0)
        assert residual <= np.sum((apply_transform(other, src) - dst) ** 2)


def test_umeyama_never_reflects():
    src = np.array([[0, 0], [1, 0], [0, 1], [1, 1], [0.5, 0.2]], dtype=float)
    mirrored = src * np.array([-1.0, 1.0])
    est = umeyama_similarity(src, mirrored)
    assert np.linalg.det(est[:, :2]) > 0


def test_umeyama_rejects_degenerate_input():
    with pytest.raises(ValueError):
        umeyama_similarity(np.zeros((5, 2)), np.ones((5, 2)))
    with pytest.raises(ValueError):
        umeyama_similarity(np.zeros((5, 2)), np.ones((4, 2)))


def test_template_fills_the_training_crop():
    pts = template_points(144)
    # Eyes level, symmetric about the vertical centre line, everything inside the 128x128 centre crop.
    assert abs(pts[0, 1] - pts[1, 1]) < 0.5
    assert abs((pts[0, 0] + pts[1, 0]) / 2 - 72.0) < 1.0
    assert np.all(pts > 8) and np.all(pts < 136)
    np.testing.assert_allclose(template_points(72), pts / 2)


def test_crop_landmarks_land_on_the_template():
    """Warp a synthetic image with marked landmarks and find the marks again in the crop."""
    canvas = np.zeros((400, 500, 3), np.uint8)
    truth = _similarity(2.1, -17.0, 160.0, 90.0)
    landmarks = apply_transform(truth, template_points(144) / 2.0)  # a rotated, scaled face
    for x, y in landmarks:
        cv2.circle(canvas, (round(x), round(y)), 4, (255, 255, 255), -1)
    crop = align_face(canvas, landmarks, 144)
    assert crop.shape == (144, 144, 3) and crop.dtype == np.uint8
    n, _, _, centroids = cv2.connectedComponentsWithStats((crop[:, :, 0] > 127).astype(np.uint8))
    found = centroids[1:]
    assert len(found) == 5
    for p in template_points(144):
        assert np.min(np.linalg.norm(found - p, axis=1)) < 1.0


def test_pose_from_landmarks():
    pts = template_points(144)
    yaw, roll = pose_from_landmarks(pts)
    assert abs(yaw) < 0.05 and abs(roll) < 0.5
    half_eyes = float(np.hypot(*(pts[1] - pts[0]))) / 2.0
    mid_x = float((pts[0, 0] + pts[1, 0] + pts[3, 0] + pts[4, 0]) / 4.0)
    turned = pts.copy()
    turned[2, 0] = mid_x + half_eyes  # nose offset = half the eye distance: tan(angle) = 1, a 45-degree turn
    assert pose_from_landmarks(turned)[0] == pytest.approx(0.5, abs=1e-3)
    turned[2, 0] = mid_x - half_eyes  # the other way
    assert pose_from_landmarks(turned)[0] == pytest.approx(-0.5, abs=1e-3)
    turned[2, 0] = mid_x + 20 * half_eyes  # near profile: close to 1, never past it
    assert 0.95 < pose_from_landmarks(turned)[0] < 1.0
    rotated = apply_transform(_similarity(1.0, 30.0, 0, 0), pts)
    assert abs(pose_from_landmarks(rotated)[1] - 30.0) < 0.5


def test_blur_is_lower_for_a_blurred_crop():
    rng = np.random.default_rng(2)
    crop = rng.integers(0, 255, size=(144, 144, 3), dtype=np.uint8)
    sharp = face_quality(np.array([0, 0, 100, 100]), template_points(), crop)
    blurred = face_quality(np.array([0, 0, 100, 100]), template_points(), cv2.GaussianBlur(crop, (9, 9), 3))
    assert blurred.blur < sharp.blur / 5
    assert sharp.face_size == pytest.approx(100.0)


def test_detect_and_align_a_real_face():
    """scikit-image's astronaut photo: one face found, crop eyes level and on the template."""
    from skimage import data

    from seqbuild.ingest.detect import create_detector

    image = data.astronaut()
    detector = create_detector("mtcnn", device="cpu", min_face=40, threshold=0.9, max_side=1280)
    (faces,) = detector.detect([image])
    assert len(faces) == 1
    face = faces[0]
    assert face.score > 0.99 and face.landmarks.shape == (5, 2)
    x1, y1, x2, y2 = face.box
    assert 150 < (x1 + x2) / 2 < 300 and 50 < (y1 + y2) / 2 < 200  # her face, upper middle of the photo
    crop = align_face(image, face.landmarks, 144)
    # Find the landmarks again on the crop itself: they sit on the template, eye line level.
    (again,) = detector.detect([crop])
    assert len(again) == 1
    eyes = again[0].landmarks[:2]
    assert abs(eyes[0, 1] - eyes[1, 1]) < 3.0
    assert np.max(np.linalg.norm(eyes - template_points(144)[:2], axis=1)) < 6.0
    # Downscaling a large frame before detection gives the same face in source pixels.
    big = cv2.resize(image, (2048, 2048), interpolation=cv2.INTER_CUBIC)
    small_side = create_detector("mtcnn", device="cpu", min_face=160, threshold=0.9, max_side=512)
    (big_faces,) = small_side.detect([big])
    assert len(big_faces) == 1
    np.testing.assert_allclose(big_faces[0].landmarks, face.landmarks * 4.0, atol=12.0)


def test_detector_batches_frames_of_mixed_sizes():
    from skimage import data

    from seqbuild.ingest.detect import create_detector

    image = data.astronaut()
    blank = np.zeros((300, 400, 3), np.uint8)
    detector = create_detector("mtcnn", device="cpu", min_face=40, threshold=0.9, batch_size=2)
    out = detector.detect([image, blank, image, image[:, ::-1].copy()])
    assert [len(f) for f in out] == [1, 0, 1, 1]
    np.testing.assert_allclose(out[0][0].box, out[2][0].box, atol=1e-3)
    mirrored_x = 512 - (out[3][0].box[0] + out[3][0].box[2]) / 2
    assert abs(mirrored_x - (out[0][0].box[0] + out[0][0].box[2]) / 2) < 5


def test_unknown_detector_is_a_config_error():
    from seqbuild.errors import ConfigError
    from seqbuild.ingest.detect import create_detector

    with pytest.raises(ConfigError, match="unknown face detector"):
        create_detector("nope")
