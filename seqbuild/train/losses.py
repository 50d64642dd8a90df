"""SeqFace losses built from parts: chief (classification) losses and auxiliary (centre-based) losses.

Labels are global: an identity sample has a label in ``[0, C)`` (C identity classes), a sequence sample a
label in ``[C, C + H)`` (each sequence its own label). ``num_identities`` (C) tells the two apart.

Every loss returns a dict of named components: ``"loss"`` is the (weighted) value to back-propagate, the
others are detached figures for the logs. The margin, class-weight and centre maths run in float32 (or
float64 in tests) whatever the autocast state of the backbone.

Chief losses (registry ``CHIEF_LOSSES``): ``softmax``, ``l2_sphereface`` (A-Softmax, m = 4, annealed),
``lsr_sphereface`` (L2-SphereFace + label smoothing regularisation for sequence samples), ``arcface``,
``cosface``. Non-LSR chief losses ignore sequence samples (they have no class to target).

Auxiliary losses (registry ``AUX_LOSSES``): ``dsa`` (discriminative sequence agent), ``center`` (Wen et
al.), ``margin`` (Gao et al.). Their centres are buffers updated by :meth:`update_centres` (the centre-loss
rule ``c_j <- c_j - rate * sum_i (c_j - x_i) / (1 + n_j)``), never by the optimiser or weight decay.
"""

from __future__ import annotations

import math
from collections.abc import Callable

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from ..registry import Registry

CHIEF_LOSSES: Registry[nn.Module] = Registry("chief loss")
AUX_LOSSES: Registry[nn.Module] = Registry("auxiliary loss")
DISTANCES: Registry[Callable[[Tensor, Tensor], Tensor]] = Registry("distance")
MARGINS: Registry[Callable[..., Tensor]] = Registry("margin")


# ---------------------------------------------------------------- distances


@DISTANCES.register("euclidean")
def euclidean_distance(x: Tensor, c: Tensor) -> Tensor:
    """DSA's d(x, c) = ||x - c||^2 / 4 between every row of ``x`` (N, D) and of ``c`` (K, D): (N, K)."""
    x2 = (x * x).sum(1, keepdim=True)
    c2 = (c * c).sum(1)
    return (x2 + c2 - 2.0 * x @ c.t()).clamp_min(0.0) / 4.0


@DISTANCES.register("angular")
def angular_distance(x: Tensor, c: Tensor) -> Tensor:
    """d on L2-normalised x and c: ||x/|x| - c/|c|||^2 / 4 = (1 - cos) / 2, in [0, 1]."""
    return euclidean_distance(F.normalize(x, dim=1), F.normalize(c, dim=1))


# ---------------------------------------------------------------- margins on the target cosine


def _cos_m_theta(cos: Tensor, m: int) -> Tensor:
    """cos(m * theta) as a Chebyshev polynomial of cos(theta) (exact gradients, no acos)."""
    t_prev, t = torch.ones_like(cos), cos
    if m == 0:
        return t_prev
    for _ in range(m - 1):
        t_prev, t = t, 2.0 * cos * t - t_prev
    return t


@MARGINS.register("a_softmax")
def a_softmax_psi(cos: Tensor, m: int = 4) -> Tensor:
    """SphereFace's psi(theta) = (-1)^k cos(m theta) - 2k for theta in [k pi/m, (k+1) pi/m]."""
    with torch.no_grad():
        theta = torch.acos(cos.clamp(-1.0, 1.0))
        k = torch.floor(m * theta / math.pi).clamp(0, m - 1)
        sign = 1.0 - 2.0 * torch.remainder(k, 2.0)
    return sign * _cos_m_theta(cos, m) - 2.0 * k


@MARGINS.register("arcface")
def arcface_target(cos: Tensor, m: float = 0.5) -> Tensor:
    """cos(theta + m), with insightface's linear fallback cos - m sin(m) once theta + m passes pi."""
    sin = torch.sqrt((1.0 - cos * cos).clamp_min(1e-12))
    phi = cos * math.cos(m) - sin * math.sin(m)
    return torch.where(cos > math.cos(math.pi - m), phi, cos - math.sin(math.pi - m) * m)


@MARGINS.register("cosface")
def cosface_target(cos: Tensor, m: float = 0.35) -> Tensor:
    """cos(theta) - m."""
    return cos - m


def sphereface_lambda(
    iteration: int, base: float = 5.0, gamma: float = 0.12, power: float = 1.0, lambda_min: float = 5.0
) -> float:
    """The annealing weight of the A-Softmax margin: max(lambda_min, base * (1 + gamma * iter)^-power)."""
    return max(lambda_min, base * (1.0 + gamma * iteration) ** (-power))


# ---------------------------------------------------------------- chief losses


