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
al.), ``margin`` (Gao et al.). Their centres are buffers updated by :meth:`CentreLossBase.update_centres`
(the centre-loss rule, at a fixed rate or with the solver's learning rate and momentum), never by the
optimiser or weight decay.
"""

from __future__ import annotations

import math
from collections.abc import Callable

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from ..errors import ConfigError, SeqbuildError
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


class TrainingDivergedError(SeqbuildError):
    """Training produced non-finite values (centres, or a loss that no loss scaler will skip)."""


CENTRE_UPDATES = ("solver", "rate")
"""``solver``: centres move with the step's learning rate and the optimiser's momentum, as the released
Caffe layers' centre blobs do; ``rate``: a fixed rate of the centre-loss rule, independent of the schedule."""


def _gather_batch(x: Tensor, labels: Tensor) -> tuple[Tensor, Tensor]:
    """Every rank's (features, labels) in rank order (each rank may hold a different number of rows)."""
    import torch.distributed as dist

    if not (dist.is_available() and dist.is_initialized()) or dist.get_world_size() == 1:
        return x, labels
    world = dist.get_world_size()
    n = torch.tensor([labels.shape[0]], device=labels.device)
    sizes = [torch.zeros_like(n) for _ in range(world)]
    dist.all_gather(sizes, n)
    most = int(max(int(s) for s in sizes))
    xp = torch.zeros(most, x.shape[1], device=x.device, dtype=x.dtype)
    lp = torch.full((most,), -1, device=labels.device, dtype=labels.dtype)
    xp[: x.shape[0]], lp[: labels.shape[0]] = x, labels
    xs, ls = [torch.empty_like(xp) for _ in range(world)], [torch.empty_like(lp) for _ in range(world)]
    dist.all_gather(xs, xp)
    dist.all_gather(ls, lp)
    xa, la = torch.cat(xs), torch.cat(ls)
    keep = la >= 0
    return xa[keep], la[keep]


class CentreLossBase(nn.Module):
    """Holds one centre per label (identities then sequences) and updates them by the centre-loss rule.

    Each step, for every label j in the batch (of every DDP rank), ``delta_j = sum_{i: y_i = j}
    (c_j - x_i) / (1 + n_j)``. With ``centre_update="rate"``: ``c_j <- c_j - rate * delta_j``. With
    ``"solver"`` (the released Caffe DSA layer, whose centres are a blob of the net): ``v <- momentum * v
    + lr * delta / 2``, ``c <- c - v``, where lr is the step's learning rate, momentum the optimiser's, and
    delta / 2 the Caffe layer's centre diff (the derivative of d = ||x - c||^2 / 4). Centres are buffers:
    no weight decay, no gradient.
    """

    def __init__(
        self,
        num_identities: int,
        num_sequences: int,
        dim: int,
        centre_rate: float = 0.5,
        loss_weight: float = 1.0,
        centre_update: str = "rate",
        **_: object,
    ) -> None:
        super().__init__()
        if centre_update not in CENTRE_UPDATES:
            raise ConfigError(f"centre_update {centre_update!r}: expected one of {', '.join(CENTRE_UPDATES)}")
        self.num_identities = num_identities
        self.num_sequences = num_sequences
        self.centre_rate = centre_rate
        self.centre_update = centre_update
        self.loss_weight = loss_weight
        self.register_buffer("centres", torch.zeros(num_identities + num_sequences, dim))
        if centre_update == "solver":
            self.register_buffer("centre_velocity", torch.zeros(num_identities + num_sequences, dim))

    @torch.no_grad()
    def update_centres(
        self, features: Tensor, labels: Tensor, lr: float = 0.0, momentum: float = 0.0
    ) -> None:
        """Move the centres of the batch's labels (all DDP ranks' samples, gathered in rank order, so every
        rank computes the same update); TrainingDivergedError when a centre becomes non-finite."""
        x, labels = _gather_batch(features.detach().to(self.centres.dtype), labels)
        if labels.numel() == 0:
            return
        ids, inverse = torch.unique(labels, return_inverse=True)
        sums = torch.zeros(len(ids), x.shape[1], device=x.device, dtype=x.dtype).index_add_(0, inverse, x)
        counts = torch.bincount(inverse, minlength=len(ids)).to(x.dtype)[:, None]
        delta = (counts * self.centres[ids] - sums) / (1.0 + counts)
        if self.centre_update == "solver":
            self.centre_velocity.mul_(momentum)
            self.centre_velocity.index_add_(0, ids, 0.5 * lr * delta)
            self.centres.sub_(self.centre_velocity)
        else:
            self.centres.index_add_(0, ids, -self.centre_rate * delta)
        # only the batch's rows can have become non-finite this step (the velocity of the others is a
        # decayed sum of earlier, already checked, updates)
        if not bool(torch.isfinite(self.centres[ids]).all()):
            bad = ids[~torch.isfinite(self.centres[ids]).all(1)]
            raise TrainingDivergedError(
                f"non-finite centres for labels {bad[:5].tolist()} (features: "
                f"{int((~torch.isfinite(x)).any(1).sum())} of {len(x)} non-finite); lower the learning rate, "
                "use amp=bf16/off, or set clip_grad_norm"
            )


def push_pairs(labels: Tensor, centre_ids: Tensor, num_identities: int, overlap_removed: bool) -> Tensor:
    """(N, K) mask: may sample i (label ``labels[i]``) be pushed from centre ``centre_ids[k]``? (SeqFace
    eq. 11's gamma). Never from its own centre and never a sequence from a sequence; when the sequences
    may overlap the identity classes (``overlap_removed=False``) only identity samples from identity
    centres."""
    centre_is_id = (centre_ids < num_identities)[None, :]
    sample_is_id = (labels < num_identities)[:, None]
    mask = labels[:, None] != centre_ids[None, :]
    if overlap_removed:
        return mask & (sample_is_id | centre_is_id)
    return mask & sample_is_id & centre_is_id


DSA_NORMALISERS = ("pooled", "paper")
"""How DSA's push term is normalised: ``pooled`` = the mean over the sample's eligible sampled centres;
``paper`` = SeqFace eq. 12, identity and sequence parts each over their expected number of sampled
centres."""


class DSALoss(CentreLossBase):
    """Discriminative Sequence Agent loss (SeqFace eqs. 5-12).

    Per sample i with own centre c_y, hinge h_n = max(alpha * d(x, c_y) - d(x, c_n) + beta, 0):
    ``lambda * d(x, c_y) + (1 - lambda) * push_i``, where the push runs over the random subset S of
    centres drawn for this iteration (each kept with probability ``p``, shared by the batch and by every
    DDP rank), restricted by gamma (eq. 11):

    - ``overlap_removed=True`` (the sequences are known not to contain the identity classes' people):
      identity samples are pushed from identity and sequence centres, sequence samples only from
      identity centres (sequences may share a person, so they are never pushed from one another);
    - ``overlap_removed=False``: gamma = 1 only for identity samples and identity centres (n < C): a
      sequence might show an identity class's person, so nothing is pushed across the two sets, and
      sequence samples are only pulled to their own centre.

    ``normaliser="pooled"`` (default): push_i = sum of the eligible hinges / their number (the released
    Caffe layer divides by the constant N p, which is the same up to a constant factor).
    ``normaliser="paper"`` (eq. 12): push_i = sum over identity centres / (C_i p) + sum over sequence
    centres / (H_i p), where C_i and H_i are how many identity and sequence centres sample i may be
    pushed from (C - 1 and H for an identity sample, C for a sequence sample; eq. 12 writes C - 1 and
    H - 1, equal at scale). The two differ in how the push splits between identities and sequences: at
    Celeb-Seq's scale (C = 79K, H = 550K) pooled gives an identity sample's identity pairs
    (C - 1) / (C + H - 1) = 0.13 of the weight eq. 12 gives them.

    Where the distance lives (decided by measurement: docs/benchmarks.md, "DSA: feature space, centre
    speed, normaliser"). d = ||x - c||^2 / 4 as in the paper, on features the trainer prepares
    (``aux_normalise``, ``aux_scale``):

    - unit features (scale 1): d <= (1 + |c|)^2 / 4 <= 1, so with the paper's beta = 1 and alpha >= 1
      the hinge never clips (every pair active): DSA is then a pull plus a linear push from the mean
      sampled centre, close to centre loss;
    - raw fc5 features (the paper, section 4.1.1): the loss's magnitude follows the features' norm,
      which the backbone sets (2-3 for the digits MLP, 30-140 for resnet27 early on); on resnet27 the
      auxiliary loss was 0.7-15 times the chief loss over the first 15 steps, so the clipped step mostly
      served DSA, and on digits raw features diverged within 6 steps at lr 0.1 without a gradient clip;
    - features normalised then scaled to norm s (the default, s = 4): bounded distances whatever the
      backbone, and beta = 1 becomes a margin on the sphere of radius s. With trained centres near the
      sphere and other classes about orthogonal (d_n ~ s^2 / 2 = 8), the hinge switches off once
      d_n - alpha d_own >= 1, i.e. once a sample is within about 56 degrees of its own centre
      (s = 2: 41 degrees, s = 6: 62 degrees). On digits the share of active hinge pairs for LSR + DSA
      was 0.88 / 0.43 / 0.21 / 0.09 at s = 2 / 3 / 4 / 6; s = 4 keeps the margin active for a minority
      of pairs, the hard ones.

    The share of active pairs is logged as ``dsa_active``.
    The batch mean is scaled by ``loss_weight``.
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
        overlap_removed: bool = True,
        normaliser: str = "pooled",
        centre_update: str = "rate",
        **_: object,
    ) -> None:
        super().__init__(num_identities, num_sequences, dim, centre_rate, loss_weight, centre_update)
        if normaliser not in DSA_NORMALISERS:
            raise ConfigError(f"DSA normaliser {normaliser!r}: expected one of {', '.join(DSA_NORMALISERS)}")
        self.lam, self.alpha, self.beta, self.p = lam, alpha, beta, p
        self.distance = DISTANCES.get(distance)
        self.seed = seed
        self.overlap_removed = overlap_removed
        self.normaliser = normaliser

    def sample_centres(self, iteration: int) -> Tensor:
        """The shared keep-mask over all centres for ``iteration`` (a pure function of seed and iteration,
        so that DDP ranks agree and a resumed run draws the same subsets)."""
        gen = torch.Generator().manual_seed(self.seed * 1_000_003 + iteration)
        n = self.centres.shape[0]
        return (torch.rand(n, generator=gen) < self.p).to(self.centres.device)

    def eligible(self, labels: Tensor, centre_ids: Tensor) -> Tensor:
        """(N, K) mask of the centres ``centre_ids`` each sample may be pushed from (gamma of eq. 11)."""
        return push_pairs(labels, centre_ids, self.num_identities, self.overlap_removed)

    def push_mask(self, labels: Tensor, keep: Tensor) -> Tensor:
        """(N, C + H) mask of the centres each sample is pushed from in an iteration with ``keep``."""
        everything = torch.arange(self.centres.shape[0], device=labels.device)
        return self.eligible(labels, everything) & keep[None, :]

    def _expected_counts(self, labels: Tensor) -> tuple[Tensor, Tensor]:
        """How many identity and sequence centres each sample may be pushed from (before sampling)."""
        c, h = self.num_identities, self.num_sequences
        is_id = labels < c
        n_id = torch.where(is_id, torch.full_like(labels, c - 1), torch.full_like(labels, c))
        if self.overlap_removed:
            n_seq = torch.where(is_id, torch.full_like(labels, h), torch.zeros_like(labels))
        else:
            n_id = torch.where(is_id, n_id, torch.zeros_like(labels))
            n_seq = torch.zeros_like(labels)
        return n_id, n_seq

    def forward(
        self, features: Tensor, labels: Tensor, iteration: int = 0, keep: Tensor | None = None
    ) -> dict[str, Tensor]:
        """The weighted DSA loss, with its pull and push parts and the share of active hinge pairs."""
        x = features.to(self.centres.dtype) if features.dtype != torch.float64 else features
        centres = self.centres.to(x.dtype)
        if keep is None:
            keep = self.sample_centres(iteration)
        ids = torch.nonzero(keep, as_tuple=True)[0]
        d_own = torch.diagonal(self.distance(x, centres[labels]))
        d = self.distance(x, centres[ids])  # (N, K): only the sampled centres
        mask = self.eligible(labels, ids)
        maskf = mask.to(x.dtype)
        hinge = (self.alpha * d_own[:, None] - d + self.beta).clamp_min(0.0) * maskf
        if self.normaliser == "pooled":
            n_push = maskf.sum(1)
            push = torch.where(n_push > 0, hinge.sum(1) / n_push.clamp_min(1.0), torch.zeros_like(d_own))
        else:
            is_id_centre = (ids < self.num_identities).to(x.dtype)
            n_id, n_seq = (n.to(x.dtype) * self.p for n in self._expected_counts(labels))
            id_part = (hinge * is_id_centre[None, :]).sum(1) / n_id.clamp_min(1e-12)
            seq_part = (hinge * (1.0 - is_id_centre)[None, :]).sum(1) / n_seq.clamp_min(1e-12)
            push = id_part + seq_part
        pull = d_own
        per_sample = self.lam * pull + (1.0 - self.lam) * push
        loss = self.loss_weight * per_sample.mean()
        pairs = mask.sum()
        active = ((hinge > 0) & mask).sum().to(x.dtype) / pairs.clamp_min(1).to(x.dtype)
        return _components(
            loss,
            dsa_pull=pull.mean(),
            dsa_push=push.mean(),
            dsa_active=active,
            dsa_pairs=pairs.to(x.dtype),
            dsa_centres_kept=float(keep.sum()),
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
    with the centres updated by the centre-loss rule and the pairs restricted as DSA's
    (:func:`push_pairs`: no sequence-to-sequence pairs; identity-to-identity only when the sequences may
    overlap the identity classes)."""

    def __init__(
        self,
        num_identities: int,
        num_sequences: int,
        dim: int,
        margin: float = 1.0,
        loss_weight: float = 0.01,
        centre_rate: float = 0.5,
        overlap_removed: bool = True,
        centre_update: str = "rate",
        **_: object,
    ) -> None:
        super().__init__(num_identities, num_sequences, dim, centre_rate, loss_weight, centre_update)
        self.margin = margin
        self.overlap_removed = overlap_removed

    def forward(self, features: Tensor, labels: Tensor, iteration: int = 0) -> dict[str, Tensor]:
        """The weighted margin loss."""
        x = features if features.dtype == torch.float64 else features.to(self.centres.dtype)
        d = 4.0 * euclidean_distance(x, self.centres.to(x.dtype))
        d_own = d.gather(1, labels[:, None])
        everything = torch.arange(d.shape[1], device=labels.device)
        mask = push_pairs(labels, everything, self.num_identities, self.overlap_removed)
        maskf = mask.to(x.dtype)
        hinge = (d_own - d + self.margin).clamp_min(0.0) * maskf
        per = hinge.sum(1) / maskf.sum(1).clamp_min(1.0)
        value = per.mean()
        return _components(self.loss_weight * value, margin_hinge=value)


AUX_LOSSES.register("dsa")(DSALoss)
AUX_LOSSES.register("center")(CenterLoss)
AUX_LOSSES.register("margin")(MarginLoss)
