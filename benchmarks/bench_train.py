"""Training throughput: resnet27 at 128x128, batch 128, SeqFace step (LSR + DSA) vs a plain softmax step,
and whether the JPEG data loader keeps up with the step.

Run: ``make bench-train`` (``.venv/bin/python -m benchmarks.bench_train [--iters 3] [--device auto]``).
``--loss-magnitudes STEPS [--set KEY=VALUE ...]`` prints instead, per step, how large the auxiliary loss
is against the chief loss (the check behind DSA's default feature space).
On CUDA the step runs with bf16 autocast and channels_last, as the trainer does.
"""

from __future__ import annotations

import argparse
import os
import platform
import time

import numpy as np
import torch

from seqbuild.config import build
from seqbuild.devices import resolve_device
from seqbuild.imaging import encode_jpeg
from seqbuild.train.backbones import create_backbone
from seqbuild.train.config import TrainConfig
from seqbuild.train.data import FaceImages, LabelledImages, MixedBatchSampler, make_loader
from seqbuild.train.trainer import SeqFaceModel, build_losses, train_step


def _load() -> str:
    return " ".join(f"{v:.2f}" for v in os.getloadavg())


def step_rate(
    chief: str,
    aux: str,
    device: str,
    batch: int,
    iters: int,
    identities: int,
    sequences: int,
    warmup: int = 1,
) -> float:
    """Images per second of full training steps (forward, losses, backward, SGD, centre update)."""
    torch.manual_seed(0)
    cfg = build(TrainConfig, {"chief_loss": chief, "aux_loss": aux})
    chief_m, aux_m = build_losses(cfg, identities, sequences, 512)
    cuda = device.startswith("cuda")
    model = SeqFaceModel(
        create_backbone("resnet27"),
        chief_m,
        aux_m,
        amp_dtype=torch.bfloat16 if cuda else None,
        device_type="cuda" if cuda else "cpu",
    ).to(device)
    if cuda:
        model.backbone.to(memory_format=torch.channels_last)
    opt = torch.optim.SGD(model.parameters(), lr=0.01, momentum=0.9)
    x = torch.randn(batch, 3, 128, 128, device=device)
    if device.startswith("cuda"):
        x = x.contiguous(memory_format=torch.channels_last)
    half = batch // 2
    y = torch.cat(
        [torch.randint(0, identities, (half,)), identities + torch.randint(0, sequences, (batch - half,))]
    )
    y = y.to(device)
    for _ in range(warmup):
        train_step(model, opt, x, y, 0)
    if device.startswith("cuda"):
        torch.cuda.synchronize()
    t0 = time.perf_counter()
    for i in range(iters):
        train_step(model, opt, x, y, i + 1)
    if device.startswith("cuda"):
        torch.cuda.synchronize()
    return batch * iters / (time.perf_counter() - t0)


def loss_magnitudes(steps: int, device: str, overrides: dict, batch: int = 8, classes: int = 20) -> None:
    """Print, per step, the chief and auxiliary losses, the fc5 norm, the gradient norm and DSA's active
    share of resnet27 at the trainer's defaults (plus ``overrides``) on random inputs: how large DSA is
    against the chief loss in each feature space (aux_normalise, aux_scale)."""
    torch.manual_seed(0)
    cfg = build(TrainConfig, {"dsa_p": 0.2, **overrides})
    chief_m, aux_m = build_losses(cfg, classes, classes, 512)
    model = SeqFaceModel(
        create_backbone("resnet27"), chief_m, aux_m, cfg.aux_normalise, aux_scale=cfg.aux_scale
    ).to(device)
    opt = torch.optim.SGD(model.parameters(), lr=cfg.lr, momentum=cfg.momentum, weight_decay=cfg.weight_decay)
    g = torch.Generator().manual_seed(0)
    print(
        f"resnet27, random 128x128 inputs, batch {batch}, lr {cfg.lr}, clip {cfg.clip_grad_norm}, {overrides}"
    )
    for step in range(steps):
        x = torch.randn(batch, 3, 128, 128, generator=g).to(device)
        half = batch // 2
        y = torch.cat(
            [
                torch.randint(0, classes, (half,), generator=g),
                classes + torch.randint(0, classes, (half,), generator=g),
            ]
        ).to(device)
        c = train_step(model, opt, x, y, step, clip_grad_norm=cfg.clip_grad_norm)
        print(
            f"  step {step:3d}: chief {c['chief_loss']:9.3f}  aux {c['aux_loss']:9.3f}  "
            f"aux/chief {c['aux_loss'] / c['chief_loss']:6.2f}  |fc5| {c['feature_norm']:9.2f}  "
            f"grad norm {c.get('grad_norm', float('nan')):8.2f}  DSA active {c['dsa_active']:.3f}",
            flush=True,
        )


