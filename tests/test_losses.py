"""Each loss against a direct re-computation of its equations, gradients by gradcheck, DSA push rules."""

from __future__ import annotations

import math

import pytest
import torch

from seqbuild.errors import ConfigError
from seqbuild.train.losses import (
    AUX_LOSSES,
    CHIEF_LOSSES,
    DSALoss,
    a_softmax_psi,
    sphereface_lambda,
)

torch.set_default_dtype(torch.float32)


def _data(n=6, d=5, c=3, h=4, seed=0):
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(n, d, generator=g, dtype=torch.float64)
    # identity labels 0..c-1 for the first half, sequence labels c..c+h-1 for the rest
    labels = torch.tensor([0, 1, 2, c + 0, c + 1, c + 3])[:n]
    return x, labels


def _ref_cosine_loss(x, w, labels, c, scale, margin, lam, lsr, overlap_removed=True):
    """Direct per-sample loop: cos via acos, psi from its definition, cross-entropy by hand."""
    total, count = 0.0, 0
    for i in range(x.shape[0]):
        xi = x[i] / x[i].norm()
        cos = torch.stack([torch.dot(xi, w[j] / w[j].norm()) for j in range(c)])
        y = int(labels[i])
        if y < c:
            logits = [scale * cos[j] for j in range(c)]
            if margin == "a_softmax":
                theta = torch.acos(cos[y])
                k = math.floor(4 * float(theta.detach()) / math.pi)
                psi = (-1) ** k * torch.cos(4 * theta) - 2 * k
            elif margin == "arcface":
                theta = torch.acos(cos[y])
                # insightface's fallback once theta + m passes pi: cos(theta) - m sin(m)
                fallback = cos[y] - math.sin(math.pi - 0.5) * 0.5
                psi = torch.cos(theta + 0.5) if float(theta.detach()) + 0.5 < math.pi else fallback
            else:
                psi = cos[y] - 0.35
            logits[y] = scale * (lam * cos[y] + psi) / (1 + lam)
            logits = torch.stack(logits)
            total = total - (logits[y] - torch.logsumexp(logits, 0))
            count += 1
        elif lsr and overlap_removed:
            logits = scale * cos
            logp = logits - torch.logsumexp(logits, 0)
            total = total - sum(logp[j] / c for j in range(c))
            count += 1
    return total / max(count, 1)


@pytest.mark.parametrize(
    "name,margin,lam,lsr",
    [
        ("l2_sphereface", "a_softmax", 5.0, False),
        ("lsr_sphereface", "a_softmax", 5.0, True),
        ("arcface", "arcface", 0.0, False),
        ("cosface", "cosface", 0.0, False),
    ],
)
def test_chief_loss_matches_equations_values_and_gradients(name, margin, lam, lsr):
    x, labels = _data()
    c = 3
    torch.manual_seed(0)
    loss = CHIEF_LOSSES.create(name, c, x.shape[1], scale=4.0).double()
    w = loss.weight.detach().clone()
    xr, wr = x.clone().requires_grad_(), w.clone().requires_grad_()
    ref = _ref_cosine_loss(xr, wr, labels, c, 4.0, margin, lam, lsr)
    ref.backward()
    xi = x.clone().requires_grad_()
    got = loss(xi, labels, iteration=10)
    got["loss"].backward()
    assert torch.allclose(got["loss"], ref, atol=1e-10)
    assert torch.allclose(xi.grad, xr.grad, atol=1e-8)
    assert torch.allclose(loss.weight.grad, wr.grad, atol=1e-8)


def test_chief_loss_gradcheck_float64():
    x, labels = _data()
    w = torch.randn(3, x.shape[1], dtype=torch.float64)

    def fn_w(xx, ww):
        # functional form: the same module maths with ww as the weight
        from seqbuild.train.losses import CosineMarginLoss

        m = CosineMarginLoss(
            3, x.shape[1], margin="a_softmax", m=4, scale=4.0, lsr=True, lambda_base=5.0, lambda_min=5.0
        ).double()
        del m.weight
        m.weight = ww
        return m(xx, labels)["loss"]

    assert torch.autograd.gradcheck(fn_w, (x.clone().requires_grad_(), w.clone().requires_grad_()))