def _fp32(x: Tensor) -> Tensor:
    """Loss maths in float32 (float64 inputs, as in gradient checks, stay float64)."""
    return x if x.dtype == torch.float64 else x.float()


def _components(loss: Tensor, **extra: Tensor | float) -> dict[str, Tensor]:
    out = {"loss": loss}
    for k, v in extra.items():
        out[k] = v.detach() if isinstance(v, Tensor) else torch.tensor(float(v))
    return out


class SoftmaxLoss(nn.Module):
    """Plain softmax cross-entropy on a linear layer over the raw features (identity samples only)."""

    def __init__(self, num_identities: int, dim: int, **_: object) -> None:
        super().__init__()
        self.num_identities = num_identities
        self.fc = nn.Linear(dim, num_identities)

    def forward(self, features: Tensor, labels: Tensor, iteration: int = 0) -> dict[str, Tensor]:
        """Cross-entropy of the identity samples of the batch (0 when it has none)."""
        is_id = labels < self.num_identities
        logits = self.fc(_fp32(features))
        if not bool(is_id.any()):
            return _components(logits.sum() * 0.0, ce=0.0)
        ce = F.cross_entropy(logits[is_id], labels[is_id])
        return _components(ce, ce=ce)


class CosineMarginLoss(nn.Module):
    """Cross-entropy on scaled cosines to normalised class weights, with a margin on the target cosine.

    Features are L2-normalised and scaled by ``scale`` (the "L2" of L2-SphereFace). The target logit is
    ``scale * (lambda * cos + psi(cos)) / (1 + lambda)`` where ``psi`` is the margin function and
    ``lambda`` the annealing weight (0 = the full margin). With ``lsr=True``, a sequence sample has the
    uniform target 1/C over all identity classes and no margin (SeqFace eq. 4); with
    ``overlap_removed=False`` its target is 0 instead, so it only trains through the auxiliary loss.
    """

    def __init__(
        self,
        num_identities: int,
        dim: int,
        margin: str = "a_softmax",
        m: float = 4,
        scale: float = 32.0,
        lsr: bool = False,
        overlap_removed: bool = True,
        lambda_base: float = 0.0,
        lambda_gamma: float = 0.12,
        lambda_power: float = 1.0,
        lambda_min: float = 0.0,
        **_: object,
    ) -> None:
        super().__init__()
        self.num_identities = num_identities
        self.weight = nn.Parameter(torch.empty(num_identities, dim))
        nn.init.xavier_uniform_(self.weight)
        self.margin_fn = MARGINS.get(margin)
        self.m = int(m) if margin == "a_softmax" else float(m)
        self.scale = scale
        self.lsr = lsr
        self.overlap_removed = overlap_removed
        self.anneal = (lambda_base, lambda_gamma, lambda_power, lambda_min)

    def lambda_at(self, iteration: int) -> float:
        """The margin annealing weight at ``iteration`` (0 when annealing is off)."""
        base, gamma, power, lmin = self.anneal
        if base <= 0 and lmin <= 0:
            return 0.0
        return sphereface_lambda(iteration, base, gamma, power, lmin)

    def logits(self, features: Tensor, labels: Tensor, iteration: int = 0) -> Tensor:
        """Scaled logits with the margin applied at the target class of identity samples."""
        x = F.normalize(_fp32(features), dim=1)
        w = F.normalize(self.weight.to(x.dtype), dim=1)
        cos = (x @ w.t()).clamp(-1.0, 1.0)
        is_id = labels < self.num_identities
        if not bool(is_id.any()):
            return self.scale * cos
        rows = torch.nonzero(is_id, as_tuple=True)[0]
        target_cos = cos[rows, labels[rows]]
        lam = self.lambda_at(iteration)
        target = (lam * target_cos + self.margin_fn(target_cos, self.m)) / (1.0 + lam)
        cos = cos.index_put((rows, labels[rows]), target)
        return self.scale * cos

    def forward(self, features: Tensor, labels: Tensor, iteration: int = 0) -> dict[str, Tensor]:
        """Mean cross-entropy over the samples that have a target (identity, and LSR sequence samples)."""
        logits = self.logits(features, labels, iteration)
        logp = F.log_softmax(logits, dim=1)
        is_id = labels < self.num_identities
        n_id = int(is_id.sum())
        id_sum = -logp[is_id, labels[is_id]].sum() if n_id else logp.sum() * 0.0
        use_seq = self.lsr and self.overlap_removed
        n_seq = int((~is_id).sum()) if use_seq else 0
        seq_sum = -logp[~is_id].mean(1).sum() if n_seq else logp.sum() * 0.0
        count = max(n_id + n_seq, 1)
        loss = (id_sum + seq_sum) / count
        return _components(
            loss,
            ce_identity=id_sum / max(n_id, 1),
            ce_sequence=seq_sum / max(n_seq, 1),
            margin_lambda=self.lambda_at(iteration),
        )


