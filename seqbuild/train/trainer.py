"""The SeqFace trainer: backbone + chief loss + auxiliary loss on mixed identity/sequence batches.

Three parts, each testable alone: :func:`build_training` (model, losses, optimiser, data, resume),
:func:`train_step` (one optimisation step) and :func:`train_loop` (schedule, logs, checkpoints,
validation). :func:`run_train` chains them.

AMP runs the backbone only; the margin, class-weight and centre maths run in float32. Under ``torchrun``
(WORLD_SIZE > 1) the process group is started inside :func:`run_train`, never at import, and the whole
trainable module (backbone and the chief loss's class weights together) is wrapped in
DistributedDataParallel, so every gradient, the head's included, is averaged across ranks. The centres
are updated from every rank's samples (gathered), and the backbone's BatchNorm statistics are averaged
after each step, so all ranks hold the same state. A checkpoint holds everything an exact resume needs:
model, class weights, centres, optimiser, AMP scaler, step and sampler position, RNG states.
"""

from __future__ import annotations

import contextlib
import csv
import hashlib
import logging
import math
import os
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow as pa
import torch
from torch import Tensor, nn

from ..config import to_dict
from ..devices import resolve_device
from ..errors import ConfigError, InputError
from .backbones import create_backbone
from .checkpoint import backbone_from_checkpoint, clean_state_dict, load_checkpoint, save_checkpoint
from .config import TrainConfig
from .data import FaceImages, LabelledImages, MixedBatchSampler, make_loader, read_identities, read_sequences
from .losses import AUX_LOSSES, CHIEF_LOSSES, TrainingDivergedError

log = logging.getLogger("seqbuild.train")

LAST = "last.pt"


def lr_at(step: int, base: float, milestones: list[int], gamma: float, warmup: int = 0) -> float:
    """Step schedule ``base * gamma ** (number of milestones <= step)``, ramped linearly over the first
    ``warmup`` steps (a pure function of the step: exact resume)."""
    ramp = min(1.0, (step + 1) / warmup) if warmup > 0 else 1.0
    return ramp * base * gamma ** sum(1 for m in milestones if step >= m)


def identity_hash(names: list[str]) -> str:
    """A fingerprint of the identity classes in label order (class k is ``names[k]``)."""
    return hashlib.sha256("\n".join(names).encode()).hexdigest()[:16]


def build_losses(
    cfg: TrainConfig, num_identities: int, num_sequences: int, dim: int
) -> tuple[nn.Module, nn.Module | None]:
    """The chief and auxiliary losses named by the config."""
    chief_kw: dict[str, Any] = {
        "lambda_base": cfg.lambda_base,
        "lambda_gamma": cfg.lambda_gamma,
        "lambda_power": cfg.lambda_power,
        "lambda_min": cfg.lambda_min,
        "overlap_removed": cfg.overlap_removed,
    }
    if cfg.scale > 0:
        chief_kw["scale"] = cfg.scale
    if cfg.margin_m > 0:
        chief_kw["m"] = cfg.margin_m
    chief = CHIEF_LOSSES.create(cfg.chief_loss, num_identities, dim, **chief_kw)
    aux = None
    if cfg.aux_loss:
        aux = AUX_LOSSES.create(
            cfg.aux_loss,
            num_identities,
            num_sequences,
            dim,
            lam=cfg.dsa_lambda,
            alpha=cfg.dsa_alpha,
            beta=cfg.dsa_beta,
            p=cfg.dsa_p,
            distance=cfg.dsa_distance,
            normaliser=cfg.dsa_normaliser,
            overlap_removed=cfg.overlap_removed,
            loss_weight=cfg.aux_weight,
            centre_rate=cfg.centre_rate,
            centre_update=cfg.centre_update,
            seed=cfg.seed,
            margin=cfg.margin_loss_margin,
        )
    return chief, aux