def test_softmax_ignores_sequence_samples_and_matches_cross_entropy():
    x, labels = _data()
    loss = CHIEF_LOSSES.create("softmax", 3, x.shape[1]).double()
    got = loss(x, labels)["loss"]
    logits = loss.fc(x[:3])
    want = torch.nn.functional.cross_entropy(logits, labels[:3])
    assert torch.allclose(got, want)


def test_lsr_targets_uniform_and_overlap_switch():
    """A sequence sample's LSR loss is the cross-entropy to 1/C; with overlap_removed=False it is 0."""
    x, _ = _data()
    seq_labels = torch.tensor([3, 4, 5])
    lsr = CHIEF_LOSSES.create("lsr_sphereface", 3, x.shape[1], scale=4.0).double()
    out = lsr(x[:3], seq_labels)["loss"]
    logp = torch.log_softmax(
        4.0 * torch.nn.functional.normalize(x[:3]) @ torch.nn.functional.normalize(lsr.weight).t(), 1
    )
    assert torch.allclose(out, -(logp * (1.0 / 3)).sum(1).mean())
    off = CHIEF_LOSSES.create("lsr_sphereface", 3, x.shape[1], scale=4.0, overlap_removed=False).double()
    off.weight.data = lsr.weight.data.clone()
    xi = x[:3].clone().requires_grad_()
    zero = off(xi, seq_labels)["loss"]
    zero.backward()
    assert float(zero.detach()) == 0.0 and float(xi.grad.abs().sum()) == 0.0
    # the uniform target is minimised by equal cosines: moving towards one class raises the loss
    w = torch.nn.functional.normalize(lsr.weight.detach())
    towards = (w[0] * 10 + 0.01 * torch.randn(x.shape[1], dtype=torch.float64))[None]
    balanced = (w.sum(0) * 0 + torch.linalg.svd(w)[2][-1])[None]  # orthogonal to every class weight
    assert float(lsr(towards, seq_labels[:1])["loss"].detach()) > float(
        lsr(balanced, seq_labels[:1])["loss"].detach()
    )


def test_psi_is_monotonic_and_continuous():
    theta = torch.linspace(0, math.pi, 2001, dtype=torch.float64)
    psi = a_softmax_psi(torch.cos(theta), 4)
    assert torch.all(psi[1:] <= psi[:-1] + 1e-9)
    assert float((psi[1:] - psi[:-1]).abs().max()) < 0.05
    assert torch.allclose(psi[0], torch.tensor(1.0, dtype=torch.float64))
    assert torch.allclose(psi[-1], torch.tensor(-7.0, dtype=torch.float64))


def test_lambda_annealing():
    assert sphereface_lambda(0, base=1000, gamma=0.12, power=1, lambda_min=5) == 1000
    assert sphereface_lambda(100, base=1000, gamma=0.12, power=1, lambda_min=5) == pytest.approx(1000 / 13)
    assert sphereface_lambda(10**6, base=1000, gamma=0.12, power=1, lambda_min=5) == 5
    assert sphereface_lambda(0) == 5  # the paper's defaults: base 5, lambda_min 5


def _ref_dsa(x, centres, labels, keep, c, lam, alpha, beta):
    total = 0.0
    for i in range(x.shape[0]):
        y = int(labels[i])
        d_own = ((x[i] - centres[y]) ** 2).sum() / 4
        others = [j for j in range(centres.shape[0]) if keep[j] and j != y and not (y >= c and j >= c)]
        push = (
            sum(
                torch.clamp(alpha * d_own - ((x[i] - centres[j]) ** 2).sum() / 4 + beta, min=0)
                for j in others
            )
            / len(others)
            if others
            else 0.0
        )
        total = total + lam * d_own + (1 - lam) * push
    return total / x.shape[0]


