"""End-to-end benchmark: the whole chain on the dev broadcast, then on it concatenated 4 and 16 times.

For each input a fresh run directory is made and ``seqbuild run pipelines/e2e.toml`` runs in a child
process (so that its peak RSS is its own): wall time per stage, the realtime factor of the whole chain
(video seconds / wall seconds), and the peak RSS after each stage. The baseline, measured in this
process on the same file, is decoding alone (PyAV, every frame), the floor any chain pays. The scorer of
../shared/tools scores the final dataset against the broadcast's ground truth, and the report is
rendered in headless chromium to a PNG.

Run: ``make bench-e2e`` (or ``python -m benchmarks.bench_e2e [--media DIR] [--out DIR] [--repeat 4 16]``).
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import shutil
import subprocess
import sys
import time
from pathlib import Path

from seqbuild.report.render import render_screenshot

REPO = Path(__file__).resolve().parents[1]

CHILD = """
import json, resource, sys, time
from seqbuild.logs import setup_logging
from seqbuild.pipeline.loading import load_pipeline
from seqbuild.pipeline.run import run_pipeline
import seqbuild.pipeline.run as runner

run, toml, video, gallery = sys.argv[1:5]
setup_logging("WARNING", f"{run}/logs/seqbuild.log")
peaks = {}
original = runner.stage_entry

def measured(stage):
    fn = original(stage)
    def wrapped(*a, **k):
        out = fn(*a, **k)
        peaks[stage] = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
        return out
    return wrapped

runner.stage_entry = measured
sets = [f'ingest.inputs=["{video}"]']
if gallery:
    sets.append(f'dedup_overlap.galleries=["{gallery}"]')
t0 = time.perf_counter()
results = run_pipeline(run, load_pipeline(toml, sets), progress=False)
wall = time.perf_counter() - t0
print(json.dumps({"wall": wall, "peak_rss_mb": peaks, "stages": [
    {"stage": r.stage, "status": r.status, "seconds": r.seconds, "failures": r.failures} for r in results]}))
"""


def video_seconds(path: Path) -> tuple[float, int]:
    """Duration (s) and frame count of a video, by decoding it (also the decode-only baseline)."""
    import av

    n = 0
    with av.open(str(path)) as c:
        stream = c.streams.video[0]
        stream.thread_type = "AUTO"
        fps = float(stream.average_rate)
        for _ in c.decode(stream):
            n += 1
    return n / fps, n


def concat_video(src: Path, dst: Path, times: int) -> None:
    """``src`` repeated ``times`` times, by remuxing its packets with shifted timestamps (no re-encode)."""
    import av

    with av.open(str(src)) as probe:
        s = probe.streams.video[0]
        duration = (
            int(probe.duration * s.time_base.denominator / (s.time_base.numerator * 1_000_000))
            if probe.duration
            else None
        )
    dst.parent.mkdir(parents=True, exist_ok=True)
    with av.open(str(dst), "w") as out:
        ostream = None
        offset = 0
        for _ in range(times):
            last = 0
            with av.open(str(src)) as inp:
                istream = inp.streams.video[0]
                if ostream is None:
                    ostream = out.add_stream_from_template(istream)
                for packet in inp.demux(istream):
                    if packet.dts is None:
                        continue
                    packet.pts += offset
                    packet.dts += offset
                    last = max(last, packet.pts + (packet.duration or 0))
                    packet.stream = ostream
                    out.mux(packet)
            offset = last if duration is None else max(last, offset + duration)


def run_chain(run: Path, video: Path, gallery: Path | None) -> dict:
    """The whole chain in a child process; returns its timings and peak RSS."""
    if run.exists():
        shutil.rmtree(run)
    toml = REPO / "pipelines" / "e2e.toml"
    cmd = [sys.executable, "-c", CHILD, str(run), str(toml), str(video.resolve()), str(gallery or "")]
    proc = subprocess.run(cmd, cwd=REPO, capture_output=True, text=True)
    if proc.returncode != 0:
        raise SystemExit(f"chain failed on {video}:\n{proc.stderr[-3000:]}")
    return json.loads(proc.stdout.strip().splitlines()[-1])


def score(gt: Path, dataset: Path) -> dict:
    """The shared scorer's figures for a final dataset."""
    scorer = REPO.parent / "shared" / "tools" / "score_sequences.py"
    proc = subprocess.run(
        [sys.executable, str(scorer), str(gt), str(dataset)], capture_output=True, text=True
    )
    if proc.returncode != 0:
        return {"error": proc.stderr[-500:]}
    return json.loads(proc.stdout.strip().splitlines()[-1])