class SeqFaceModel(nn.Module):
    """The backbone and the loss modules as one module: what DDP wraps, so that the class weights'
    gradients are averaged across ranks with the backbone's.

    ``forward`` returns the loss to back-propagate, its detached components, and the (detached) features
    the auxiliary loss saw, for the centre update after the optimiser step.
    """

    def __init__(
        self,
        backbone: nn.Module,
        chief: nn.Module,
        aux: nn.Module | None = None,
        aux_normalise: bool = True,
        amp_dtype: torch.dtype | None = None,
        device_type: str = "cpu",
        aux_scale: float = 1.0,
    ) -> None:
        super().__init__()
        self.backbone = backbone
        self.chief = chief
        self.aux = aux
        self.aux_normalise = aux_normalise
        self.aux_scale = aux_scale
        self.amp_dtype = amp_dtype
        self.device_type = device_type
        self.__dict__["_run_backbone"] = backbone  # not a registered submodule: no second set of names

    def compile_backbone(self) -> None:
        """Run the backbone through ``torch.compile`` (the uncompiled module keeps the weights and names)."""
        self.__dict__["_run_backbone"] = torch.compile(self.backbone)

    def forward(self, images: Tensor, labels: Tensor, step: int) -> tuple[Tensor, dict[str, Tensor], Tensor]:
        """Features, chief loss and auxiliary loss of one batch."""
        amp = (
            torch.autocast(device_type=self.device_type, dtype=self.amp_dtype)
            if self.amp_dtype is not None
            else contextlib.nullcontext()
        )
        with amp:
            features = self.__dict__["_run_backbone"](images)
        features = features.float()
        parts = self.chief(features, labels, step)
        loss = parts["loss"]
        comps = {f"chief_{k}" if k == "loss" else k: v.detach() for k, v in parts.items()}
        if self.aux_normalise:
            aux_in = self.aux_scale * torch.nn.functional.normalize(features, dim=1)
        else:
            aux_in = features
        if self.aux is not None:
            aux_parts = self.aux(aux_in, labels, step)
            loss = loss + aux_parts["loss"]
            comps.update({f"aux_{k}" if k == "loss" else k: v.detach() for k, v in aux_parts.items()})
        comps["feature_norm"] = features.detach().norm(dim=1).mean()
        return loss, comps, aux_in.detach()

    def backbone_buffers(self) -> list[Tensor]:
        """The backbone's floating-point buffers (BatchNorm running statistics)."""
        return [b for b in self.backbone.buffers() if b.is_floating_point()]

    @torch.no_grad()
    def average_backbone_buffers(self) -> None:
        """Average the backbone's floating-point buffers (BatchNorm statistics) across DDP ranks."""
        import torch.distributed as dist

        if not (dist.is_available() and dist.is_initialized()) or dist.get_world_size() == 1:
            return
        bufs = self.backbone_buffers()
        if not bufs:
            return
        flat = torch.cat([b.reshape(-1) for b in bufs])
        dist.all_reduce(flat)
        flat /= dist.get_world_size()
        offset = 0
        for b in bufs:
            b.copy_(flat[offset : offset + b.numel()].view_as(b))
            offset += b.numel()


def unwrap(net: nn.Module) -> SeqFaceModel:
    """The SeqFaceModel inside a DDP wrapper (or the model itself)."""
    inner = getattr(net, "module", net)
    if not isinstance(inner, SeqFaceModel):
        raise TypeError(f"expected a SeqFaceModel, got {type(inner).__name__}")
    return inner


def _all_ranks_agree(ok: bool, device: torch.device) -> bool:
    """True when ``ok`` holds on every DDP rank (so that every rank takes the same branch)."""
    import torch.distributed as dist

    if not (dist.is_available() and dist.is_initialized()) or dist.get_world_size() == 1:
        return ok
    flag = torch.tensor([0.0 if ok else 1.0], device=device)
    dist.all_reduce(flag)
    return float(flag) == 0.0