def test_dsa_matches_equations_values_and_gradients():
    x, labels = _data()
    dsa = DSALoss(3, 4, x.shape[1], lam=0.5, alpha=2.0, beta=1.0, p=0.6, loss_weight=0.04, seed=3).double()
    dsa.centres.copy_(
        torch.randn(7, x.shape[1], dtype=torch.float64, generator=torch.Generator().manual_seed(1))
    )
    keep = dsa.sample_centres(5)
    assert 0 < int(keep.sum()) < 7
    xr = x.clone().requires_grad_()
    ref = 0.04 * _ref_dsa(xr, dsa.centres, labels, keep, 3, 0.5, 2.0, 1.0)
    ref.backward()
    xi = x.clone().requires_grad_()
    got = dsa(xi, labels, iteration=5)
    got["loss"].backward()
    assert torch.allclose(got["loss"], ref)
    assert torch.allclose(xi.grad, xr.grad)
    assert torch.autograd.gradcheck(
        lambda t: dsa(t, labels, keep=keep)["loss"], (x.clone().requires_grad_(),)
    )


def test_dsa_push_rules_no_sequence_to_sequence():
    dsa = DSALoss(2, 3, 4, p=1.0)
    labels = torch.tensor([0, 2, 3])  # one identity sample, two sequence samples
    mask = dsa.push_mask(labels, torch.ones(5, dtype=torch.bool))
    # identity sample: pushed from the other identity and every sequence centre
    assert mask[0].tolist() == [False, True, True, True, True]
    # sequence samples: pushed only from identity centres
    assert mask[1].tolist() == [True, True, False, False, False]
    assert mask[2].tolist() == [True, True, False, False, False]
    # behaviour: moving another sequence's centre onto a sequence sample does not change its loss
    x = torch.randn(1, 4, dtype=torch.float64)
    dsa = dsa.double()
    dsa.centres.normal_()
    before = dsa(x, torch.tensor([2]), keep=torch.ones(5, dtype=torch.bool))["loss"]
    dsa.centres[3] = x[0]
    after = dsa(x, torch.tensor([2]), keep=torch.ones(5, dtype=torch.bool))["loss"]
    assert torch.allclose(before, after)
    dsa.centres[0] = x[0]  # an identity centre on top of it does push
    pushed = dsa(x, torch.tensor([2]), keep=torch.ones(5, dtype=torch.bool))["loss"]
    assert float(pushed) > float(after)


def test_dsa_subset_shared_and_reproducible():
    dsa = DSALoss(100, 900, 4, p=0.01, seed=7)
    a, b = dsa.sample_centres(12), dsa.sample_centres(12)
    assert torch.equal(a, b)
    assert not torch.equal(a, dsa.sample_centres(13))
    rate = float(torch.stack([dsa.sample_centres(i) for i in range(50)]).float().mean())
    assert 0.005 < rate < 0.02


@pytest.mark.parametrize("name", ["dsa", "center", "margin"])
def test_centre_update_rule(name):
    aux = AUX_LOSSES.create(name, 2, 2, 3, centre_rate=0.5).double()
    aux.centres.copy_(torch.arange(12, dtype=torch.float64).reshape(4, 3))
    before = aux.centres.clone()
    x = torch.randn(5, 3, dtype=torch.float64)
    labels = torch.tensor([0, 0, 3, 3, 3])
    aux.update_centres(x, labels)
    for j in range(4):
        idx = [i for i in range(5) if labels[i] == j]
        delta = sum((before[j] - x[i] for i in idx), torch.zeros(3, dtype=torch.float64)) / (1 + len(idx))
        assert torch.allclose(aux.centres[j], before[j] - 0.5 * delta)
    assert "centres" not in dict(aux.named_parameters())  # never touched by the optimiser or weight decay


