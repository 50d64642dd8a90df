"""The HSV cut detector: hard cuts, a cross-dissolve counted once, a short shot, quiet motion, and the
real broadcast's ground truth."""

from __future__ import annotations

import json

import numpy as np
import pytest

from seqbuild.ingest.shots import create_shot_detector, match_cuts


def _scene(seed: int, t: int, h: int = 72, w: int = 128) -> np.ndarray:
    """A coloured scene with a slowly moving bright square (in-shot motion)."""
    rng = np.random.default_rng(seed)
    base = rng.integers(0, 255, size=3)
    img = np.empty((h, w, 3), np.uint8)
    img[:] = base
    img[: h // 2, : w // 2] = rng.integers(0, 255, size=3)
    x = 10 + (t % 30)
    img[20:40, x : x + 20] = 255 - base
    return img


def _cuts(frames) -> list[int]:
    det = create_shot_detector("hsv")
    return [c.frame for i, f in enumerate(frames) if (c := det.update(i, f)) is not None]


def test_hard_cuts_and_a_short_shot():
    frames = (
        [_scene(1, t) for t in range(40)]
        + [_scene(2, t) for t in range(15)]
        + [_scene(3, t) for t in range(40)]
    )
    assert _cuts(frames) == [40, 55]


def test_cross_dissolve_counts_once():
    a = [_scene(4, t) for t in range(40)]
    b = [_scene(5, t) for t in range(52)]
    for t in range(12):  # as broadcast tools do: the last frame of A blended into the first of B
        alpha = (t + 1) / 13
        b[t] = (a[-1] * (1 - alpha) + b[t] * alpha).round().astype(np.uint8)
    cuts = _cuts(a + b)
    assert len(cuts) == 1 and 40 <= cuts[0] <= 52


def test_no_cut_in_a_still_or_moving_shot():
    assert _cuts([_scene(6, t) for t in range(120)]) == []


def test_match_cuts_counts_extra_cuts_in_a_dissolve_as_false_positives():
    truth = [(100, 0), (200, 12)]
    assert match_cuts([100, 205], truth) == (1.0, 1.0, 2, 0)
    precision, recall, tp, fp = match_cuts([100, 201, 210], truth)
    assert (tp, fp) == (2, 1) and recall == 1.0 and precision == pytest.approx(2 / 3)
    assert match_cuts([150], truth)[:2] == (0.0, 0.0)


@pytest.mark.slow
def test_cuts_of_the_dev_broadcast(media):
    from seqbuild.ingest.decode import iter_frames, open_container
    from seqbuild.ingest.shots import thumbnail_size

    gt = json.loads((media / "dev_broadcast.gt.json").read_text())
    truth = [(s["start"], s["dissolve_in"]) for s in gt["shots"][1:]]
    container = open_container(str(media / "dev_broadcast.mp4"))
    size = thumbnail_size(gt["width"], gt["height"])
    det = create_shot_detector("hsv")
    cuts = [c.frame for f in iter_frames(container) if (c := det.update(f.index, f.thumbnail(*size)))]
    precision, recall, _, _ = match_cuts(cuts, truth)
    assert precision == 1.0 and recall == 1.0, cuts


def test_dissolve_is_one_cut_whose_transition_covers_the_rest_of_the_blend():
    a = [_scene(1, t) for t in range(40)]
    b = [_scene(4, t) for t in range(40)]
    blend = [
        (a[-1].astype(np.float32) * (1 - (k + 1) / 13) + b[0].astype(np.float32) * ((k + 1) / 13)).astype(
            np.uint8
        )
        for k in range(12)
    ]
    frames = a + blend + b  # the dissolve occupies frames 40..51
    det = create_shot_detector("hsv")
    cuts, in_transition = [], []
    for i, f in enumerate(frames):
        cut = det.update(i, f)
        if cut is not None:
            cuts.append(cut)
        in_transition.append(det.in_transition)
    assert len(cuts) == 1
    assert 40 <= cuts[0].start <= cuts[0].frame <= 51
    assert all(in_transition[cuts[0].frame : 52])  # no frame of the blend after the cut counts as clean
    assert not any(in_transition[:40]) and not in_transition[-1]


def test_cut_after_a_run_of_raised_steps_is_dated_back_to_the_run():
    det = create_shot_detector("hsv", threshold=0.25)
    rng = np.random.default_rng(0)
    base = rng.integers(0, 255, size=(72, 128, 3)).astype(np.float32)
    other = rng.permutation(base.reshape(-1, 3)).reshape(base.shape) * 0.3
    frames = [base.astype(np.uint8)] * 30
    # a slow change that raises every step, then a jump: one transition that began with the slow change
    frames += [(base * (1 - 0.04 * k) + other * 0.04 * k).astype(np.uint8) for k in range(1, 6)]
    frames += [other.astype(np.uint8)] * 20
    cuts = [c for i, f in enumerate(frames) if (c := det.update(i, f)) is not None]
    assert len(cuts) == 1
    assert cuts[0].gradual and cuts[0].start < cuts[0].frame