def train_step(
    net: nn.Module,
    optimiser: torch.optim.Optimizer,
    images: Tensor,
    labels: Tensor,
    step: int,
    scaler: torch.amp.GradScaler | None = None,
    clip_grad_norm: float = 0.0,
) -> dict[str, float]:
    """One optimisation step (forward, losses in fp32, backward, update, centre update); the components.

    ``net`` is a :class:`SeqFaceModel`, or one wrapped in DDP. With a loss scaler (fp16), a step the
    scaler skips after an overflow also skips the centre update, and ``skipped_step`` is 1 in the
    components. Without one, a non-finite loss stops training with TrainingDivergedError before any
    weight changes (on every rank alike).
    """
    model = unwrap(net)
    # an overflow in the forward pass reaches the BatchNorm statistics before the scaler sees it: keep a
    # copy (a few KB) to put back if the scaler skips the step
    saved = [b.clone() for b in model.backbone.buffers()] if scaler is not None else []
    loss, parts, aux_in = net(images, labels, step)
    names = [*parts, "loss"]
    values = torch.stack(
        [v.to(loss.device, torch.float32).reshape(()) for v in [*parts.values(), loss.detach()]]
    )
    comps = dict(zip(names, values.tolist(), strict=True))  # one device sync for all the figures
    optimiser.zero_grad(set_to_none=True)
    params = [p for g in optimiser.param_groups for p in g["params"]]
    stepped = True
    if scaler is not None:
        scaler.scale(loss).backward()
        if clip_grad_norm > 0:
            scaler.unscale_(optimiser)
            comps["grad_norm"] = float(torch.nn.utils.clip_grad_norm_(params, clip_grad_norm))
        before = scaler.get_scale()
        scaler.step(optimiser)
        scaler.update()
        stepped = scaler.get_scale() >= before
    else:
        if not _all_ranks_agree(math.isfinite(comps["loss"]), loss.device):
            raise TrainingDivergedError(
                f"step {step}: non-finite loss ({comps}); lower the learning rate or set clip_grad_norm"
            )
        loss.backward()
        if clip_grad_norm > 0:
            comps["grad_norm"] = float(torch.nn.utils.clip_grad_norm_(params, clip_grad_norm))
        optimiser.step()
    comps["skipped_step"] = 0.0 if stepped else 1.0
    if not stepped:
        with torch.no_grad():
            for b, v in zip(model.backbone.buffers(), saved, strict=True):
                b.copy_(v)
    if stepped and model.aux is not None:
        group = optimiser.param_groups[0]
        model.aux.update_centres(aux_in, labels, lr=group["lr"], momentum=group.get("momentum", 0.0))
    if stepped:
        model.average_backbone_buffers()
    return comps


@dataclass
class _Dist:
    rank: int = 0
    world: int = 1
    local_rank: int = 0


def _init_distributed(device: str) -> _Dist:
    world = int(os.environ.get("WORLD_SIZE", "1"))
    if world <= 1:
        return _Dist()
    import torch.distributed as dist

    if not dist.is_initialized():
        dist.init_process_group(backend="nccl" if device.startswith("cuda") else "gloo")
    return _Dist(dist.get_rank(), dist.get_world_size(), int(os.environ.get("LOCAL_RANK", "0")))


def _amp(cfg: TrainConfig, device: str) -> tuple[torch.dtype | None, bool]:
    mode = cfg.amp
    if mode == "auto":
        mode = "bf16" if device.startswith("cuda") else "off"
    if mode == "off":
        return None, False
    dtype = torch.bfloat16 if mode == "bf16" else torch.float16
    return dtype, mode == "fp16" and device.startswith("cuda")