CHIEF_LOSSES.register("softmax")(SoftmaxLoss)


SPHEREFACE_DEFAULTS = {"margin": "a_softmax", "m": 4, "scale": 32.0, "lambda_base": 5.0, "lambda_min": 5.0}
"""L2-SphereFace as in the SeqFace paper: A-Softmax m = 4, features scaled to 32, the authors' annealing."""


@CHIEF_LOSSES.register("l2_sphereface")
def l2_sphereface(num_identities: int, dim: int, **kw: object) -> CosineMarginLoss:
    """L2-SphereFace: A-Softmax (m = 4) on features scaled to 32, margin annealed as the authors' layer."""
    return CosineMarginLoss(num_identities, dim, **{**SPHEREFACE_DEFAULTS, **kw, "lsr": False})


@CHIEF_LOSSES.register("lsr_sphereface")
def lsr_sphereface(num_identities: int, dim: int, **kw: object) -> CosineMarginLoss:
    """L2-SphereFace for identity samples plus the LSR uniform target for sequence samples (SeqFace)."""
    return CosineMarginLoss(num_identities, dim, **{**SPHEREFACE_DEFAULTS, **kw, "lsr": True})


@CHIEF_LOSSES.register("arcface")
def arcface(num_identities: int, dim: int, **kw: object) -> CosineMarginLoss:
    """ArcFace: additive angular margin (m = 0.5, s = 64)."""
    args = {"margin": "arcface", "m": 0.5, "scale": 64.0}
    args.update({k: v for k, v in kw.items() if not k.startswith("lambda")})
    return CosineMarginLoss(num_identities, dim, **args)


@CHIEF_LOSSES.register("cosface")
def cosface(num_identities: int, dim: int, **kw: object) -> CosineMarginLoss:
    """CosFace: additive cosine margin (m = 0.35, s = 64)."""
    args = {"margin": "cosface", "m": 0.35, "scale": 64.0}
    args.update({k: v for k, v in kw.items() if not k.startswith("lambda")})
    return CosineMarginLoss(num_identities, dim, **args)


# ---------------------------------------------------------------- auxiliary losses


class CentreLossBase(nn.Module):
    """Holds one centre per label (identities then sequences) and updates them by the centre-loss rule."""

    def __init__(
        self,
        num_identities: int,
        num_sequences: int,
        dim: int,
        centre_rate: float = 0.5,
        loss_weight: float = 1.0,
        **_: object,
    ) -> None:
        super().__init__()
        self.num_identities = num_identities
        self.num_sequences = num_sequences
        self.centre_rate = centre_rate
        self.loss_weight = loss_weight
        self.register_buffer("centres", torch.zeros(num_identities + num_sequences, dim))

    @torch.no_grad()
    def update_centres(self, features: Tensor, labels: Tensor) -> None:
        """c_j <- c_j - rate * sum_{i: y_i = j} (c_j - x_i) / (1 + n_j); summed over DDP ranks when running."""
        x = features.detach().to(self.centres.dtype)
        sums = torch.zeros_like(self.centres).index_add_(0, labels, x)
        counts = torch.zeros(self.centres.shape[0], device=x.device, dtype=x.dtype)
        counts.index_add_(0, labels, torch.ones_like(labels, dtype=x.dtype))
        if torch.distributed.is_available() and torch.distributed.is_initialized():
            torch.distributed.all_reduce(sums)
            torch.distributed.all_reduce(counts)
        delta = (counts[:, None] * self.centres - sums) / (1.0 + counts[:, None])
        self.centres -= self.centre_rate * delta


