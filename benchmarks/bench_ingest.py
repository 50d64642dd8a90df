"""Ingest speed and coverage: `make bench-ingest` (``python -m benchmarks.bench_ingest``).

For each video it runs the ingest stage (library entry point, fresh run directory, default config
unless flags say otherwise) and, in the same process, the naive loop a user would write with
facenet-pytorch: ``MTCNN(keep_all=True)`` with default settings on every decoded frame. The naive loop
runs on a prefix of the frames (``--naive-frames``) to save time; its frames/s is what matters.
On dev_broadcast it also scores faces against the ground truth (every (shot, person) lasting >= 2 s must
keep a face whose box centre lies in the person's pane) and cuts (precision/recall, a dissolve = one cut).
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import shutil
import tempfile
import time
from pathlib import Path

import pandas as pd

from seqbuild.config import build
from seqbuild.ingest.config import IngestConfig
from seqbuild.ingest.shots import match_cuts
from seqbuild.ingest.stage import run_ingest

REPO = Path(__file__).resolve().parents[1]
DOCS = REPO / "docs" / "benchmarks.md"


def media_dir() -> Path:
    """The shared media folder (SEQBUILD_MEDIA or ../shared/media)."""
    env = os.environ.get("SEQBUILD_MEDIA")
    return Path(env) if env else REPO.parent / "shared" / "media"


def load() -> str:
    """1/5/15-minute load averages and the core count, as text."""
    a, b, c = os.getloadavg()
    return f"{a:.2f} {b:.2f} {c:.2f} on {os.cpu_count()} cores"


def gt_coverage(gt: dict, det: pd.DataFrame, min_s: float = 2.0) -> tuple[int, int, list[str]]:
    """(covered, total, missed) (shot, pane) instances of at least ``min_s`` seconds: covered when some
    detection of the shot's frames has its box centre inside the pane's rectangle."""
    fps = gt["fps"]
    cx = ((det.x1 + det.x2) / 2).to_numpy()
    cy = ((det.y1 + det.y2) / 2).to_numpy()
    frame = det.frame_idx.to_numpy()
    covered, total, missed = 0, 0, []
    for shot in gt["shots"]:
        if shot["end"] - shot["start"] < min_s * fps:
            continue
        for pane in shot["panes"]:
            total += 1
            x, y, w, h = pane["rect"]
            inside = (
                (frame >= shot["start"])
                & (frame < shot["end"])
                & (cx >= x)
                & (cx < x + w)
                & (cy >= y)
                & (cy < y + h)
            )
            if inside.any():
                covered += 1
            else:
                missed.append(f"shot {shot['index']} {pane['identity']}")
    return covered, total, missed


def naive_loop(video: Path, frames: int, device: str) -> dict:
    """facenet-pytorch MTCNN, default settings, on every frame of the first ``frames`` frames."""
    import av
    import torch
    from facenet_pytorch import MTCNN

    mtcnn = MTCNN(keep_all=True, device=torch.device(device))
    n = faces = 0
    t0 = time.perf_counter()
    cpu0 = time.process_time()
    with av.open(str(video)) as container:
        for frame in container.decode(video=0):
            boxes, _probs = mtcnn.detect(frame.to_ndarray(format="rgb24"))
            faces += 0 if boxes is None else len(boxes)
            n += 1
            if n >= frames:
                break
    wall = time.perf_counter() - t0
    cpu = time.process_time() - cpu0
    return {
        "frames": n,
        "faces": faces,
        "wall_seconds": round(wall, 2),
        "frames_per_second": round(n / wall, 2),
        "cpu_ms_per_frame": round(1000 * cpu / n, 1),
    }


def bench_video(video: Path, cfg_layer: dict, naive_frames: int, device: str) -> dict:
    """Ingest ``video`` in a fresh run directory, then time the naive loop on its first frames."""
    run = Path(tempfile.mkdtemp(prefix="bench_ingest_"))
    try:
        load_before = load()
        cfg = build(IngestConfig, {**cfg_layer, "inputs": [str(video)], "device": device})
        cpu0 = time.process_time()
        summary = run_ingest(run, cfg, progress=False)
        cpu = time.process_time() - cpu0
        det = pd.read_parquet(run / "ingest" / "detections")
        shots = pd.read_parquet(run / "ingest" / "shots")
        out = {
            "video": video.name,
            "config": {
                k: getattr(cfg, k)
                for k in ("detect_every", "min_face", "threshold", "max_side", "batch_size")
            },
            "frames": summary["frames"],
            "video_seconds": summary["video_seconds"],
            "wall_seconds": summary["wall_seconds"],
            "frames_per_second": summary["frames_per_second"],
            "realtime_factor": summary["realtime_factor"],
            # CPU time of this process (all its threads): less sensitive to other processes than wall time.
            "cpu_seconds": round(cpu, 2),
            "cpu_seconds_per_video_second": round(cpu / summary["video_seconds"], 3),
            "faces": summary["faces"],
            "shots": len(shots),
            "load_before": load_before,
        }
        naive = naive_loop(video, naive_frames, device) if naive_frames else None
        out["load_after"] = load()
        if naive:
            out["naive"] = naive
            out["speedup_vs_naive"] = round(out["frames_per_second"] / naive["frames_per_second"], 2)
            out["cpu_speedup_vs_naive"] = round(
                naive["cpu_ms_per_frame"] / (1000 * cpu / summary["frames"]), 2
            )
        gt_path = video.with_suffix(".gt.json")
        if gt_path.exists():
            gt = json.loads(gt_path.read_text())
            covered, total, missed = gt_coverage(gt, det)
            out["gt_recall"] = {"covered": covered, "instances": total, "missed": missed}
            truth = [(s["start"], s["dissolve_in"]) for s in gt["shots"][1:]]
            cuts = sorted(shots.first_frame)[1:]
            p, r, tp, fp = match_cuts(cuts, truth)
            out["cuts"] = {
                "precision": round(p, 3),
                "recall": round(r, 3),
                "true": len(truth),
                "found": len(cuts),
                "false": fp,
            }
        return out
    finally:
        shutil.rmtree(run, ignore_errors=True)


def machine() -> str:
    """CPU model, core count, and whether CUDA is present."""
    import torch

    cpu = platform.processor() or platform.machine()
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    gpu = torch.cuda.get_device_name(0) if torch.cuda.is_available() else "no GPU"
    return (
        f"{cpu}, {os.cpu_count()} cores, {gpu}, torch {torch.__version__} ({torch.get_num_threads()} threads)"
    )


def markdown(results: list[dict], command: str) -> str:
    """The docs block for these results."""
    lines = [
        "## Ingest",
        f"Command: `{command}`  ",
        f"Machine: {machine()}  ",
        f"Date: {time.strftime('%Y-%m-%d %H:%M UTC', time.gmtime())}",
        "",
        "| video | frames | detect_every / min_face | ingest frames/s | realtime factor | CPU-s per video-s | naive frames/s (prefix) | speed-up (wall / CPU) | load before -> after |",
        "| --- | --- | --- | --- | --- | --- | --- | --- | --- |",
    ]
    for r in results:
        naive = r.get("naive")
        lines.append(
            f"| {r['video']} | {r['frames']} | {r['config']['detect_every']} / {r['config']['min_face']} | "
            f"{r['frames_per_second']} | {r['realtime_factor']}x | {r['cpu_seconds_per_video_second']} | "
            + (
                f"{naive['frames_per_second']} ({naive['frames']} frames) | "
                f"{r['speedup_vs_naive']}x / {r['cpu_speedup_vs_naive']}x"
                if naive
                else "- | -"
            )
            + f" | {r['load_before']} -> {r['load_after']} |"
        )
    for r in results:
        if "gt_recall" in r:
            g, c = r["gt_recall"], r["cuts"]
            lines += [
                "",
                f"{r['video']}: ground-truth (shot, person) instances of >= 2 s with a face found: "
                f"{g['covered']}/{g['instances']}"
                + (f" (missed: {', '.join(g['missed'])})" if g["missed"] else "")
                + f". Cuts: precision {c['precision']}, recall {c['recall']} ({c['found']} found, {c['true']} true, "
                f"{c['false']} false; a 12-frame dissolve counts as one cut).",
            ]
    return "\n".join(lines)


def write_docs(block: str) -> None:
    """Replace the ingest block of docs/benchmarks.md."""
    text = DOCS.read_text()
    start, end = "<!-- ingest:start -->", "<!-- ingest:end -->"
    i, j = text.index(start) + len(start), text.index(end)
    DOCS.write_text(text[:i] + "\n" + block + "\n" + text[j:])


def main(argv: list[str] | None = None) -> None:
    """Run the benchmark and print (and with --write-docs, record) the results."""
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--videos", nargs="*", default=["dev_broadcast.mp4", "clips/crowd_walk.mp4"])
    ap.add_argument("--naive-frames", type=int, default=20, help="frames of the naive loop (0 = skip it)")
    ap.add_argument("--device", default="cpu")
    ap.add_argument("--detect-every", type=int, default=None)
    ap.add_argument("--min-face", type=int, default=None)
    ap.add_argument(
        "--write-docs", action="store_true", help="replace the ingest block of docs/benchmarks.md"
    )
    args = ap.parse_args(argv)
    media = media_dir()
    if not media.is_dir():
        raise SystemExit(f"real media not found at {media}: set SEQBUILD_MEDIA")
    layer = {k: v for k, v in {"detect_every": args.detect_every, "min_face": args.min_face}.items() if v}
    results = []
    for name in args.videos:
        r = bench_video(media / name, layer, args.naive_frames, args.device)
        print(json.dumps(r), flush=True)
        results.append(r)
    command = "make bench-ingest" + (f" (python -m benchmarks.bench_ingest {' '.join(argv)})" if argv else "")
    block = markdown(results, command)
    print(block)
    if args.write_docs:
        write_docs(block)


if __name__ == "__main__":
    main()