def test_center_and_margin_losses_match_equations():
    x, labels = _data()
    cen = AUX_LOSSES.create("center", 3, 4, x.shape[1], loss_weight=0.1).double()
    cen.centres.normal_()
    want = 0.1 * 0.5 * ((x - cen.centres[labels]) ** 2).sum(1).mean()
    assert torch.allclose(cen(x, labels)["loss"], want)
    mar = AUX_LOSSES.create("margin", 3, 4, x.shape[1], margin=1.0, loss_weight=1.0).double()
    mar.centres.copy_(cen.centres)
    total = 0.0
    for i in range(len(labels)):
        y = int(labels[i])
        own = ((x[i] - mar.centres[y]) ** 2).sum()
        js = [j for j in range(7) if j != y and not (y >= 3 and j >= 3)]
        total += sum(
            float(torch.clamp(own - ((x[i] - mar.centres[j]) ** 2).sum() + 1.0, min=0)) for j in js
        ) / len(js)
    assert float(mar(x, labels)["loss"]) == pytest.approx(total / len(labels))
    xi = x.clone().requires_grad_()
    assert torch.autograd.gradcheck(lambda t: mar(t, labels)["loss"], (xi,))


def test_unknown_loss_names_are_config_errors():
    with pytest.raises(ConfigError, match="nope"):
        CHIEF_LOSSES.create("nope", 3, 4)
    with pytest.raises(ConfigError, match="nope"):
        AUX_LOSSES.create("nope", 3, 4, 5)


def test_arcface_fallback_branch_matches_equation():
    """Past theta + m = pi the target is cos(theta) - m sin(m), continuous with cos(theta + m)."""
    from seqbuild.train.losses import arcface_target

    theta = torch.tensor([0.3, 2.0, math.pi - 0.5 - 1e-3, 3.0], dtype=torch.float64)
    got = arcface_target(torch.cos(theta), 0.5)
    want = [math.cos(0.8), math.cos(2.5), math.cos(math.pi - 1e-3), math.cos(3.0) - 0.5 * math.sin(0.5)]
    assert torch.allclose(got, torch.tensor(want, dtype=torch.float64), atol=1e-9)


def _square():
    """Centres at the corners of a square (identities 0, 1; sequences 2, 3) and two samples whose
    distances are easy by hand: d = ||x - c||^2 / 4."""
    centres = torch.tensor([[0.0, 0.0], [2.0, 0.0], [0.0, 2.0], [2.0, 2.0]], dtype=torch.float64)
    # identity sample (label 0) at (1, 0): d = 1/4, 1/4, 5/4, 5/4
    # sequence sample (label 2) at (0, 1): d = 1/4, 5/4, 1/4, 5/4
    x = torch.tensor([[1.0, 0.0], [0.0, 1.0]], dtype=torch.float64)
    return centres, x, torch.tensor([0, 2])


def _dsa(**kw):
    args = {"lam": 0.5, "alpha": 2.0, "beta": 1.0, "p": 1.0, "loss_weight": 1.0, **kw}
    dsa = DSALoss(2, 2, 2, **args).double()
    centres, x, labels = _square()
    dsa.centres.copy_(centres)
    return dsa, x, labels


