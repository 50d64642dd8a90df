"""End-to-end benchmark: the whole chain on 10 minutes of broadcast, on the 45 s dev broadcast, and a baseline.

Inputs: ``dev_broadcast.mp4`` (../shared/media) and ``dev_broadcast_2`` (composed from
benchmarks/media/dev_broadcast_2.json with ../shared/tools/broadcast.py), joined into one H.264 file
(re-encoded once with ffmpeg, libx264 ``veryfast``, CRF 20, its default keyframe interval), then that
pair repeated by remuxing its packets to a 10-minute input, ``tv10.mp4``; its ground truth is the two
broadcasts' truths one after the other, every later copy of a shot marked as a rerun of its first airing.

Each chain is one ``seqbuild run pipelines/e2e.toml`` with the defaults (gallery ../shared/media/gallery)
in a child process in a fresh run folder: wall time per stage, the realtime factor (video seconds / wall
seconds), and the peak RSS of the chain's own process and of its largest worker process. Measured in
the same benchmark run: decoding the 10-minute file alone (PyAV, every frame: the floor any chain pays),
the hand-written VoxCeleb-style pipeline of benchmarks/baseline_voxceleb.py on the start of the same
file (``--baseline-seconds``; its cost is per frame, so its wall time per video second is compared),
and ingest of the dev broadcast repeated 4 times read whole by one worker against the same file split
into parts for two workers (outputs compared table by table). The shared scorer scores each final
dataset against its ground truth.

Run: ``make bench-e2e`` (or ``python -m benchmarks.bench_e2e [--media DIR] [--out DIR]
[--baseline-seconds S] [--write-doc]``).
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

REPO = Path(__file__).resolve().parents[1]
DOC = REPO / "docs" / "benchmarks.md"
CYCLES = 6
"""Copies of the two broadcasts in the 10-minute input (6 x 103.2 s = 619.2 s)."""

CHILD = """
import json, resource, sys, time
from seqbuild.logs import setup_logging
from seqbuild.pipeline.loading import load_pipeline
from seqbuild.pipeline.run import run_pipeline
import seqbuild.pipeline.run as runner

run, toml, video, gallery, *sets = sys.argv[1:]
setup_logging("WARNING", f"{run}/logs/seqbuild.log")
peaks = {}
original = runner.stage_entry

def mib(who):
    return resource.getrusage(who).ru_maxrss / 1024

def measured(stage):
    fn = original(stage)
    def wrapped(*a, **k):
        out = fn(*a, **k)
        peaks[stage] = {"main": mib(resource.RUSAGE_SELF), "workers": mib(resource.RUSAGE_CHILDREN)}
        return out
    return wrapped

runner.stage_entry = measured
sets = [f'ingest.inputs=["{video}"]', *sets]
if gallery:
    sets.append(f'dedup_overlap.galleries=["{gallery}"]')
t0 = time.perf_counter()
results = run_pipeline(run, load_pipeline(toml, sets), progress=False)
wall = time.perf_counter() - t0
print(json.dumps({"wall": wall, "peak_rss_mb": peaks, "stages": [
    {"stage": r.stage, "status": r.status, "seconds": r.seconds, "failures": r.failures,
     "summary": {k: v for k, v in r.summary.items() if isinstance(v, (int, float))}} for r in results]}))
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


def run_chain(run: Path, video: Path, gallery: Path | None, *sets: str, stages: str = "") -> dict:
    """The chain (pipelines/e2e.toml) in a child process in a fresh ``run``; its timings and peak RSS."""
    if run.exists():
        shutil.rmtree(run)
    toml = REPO / "pipelines" / "e2e.toml"
    extra = [f"run.stages={stages}"] if stages else []
    cmd = [
        sys.executable,
        "-c",
        CHILD,
        str(run),
        str(toml),
        str(video.resolve()),
        str(gallery or ""),
        *extra,
        *sets,
    ]
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


def join_videos(videos: list[Path], dst: Path) -> None:
    """One H.264 file of ``videos`` one after the other (ffmpeg, re-encoded once)."""
    if dst.exists():
        return
    inputs = [a for v in videos for a in ("-i", str(v))]
    graph = "".join(f"[{k}:v]" for k in range(len(videos))) + f"concat=n={len(videos)}:v=1:a=0[v]"
    tmp = dst.with_suffix(".tmp.mp4")
    cmd = ["ffmpeg", "-v", "error", "-y", *inputs, "-filter_complex", graph, "-map", "[v]"]
    cmd += ["-c:v", "libx264", "-preset", "veryfast", "-crf", "20", "-pix_fmt", "yuv420p", str(tmp)]
    subprocess.run(cmd, check=True)
    tmp.rename(dst)