def main() -> None:
    """Run the benchmark and print a Markdown summary (also written as JSON beside the runs)."""
    ap = argparse.ArgumentParser()
    ap.add_argument(
        "--media", default=os.environ.get("SEQBUILD_MEDIA", str(REPO.parent / "shared" / "media"))
    )
    ap.add_argument("--out", default=str(REPO / "runs" / "bench_e2e"))
    ap.add_argument(
        "--repeat",
        type=int,
        nargs="*",
        default=[4, 16],
        help="copies of the video in each longer input, e.g. --repeat 4 16 (none: skip)",
    )
    args = ap.parse_args()
    media, out = Path(args.media), Path(args.out)
    video = media / "dev_broadcast.mp4"
    if not video.exists():
        raise SystemExit(f"{video}: not found (set SEQBUILD_MEDIA)")
    gallery = media / "gallery" if (media / "gallery").is_dir() else None
    out.mkdir(parents=True, exist_ok=True)
    load_before = os.getloadavg()

    t0 = time.perf_counter()
    seconds, frames = video_seconds(video)
    decode_wall = time.perf_counter() - t0
    one = run_chain(out / "x1", video, gallery)
    figures = score(media / "dev_broadcast.gt.json", out / "x1" / "dataset")
    from seqbuild.dataset import export_stage
    from seqbuild.layout import RunDir

    per_stage = {}
    for stage in ("track", "clean"):
        export_stage(RunDir(out / "x1"), stage, out / f"x1_after_{stage}")
        per_stage[stage] = score(media / "dev_broadcast.gt.json", out / f"x1_after_{stage}")

    from seqbuild.report import write_report

    page = write_report(out / "x1")
    shot = out / "report.png"
    rendered = render_screenshot(page, shot, width=1400, height=2600, timeout=180)

    longs = {}
    for times in sorted({n for n in args.repeat if n > 1}):
        long_video = out / f"dev_broadcast_x{times}.mp4"
        if not long_video.exists():
            concat_video(video, long_video, times)
        long_seconds, long_frames = video_seconds(long_video)
        longs[times] = {
            "seconds": long_seconds,
            "frames": long_frames,
            **run_chain(out / f"x{times}", long_video, gallery),
        }
    load_after = os.getloadavg()

    result = {
        "machine": f"{platform.node()} {platform.processor() or platform.machine()}, {os.cpu_count()} CPUs, no GPU",
        "load_before": load_before,
        "load_after": load_after,
        "video": str(video),
        "video_seconds": seconds,
        "frames": frames,
        "decode_only_seconds": decode_wall,
        "x1": one,
        "long": longs,
        "score": figures,
        "score_after_stage": per_stage,
        "report": str(page),
        "screenshot": str(shot) if rendered else None,
    }
    (out / "results.json").write_text(json.dumps(result, indent=1))
    print(markdown(result))


def markdown(r: dict) -> str:
    """The benchmark's figures as the Markdown of docs/benchmarks.md."""
    one = r["x1"]
    lines = [
        f"Video: `dev_broadcast.mp4`, {r['video_seconds']:.1f} s, {r['frames']} frames, 1280x720, 25 fps.",
        f"Machine: {r['machine']}. Load average (1, 5, 15 min) before {tuple(round(x, 2) for x in r['load_before'])},"
        f" after {tuple(round(x, 2) for x in r['load_after'])}.",
        "",
        "| stage | wall (s) | realtime factor | peak RSS after stage (MiB) |",
        "| --- | ---: | ---: | ---: |",
    ]
    for s in one["stages"]:
        rtf = r["video_seconds"] / s["seconds"] if s["seconds"] else float("nan")
        lines.append(
            f"| {s['stage']} | {s['seconds']:.1f} | {rtf:.2f}x | {one['peak_rss_mb'].get(s['stage'], 0):.0f} |"
        )
    lines += [
        f"| **whole chain** | **{one['wall']:.1f}** | **{r['video_seconds'] / one['wall']:.2f}x** | "
        f"**{max(one['peak_rss_mb'].values()):.0f}** |",
        "",
        f"Baseline in the same process: decoding alone takes {r['decode_only_seconds']:.1f} s "
        f"({r['video_seconds'] / r['decode_only_seconds']:.1f}x realtime); the chain costs "
        f"{one['wall'] / r['decode_only_seconds']:.1f}x decoding.",
    ]
    if r["long"]:
        runs = {1: one, **{int(k): v for k, v in r["long"].items()}}
        lines += ["", "The same video concatenated (packets remuxed, no re-encode):", ""]
        lines += ["| input | video (s) | whole chain (s) | realtime factor | peak RSS (MiB) |"]
        lines += ["| --- | ---: | ---: | ---: | ---: |"]
        for times, run in runs.items():
            secs = r["video_seconds"] if times == 1 else run["seconds"]
            lines.append(
                f"| {times}x | {secs:.1f} | {run['wall']:.1f} | {secs / run['wall']:.2f}x | "
                f"{max(run['peak_rss_mb'].values()):.0f} |"
            )
        header = " | ".join(f"{t}x" for t in runs)
        lines += ["", "Peak RSS after each stage (MiB):", "", f"| stage | {header} |"]
        lines += ["| --- |" + " ---: |" * len(runs)]
        for s in one["stages"]:
            cells = " | ".join(f"{run['peak_rss_mb'].get(s['stage'], 0):.0f}" for run in runs.values())
            lines.append(f"| {s['stage']} | {cells} |")
    lines += [
        "",
        "Scorer (`score_sequences.py dev_broadcast.gt.json RUN/dataset`):",
        "",
        "```",
        json.dumps(r["score"]),
        "```",
    ]
    return "\n".join(lines)


if __name__ == "__main__":
    main()