def loader_rate(batch: int, workers: int, n_images: int = 2048, batches: int = 12) -> float:
    """Images per second delivered by the training loader (JPEG decode, random crop, flip, normalise)."""
    rng = np.random.default_rng(0)
    base = rng.integers(0, 255, (144, 144, 3), dtype=np.uint8)
    jpegs = []
    for k in range(64):  # 64 distinct crops, repeated: decode cost is what matters
        img = np.clip(base.astype(np.int16) + rng.integers(-30, 30, (144, 144, 3)), 0, 255).astype(np.uint8)
        img = (img // 2 + np.roll(img, k, axis=1) // 2).astype(np.uint8)
        jpegs.append(encode_jpeg(img))
    import pyarrow as pa

    imgs = pa.array([jpegs[i % 64] for i in range(n_images)], pa.binary())
    labels = np.arange(n_images) % 100
    half = n_images // 2
    ids = LabelledImages(imgs.slice(0, half), labels[:half], [str(i) for i in range(100)])
    seqs = LabelledImages(imgs.slice(half), labels[half:], [str(i) for i in range(100)])
    ds = FaceImages(ids, seqs, 144, 128)
    sampler = MixedBatchSampler(half, n_images - half, batch, 0.5, seed=0)
    # timed from the loader's creation (worker start-up included) over more batches than it prefetches
    t0, seen = time.perf_counter(), 0
    for i, (x, _) in enumerate(make_loader(ds, sampler, workers)):
        seen += len(x)
        if i + 1 >= batches:
            break
    return seen / (time.perf_counter() - t0)


def main() -> None:
    """Measure and print the figures."""
    ap = argparse.ArgumentParser()
    ap.add_argument("--iters", type=int, default=3)
    ap.add_argument("--batch", type=int, default=128)
    ap.add_argument("--device", default="auto")
    ap.add_argument("--loader-only", action="store_true", help="measure the data loader alone")
    ap.add_argument("--warmup", type=int, default=1, help="untimed steps before timing each configuration")
    ap.add_argument(
        "--loss-magnitudes",
        type=int,
        default=0,
        metavar="STEPS",
        help="print DSA vs chief loss for STEPS steps",
    )
    ap.add_argument(
        "--set", dest="sets", action="append", default=[], metavar="KEY=VALUE", help="train option"
    )
    args = ap.parse_args()
    device = resolve_device(args.device)
    print(
        f"machine: {platform.processor() or platform.machine()}, {os.cpu_count()} CPUs, torch {torch.__version__}, "
        f"{torch.get_num_threads()} threads, device {device}"
    )
    print(f"load average before: {_load()}")
    if args.loss_magnitudes:
        import json

        overrides = {}
        for item in args.sets:
            key, _, value = item.partition("=")
            overrides[key] = value == "true" if value in ("true", "false") else json.loads(value)
        loss_magnitudes(args.loss_magnitudes, device, overrides)
        print(f"load average after: {_load()}")
        return
    ids, seqs = 10_000, 10_000
    loaders = {w: loader_rate(args.batch, w) for w in (0, 2)}
    if args.loader_only:
        for w, rate in loaders.items():
            print(f"  loader, {w} workers: {rate:8.2f} images/s (batch {args.batch}, start-up included)")
        print(f"load average after: {_load()}")
        return
    seqface = step_rate("lsr_sphereface", "dsa", device, args.batch, args.iters, ids, seqs, args.warmup)
    print(f"  (SeqFace step measured; load average now {_load()})", flush=True)
    softmax = step_rate("softmax", "", device, args.batch, args.iters, ids, seqs, args.warmup)
    print(
        f"resnet27 128x128 batch {args.batch}, {args.iters} timed steps, {ids} identities + {seqs} sequences:"
    )
    print(f"  (warm-up steps per configuration: {args.warmup})")
    print(f"  SeqFace step (LSR + DSA):  {seqface:8.2f} images/s")
    print(
        f"  softmax step (baseline):   {softmax:8.2f} images/s   ratio SeqFace/softmax {seqface / softmax:.3f}"
    )
    for workers in (0, 2):
        rate = loaders[workers]
        verdict = "keeps up" if rate >= seqface else "is the bottleneck"
        print(
            f"  loader, {workers} workers:       {rate:8.2f} images/s   ({rate / seqface:.1f}x the step: {verdict})"
        )
    print(f"load average after: {_load()}")
    if not device.startswith("cuda"):
        print(
            "GPU path (bf16 autocast, channels_last) not measured: no CUDA device here; JPEG decoding on the "
            "GPU is not implemented (decoding runs in the loader's CPU workers)."
        )


if __name__ == "__main__":
    main()