class _Logs:
    """CSV (always) and TensorBoard (optional) logs of every loss component; appends on resume."""

    def __init__(self, out: Path, tensorboard: bool) -> None:
        self.path = out / "train_log.csv"
        self.fields: list[str] | None = None
        self.tb = None
        if tensorboard:
            try:
                from torch.utils.tensorboard import SummaryWriter

                self.tb = SummaryWriter(str(out / "tensorboard"))
            except ImportError:
                log.warning("tensorboard is not installed: writing the CSV log only")

    def write(self, row: dict[str, float]) -> None:
        """Append one row (the header is written with the first row of a new file)."""
        if self.fields is None:
            self.fields = list(row)
            if not self.path.exists():
                with open(self.path, "w", newline="") as fh:
                    csv.DictWriter(fh, self.fields).writeheader()
        with open(self.path, "a", newline="") as fh:
            csv.DictWriter(fh, self.fields, extrasaction="ignore").writerow(row)
        if self.tb is not None:
            for k, v in row.items():
                if k != "step":
                    self.tb.add_scalar(f"train/{k}", v, int(row["step"]))

    def close(self) -> None:
        """Flush TensorBoard."""
        if self.tb is not None:
            self.tb.close()


@dataclass
class Training:
    """Everything a run holds: the model (and its DDP wrapper), optimiser, scaler, data and position."""

    cfg: TrainConfig
    device: str
    dist: _Dist
    model: SeqFaceModel
    net: nn.Module
    optimiser: torch.optim.Optimizer
    scaler: torch.amp.GradScaler | None
    dataset: FaceImages
    sampler: MixedBatchSampler
    counts: dict[str, int]
    identity_hash: str
    backbone_kwargs: dict[str, Any]
    step: int = 0
    epoch: int = 0
    batch_in_epoch: int = 0
    notes: list[str] = field(default_factory=list)

    @property
    def main(self) -> bool:
        """Rank 0 writes checkpoints and logs."""
        return self.dist.rank == 0


def _check_data(cfg: TrainConfig, num_id: int) -> None:
    if num_id == 0 and cfg.chief_loss != "lsr_sphereface":
        raise ConfigError(
            f"train.chief_loss {cfg.chief_loss!r} needs identity classes: give train.identities"
        )
    if num_id == 0:
        raise ConfigError("train.identities: LSR needs identity classes (the uniform target is over them)")
    if cfg.crop_size > cfg.image_size:
        raise ConfigError(f"train.crop_size {cfg.crop_size} is larger than train.image_size {cfg.image_size}")


def load_init(cfg: TrainConfig, model: SeqFaceModel, id_hash: str) -> list[str]:
    """Initialise from ``cfg.init``: always the backbone; the classifier head (and the identity centres)
    when the checkpoint was trained on the same identity list. Returns what was loaded, for the log."""
    state = load_checkpoint(cfg.init)
    model.backbone.load_state_dict(backbone_from_checkpoint(state).state_dict())
    loaded = ["backbone"]
    theirs = state.get("identity_hash")
    if theirs is None:
        log.info("%s: backbone loaded; head not loaded (the checkpoint records no identity list)", cfg.init)
        return loaded
    if theirs != id_hash:
        log.info(
            "%s: backbone loaded; head not loaded: its identity list (%s, %d classes) differs from this "
            "run's (%s, %d classes)",
            cfg.init,
            theirs,
            state.get("num_identities", -1),
            id_hash,
            model.chief.num_identities,
        )
        return loaded
    head = model.chief.state_dict()
    if set(state["chief"]) != set(head) or any(state["chief"][k].shape != head[k].shape for k in head):
        log.info(
            "%s: backbone loaded; head not loaded: the checkpoint's chief loss (%s) has other parameters",
            cfg.init,
            state.get("config", {}).get("chief_loss", "?"),
        )
        return loaded
    model.chief.load_state_dict(state["chief"])
    loaded.append("head")
    c = model.chief.num_identities
    theirs_c = state.get("aux", {}).get("centres")
    if model.aux is not None and theirs_c is not None and theirs_c.shape[1] == model.aux.centres.shape[1]:
        model.aux.centres[:c] = theirs_c[:c].to(model.aux.centres)
        loaded.append("identity centres")
    log.info(
        "%s: loaded %s (same identity list: %d classes, hash %s)", cfg.init, ", ".join(loaded), c, id_hash
    )
    return loaded


