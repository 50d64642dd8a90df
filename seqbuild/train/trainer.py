"""The SeqFace trainer: backbone + chief loss + auxiliary loss on mixed identity/sequence batches.

AMP runs the backbone only; the margin, class-weight and centre maths run in float32. Under ``torchrun``
(WORLD_SIZE > 1) the process group is started inside :func:`run_train`, never at import. A checkpoint
holds everything an exact resume needs: model, class weights, centres, optimiser, AMP scaler, step and
sampler position, RNG states.
"""

from __future__ import annotations

import contextlib
import csv
import logging
import os
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow as pa
import torch
from torch import nn

from ..config import to_dict
from ..devices import resolve_device
from ..errors import ConfigError, InputError
from .backbones import create_backbone
from .checkpoint import backbone_from_checkpoint, clean_state_dict, load_checkpoint, save_checkpoint
from .config import TrainConfig
from .data import FaceImages, LabelledImages, MixedBatchSampler, make_loader, read_identities, read_sequences
from .losses import AUX_LOSSES, CHIEF_LOSSES

log = logging.getLogger("seqbuild.train")

LAST = "last.pt"


def lr_at(step: int, base: float, milestones: list[int], gamma: float) -> float:
    """Step schedule: ``base * gamma ** (number of milestones <= step)`` (a pure function: exact resume)."""
    return base * gamma ** sum(1 for m in milestones if step >= m)


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
            loss_weight=cfg.aux_weight,
            centre_rate=cfg.centre_rate,
            seed=cfg.seed,
            margin=cfg.margin_loss_margin,
        )
    return chief, aux


def train_step(
    model: nn.Module,
    chief: nn.Module,
    aux: nn.Module | None,
    optimiser: torch.optim.Optimizer,
    images: torch.Tensor,
    labels: torch.Tensor,
    step: int,
    autocast: contextlib.AbstractContextManager | None = None,
    scaler: torch.amp.GradScaler | None = None,
    aux_normalise: bool = True,
) -> dict[str, float]:
    """One optimisation step (forward, losses in fp32, backward, update, centre update); the components.

    With ``aux_normalise`` the auxiliary loss sees L2-normalised features (the space of the normalised
    chief losses, where DSA's d = ||x - c||^2 / 4 lies in [0, 1]); on raw features its push term, with
    alpha > 1, rewards growing feature norms without bound and training diverges."""
    with autocast or contextlib.nullcontext():
        features = model(images)
    features = features.float()
    parts = chief(features, labels, step)
    loss = parts["loss"]
    comps = {f"chief_{k}" if k == "loss" else k: float(v.detach()) for k, v in parts.items()}
    aux_in = torch.nn.functional.normalize(features, dim=1) if aux_normalise else features
    if aux is not None:
        aux_parts = aux(aux_in, labels, step)
        loss = loss + aux_parts["loss"]
        comps.update({f"aux_{k}" if k == "loss" else k: float(v.detach()) for k, v in aux_parts.items()})
    optimiser.zero_grad(set_to_none=True)
    if scaler is not None:
        scaler.scale(loss).backward()
        scaler.step(optimiser)
        scaler.update()
    else:
        loss.backward()
        optimiser.step()
    if aux is not None:
        aux.update_centres(aux_in.detach(), labels)
    comps["loss"] = float(loss.detach())
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