def joined_truth(truths: list[dict], name: str, cycles: int) -> dict:
    """The ground truth of ``truths`` one after the other, ``cycles`` times; later airings are reruns."""
    first = truths[0]
    shots: list[dict] = []
    offset = 0
    for cycle in range(cycles):
        base = 0
        for gt in truths:
            for shot in gt["shots"]:
                index = len(shots)
                original = index if cycle == 0 else index - cycle * sum(len(t["shots"]) for t in truths)
                own = shot.get("rerun_of")
                if cycle == 0:
                    rerun_of = None if own is None else base + own
                else:
                    rerun_of = (
                        shots[original]["rerun_of"] if shots[original]["rerun_of"] is not None else original
                    )
                shots.append(
                    {
                        **shot,
                        "index": index,
                        "kind": "rerun" if rerun_of is not None else shot["kind"],
                        "start": shot["start"] + offset,
                        "end": shot["end"] + offset,
                        "rerun_of": rerun_of,
                    }
                )
            base += len(gt["shots"])
            offset += gt["frames"]
    return {**first, "video": name, "frames": offset, "shots": shots}


def compare_ingest(a: Path, b: Path) -> dict:
    """Whether two runs' ingest tables hold the same rows (detections, shots), and their sizes."""
    import pandas as pd

    out = {}
    for table in ("detections", "shots"):
        fa = sorted((a / "ingest" / table).glob("*.parquet"))
        fb = sorted((b / "ingest" / table).glob("*.parquet"))
        ta = pd.concat([pd.read_parquet(f) for f in fa], ignore_index=True)
        tb = pd.concat([pd.read_parquet(f) for f in fb], ignore_index=True)
        out[table] = {"rows": [len(ta), len(tb)], "equal": bool(ta.equals(tb))}
    return out


def cross_copies(run: Path, first_frames: int, cycle_frames: int) -> int:
    """Sequences of the first airing of the second broadcast that clean removed as copies of footage
    in the first broadcast (the two are cut from the same clips; their truths do not say so)."""
    import re

    import pandas as pd

    removals = pd.concat([pd.read_parquet(f) for f in sorted((run / "clean" / "removals").glob("*.parquet"))])
    seqs = pd.concat([pd.read_parquet(f) for f in sorted((run / "track" / "sequences").glob("*.parquet"))])
    first = dict(zip(seqs.seq_id, seqs.first_frame, strict=True))
    n = 0
    for row in removals[removals.reason == "rerun"].drop_duplicates("seq_id").itertuples():
        found = re.search(r"copy of (\S+)", row.detail or "")
        if not found or found.group(1) not in first:
            continue
        mine, original = first[row.seq_id], first[found.group(1)]
        n += first_frames <= mine < cycle_frames and original < first_frames
    return n