def build_training(cfg: TrainConfig, dist_info: _Dist | None = None) -> Training:
    """Read the data and build the model, losses, optimiser, scaler and sampler (resuming when asked)."""
    if not cfg.out:
        raise ConfigError("train.out: a checkpoint folder is required")
    if not cfg.identities and not cfg.sequences:
        raise ConfigError("train: give an identity dataset (identities) and/or sequence datasets (sequences)")
    dist_info = dist_info or _Dist()
    device = resolve_device(cfg.device)
    if dist_info.world > 1 and device.startswith("cuda"):
        device = f"cuda:{dist_info.local_rank}"
        torch.cuda.set_device(device)

    empty = LabelledImages(pa.array([], pa.binary()), np.zeros(0, np.int64), [])
    ids = read_identities(cfg.identities) if cfg.identities else empty
    seqs = read_sequences(cfg.sequences) if cfg.sequences else empty
    num_id, num_seq = len(ids.names), len(seqs.names)
    _check_data(cfg, num_id)
    id_hash = identity_hash(ids.names)

    torch.manual_seed(cfg.seed)
    backbone_kwargs = {"input_size": cfg.crop_size, "dim": cfg.embedding_dim, "norm": cfg.norm}
    backbone = create_backbone(cfg.backbone, **backbone_kwargs)
    chief, aux = build_losses(cfg, num_id, num_seq, cfg.embedding_dim)
    amp_dtype, use_scaler = _amp(cfg, device)
    model = SeqFaceModel(
        backbone, chief, aux, cfg.aux_normalise, amp_dtype, device.split(":")[0], aux_scale=cfg.aux_scale
    )
    notes = load_init(cfg, model, id_hash) if cfg.init else []
    model.to(device)
    if device.startswith("cuda") and cfg.channels_last:
        model.backbone.to(memory_format=torch.channels_last)
    params = [p for p in model.parameters() if p.requires_grad]
    optimiser = torch.optim.SGD(params, lr=cfg.lr, momentum=cfg.momentum, weight_decay=cfg.weight_decay)
    scaler = torch.amp.GradScaler("cuda") if use_scaler else None
    dataset = FaceImages(ids, seqs, cfg.image_size, cfg.crop_size)
    sampler = MixedBatchSampler(
        len(ids), len(seqs), cfg.batch_size, cfg.identity_ratio, cfg.seed, dist_info.rank, dist_info.world
    )
    counts = {
        "identities": num_id,
        "identity_images": len(ids),
        "sequences": num_seq,
        "sequence_images": len(seqs),
    }
    training = Training(
        cfg=cfg,
        device=device,
        dist=dist_info,
        model=model,
        net=model,
        optimiser=optimiser,
        scaler=scaler,
        dataset=dataset,
        sampler=sampler,
        counts=counts,
        identity_hash=id_hash,
        backbone_kwargs=backbone_kwargs,
        notes=notes,
    )
    last = Path(cfg.out) / LAST
    if cfg.resume and last.exists():
        restore(training, last)
    if cfg.compile:
        model.compile_backbone()
    if dist_info.world > 1:
        from torch.nn.parallel import DistributedDataParallel

        # buffers are not broadcast each step: the centres (C + H rows) are updated identically on
        # every rank from the gathered batch, and BatchNorm statistics are averaged after each step
        training.net = DistributedDataParallel(
            model, device_ids=[device] if device.startswith("cuda") else None, broadcast_buffers=False
        )
    return training


