"""Identity decisions: the scores, the calibration to a gallery's size, the three outcomes, the warning."""

from __future__ import annotations

import numpy as np
import pytest

from seqbuild import openset
from seqbuild.overlap import decide


def unit(x):
    x = np.asarray(x, np.float64)
    return x / np.linalg.norm(x, axis=-1, keepdims=True)


def test_vote_score_is_the_majority_vote_threshold():
    rng = np.random.default_rng(0)
    g = unit(rng.standard_normal((4, 16)))
    faces = [unit(g[1] + 0.8 * rng.standard_normal((n, 16))) for n in (3, 6, 9)]
    centres = unit(np.stack([f.sum(0) for f in faces]))
    scorer = decide.GalleryScorer(g, decide.create_score("vote", vote_share=0.5))
    cand = scorer.candidates(centres, faces)
    votes = scorer.scores(cand)
    for i, f in enumerate(faces):
        for col, j in enumerate(cand.ids[i]):
            sims = f @ g[j]
            for t in np.linspace(-1, 1, 41):
                # at least half of the faces reach t exactly when the vote score reaches t
                assert (np.mean(sims >= t) >= 0.5) == (votes[i, col] >= t)


def _towards(rng, direction, cos, n):
    """``n`` unit vectors at cosine ``cos`` (on average) to ``direction``."""
    noise = rng.standard_normal((n, len(direction)))
    noise -= np.outer(noise @ direction, direction)
    return unit(cos * direction + np.sqrt(1 - cos**2) * unit(noise))


def test_csls_discounts_a_hub_identity():
    rng = np.random.default_rng(1)
    gallery = unit(rng.standard_normal((6, 64)))
    # Identity 0 is a hub: many strangers of the run resemble it (cosine about 0.6); one gallery person
    # (identity 3) is seen on video at cosine 0.55, below the best stranger's raw score.
    crowd = np.vstack([_towards(rng, gallery[0], 0.6, 30), unit(rng.standard_normal((20, 64)))])
    mate = _towards(rng, gallery[3], 0.55, 1)
    run = np.vstack([crowd, mate])
    stats = decide.identity_stats(gallery, run, k=5)
    assert stats.top_mean[0] > stats.top_mean[1:].max()  # the hub's neighbourhood is denser
    s_cos, _ = decide.GalleryScorer(gallery, decide.create_score("cosine")).best(run)
    s_csls, j_csls = decide.GalleryScorer(gallery, decide.create_score("csls"), stats).best(run)
    assert s_cos[:-1].max() > s_cos[-1]  # raw cosine puts a stranger above the gallery person
    assert s_csls[-1] > s_csls[:-1].max() and j_csls[-1] == 3  # CSLS does not


def test_calibration_reaches_the_target_fpir_at_the_gallery_size():
    rng = np.random.default_rng(2)
    impostor = rng.normal(0.1, 0.1, 5000)
    genuine = rng.normal(0.8, 0.05, 200)
    cal = decide.calibrate("g", "m", "cosine", 50, impostor, genuine, 0.001, 1e-5)
    assert cal.source == "run" and cal.feasible
    fit = openset.fit_impostor(impostor, "robust")
    assert cal.threshold == pytest.approx(float(openset.threshold_for_fpir(fit, 0.001, 50)), abs=1e-9)
    assert cal.fpir_at_threshold == pytest.approx(0.001, rel=1e-6)
    assert cal.confident_threshold > cal.threshold
    assert cal.fpir_at_confident == pytest.approx(1e-5, rel=1e-4)
    # a bigger gallery needs a higher threshold for the same FPIR
    big = decide.calibrate("g", "m", "cosine", 5000, impostor, genuine, 0.001, 1e-5)
    assert big.threshold > cal.threshold
    assert cal.outcome(cal.threshold - 1e-6) == "kept"
    assert cal.outcome(cal.threshold) == "review"
    assert cal.outcome(cal.confident_threshold) == "gallery_match"
    assert cal.warning is None


def test_warning_when_no_threshold_keeps_the_genuine_share_at_the_target():
    rng = np.random.default_rng(3)
    impostor = rng.normal(0.15, 0.13, 400)
    genuine = rng.normal(0.7, 0.06, 100)
    small = decide.calibrate("opt", "facenet@x/y/z", "cosine", 6, impostor, genuine, 0.01, 1e-4)
    assert small.warning is None and small.feasible
    huge = decide.calibrate("ms1m", "facenet@x/y/z", "cosine", 85742, impostor, genuine, 0.01, 1e-4)
    assert huge.feasible is False
    assert "ms1m" in huge.warning and "85,742 identities" in huge.warning and "facenet@x/y/z" in huge.warning
    assert f"{huge.fpir_for_genuine:.1%}" in huge.warning and "stronger model" in huge.warning
    # what is kept is bounded by the genuine-keeping threshold; the rest up to the target's goes to review
    assert huge.threshold == pytest.approx(huge.threshold_for_genuine)
    assert huge.threshold < huge.threshold_for_target
    assert huge.genuine["kept"] < 0.95


def test_too_few_sequences_fall_back_to_the_default_and_fixed_thresholds_win():
    few = decide.calibrate(
        "g", "m", "csls", 6, np.zeros(5) + 0.1, np.zeros(0), 0.001, 1e-5, default_threshold=0.45
    )
    assert few.source == "default" and few.threshold == few.confident_threshold == 0.45
    assert few.fpir_at_threshold is None
    rng = np.random.default_rng(4)
    fixed = decide.calibrate(
        "g", "m", "cosine", 6, rng.normal(0, 0.1, 500), np.zeros(0), 0.001, 1e-5, fixed_threshold=0.3
    )
    assert fixed.source == "fixed" and fixed.threshold == 0.3
    assert fixed.fpir_at_threshold == pytest.approx(float(openset.model_fpir(fixed.impostor_fit(), 0.3, 6)))


def test_a_small_run_borrows_the_gallery_spread():
    rng = np.random.default_rng(5)
    run = rng.normal(0.1, 0.03, 40)  # a few correlated people: too narrow
    cohort = rng.normal(0.0, 0.12, 400)
    fit = decide.fit_run_impostors("g", run, cohort)
    assert fit.loc == pytest.approx(np.median(run)) and fit.scale == pytest.approx(
        openset.fit_impostor(cohort).scale
    )
    wide = rng.normal(0.1, 0.3, 40)
    assert decide.fit_run_impostors("g", wide, cohort).scale == pytest.approx(
        openset.fit_impostor(wide).scale
    )


def test_gallery_self_scores_leave_each_image_out():
    rng = np.random.default_rng(6)
    centres = unit(rng.standard_normal((5, 16)))
    rows = np.repeat(np.arange(5), 4)
    images = unit(centres[rows] + 0.3 * rng.standard_normal((20, 16)))
    own_centres = unit(np.stack([images[rows == i].sum(0) for i in range(5)]))
    scorer = decide.GalleryScorer(own_centres, decide.create_score("cosine"))
    genuine, impostor = scorer.gallery_self_scores(images, rows)
    loo, _ = openset.leave_one_out_genuine(images, rows)
    assert np.allclose(np.sort(genuine), np.sort(loo), atol=1e-5)
    others = [float(images[i] @ own_centres[j]) for i in range(20) for j in range(5) if j != rows[i]]
    assert np.allclose(np.sort(impostor), np.sort(others), atol=1e-5)