def test_dsa_overlap_rule_eq11_against_hand_computation():
    """Eq. 11: with overlap not removed only identity samples are pushed, and only from identity centres."""
    # overlap removed. identity sample: hinges from c1, c2, c3 = 2/4 - 1/4 + 1, 2/4 - 5/4 + 1, same
    # = 1.25, 0.25, 0.25 -> push 7/12, loss 0.5 * 0.25 + 0.5 * 7/12 = 5/12.
    # sequence sample: from identity centres only: c0, c1 = 1.25, 0.25 -> push 0.75, loss 0.5
    dsa, x, labels = _dsa(overlap_removed=True)
    assert float(dsa(x, labels)["loss"]) == pytest.approx((5 / 12 + 0.5) / 2)
    # overlap not removed. identity sample: from c1 only -> push 1.25, loss 0.125 + 0.625 = 0.75;
    # sequence sample: no push, loss = 0.5 * 0.25 = 0.125
    dsa, x, labels = _dsa(overlap_removed=False)
    xi = x.clone().requires_grad_()
    out = dsa(xi, labels)
    assert float(out["loss"].detach()) == pytest.approx((0.75 + 0.125) / 2)
    assert dsa.push_mask(labels, torch.ones(4, dtype=torch.bool)).tolist() == [
        [False, True, False, False],
        [False, False, False, False],
    ]
    out["loss"].backward()
    # the sequence sample only feels the pull: d/dx (1/2) * 0.5 * ||x - c2||^2 / 4 = (x - c2) / 8
    assert torch.allclose(xi.grad[1], torch.tensor([0.0, -1.0 / 8], dtype=torch.float64))
    # the identity sample: pull (x - c0)/8, plus push 0.5 * (2 (x - c0)/2 - (x - c1)/2) / 2
    want = (x[0] - 0) / 8 + 0.25 * ((x[0] - 0) - (x[0] - torch.tensor([2.0, 0.0], dtype=torch.float64)) / 2)
    assert torch.allclose(xi.grad[0], want)


def test_chief_and_margin_losses_take_the_overlap_switch_from_the_same_flag():
    from seqbuild.config import build
    from seqbuild.train.config import TrainConfig
    from seqbuild.train.trainer import build_losses

    for flag in (True, False):
        cfg = build(TrainConfig, {"overlap_removed": flag})
        chief, aux = build_losses(cfg, 3, 4, 8)
        assert chief.overlap_removed is flag and aux.overlap_removed is flag
    mar = AUX_LOSSES.create("margin", 2, 2, 2, margin=1.0, loss_weight=1.0, overlap_removed=False).double()
    centres, x, labels = _square()
    mar.centres.copy_(centres)
    # identity sample vs c1 only: ||x-c0||^2 - ||x-c1||^2 + 1 = 1 - 1 + 1 = 1; sequence sample: no pairs
    assert float(mar(x, labels)["loss"]) == pytest.approx(0.5)


def test_dsa_paper_normaliser_against_hand_computation():
    """Eq. 12: identity part over (C_i p), sequence part over (H_i p), here with p = 1."""
    dsa, x, labels = _dsa(normaliser="paper")
    # identity sample: 1.25 / 1 + (0.25 + 0.25) / 2 = 1.5 -> 0.125 + 0.75 = 0.875
    # sequence sample: (1.25 + 0.25) / 2 = 0.75 -> 0.125 + 0.375 = 0.5
    assert float(dsa(x, labels)["loss"]) == pytest.approx((0.875 + 0.5) / 2)
    # with a sampled subset the parts are divided by the expected counts, not the drawn ones:
    # p = 0.5, kept = {c0, c2}: identity sample sees c2 only: 0.25 / (2 * 0.5); sequence sample c0: 1.25 / 1
    dsa, x, labels = _dsa(normaliser="paper", p=0.5)
    keep = torch.tensor([True, False, True, False])
    want = ((0.125 + 0.5 * 0.25) + (0.125 + 0.5 * 1.25)) / 2
    assert float(dsa(x, labels, keep=keep)["loss"]) == pytest.approx(want)
    with pytest.raises(ConfigError, match="normaliser"):
        DSALoss(2, 2, 2, normaliser="nope")


def test_dsa_reports_the_share_of_active_hinge_pairs():
    dsa, x, labels = _dsa(beta=1.0)
    assert float(dsa(x, labels)["dsa_active"]) == 1.0  # every one of the 5 pairs is positive
    # beta = 0.25: identity sample 0.5 - 0.25 + 0.25 > 0 (c1) but 0.5 - 1.25 + 0.25 < 0 (c2, c3);
    # sequence sample: c0 active, c1 not -> 2 of 5
    dsa, x, labels = _dsa(beta=0.25)
    out = dsa(x, labels)
    assert float(out["dsa_active"]) == pytest.approx(2 / 5) and float(out["dsa_pairs"]) == 5