def restore(training: Training, path: Path) -> None:
    """Load a checkpoint of the same data into ``training`` (exact resume)."""
    state = load_checkpoint(path)
    c = training.counts
    if state["num_identities"] != c["identities"] or state["num_sequences"] != c["sequences"]:
        raise InputError(
            f"{path}: checkpoint was trained on {state['num_identities']} identities and "
            f"{state['num_sequences']} sequences, the data now has {c['identities']} and {c['sequences']}; "
            "use another out folder or resume=false"
        )
    if state.get("identity_hash", training.identity_hash) != training.identity_hash:
        raise InputError(
            f"{path}: checkpoint was trained on another identity list (hash {state['identity_hash']}, this "
            f"data {training.identity_hash}); use another out folder or resume=false"
        )
    model = training.model
    model.backbone.load_state_dict(clean_state_dict(state["model"]))
    model.chief.load_state_dict(state["chief"])
    if model.aux is not None:
        try:
            model.aux.load_state_dict(state["aux"])
        except RuntimeError as exc:
            raise InputError(
                f"{path}: its auxiliary-loss state does not fit this config (aux_loss / centre_update "
                f"changed?): {str(exc).splitlines()[0]}"
            ) from None
    training.optimiser.load_state_dict(state["optimizer"])
    if training.scaler is not None and state.get("scaler"):
        training.scaler.load_state_dict(state["scaler"])
    torch.set_rng_state(state["rng_cpu"])
    if training.device.startswith("cuda") and state.get("rng_cuda"):
        torch.cuda.set_rng_state_all(state["rng_cuda"])
    training.step, training.epoch, training.batch_in_epoch = (
        state["step"],
        state["epoch"],
        state["batch_in_epoch"],
    )
    log.info(
        "resumed from %s at step %d (epoch %d, batch %d)",
        path,
        training.step,
        training.epoch,
        training.batch_in_epoch,
    )


def checkpoint_state(training: Training) -> dict[str, Any]:
    """Everything an exact resume needs, as plain tensors and Python values."""
    cfg, model = training.cfg, training.model
    return {
        "backbone": cfg.backbone,
        "backbone_kwargs": training.backbone_kwargs,
        "crop_size": cfg.crop_size,
        "image_size": cfg.image_size,
        "model": clean_state_dict(model.backbone.state_dict()),
        "chief": model.chief.state_dict(),
        "aux": model.aux.state_dict() if model.aux is not None else {},
        "optimizer": training.optimiser.state_dict(),
        "scaler": training.scaler.state_dict() if training.scaler else {},
        "step": training.step,
        "epoch": training.epoch,
        "batch_in_epoch": training.batch_in_epoch,
        "rng_cpu": torch.get_rng_state(),
        "rng_cuda": torch.cuda.get_rng_state_all() if training.device.startswith("cuda") else [],
        "num_identities": training.counts["identities"],
        "num_sequences": training.counts["sequences"],
        "identity_hash": training.identity_hash,
        "world_size": training.dist.world,
        "config": to_dict(cfg),
    }


def save(training: Training, path: Path) -> None:
    """Rank 0 writes ``path``; with ``rank_checkpoints`` every other rank writes ``path.rankN``."""
    if not training.main:
        if not training.cfg.rank_checkpoints:
            return
        path = path.with_name(f"{path.stem}.rank{training.dist.rank}{path.suffix}")
    save_checkpoint(path, checkpoint_state(training))


class _Validation:
    """The configured verification sets, checked by rank 0 every ``val_every`` steps."""

    def __init__(self, training: Training, tb: object | None) -> None:
        from .validation import ValidationLog, load_verification_sets

        cfg = training.cfg
        self.sets = load_verification_sets(cfg.val_bins, cfg.val_pairs, cfg.val_images)
        self.log = ValidationLog(Path(cfg.out), tb)
        self.training = training
        if self.sets:
            log.info("validation every %d steps on %s", cfg.val_every, ", ".join(s.name for s in self.sets))

    def __call__(self, step: int) -> dict[str, dict[str, float]]:
        from .validation import verify

        cfg, backbone = self.training.cfg, self.training.model.backbone
        out = {}
        for vset in self.sets:
            report = verify(backbone, vset, self.training.device, cfg.image_size, cfg.crop_size, cfg.val_flip)
            self.log.write(step, vset.name, report)
            out[vset.name] = report
        backbone.train()
        return out