def run_train(cfg: TrainConfig, progress: bool = True) -> dict[str, Any]:
    """Train (or resume) as configured; checkpoints and logs go to ``cfg.out``; a summary of counts."""
    if not cfg.out:
        raise ConfigError("train.out: a checkpoint folder is required")
    if not cfg.identities and not cfg.sequences:
        raise ConfigError("train: give an identity dataset (identities) and/or sequence datasets (sequences)")
    out = Path(cfg.out)
    device = resolve_device(cfg.device)
    dist_info = _init_distributed(device)
    if dist_info.world > 1 and device.startswith("cuda"):
        device = f"cuda:{dist_info.local_rank}"
        torch.cuda.set_device(device)
    main = dist_info.rank == 0
    if main:
        out.mkdir(parents=True, exist_ok=True)

    empty = LabelledImages(pa.array([], pa.binary()), np.zeros(0, np.int64), [])
    ids = read_identities(cfg.identities) if cfg.identities else empty
    seqs = read_sequences(cfg.sequences) if cfg.sequences else empty
    num_id, num_seq = len(ids.names), len(seqs.names)
    if num_id == 0 and cfg.chief_loss != "lsr_sphereface":
        raise ConfigError(
            f"train.chief_loss {cfg.chief_loss!r} needs identity classes: give train.identities"
        )
    if num_id == 0:
        raise ConfigError("train.identities: LSR needs identity classes (the uniform target is over them)")
    if cfg.crop_size > cfg.image_size:
        raise ConfigError(f"train.crop_size {cfg.crop_size} is larger than train.image_size {cfg.image_size}")

    torch.manual_seed(cfg.seed)
    backbone_kwargs = {"input_size": cfg.crop_size, "dim": cfg.embedding_dim, "norm": cfg.norm}
    model = create_backbone(cfg.backbone, **backbone_kwargs)
    if cfg.init:
        init_state = load_checkpoint(cfg.init)
        model.load_state_dict(backbone_from_checkpoint(init_state).state_dict())
        log.info("backbone initialised from %s", cfg.init)
    chief, aux = build_losses(cfg, num_id, num_seq, cfg.embedding_dim)
    model.to(device)
    chief.to(device)
    if aux is not None:
        aux.to(device)
    if device.startswith("cuda") and cfg.channels_last:
        model = model.to(memory_format=torch.channels_last)
    params = [p for p in list(model.parameters()) + list(chief.parameters()) if p.requires_grad]
    optimiser = torch.optim.SGD(params, lr=cfg.lr, momentum=cfg.momentum, weight_decay=cfg.weight_decay)
    amp_dtype, use_scaler = _amp(cfg, device)
    scaler = torch.amp.GradScaler("cuda") if use_scaler else None
    autocast = (
        torch.autocast(device_type=device.split(":")[0], dtype=amp_dtype) if amp_dtype is not None else None
    )

    dataset = FaceImages(ids, seqs, cfg.image_size, cfg.crop_size)
    sampler = MixedBatchSampler(
        len(ids), len(seqs), cfg.batch_size, cfg.identity_ratio, cfg.seed, dist_info.rank, dist_info.world
    )
    step, epoch, batch_in_epoch = 0, 0, 0
    last = out / LAST
    if cfg.resume and last.exists():
        state = load_checkpoint(last)
        if state["num_identities"] != num_id or state["num_sequences"] != num_seq:
            raise InputError(
                f"{last}: checkpoint was trained on {state['num_identities']} identities and "
                f"{state['num_sequences']} sequences, the data now has {num_id} and {num_seq}; "
                "use another out folder or resume=false"
            )
        model.load_state_dict(clean_state_dict(state["model"]))
        chief.load_state_dict(state["chief"])
        if aux is not None:
            aux.load_state_dict(state["aux"])
        optimiser.load_state_dict(state["optimizer"])
        if scaler is not None and state.get("scaler"):
            scaler.load_state_dict(state["scaler"])
        torch.set_rng_state(state["rng_cpu"])
        if device.startswith("cuda") and state.get("rng_cuda"):
            torch.cuda.set_rng_state_all(state["rng_cuda"])
        step, epoch, batch_in_epoch = state["step"], state["epoch"], state["batch_in_epoch"]
        log.info("resumed from %s at step %d (epoch %d, batch %d)", last, step, epoch, batch_in_epoch)

    train_model: nn.Module = model
    if cfg.compile:
        train_model = torch.compile(model)
    if dist_info.world > 1:
        from torch.nn.parallel import DistributedDataParallel

        train_model = DistributedDataParallel(
            train_model, device_ids=[device] if device.startswith("cuda") else None
        )

    def save(path: Path) -> None:
        if not main:
            return
        save_checkpoint(
            path,
            {
                "backbone": cfg.backbone,
                "backbone_kwargs": backbone_kwargs,
                "crop_size": cfg.crop_size,
                "image_size": cfg.image_size,
                "model": clean_state_dict(model.state_dict()),
                "chief": chief.state_dict(),
                "aux": aux.state_dict() if aux is not None else {},
                "optimizer": optimiser.state_dict(),
                "scaler": scaler.state_dict() if scaler else {},
                "step": step,
                "epoch": epoch,
                "batch_in_epoch": batch_in_epoch,
                "rng_cpu": torch.get_rng_state(),
                "rng_cuda": torch.cuda.get_rng_state_all() if device.startswith("cuda") else [],
                "num_identities": num_id,
                "num_sequences": num_seq,
                "config": to_dict(cfg),
            },
        )

    logs = _Logs(out, cfg.tensorboard) if main else None
    total = cfg.epochs * sampler.batches_per_epoch
    if cfg.max_steps:
        total = min(total, cfg.max_steps)
    bar = None
    if progress and main:
        from tqdm import tqdm

        bar = tqdm(total=total, initial=min(step, total), desc="train", unit="step")
    t0, seen, comps, skipped = time.perf_counter(), 0, {}, 0
    train_model.train()
    pin = device.startswith("cuda")
    try:
        while epoch < cfg.epochs and step < total:
            sampler.set_epoch(epoch, batch_in_epoch)
            for images, labels in make_loader(dataset, sampler, cfg.workers, pin):
                if step >= total:
                    break
                for group in optimiser.param_groups:
                    group["lr"] = lr_at(step, cfg.lr, cfg.lr_steps, cfg.lr_gamma)
                valid = labels >= 0
                if not bool(valid.all()):
                    skipped += int((~valid).sum())
                    images, labels = images[valid], labels[valid]
                images = images.to(device, non_blocking=True)
                if device.startswith("cuda") and cfg.channels_last:
                    images = images.contiguous(memory_format=torch.channels_last)
                labels = labels.to(device, non_blocking=True)
                if len(labels):  # a batch whose every crop was undecodable only advances the position
                    comps = train_step(
                        train_model,
                        chief,
                        aux,
                        optimiser,
                        images,
                        labels,
                        step,
                        autocast,
                        scaler,
                        cfg.aux_normalise,
                    )
                step += 1
                batch_in_epoch += 1
                seen += len(labels)
                if batch_in_epoch >= sampler.batches_per_epoch:
                    epoch, batch_in_epoch = epoch + 1, 0
                if logs is not None and comps and (step % cfg.log_every == 0 or step == total):
                    logs.write({"step": step, "epoch": epoch, "lr": optimiser.param_groups[0]["lr"], **comps})
                if bar is not None:
                    bar.update(1)
                    bar.set_postfix(loss=f"{comps.get('loss', float('nan')):.3f}")
                if step % cfg.checkpoint_every == 0:
                    save(last)
            else:
                continue
            break
    finally:
        if bar is not None:
            bar.close()
        if logs is not None:
            logs.close()
    save(last)
    elapsed = time.perf_counter() - t0
    return {
        "steps": step,
        "epoch": epoch,
        "identities": num_id,
        "identity_images": len(ids),
        "sequences": num_seq,
        "sequence_images": len(seqs),
        "checkpoint": str(last),
        "undecodable_images_skipped": skipped,
        "images_per_s": round(seen / elapsed, 2) if elapsed > 0 and seen else 0.0,
        "final_loss": round(comps.get("loss", float("nan")), 5) if comps else None,
    }
