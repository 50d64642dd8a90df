"""The transition detector on synthetic frames: hard cuts, dissolves of each length, fades through black,
flashes and a slow pan that are not cuts, and the real broadcast's ground truth."""

from __future__ import annotations

import json

import cv2
import numpy as np
import pytest

from seqbuild.ingest.shots import (
    create_shot_detector,
    detect_transitions,
    fit_ramp,
    match_cuts,
    score_boundaries,
)

H, W = 72, 128


def _texture(seed: int, h: int = H, w: int = W) -> np.ndarray:
    """A smooth random colour picture (blobs of a few sizes), like a scene at thumbnail size."""
    rng = np.random.default_rng(seed)
    img = np.zeros((h, w, 3), np.float32)
    for cells in (4, 8, 16):
        noise = rng.uniform(0, 255, size=(cells * h // w + 1, cells, 3)).astype(np.float32)
        img += cv2.resize(noise, (w, h), interpolation=cv2.INTER_CUBIC)
    img = (img - img.min()) / (img.max() - img.min()) * 200 + 25
    return img.clip(0, 255).astype(np.uint8)


def _shot(seed: int, n: int) -> list[np.ndarray]:
    """``n`` frames of one shot: a scene with a small object moving over it (motion inside the shot)."""
    base = _texture(seed)
    rng = np.random.default_rng(seed + 1000)
    colour = rng.integers(0, 255, size=3)
    frames = []
    for t in range(n):
        img = base.copy()
        x = 10 + (2 * t) % 60
        img[30:46, x : x + 16] = colour
        frames.append(img)
    return frames


def _dissolve(a: list[np.ndarray], b: list[np.ndarray], length: int) -> list[np.ndarray]:
    """The way broadcast tools mix: the last frame of A blended into the first ``length`` frames of B."""
    out = list(b)
    for t in range(length):
        alpha = (t + 1) / (length + 1)
        out[t] = (
            (a[-1].astype(np.float32) * (1 - alpha) + b[t].astype(np.float32) * alpha)
            .round()
            .astype(np.uint8)
        )
    return out


def _detect(frames: list[np.ndarray]):
    return detect_transitions(frames, create_shot_detector("transitions"))


def test_hard_cuts_and_a_short_shot_are_found_to_the_frame():
    frames = _shot(1, 40) + _shot(2, 15) + _shot(3, 40)
    found = _detect(frames)
    assert [(t.kind, t.frame) for t in found] == [("cut", 40), ("cut", 55)]
    assert all(t.blended is None for t in found)


@pytest.mark.parametrize("length", [6, 12, 20, 30])
def test_a_dissolve_of_each_length_is_one_boundary_with_its_blended_frames(length):
    a, b = _shot(4, 50), _shot(5, 60)
    frames = a + _dissolve(a, b, length)
    found = _detect(frames)
    assert len(found) == 1, found
    t = found[0]
    assert t.kind == "dissolve"
    assert abs(t.frame - 50) <= 1  # the new shot starts at the first blended frame
    first, last = t.blended
    # The end of a long blend is less sharp (the incoming shot moves while it fades in).
    assert abs(first - 50) <= 1 and abs(last - (50 + length - 1)) <= 1 + length // 10


def test_a_fade_through_black_cuts_at_its_darkest_point():
    a, b = _shot(6, 50), _shot(7, 50)
    fade = 12
    a = [f.copy() for f in a]
    b = [f.copy() for f in b]
    for t in range(fade):  # as broadcast tools do: A out to black over its last frames, B in from black
        k = (t + 1) / (fade + 1)
        a[-1 - t] = (a[-1 - t].astype(np.float32) * k).astype(np.uint8)
        b[t] = (b[t].astype(np.float32) * k).astype(np.uint8)
    found = _detect(a + b)
    assert len(found) == 1, found
    t = found[0]
    assert t.kind == "fade" and t.frame == 50 and t.blended is None
    assert t.first <= 50 - fade + 2 and t.last >= 50 + fade - 3  # its extent covers most of both halves


def test_fade_to_black_frames_then_a_new_shot():
    a, b = _shot(8, 40), _shot(9, 40)
    black = [np.zeros((H, W, 3), np.uint8)] * 10
    found = _detect(a + black + b)
    assert [t.frame for t in found] == [50]


@pytest.mark.parametrize("flash", [[20], [20, 21], [15, 45]])
def test_flashes_do_not_cut(flash):
    frames = _shot(10, 70)
    for k in flash:  # a white flash: the picture mixed with white
        frames[k] = (frames[k].astype(np.float32) * 0.2 + 255 * 0.8).astype(np.uint8)
    frames += _shot(11, 30)
    assert [(t.kind, t.frame) for t in _detect(frames)] == [("cut", 70)]


def test_a_flat_white_frame_does_not_cut():
    frames = _shot(12, 60)
    frames[30] = np.full((H, W, 3), 255, np.uint8)
    assert _detect(frames) == []


def test_a_slow_pan_is_not_a_cut_or_a_dissolve():
    wide = _texture(13, H, W * 3)
    frames = [wide[:, 2 * t : 2 * t + W].copy() for t in range(120)]  # 2 px a frame: the view moves 240 px
    assert _detect(frames) == []


def _moving_light_and_zoom(seed: int, n: int, start: int, stop: int) -> list[np.ndarray]:
    """One scene that zooms in, turns and is lit from one side between ``start`` and ``stop`` (eased in
    and out), still before and after: it goes from one picture to another along a near-straight line."""
    big = _texture(seed, H * 2, W * 2).astype(np.float32)
    ramp = np.linspace(0.0, 1.0, W, dtype=np.float32)[None, :, None]
    frames = []
    for t in range(n):
        u = float(np.clip((t - start) / (stop - start), 0.0, 1.0))
        u = u * u * (3 - 2 * u)  # eased
        scale, angle = 1.0 + 0.35 * u, 8.0 * u
        m = cv2.getRotationMatrix2D((W, H), angle, scale)
        view = cv2.warpAffine(big, m, (2 * W, 2 * H), borderMode=cv2.BORDER_REFLECT)[
            H // 2 : H // 2 + H, W // 2 : W // 2 + W
        ]
        light = 1.0 - 0.45 * u * ramp
        frames.append((view * light).clip(0, 255).astype(np.uint8))
    return frames


def test_a_slow_zoom_turn_and_relight_is_not_a_dissolve():
    """A change that travels between two pictures without the mid-transition dip in contrast that a mix
    of two pictures has is a move within the shot, not a dissolve."""
    frames = _moving_light_and_zoom(21, 90, 20, 56)
    assert _detect(frames) == []
    # The same two end pictures mixed over the same frames are a dissolve.
    a, b = frames[:20], frames[56:]
    mixed = a + _dissolve(a, [b[0]] * 36, 36) + b
    found = _detect(mixed)
    assert [t.kind for t in found] == ["dissolve"]


def test_a_brightness_change_inside_a_shot_is_not_a_transition():
    frames = [
        (f.astype(np.float32) * (1.0 - 0.4 * min(t, 20) / 20)).astype(np.uint8)
        for t, f in enumerate(_shot(14, 60))
    ]
    assert _detect(frames) == []


def test_a_dissolve_after_a_cut_and_a_flash_inside_it():
    a, b, c = _shot(15, 40), _shot(16, 40), _shot(17, 60)
    c = _dissolve(b, c, 20)
    c[8] = (c[8].astype(np.float32) * 0.2 + 204).astype(np.uint8)  # a flash during the dissolve
    found = _detect(a + b + c)
    assert [(t.kind, t.frame) for t in found] == [("cut", 40), ("dissolve", 80)]


def test_final_before_never_passes_an_open_transition():
    a, b = _shot(18, 50), _shot(19, 60)
    frames = a + _dissolve(a, b, 30)
    det = create_shot_detector("transitions")
    settled = 0
    for i, f in enumerate(frames):
        for t in det.update(i, f):
            assert t.frame >= settled  # nothing appears below what was declared settled
        settled = det.final_before
        assert settled <= i + 1


def test_fit_ramp_recovers_the_ramp_and_ignores_weighted_out_points():
    alpha = np.r_[np.zeros(10), np.arange(1, 13) / 13, np.ones(10)]
    s, e, err = fit_ramp(alpha)
    assert (s, e) == (10, 21) and err < 1e-9
    alpha[15] = 5.0  # an outlier (a flash)
    weights = np.ones(len(alpha))
    weights[15] = 0
    s, e, _ = fit_ramp(alpha, weights)
    assert (s, e) == (10, 21)


def test_score_boundaries_per_kind_with_frame_errors():
    truth = [(100, "cut", 0), (200, "dissolve", 12), (300, "fade", 10)]
    scores, fp = score_boundaries([100, 201, 299, 400], truth)
    assert fp == [400]
    assert scores["cut"].errors == [0] and scores["dissolve"].errors == [1] and scores["fade"].errors == [-1]
    scores, fp = score_boundaries([150], truth)
    assert fp == [150] and all(s.found == 0 for s in scores.values())


def test_match_cuts_counts_extra_cuts_in_a_dissolve_as_false_positives():
    truth = [(100, 0), (200, 12)]
    assert match_cuts([100, 205], truth) == (1.0, 1.0, 2, 0)
    precision, recall, tp, fp = match_cuts([100, 201, 210], truth)
    assert (tp, fp) == (2, 1) and recall == 1.0 and precision == pytest.approx(2 / 3)
    assert match_cuts([150], truth)[:2] == (0.0, 0.0)


@pytest.mark.slow
def test_transitions_of_the_dev_broadcast(media):
    from seqbuild.ingest.decode import iter_frames, open_container
    from seqbuild.ingest.shots import thumbnail_size

    gt = json.loads((media / "dev_broadcast.gt.json").read_text())
    truth = [
        (s["start"], "dissolve" if s["dissolve_in"] else "cut", s["dissolve_in"]) for s in gt["shots"][1:]
    ]
    container = open_container(str(media / "dev_broadcast.mp4"))
    size = thumbnail_size(gt["width"], gt["height"])
    found = detect_transitions(f.thumbnail(*size) for f in iter_frames(container))
    scores, fp = score_boundaries([t.frame for t in found], truth)
    assert fp == [] and all(s.recall == 1.0 and s.max_error <= 1 for s in scores.values()), found
