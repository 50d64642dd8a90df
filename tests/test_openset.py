"""Open-set numerics: impostor fits, FAR <-> FPIR at a gallery size, FNIR at FPIR, DET, operating points."""

from __future__ import annotations

import numpy as np
import pytest
from scipy.special import betainc

from seqbuild import openset
from seqbuild.errors import InputError


def sphere(n: int, d: int, rng: np.random.Generator) -> np.ndarray:
    """Uniform random unit vectors."""
    x = rng.standard_normal((n, d))
    return x / np.linalg.norm(x, axis=1, keepdims=True)


def sphere_far(t: float, d: int) -> float:
    """P(cos >= t) between a fixed unit vector and a uniform one in d dimensions: (1 + cos) / 2 is
    Beta((d - 1) / 2, (d - 1) / 2)."""
    a = (d - 1) / 2
    return float(1 - betainc(a, a, (1 + t) / 2))


def test_fpir_from_far_matches_the_power_formula_and_inverts():
    assert openset.fpir_from_far(0.01, 100) == pytest.approx(1 - 0.99**100)
    assert openset.fpir_from_far(0.2, 1) == pytest.approx(0.2)
    # tiny FAR at a huge gallery: 1 - (1 - 1e-12)^1e6 ~ 1e-6, where the naive power loses every digit
    assert openset.fpir_from_far(1e-12, 1e6) == pytest.approx(1e-6, rel=1e-5)
    far = openset.far_for_fpir(0.01, np.array([6, 100, 5749, 85742]))
    assert np.allclose(openset.fpir_from_far(far, [6, 100, 5749, 85742]), 0.01)
    assert far[0] > far[-1]  # a bigger gallery needs a smaller per-comparison FAR
    with pytest.raises(InputError):
        openset.far_for_fpir(0.01, 0)


def test_robust_fit_ignores_a_few_genuine_scores_that_pull_the_moments():
    rng = np.random.default_rng(1)
    scores = np.concatenate([rng.normal(0.15, 0.12, 20000), np.full(400, 0.9)])
    robust = openset.fit_impostor(scores)
    moments = openset.fit_impostor(scores, "moments")
    assert robust.loc == pytest.approx(0.15, abs=0.01) and robust.scale == pytest.approx(0.12, rel=0.05)
    assert moments.scale > 1.2 * robust.scale  # the tail of genuine scores inflates the plain fit
    with pytest.raises(InputError, match="no spread"):
        openset.fit_impostor(np.full(10, 0.3))
    with pytest.raises(InputError, match="method"):
        openset.fit_impostor(scores, "median")


def test_threshold_for_fpir_gives_the_target_fpir_at_each_size():
    fit = openset.ImpostorFit(0.145, 0.128, 437)
    sizes = np.array([6, 100, 5749, 85742])
    t = openset.threshold_for_fpir(fit, 0.001, sizes)
    assert np.allclose(openset.model_fpir(fit, t, sizes), 0.001)
    assert np.all(np.diff(t) > 0)  # bigger galleries need higher thresholds
    assert float(fit.far(fit.loc)) == pytest.approx(0.5)


def test_power_formula_holds_for_independent_impostor_scores():
    """Random probes against random distractors on the sphere: each probe's N scores are independent with
    the closed-form FAR of the Beta distribution, so the measured rank-1 FPIR must follow 1-(1-FAR)^N."""
    rng = np.random.default_rng(2)
    d, n_probes, n_gallery = 32, 3000, 400
    probes, gallery = sphere(n_probes, d, rng), sphere(n_gallery, d, rng)
    top = (probes @ gallery.T).max(axis=1)
    for t in (0.35, 0.45, 0.55):
        expected = float(openset.fpir_from_far(sphere_far(t, d), n_gallery))
        measured = float(openset.open_set_fpir(top, t))
        sd = np.sqrt(expected * (1 - expected) / n_probes)
        assert abs(measured - expected) < 4 * sd + 1e-3, (t, measured, expected)


def test_fpir_fnir_and_the_threshold_at_an_fpir_on_known_scores():
    top = np.array([0.95, 0.9, 0.8, 0.8, 0.7, 0.6, 0.5, 0.4, 0.3, 0.2])  # 10 non-mated searches
    assert openset.open_set_fpir(top, 0.8) == pytest.approx(0.4)
    # FPIR <= 0.2 allows 2 of 10 false positives: the threshold lies just above the third score, 0.8
    t = openset.threshold_at_fpir(top, 0.2)
    assert 0.8 < t < 0.8 + 1e-9 and openset.open_set_fpir(top, t) == pytest.approx(0.2)
    # FPIR <= 0.3 would admit 3, but the 3rd and 4th are tied at 0.8: both must go, FPIR 0.2
    assert openset.open_set_fpir(top, openset.threshold_at_fpir(top, 0.3)) == pytest.approx(0.2)
    assert openset.threshold_at_fpir(top, 1.0) == -np.inf
    mated = np.array([0.99, 0.85, 0.82, 0.6, 0.97])
    ranks = np.array([1, 1, 1, 1, 3])  # the last mate is out-scored by two distractors: a miss everywhere
    assert openset.open_set_fnir(mated, ranks, 0.81) == pytest.approx(2 / 5)
    assert openset.open_set_fnir(mated, ranks, -np.inf) == pytest.approx(1 / 5)
    assert openset.open_set_fnir(mated, ranks, 0.81, rank=5) == pytest.approx(1 / 5)
    fnir, thr = openset.fnir_at_fpir(mated, ranks, top, 0.2)
    assert thr == t and fnir == pytest.approx(2 / 5)  # 0.6 below the threshold, the rank-3 mate missed