def train_loop(training: Training, progress: bool = True) -> dict[str, Any]:
    """Run the schedule from the current position: steps, logs, checkpoints, validation; a summary."""
    cfg, sampler, optimiser = training.cfg, training.sampler, training.optimiser
    device, out = training.device, Path(cfg.out)
    logs = _Logs(out, cfg.tensorboard) if training.main else None
    validation = _Validation(training, logs.tb) if training.main and (cfg.val_bins or cfg.val_pairs) else None
    total = cfg.epochs * sampler.batches_per_epoch
    if cfg.max_steps:
        total = min(total, cfg.max_steps)
    bar = None
    if progress and training.main:
        from tqdm import tqdm

        bar = tqdm(total=total, initial=min(training.step, total), desc="train", unit="step")
    t0, seen, skipped, skipped_steps = time.perf_counter(), 0, 0, 0
    comps: dict[str, float] = {}
    last_val: dict[str, dict[str, float]] = {}
    training.net.train()
    cuda = device.startswith("cuda")
    try:
        while training.epoch < cfg.epochs and training.step < total:
            sampler.set_epoch(training.epoch, training.batch_in_epoch)
            for images, labels in make_loader(training.dataset, sampler, cfg.workers, cuda):
                if training.step >= total:
                    break
                step = training.step
                for group in optimiser.param_groups:
                    group["lr"] = lr_at(step, cfg.lr, cfg.lr_steps, cfg.lr_gamma, cfg.warmup_steps)
                valid = labels >= 0
                if not bool(valid.all()):
                    skipped += int((~valid).sum())
                    images, labels = images[valid], labels[valid]
                images = images.to(device, non_blocking=True)
                if cuda and cfg.channels_last:
                    images = images.contiguous(memory_format=torch.channels_last)
                labels = labels.to(device, non_blocking=True)
                # a batch whose every crop was undecodable only advances the position (on every rank)
                if _all_ranks_agree(len(labels) > 0, images.device):
                    comps = train_step(
                        training.net, optimiser, images, labels, step, training.scaler, cfg.clip_grad_norm
                    )
                    skipped_steps += int(comps["skipped_step"])
                training.step += 1
                training.batch_in_epoch += 1
                seen += len(labels)
                if training.batch_in_epoch >= sampler.batches_per_epoch:
                    training.epoch, training.batch_in_epoch = training.epoch + 1, 0
                step = training.step
                if logs is not None and comps and (step % cfg.log_every == 0 or step == total):
                    logs.write(
                        {
                            "step": step,
                            "epoch": training.epoch,
                            "lr": optimiser.param_groups[0]["lr"],
                            **comps,
                        }
                    )
                if validation is not None and (step % cfg.val_every == 0 or step == total):
                    last_val = validation(step)
                if bar is not None:
                    bar.update(1)
                    bar.set_postfix(loss=f"{comps.get('loss', float('nan')):.3f}")
                if step % cfg.checkpoint_every == 0:
                    save(training, out / LAST)
            else:
                continue
            break
    finally:
        if bar is not None:
            bar.close()
        if logs is not None:
            logs.close()
    save(training, out / LAST)
    elapsed = time.perf_counter() - t0
    return {
        "steps": training.step,
        "epoch": training.epoch,
        **training.counts,
        "world_size": training.dist.world,
        "checkpoint": str(out / LAST),
        "initialised_from": {"path": cfg.init, "loaded": training.notes} if cfg.init else None,
        "undecodable_images_skipped": skipped,
        "steps_skipped_by_loss_scaler": skipped_steps,
        "images_per_s": round(seen / elapsed, 2) if elapsed > 0 and seen else 0.0,
        "final_loss": round(comps.get("loss", float("nan")), 5) if comps else None,
        "validation": last_val or None,
    }


def run_train(cfg: TrainConfig, progress: bool = True) -> dict[str, Any]:
    """Train (or resume) as configured; checkpoints and logs go to ``cfg.out``; a summary of counts."""
    if not cfg.out:
        raise ConfigError("train.out: a checkpoint folder is required")
    dist_info = _init_distributed(resolve_device(cfg.device))
    if dist_info.rank == 0:
        Path(cfg.out).mkdir(parents=True, exist_ok=True)
    training = build_training(cfg, dist_info)
    return train_loop(training, progress)
