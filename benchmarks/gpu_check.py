"""One-GPU speed check: ingest, embed, training and FAISS search, each timed on the device given.

Run through ``benchmarks/gpu_check.sh [--device cuda|cpu] [--quick] [--out DIR] [--media DIR]`` (or
``make gpu-check``). Figures go to ``OUT/gpu_check.json`` and a short ``OUT/gpu_check.txt``; the last
line printed says where. Needs no network: the FaceNet weights ship with an installed package, the
training and search data are synthetic, and the ingest video is the shared ``dev_broadcast.mp4`` (the
ingest part is skipped, with a note, when it is absent).

Parts (sizes for the full run; ``--quick`` shrinks every one to CI size and is meant for ``--device cpu``):

- ingest: ``seqbuild ingest`` (library entry point, default config) on dev_broadcast.mp4, after a
  2-second warm-up clip that loads the detector; realtime factor = video seconds / wall seconds.
- embed: the default FaceNet embedder (fp16 on CUDA) on real aligned crops from that ingest (synthetic
  crops when there are none), repeated to 20,000; faces/s, after one warm-up batch.
- train: resnet27 at 128x128, batch 256 (quick: the tiny backbone at 32x32, batch 8), LSR-L2-SphereFace + DSA on 80,000 identities and 550,000
  sequences (Celeb-Seq's scale), half identity and half sequence samples per batch, channels_last, the
  trainer's own ``train_step``: bf16 autocast (the default), fp16 with the loss scaler, and fp32 as the
  baseline of the same run; then bf16 fed by the real JPEG data loader (decode, crop, flip) with one
  worker per CPU core (up to 16), to show whether the loader keeps up.
- faiss: exact inner-product search (the overlap stage's ``flat`` index) of 100,000 queries against
  1,000,000 x 512 normalised vectors, k = 10, on the GPU when the installed FAISS has one; otherwise on
  the CPU with 10,000 queries, noted. Queries are perturbed copies of base vectors, so the top-1 must be
  the copy (self_match_rate).
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import shutil
import sys
import tempfile
import time
import traceback
from pathlib import Path
from typing import Any

import numpy as np

REPO = Path(__file__).resolve().parents[1]


def _media_dir(arg: str) -> Path:
    if arg:
        return Path(arg)
    env = os.environ.get("SEQBUILD_MEDIA")
    return Path(env) if env else REPO.parent / "shared" / "media"


def _sync(device: str) -> None:
    if device.startswith("cuda"):
        import torch

        torch.cuda.synchronize()


def _clip(src: Path, dst: Path, seconds: float) -> float:
    """Re-encode the first ``seconds`` of ``src`` (MPEG-4, same size and rate); its duration in seconds."""
    import av

    with av.open(str(src)) as inp, av.open(str(dst), "w") as out:
        vin = inp.streams.video[0]
        rate = vin.average_rate
        vout = out.add_stream("mpeg4", rate=rate)
        vout.width, vout.height, vout.pix_fmt = vin.codec_context.width, vin.codec_context.height, "yuv420p"
        vout.bit_rate = 8_000_000
        n = 0
        for frame in inp.decode(vin):
            if frame.time is not None and frame.time >= seconds:
                break
            for packet in vout.encode(frame.reformat(format="yuv420p")):
                out.mux(packet)
            n += 1
        for packet in vout.encode():
            out.mux(packet)
    return n / float(rate)


def check_ingest(device: str, quick: bool, media: Path, work: Path) -> dict[str, Any]:
    """Ingest realtime factor on the dev broadcast (a warm-up clip first loads the models)."""
    from seqbuild.config import build
    from seqbuild.ingest.config import IngestConfig
    from seqbuild.ingest.stage import run_ingest

    video = media / "dev_broadcast.mp4"
    if not video.is_file():
        return {"skipped": f"{video} not found (give --media DIR)"}
    warm = work / "warm.mp4"
    _clip(video, warm, 2.0)
    run_ingest(
        work / "warm_run", build(IngestConfig, {"inputs": [str(warm)], "device": device}), progress=False
    )
    if quick:
        target = work / "quick.mp4"
        _clip(video, target, 3.0)
    else:
        target = video
    summary = run_ingest(
        work / "ingest_run", build(IngestConfig, {"inputs": [str(target)], "device": device}), progress=False
    )
    if summary["failed"]:
        raise RuntimeError(f"ingest failed: {summary['failures']}")
    return {
        "video": str(video) + (" (first 3 s, re-encoded)" if quick else ""),
        "video_seconds": summary["video_seconds"],
        "wall_seconds": summary["wall_seconds"],
        "frames": summary["frames"],
        "faces": summary["faces"],
        "frames_per_s": summary["frames_per_second"],
        "realtime_factor": summary["realtime_factor"],
    }


def _ingested_crops(work: Path) -> list[np.ndarray]:
    from seqbuild.imaging import decode_jpeg

    crops = []
    for f in sorted((work / "ingest_run").rglob("*.parquet")):
        import pyarrow.parquet as pq

        names = pq.read_schema(f).names
        if "image" not in names:
            continue
        for data in pq.read_table(f, columns=["image"]).column("image").to_pylist():
            crops.append(decode_jpeg(data))
    return crops


def check_embed(device: str, quick: bool, work: Path) -> dict[str, Any]:
    """FaceNet embedding throughput (fp16 on CUDA) on aligned crops."""
    from seqbuild.embed.models import create_embedder

    crops = _ingested_crops(work)
    source = "ingested crops"
    if not crops:
        rng = np.random.default_rng(0)
        crops = [rng.integers(0, 255, (144, 144, 3), dtype=np.uint8) for _ in range(64)]
        source = "synthetic crops"
    n = 4 if quick else 20_000
    batch = [crops[i % len(crops)] for i in range(n)]
    t0 = time.perf_counter()
    emb = create_embedder("facenet", device=device)
    load_s = time.perf_counter() - t0
    emb.embed(batch[: min(len(batch), emb.batch_size)])  # warm-up (cuDNN autotuning, allocator)
    _sync(device)
    t0 = time.perf_counter()
    vectors = emb.embed(batch)
    _sync(device)
    wall = time.perf_counter() - t0
    if not np.isfinite(vectors).all():
        raise RuntimeError("embedder returned non-finite vectors")
    return {
        "faces": n,
        "source": f"{len(crops)} {source}, repeated",
        "precision": "fp16" if getattr(emb, "half", False) else "fp32",
        "batch_size": emb.batch_size,
        "model_load_seconds": round(load_s, 2),
        "seconds": round(wall, 3),
        "faces_per_s": round(n / wall, 1),
    }


def _train_setup(
    device: str, quick: bool, amp: str, identities: int, sequences: int, batch: int, backbone: str, size: int
) -> tuple:
    import torch

    from seqbuild.config import build
    from seqbuild.train.backbones import create_backbone
    from seqbuild.train.config import TrainConfig
    from seqbuild.train.trainer import SeqFaceModel, build_losses

    cfg = build(
        TrainConfig, {"dsa_p": 0.001 if not quick else 0.1, "embedding_dim": 512, "backbone": backbone}
    )
    torch.manual_seed(0)
    chief, aux = build_losses(cfg, identities, sequences, 512)
    cuda = device.startswith("cuda")
    dtype = {"bf16": torch.bfloat16, "fp16": torch.float16, "fp32": None}[amp]
    model = SeqFaceModel(
        create_backbone(backbone, input_size=size, dim=512),
        chief,
        aux,
        cfg.aux_normalise,
        dtype,
        "cuda" if cuda else "cpu",
        aux_scale=cfg.aux_scale,
    ).to(device)
    if cuda:
        model.backbone.to(memory_format=torch.channels_last)
        torch.backends.cudnn.benchmark = True
    opt = torch.optim.SGD(model.parameters(), lr=cfg.lr, momentum=cfg.momentum, weight_decay=cfg.weight_decay)
    scaler = torch.amp.GradScaler("cuda") if amp == "fp16" and cuda else None
    half = batch // 2
    labels = torch.cat(
        [torch.randint(0, identities, (half,)), identities + torch.randint(0, sequences, (batch - half,))]
    )
    return cfg, model, opt, scaler, labels


def _step_rate(device: str, quick: bool, amp: str, sizes: dict[str, int], steps: int, warmup: int) -> dict:
    import torch

    from seqbuild.train.trainer import train_step

    cfg, model, opt, scaler, labels = _train_setup(device, quick, amp, **sizes)
    batch = sizes["batch"]
    x = torch.randn(batch, 3, sizes["size"], sizes["size"], device=device)
    if device.startswith("cuda"):
        x = x.contiguous(memory_format=torch.channels_last)
        torch.cuda.reset_peak_memory_stats()
    y = labels.to(device)
    for i in range(warmup):
        train_step(model, opt, x, y, i, scaler, cfg.clip_grad_norm)
    _sync(device)
    t0 = time.perf_counter()
    comps: dict[str, float] = {}
    for i in range(steps):
        comps = train_step(model, opt, x, y, warmup + i, scaler, cfg.clip_grad_norm)
    _sync(device)
    wall = time.perf_counter() - t0
    out = {
        "images_per_s": round(batch * steps / wall, 1),
        "ms_per_step": round(1000 * wall / steps, 2),
        "final_loss": round(comps["loss"], 4),
        "dsa_centres_kept": comps.get("dsa_centres_kept"),
    }
    if device.startswith("cuda"):
        out["peak_memory_gib"] = round(torch.cuda.max_memory_allocated() / 2**30, 2)
    if not np.isfinite(comps["loss"]):
        raise RuntimeError(f"{amp}: non-finite loss {comps}")
    return out


def _loader_rate(device: str, quick: bool, sizes: dict[str, int], steps: int, workers: int) -> dict:
    """bf16 steps fed by the trainer's JPEG loader (synthetic 144x144 crops, random crop and flip)."""
    import pyarrow as pa
    import torch

    from seqbuild.imaging import encode_jpeg
    from seqbuild.train.data import FaceImages, LabelledImages, MixedBatchSampler, make_loader
    from seqbuild.train.trainer import train_step

    cfg, model, opt, scaler, _ = _train_setup(
        device, quick, "bf16" if device.startswith("cuda") else "fp32", **sizes
    )
    rng = np.random.default_rng(0)
    n_unique = 16 if quick else 512
    base = rng.integers(0, 255, (144, 144, 3), dtype=np.uint8)
    jpegs = []
    for k in range(n_unique):  # distinct crops (decode cost depends on content), repeated
        img = (base // 2 + np.roll(base, 3 * k, axis=1) // 2 + rng.integers(0, 20, base.shape)).astype(
            np.uint8
        )
        jpegs.append(encode_jpeg(img))
    batch = sizes["batch"]
    n_img = batch * (steps + 4)
    imgs = pa.array([jpegs[i % n_unique] for i in range(n_img)], pa.binary())
    ids_lab = np.arange(n_img // 2) % sizes["identities"]
    seq_lab = np.arange(n_img - n_img // 2) % sizes["sequences"]
    ids = LabelledImages(imgs.slice(0, n_img // 2), ids_lab, [str(i) for i in range(sizes["identities"])])
    seqs = LabelledImages(imgs.slice(n_img // 2), seq_lab, [str(i) for i in range(sizes["sequences"])])
    dataset = FaceImages(ids, seqs, sizes["size"] + 16, sizes["size"])
    sampler = MixedBatchSampler(len(ids), len(seqs), batch, 0.5, seed=0)
    cuda = device.startswith("cuda")
    warmup, seen, t0 = (1 if quick else 3), 0, 0.0
    for i, (images, labels) in enumerate(make_loader(dataset, sampler, workers, cuda)):
        if i == warmup:
            _sync(device)
            t0, seen = time.perf_counter(), 0
        images = images.to(device, non_blocking=True)
        if cuda:
            images = images.contiguous(memory_format=torch.channels_last)
        train_step(model, opt, images, labels.to(device, non_blocking=True), i, scaler, cfg.clip_grad_norm)
        if i >= warmup:
            seen += len(labels)
        if i + 1 >= warmup + steps:
            break
    _sync(device)
    wall = time.perf_counter() - t0
    return {"workers": workers, "images_per_s": round(seen / wall, 1), "steps_timed": steps}


def check_train(device: str, quick: bool) -> dict[str, Any]:
    """resnet27 SeqFace (LSR + DSA) training throughput under bf16, fp16 and fp32, and with the loader."""
    cuda = device.startswith("cuda")
    sizes: dict[str, Any] = (
        {"identities": 80_000, "sequences": 550_000, "batch": 256, "backbone": "resnet27", "size": 128}
        if not quick
        else {"identities": 50, "sequences": 50, "batch": 8, "backbone": "tiny", "size": 32}
    )
    steps, warmup = (30, 5) if not quick else (2, 1)
    out: dict[str, Any] = {**sizes, "channels_last": cuda}
    modes = ["bf16", "fp16", "fp32"] if cuda else ["fp32"]
    for amp in modes:
        out[amp] = _step_rate(device, quick, amp, sizes, steps, warmup)
    workers = min(os.cpu_count() or 1, 16) if not quick else 1
    out["bf16_with_loader" if cuda else "fp32_with_loader"] = _loader_rate(
        device, quick, sizes, steps, workers
    )
    best = out[modes[0]]["images_per_s"]
    out["images_per_s"] = best
    if cuda:
        out["ratio_bf16_to_fp32"] = round(best / out["fp32"]["images_per_s"], 2)
    return out


def check_faiss(device: str, quick: bool) -> dict[str, Any]:
    """Exact inner-product search throughput (GPU when FAISS has one) and a self-match sanity check."""
    from seqbuild.overlap.search import build_index, gpu_available, search, to_search_device

    use_gpu = device.startswith("cuda") and gpu_available()
    n_base, dim = (1_000_000, 512) if not quick else (10_000, 512)
    n_query = 100_000 if (use_gpu and not quick) else (10_000 if not quick else 1_000)
    note = ""
    if device.startswith("cuda") and not use_gpu:
        note = (
            "FAISS has no GPU here (faiss-cpu build): searched on the CPU with "
            f"{n_query} queries instead of 100,000 (install faiss-gpu for the GPU figure)"
        )
    rng = np.random.default_rng(0)
    base = rng.standard_normal((n_base, dim), dtype=np.float32)
    picks = rng.integers(0, n_base, n_query)
    queries = base[picks] + 0.1 * rng.standard_normal((n_query, dim), dtype=np.float32)
    t0 = time.perf_counter()
    index = to_search_device(build_index(base, "flat"), use_gpu)
    build_s = time.perf_counter() - t0
    search(index, queries[:100], k=10)  # warm-up
    t0 = time.perf_counter()
    _, ids = search(index, queries, k=10)
    wall = time.perf_counter() - t0
    out = {
        "where": "gpu" if use_gpu else "cpu",
        "index": "flat (exact inner product)",
        "base_vectors": n_base,
        "dim": dim,
        "queries": n_query,
        "k": 10,
        "build_seconds": round(build_s, 2),
        "search_seconds": round(wall, 3),
        "queries_per_s": round(n_query / wall, 1),
        "self_match_rate": float(np.mean(ids[:, 0] == picks)),
    }
    if note:
        out["note"] = note
    return out


def _environment(device: str) -> dict[str, Any]:
    import torch

    env: dict[str, Any] = {
        "python": platform.python_version(),
        "torch": torch.__version__,
        "machine": platform.machine(),
        "cpus": os.cpu_count(),
        "device": device,
        "load_before": [round(v, 2) for v in os.getloadavg()],
    }
    if device.startswith("cuda"):
        env["gpu"] = torch.cuda.get_device_name(device)
        env["cuda"] = torch.version.cuda
    try:
        import faiss

        env["faiss"] = faiss.__version__
        env["faiss_gpus"] = faiss.get_num_gpus() if hasattr(faiss, "get_num_gpus") else 0
    except ImportError:
        env["faiss"] = None
    return env


def _summary(result: dict[str, Any]) -> str:
    env = result["environment"]
    lines = [
        f"seqbuild GPU check on {env.get('gpu', env['device'])} ({env['cpus']} CPUs, torch {env['torch']})"
        + (" [quick]" if result["quick"] else ""),
    ]
    ing = result["ingest"]
    if "realtime_factor" in ing:
        lines.append(
            f"ingest: {ing['realtime_factor']}x realtime ({ing['video_seconds']} s of video in "
            f"{ing['wall_seconds']} s, {ing['frames_per_s']} frames/s, {ing['faces']} faces)"
        )
    else:
        lines.append(f"ingest: {ing.get('skipped') or ing.get('error')}")
    emb = result["embed"]
    lines.append(
        f"embed: {emb['faces_per_s']} faces/s ({emb['precision']}, batch {emb['batch_size']})"
        if "faces_per_s" in emb
        else f"embed: {emb.get('error')}"
    )
    tr = result["train"]
    if "images_per_s" in tr:
        parts = [f"{m} {tr[m]['images_per_s']}" for m in ("bf16", "fp16", "fp32") if m in tr]
        loader = tr.get("bf16_with_loader") or tr.get("fp32_with_loader")
        lines.append(
            f"train {tr['backbone']} {tr['size']}x{tr['size']} batch {tr['batch']} (images/s): "
            f"{', '.join(parts)}; with the JPEG loader "
            f"({loader['workers']} workers) {loader['images_per_s']}"
        )
    else:
        lines.append(f"train: {tr.get('error')}")
    fa = result["faiss"]
    if "queries_per_s" in fa:
        lines.append(
            f"faiss ({fa['where']}): {fa['queries']} queries x {fa['base_vectors']} x {fa['dim']} in "
            f"{fa['search_seconds']} s = {fa['queries_per_s']} queries/s, self-match {fa['self_match_rate']:.3f}"
            + (f" ({fa['note']})" if "note" in fa else "")
        )
    else:
        lines.append(f"faiss: {fa.get('error')}")
    lines.append(f"total {result['seconds']} s, load {env['load_before']} -> {result['load_after']}")
    return "\n".join(lines) + "\n"


def main(argv: list[str] | None = None) -> int:
    """Run every part, write OUT/gpu_check.json and OUT/gpu_check.txt; exit 1 when a part failed."""
    ap = argparse.ArgumentParser(description="seqbuild speed check on one device")
    ap.add_argument("--device", default="cuda", help="cuda | cuda:N | cpu")
    ap.add_argument("--quick", action="store_true", help="CI-sized inputs (for --device cpu)")
    ap.add_argument("--out", default=str(REPO / "runs" / "gpu_check"), help="folder for the figures")
    ap.add_argument("--media", default="", help="folder with dev_broadcast.mp4 (default ../shared/media)")
    ap.add_argument("--only", default="", help="comma-separated parts: ingest,embed,train,faiss")
    args = ap.parse_args(argv)
    from seqbuild.devices import resolve_device

    device = resolve_device(args.device)
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    only = set(filter(None, args.only.split(",")))
    result: dict[str, Any] = {"quick": args.quick, "environment": _environment(device)}
    t_start = time.perf_counter()
    work = Path(tempfile.mkdtemp(prefix="seqbuild-gpu-check-"))
    failed = False
    try:
        parts = [
            ("ingest", lambda: check_ingest(device, args.quick, _media_dir(args.media), work)),
            ("embed", lambda: check_embed(device, args.quick, work)),
            ("train", lambda: check_train(device, args.quick)),
            ("faiss", lambda: check_faiss(device, args.quick)),
        ]
        for name, fn in parts:
            if only and name not in only:
                result[name] = {"skipped": "not selected (--only)"}
                continue
            t0 = time.perf_counter()
            print(f"[gpu_check] {name} ...", file=sys.stderr, flush=True)
            try:
                result[name] = fn()
            except Exception as exc:  # one failing part must not hide the others' figures
                failed = True
                result[name] = {"error": f"{type(exc).__name__}: {exc}", "traceback": traceback.format_exc()}
            result[name]["part_seconds"] = round(time.perf_counter() - t0, 1)
    finally:
        shutil.rmtree(work, ignore_errors=True)
    result["seconds"] = round(time.perf_counter() - t_start, 1)
    result["load_after"] = [round(v, 2) for v in os.getloadavg()]
    (out / "gpu_check.json").write_text(json.dumps(result, indent=1))
    text = _summary(result)
    (out / "gpu_check.txt").write_text(text)
    print(text, end="")
    print(f"results: {out / 'gpu_check.json'} and {out / 'gpu_check.txt'}")
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