def main() -> None:
    """Run the benchmark; print (and with --write-doc, write) the Markdown of docs/benchmarks.md."""
    from benchmarks.bench_transitions import compose

    ap = argparse.ArgumentParser()
    ap.add_argument(
        "--media", default=os.environ.get("SEQBUILD_MEDIA", str(REPO.parent / "shared" / "media"))
    )
    ap.add_argument("--out", default=str(REPO / "runs" / "bench_e2e"))
    ap.add_argument("--baseline-seconds", type=float, default=60.0, help="0: the whole 10-minute input")
    ap.add_argument("--write-doc", action="store_true")
    args = ap.parse_args()
    media, out = Path(args.media).resolve(), Path(args.out).resolve()
    if not (media / "dev_broadcast.mp4").exists():
        raise SystemExit(f"{media}/dev_broadcast.mp4: not found (set SEQBUILD_MEDIA or --media)")
    gallery = media / "gallery" if (media / "gallery").is_dir() else None
    out.mkdir(parents=True, exist_ok=True)
    found = compose(media, out / "media", ["dev_broadcast_2"])
    names = ["dev_broadcast", "dev_broadcast_2"]
    pair = out / "media" / "pair.mp4"
    join_videos([found[n][0] for n in names], pair)
    tv10 = out / "media" / "tv10.mp4"
    if not tv10.exists():
        concat_video(pair, tv10, CYCLES)
    truths = [json.loads(found[n][1].read_text()) for n in names]
    tv10_gt = out / "media" / "tv10.gt.json"
    tv10_gt.write_text(json.dumps(joined_truth(truths, tv10.name, CYCLES)))
    dev = media / "dev_broadcast.mp4"
    x4 = out / "media" / "dev_broadcast_x4.mp4"
    if not x4.exists():
        concat_video(dev, x4, 4)

    load_before = os.getloadavg()
    t0 = time.perf_counter()
    seconds, frames = video_seconds(tv10)
    decode_wall = time.perf_counter() - t0
    dev_seconds, dev_frames = video_seconds(dev)
    x4_seconds, _ = video_seconds(x4)

    chain10 = run_chain(out / "tv10", tv10, gallery)
    chain1 = run_chain(out / "x1", dev, gallery)
    scores = {
        "tv10": score(tv10_gt, out / "tv10" / "dataset"),
        "x1": score(media / "dev_broadcast.gt.json", out / "x1" / "dataset"),
    }
    dev_frames_in_pair = truths[0]["frames"]
    copies = cross_copies(out / "tv10", dev_frames_in_pair, sum(t["frames"] for t in truths))
    segments = {}
    for label, sets in (
        ("whole, 1 worker", ["ingest.workers=1", "ingest.split_segments=1"]),
        ("parts, 2 workers", ["ingest.workers=2"]),
    ):
        segments[label] = run_chain(out / f"x4-{label.split(',')[0]}", x4, None, *sets, stages='["ingest"]')
    same = compare_ingest(out / "x4-whole", out / "x4-parts")
    cmd = [sys.executable, "-m", "benchmarks.baseline_voxceleb", str(tv10)]
    if args.baseline_seconds > 0:
        cmd += ["--seconds", str(args.baseline_seconds)]
    proc = subprocess.run(cmd, cwd=REPO, capture_output=True, text=True, check=True)
    baseline = json.loads(proc.stdout.strip().splitlines()[-1])
    load_after = os.getloadavg()
    result = {
        "machine": f"{platform.node()} {platform.processor() or platform.machine()}, "
        f"{os.cpu_count()} CPUs, no GPU",
        "date": time.strftime("%Y-%m-%d"),
        "load_before": load_before,
        "load_after": load_after,
        "tv10": {"seconds": seconds, "frames": frames, "decode_only_seconds": decode_wall, **chain10},
        "x1": {"seconds": dev_seconds, "frames": dev_frames, **chain1},
        "x4": {"seconds": x4_seconds, "runs": segments, "same": same},
        "baseline": baseline,
        "score": scores,
        "cross_copies": copies,
    }
    (out / "results.json").write_text(json.dumps(result, indent=1))
    block = markdown(result)
    print(block)
    if args.write_doc:
        write_doc(block)


def peak(run: dict, who: str) -> float:
    """The largest peak RSS (MiB) of ``who`` (main or workers) over a chain's stages."""
    return max((p[who] for p in run["peak_rss_mb"].values()), default=0.0)


def chain_table(runs: dict[str, dict]) -> list[str]:
    """Per-stage wall seconds and realtime factors of several chains, side by side."""
    names = list(runs)
    lines = ["| stage | " + " | ".join(f"{n} (s) | {n} realtime" for n in names) + " |"]
    lines.append("| --- |" + " ---: | ---: |" * len(names))
    stages = [s["stage"] for s in next(iter(runs.values()))["stages"]]
    for stage in stages:
        cells = []
        for run in runs.values():
            s = next(x for x in run["stages"] if x["stage"] == stage)
            cells.append(f"{s['seconds']:.1f} | {run['seconds'] / s['seconds']:.1f}x")
        lines.append(f"| {stage} | " + " | ".join(cells) + " |")
    cells = [f"**{run['wall']:.1f}** | **{run['seconds'] / run['wall']:.2f}x**" for run in runs.values()]
    lines.append("| **whole chain** | " + " | ".join(cells) + " |")
    return lines