def test_det_curve_is_monotone_with_the_right_ends():
    rng = np.random.default_rng(3)
    mated = rng.normal(0.7, 0.1, 500)
    ranks = rng.choice([1, 1, 1, 2], 500)
    top = rng.normal(0.3, 0.1, 800)
    det = openset.det_curve(mated, ranks, top)
    assert np.all(np.diff(det.fpir) <= 0) and np.all(np.diff(det.fnir) >= 0)
    assert det.fpir[0] == 1 and det.fpir[-1] == 0 and det.fnir[-1] == 1
    assert det.fnir[0] == pytest.approx(np.mean(ranks > 1))
    small = openset.det_curve(mated, ranks, top, max_points=50)
    assert len(small.thresholds) == 52
    assert set(small.to_dict()) == {"threshold", "fpir", "fnir"} and small.to_dict()["threshold"][0] is None


def test_mate_ranks_count_ties_against_the_mate():
    top = np.array([[0.9, 0.5, 0.1], [0.9, 0.5, 0.1], [0.9, 0.5, 0.1], [0.9, 0.5, 0.1]])
    mated = np.array([0.95, 0.9, 0.9 - 1e-7, 0.05])
    assert openset.mate_ranks(mated, top).tolist() == [1, 2, 2, 4]


def test_leave_one_out_genuine_scores_each_image_against_the_others():
    rng = np.random.default_rng(4)
    x = sphere(7, 5, rng)
    labels = ["a", "a", "a", "b", "b", "c", "a"]
    scores, rows = openset.leave_one_out_genuine(x, labels)
    assert rows.tolist() == [0, 1, 2, 3, 4, 6]  # c has a single image: no genuine score
    others = x[[1, 2, 6]].sum(axis=0)
    assert scores[0] == pytest.approx(x[0] @ others / np.linalg.norm(others))
    assert scores[3] == pytest.approx(x[3] @ x[4])


def test_operating_point_says_when_no_threshold_keeps_the_genuine_matches():
    fit = openset.ImpostorFit(0.145, 0.128, 437)
    genuine = np.linspace(0.55, 0.95, 40)
    small = openset.operating_point(fit, 6, 0.01, genuine, 0.95)
    assert small.feasible and small.genuine_kept >= 0.95 and small.threshold < 0.55
    large = openset.operating_point(fit, 85742, 0.01, genuine, 0.95)
    assert large.feasible is False and large.threshold > 0.7
    # keeping 95 % of genuine matches means a threshold at or below the 3rd lowest genuine score
    assert large.threshold_for_genuine == pytest.approx(genuine[2])
    assert large.fpir_for_genuine == pytest.approx(float(openset.model_fpir(fit, genuine[2], 85742)))
    assert large.fpir_for_genuine > 0.5
    unknown = openset.operating_point(fit, 100, 0.01)
    assert unknown.feasible is None and unknown.genuine_kept is None


def test_tail_check_flags_a_tail_heavier_than_the_fit():
    rng = np.random.default_rng(5)
    normal = rng.normal(0.1, 0.1, 200000)
    heavy = 0.1 + 0.1 * rng.standard_t(3, 200000)
    ok = openset.tail_check(openset.fit_impostor(normal), normal)
    bad = openset.tail_check(openset.fit_impostor(heavy), heavy)
    assert [round(c["quantile"], 4) for c in ok] == [0.99, 0.999, 0.9999]
    assert all(0.7 < c["ratio"] < 1.4 for c in ok)
    assert bad[-1]["ratio"] > 3


def test_tail_fit_follows_a_heavy_tail_and_is_never_lighter_than_exponential():
    rng = np.random.default_rng(6)
    heavy = 0.1 + 0.1 * rng.standard_t(3, 200000)
    fit = openset.fit_impostor(heavy, "tail")
    assert fit.tail_threshold == pytest.approx(np.quantile(heavy, 0.99), abs=1e-3) and fit.tail_shape > 0.1
    assert all(0.7 < c["ratio"] < 1.5 for c in openset.tail_check(fit, heavy)[:2])
    t = fit.threshold_at_far([0.5, 0.05, 0.01, 1e-3, 1e-6])
    assert np.allclose(fit.far(t), [0.5, 0.05, 0.01, 1e-3, 1e-6]) and np.all(np.diff(t) > 0)
    grid = np.linspace(-0.5, 3, 2000)
    assert np.all(np.diff(fit.far(grid)) <= 1e-15)  # FAR never rises with the threshold, across the join
    # a normal sample's tail is lighter than exponential: the shape is clipped to 0 (exponential), so the
    # model errs on the side of more false matches, never fewer
    normal = rng.normal(0.1, 0.1, 200000)
    light = openset.fit_impostor(normal, "tail")
    assert light.tail_shape == 0
    assert all(c["ratio"] <= 1.05 for c in openset.tail_check(light, normal))
    assert light.far(0.6) > openset.fit_impostor(normal).far(0.6)
    with pytest.raises(InputError, match="tail fit needs"):
        openset.fit_impostor(normal[:1000], "tail")


def test_probewise_fpir_keeps_the_probes_that_resemble_many_people_apart():
    # 10 probes: one scores >= 0.5 against half the cohort, the others never do
    scores = np.zeros((10, 1000))
    scores[0, :500] = 0.9
    pooled = openset.fpir_from_far(np.mean(scores >= 0.5), 100)
    probewise = openset.probewise_fpir(scores, 0.5, [1, 100])
    assert probewise[0] == pytest.approx(0.05) and probewise[1] == pytest.approx(0.1)
    assert pooled > 0.99  # the pooled FAR (5 %) spread over every probe: nearly everyone matched
    with pytest.raises(InputError):
        openset.probewise_fpir(np.zeros(5), 0.5, 10)