def test_on_unit_features_beta_one_never_clips():
    """Why beta = 1 does nothing on normalised features: d <= 1, so alpha d_own - d_n + 1 >= 0."""
    g = torch.Generator().manual_seed(0)
    labels = torch.arange(64) % 8
    prototypes = torch.randn(8, 16, generator=g)
    for spread in (0.2, 1.0, 5.0):  # tight clusters to nearly none
        noise = spread * torch.randn(64, 16, generator=g)
        x = torch.nn.functional.normalize(prototypes[labels] + noise, dim=1)
        dsa = DSALoss(8, 0, 16, p=1.0, beta=1.0)
        for j in range(8):
            dsa.centres[j] = x[labels == j].mean(0)
        assert float(dsa(x, labels)["dsa_active"]) == 1.0
    # with beta for the unit sphere, well-clustered samples stop being pushed
    x = torch.nn.functional.normalize(prototypes[labels] + 0.2 * torch.randn(64, 16, generator=g), dim=1)
    for j in range(8):
        dsa.centres[j] = x[labels == j].mean(0)
    dsa.beta = 0.25
    assert float(dsa(x, labels)["dsa_active"]) < 0.5


def test_dsa_only_computes_distances_to_sampled_centres():
    """The push runs over the kept centres alone (no (N, C + H) matrix): equal to the full-mask loss."""
    x, labels = _data()
    dsa = DSALoss(3, 4, x.shape[1], p=0.5, seed=1).double()
    dsa.centres.normal_(generator=torch.Generator().manual_seed(2))
    keep = dsa.sample_centres(3)
    got = dsa(x, labels, keep=keep)["loss"]
    assert torch.allclose(got, 0.04 * _ref_dsa(x, dsa.centres, labels, keep, 3, 0.5, 2.0, dsa.beta))


def test_solver_centre_update_uses_the_step_lr_and_momentum():
    """centre_update='solver': v <- mu v + lr * delta / 2, c <- c - v (the released layer's blob + SGD)."""
    aux = AUX_LOSSES.create("dsa", 2, 1, 2, centre_update="solver").double()
    aux.centres.copy_(torch.tensor([[0.0, 0.0], [1.0, 1.0], [5.0, 5.0]], dtype=torch.float64))
    x = torch.tensor([[2.0, 0.0], [4.0, 0.0]], dtype=torch.float64)
    labels = torch.tensor([0, 0])
    aux.update_centres(x, labels, lr=0.1, momentum=0.9)
    # delta_0 = (2 * c0 - (x1 + x2)) / 3 = (-6, 0) / 3 = (-2, 0); v0 = 0.1 * (-1, 0); c0 = (0.1, 0)
    assert torch.allclose(aux.centres[0], torch.tensor([0.1, 0.0], dtype=torch.float64))
    aux.update_centres(x[:1], labels[:1], lr=0.1, momentum=0.9)
    # delta_0 = (c0 - x1) / 2 = (-0.95, 0); v0 = 0.9 * (-0.1) + 0.05 * (-0.95) = -0.1375; c0 = 0.2375
    assert torch.allclose(aux.centres[0], torch.tensor([0.2375, 0.0], dtype=torch.float64))
    assert torch.equal(aux.centres[1:], torch.tensor([[1.0, 1.0], [5.0, 5.0]], dtype=torch.float64))
    with pytest.raises(ConfigError, match="centre_update"):
        AUX_LOSSES.create("dsa", 2, 1, 2, centre_update="nope")


def test_non_finite_centres_stop_training_loudly():
    from seqbuild.train.losses import TrainingDivergedError

    aux = AUX_LOSSES.create("dsa", 2, 2, 3)
    x = torch.randn(3, 3)
    x[1, 0] = float("nan")
    with pytest.raises(TrainingDivergedError, match="non-finite centres"):
        aux.update_centres(x, torch.tensor([0, 1, 3]))