def markdown(r: dict) -> str:
    """The benchmark's figures as the Markdown of docs/benchmarks.md."""
    tv, one, base, x4 = r["tv10"], r["x1"], r["baseline"], r["x4"]
    load = lambda v: ", ".join(f"{x:.2f}" for x in v)  # noqa: E731
    chain_per_s = tv["wall"] / tv["seconds"]
    base_per_s = base["wall"] / base["video_seconds"]
    whole, parts = x4["runs"]["whole, 1 worker"], x4["runs"]["parts, 2 workers"]
    lines = [
        "<!-- e2e:start -->",
        "## End to end",
        "",
        "Command: `make bench-e2e` (= `python -m benchmarks.bench_e2e --write-doc`; see its docstring for how",
        "the inputs are made). Every chain is one `seqbuild run pipelines/e2e.toml` with the defaults (local",
        "executor, workers chosen by the stages), `dedup_overlap.galleries = ../shared/media/gallery`.",
        f"Machine: {r['machine']}; measured {r['date']}; load average (1, 5, 15 min) before "
        f"{load(r['load_before'])}, after {load(r['load_after'])} (the benchmark keeps both cores busy).",
        "",
        f"Inputs: `tv10.mp4`, the two dev broadcasts joined and repeated {CYCLES} times, {tv['seconds']:.1f} s, "
        f"{tv['frames']} frames, 1280x720, 25 fps; `dev_broadcast.mp4`, {one['seconds']:.1f} s.",
        "",
        *chain_table({"10 min": tv, "45 s": one}),
        "",
        f"- Peak RSS, 10-minute chain: {peak(tv, 'main'):.0f} MiB in the chain's process, {peak(tv, 'workers'):.0f} "
        f"MiB in its largest worker process; 45 s chain: {peak(one, 'main'):.0f} MiB (no worker process: one "
        "worker per minute of video).",
        f"- Decoding the 10-minute file alone (PyAV, every frame) takes {tv['decode_only_seconds']:.1f} s "
        f"({tv['seconds'] / tv['decode_only_seconds']:.1f}x realtime); the chain costs "
        f"{tv['wall'] / tv['decode_only_seconds']:.1f}x decoding.",
        f"- Baseline (benchmarks/baseline_voxceleb.py: PySceneDetect ContentDetector, facenet-pytorch MTCNN on "
        f"every frame, greedy IoU tracks, crops) on the first {base['video_seconds']:.0f} s of the same file: "
        f"{base['wall']:.1f} s, {base_per_s:.2f} s per video second ({1 / base_per_s:.2f}x realtime). The chain "
        f"takes {chain_per_s:.3f} s per video second: **{base_per_s / chain_per_s:.1f}x faster** than the baseline.",
        "",
        f"One long file on two workers: `dev_broadcast.mp4` repeated 4 times ({x4['seconds']:.1f} s), "
        "`seqbuild run` with ingest only:",
        "",
        "| ingest | wall (s) | realtime | peak RSS main / worker (MiB) |",
        "| --- | ---: | ---: | ---: |",
    ]
    for label, run in x4["runs"].items():
        lines.append(
            f"| {label} | {run['wall']:.1f} | {x4['seconds'] / run['wall']:.1f}x | "
            f"{peak(run, 'main'):.0f} / {peak(run, 'workers'):.0f} |"
        )
    same = ", ".join(
        f"{t} {v['rows'][0]} and {v['rows'][1]} rows, {'identical' if v['equal'] else 'DIFFERENT'}"
        for t, v in x4["same"].items()
    )
    lines += [
        "",
        f"Speed-up {whole['wall'] / parts['wall']:.2f}x; outputs: {same}. (tests/test_segments.py checks the "
        "same, down to the cleaned dataset, for the dev broadcast in 4 parts.)",
        "",
        "Scorer (`python ../shared/tools/score_sequences.py GT RUN/dataset`), final datasets:",
        "",
        "```",
        f"10 min: {json.dumps(r['score']['tv10'])}",
        f"45 s:   {json.dumps(r['score']['x1'])}",
        "```",
        "",
        f"The 10-minute truth marks every later airing of a shot as a rerun of its first airing, but not that "
        f"the two broadcasts are cut from the same talk clips: clean removed {r['cross_copies']} sequences of "
        "the second broadcast's first airing as copies of footage already in the first (centre similarity "
        "0.996-1.000), which the scorer counts as lost in `recall_unique`. Purity, cut crossings, reruns "
        "kept twice, gallery faces left and near-duplicate pairs are those of the 45 s run.",
        "<!-- e2e:end -->",
    ]
    return "\n".join(lines)


def write_doc(block: str) -> None:
    """Replace the section between the e2e markers of docs/benchmarks.md."""
    text = DOC.read_text()
    start, end = text.index("<!-- e2e:start -->"), text.index("<!-- e2e:end -->") + len("<!-- e2e:end -->")
    DOC.write_text(text[:start] + block + text[end:])


if __name__ == "__main__":
    main()