class DSALoss(CentreLossBase):
    """Discriminative Sequence Agent loss (SeqFace eqs. 5-12).

    Per sample i with own centre c_y:
    ``lambda * d(x, c_y) + (1 - lambda) * mean_{j in S_i} max(alpha * d(x, c_y) - d(x, c_j) + beta, 0)``,
    where S_i is the random subset of centres drawn for this iteration (each kept with probability ``p``,
    shared by the batch), minus the own centre; identity samples are pushed from identity and sequence
    centres, sequence samples only from identity centres (sequences may share a person, so they are
    never pushed from one another). An empty S_i gives no push term. The batch mean is scaled by
    ``loss_weight``.
    """

    def __init__(
        self,
        num_identities: int,
        num_sequences: int,
        dim: int,
        lam: float = 0.5,
        alpha: float = 2.0,
        beta: float = 1.0,
        p: float = 0.01,
        distance: str = "euclidean",
        loss_weight: float = 0.04,
        centre_rate: float = 0.5,
        seed: int = 0,
        **_: object,
    ) -> None:
        super().__init__(num_identities, num_sequences, dim, centre_rate, loss_weight)
        self.lam, self.alpha, self.beta, self.p = lam, alpha, beta, p
        self.distance = DISTANCES.get(distance)
        self.seed = seed

    def sample_centres(self, iteration: int) -> Tensor:
        """The shared keep-mask over all centres for ``iteration`` (a pure function of seed and iteration,
        so that DDP ranks agree and a resumed run draws the same subsets)."""
        gen = torch.Generator().manual_seed(self.seed * 1_000_003 + iteration)
        n = self.centres.shape[0]
        return (torch.rand(n, generator=gen) < self.p).to(self.centres.device)

    def push_mask(self, labels: Tensor, keep: Tensor) -> Tensor:
        """(N, K) mask of the centres each sample is pushed from: kept, not its own, and no
        sequence-to-sequence pairs."""
        n_all = self.centres.shape[0]
        is_seq_centre = torch.arange(n_all, device=labels.device) >= self.num_identities
        mask = keep[None, :].expand(labels.shape[0], n_all).clone()
        mask[torch.arange(labels.shape[0], device=labels.device), labels] = False
        sample_is_seq = labels >= self.num_identities
        mask &= ~(sample_is_seq[:, None] & is_seq_centre[None, :])
        return mask

    def forward(
        self, features: Tensor, labels: Tensor, iteration: int = 0, keep: Tensor | None = None
    ) -> dict[str, Tensor]:
        """The weighted DSA loss, with its pull and push parts."""
        x = features.to(self.centres.dtype) if features.dtype != torch.float64 else features
        centres = self.centres.to(x.dtype)
        if keep is None:
            keep = self.sample_centres(iteration)
        d_all = self.distance(x, centres)
        d_own = d_all.gather(1, labels[:, None]).squeeze(1)
        mask = self.push_mask(labels, keep).to(x.dtype)
        hinge = (self.alpha * d_own[:, None] - d_all + self.beta).clamp_min(0.0) * mask
        n_push = mask.sum(1)
        push = torch.where(n_push > 0, hinge.sum(1) / n_push.clamp_min(1.0), torch.zeros_like(d_own))
        pull = d_own
        per_sample = self.lam * pull + (1.0 - self.lam) * push
        loss = self.loss_weight * per_sample.mean()
        return _components(
            loss, dsa_pull=pull.mean(), dsa_push=push.mean(), dsa_centres_kept=float(keep.sum())
        )


class CenterLoss(CentreLossBase):
    """Centre loss (Wen et al.): loss_weight * mean_i ||x_i - c_{y_i}||^2 / 2."""

    def forward(self, features: Tensor, labels: Tensor, iteration: int = 0) -> dict[str, Tensor]:
        """The weighted centre loss."""
        x = features if features.dtype == torch.float64 else features.to(self.centres.dtype)
        diff = x - self.centres.to(x.dtype)[labels]
        value = 0.5 * (diff * diff).sum(1).mean()
        return _components(self.loss_weight * value, center=value)


class MarginLoss(CentreLossBase):
    """Margin loss (Gao et al.), as we read its eqs. 3-5: Euclidean hinge between the squared distance to
    the own centre and to every other centre,
    ``loss_weight * mean_i mean_{j != y_i} max(||x_i - c_{y_i}||^2 - ||x_i - c_j||^2 + margin, 0)``,
    with the centres updated by the centre-loss rule (as for DSA, sequence samples are not pushed from
    other sequences' centres)."""

    def __init__(
        self,
        num_identities: int,
        num_sequences: int,
        dim: int,
        margin: float = 1.0,
        loss_weight: float = 0.01,
        centre_rate: float = 0.5,
        **_: object,
    ) -> None:
        super().__init__(num_identities, num_sequences, dim, centre_rate, loss_weight)
        self.margin = margin

    def forward(self, features: Tensor, labels: Tensor, iteration: int = 0) -> dict[str, Tensor]:
        """The weighted margin loss."""
        x = features if features.dtype == torch.float64 else features.to(self.centres.dtype)
        d = 4.0 * euclidean_distance(x, self.centres.to(x.dtype))
        d_own = d.gather(1, labels[:, None])
        n_all = d.shape[1]
        mask = torch.ones_like(d, dtype=torch.bool)
        mask[torch.arange(len(labels), device=labels.device), labels] = False
        is_seq_centre = torch.arange(n_all, device=labels.device) >= self.num_identities
        mask &= ~((labels >= self.num_identities)[:, None] & is_seq_centre[None, :])
        maskf = mask.to(x.dtype)
        hinge = (d_own - d + self.margin).clamp_min(0.0) * maskf
        per = hinge.sum(1) / maskf.sum(1).clamp_min(1.0)
        value = per.mean()
        return _components(self.loss_weight * value, margin_hinge=value)


AUX_LOSSES.register("dsa")(DSALoss)
AUX_LOSSES.register("center")(CenterLoss)
AUX_LOSSES.register("margin")(MarginLoss)
