"""Benchmark `seqbuild track`: sequence quality on dev_broadcast and crowd_walk, Kalman vs greedy IoU.

Both trackers run in this process on the same ingest output. On dev_broadcast the figures come from
the shared scorer (``score_sequences.py``); on crowd_walk (a crowd walking towards the camera, no
ground truth) we count sequences and the consecutive boxes of a sequence that neither overlap nor
stay within one face size of each other (a box that jumps to another person).

Usage: python -m benchmarks.bench_track [--run RUN] [--media DIR] [--write-doc]
Without --run, ingest runs first (default ingest config) into a temporary folder.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import re
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import pyarrow as pa

from seqbuild.dataset import export_stage, faces_for_shard
from seqbuild.layout import RunDir
from seqbuild.schema import DETECTIONS, VIDEOS
from seqbuild.storage import read_table, write_table
from seqbuild.track.assign import iou_matrix
from seqbuild.track.config import TrackConfig
from seqbuild.track.stage import run_track

REPO = Path(__file__).resolve().parents[1]
DOC = REPO / "docs" / "benchmarks.md"
TRACKERS = ("kalman", "greedy_iou")


def media_dir(arg: str | None) -> Path:
    """The shared media folder (argument, SEQBUILD_MEDIA, or ../shared/media)."""
    path = Path(arg or os.environ.get("SEQBUILD_MEDIA") or REPO.parent / "shared" / "media")
    if not path.is_dir():
        sys.exit(f"error: media folder {path} not found (pass --media or set SEQBUILD_MEDIA)")
    return path


def ingest(run: Path, inputs: list[Path]) -> float:
    """Run ingest with its defaults; return the wall time."""
    from seqbuild.ingest.config import IngestConfig
    from seqbuild.ingest.stage import run_ingest

    start = time.perf_counter()
    summary = run_ingest(run, IngestConfig(inputs=[str(p) for p in inputs]), progress=True)
    print("ingest:", summary, file=sys.stderr)
    return time.perf_counter() - start


def video_ids(run: RunDir) -> dict[str, str]:
    """video_id -> source file name, from ingest's videos table."""
    out = {}
    for shard in run.ingest.done_shards():
        path = run.ingest.table_path("videos", shard)
        if path.exists():
            for row in read_table(path, VIDEOS).to_pylist():
                out[row["video_id"]] = Path(row["source"]).name
    return out


def box_jumps(faces: pa.Table) -> tuple[int, int]:
    """Consecutive box pairs of a sequence that neither overlap nor stay within one face size; all pairs."""
    df = faces.select(["seq_id", "frame_idx", "x1", "y1", "x2", "y2"]).to_pandas()
    jumps = pairs = 0
    for _, seq in df.sort_values(["seq_id", "frame_idx"]).groupby("seq_id"):
        boxes = seq[["x1", "y1", "x2", "y2"]].to_numpy(np.float64)
        for a, b in zip(boxes[:-1], boxes[1:], strict=True):
            pairs += 1
            size = np.sqrt((a[2] - a[0]) * (a[3] - a[1]))
            move = np.hypot((a[0] + a[2] - b[0] - b[2]) / 2, (a[1] + a[3] - b[1] - b[3]) / 2)
            if iou_matrix(a[None], b[None])[0, 0] == 0 and move > size:
                jumps += 1
    return jumps, pairs


def score(media: Path, out: Path) -> dict:
    """The shared scorer's figures for dev_broadcast."""
    tool = media.parent / "tools" / "score_sequences.py"
    gt = media / "dev_broadcast.gt.json"
    res = subprocess.run(
        [sys.executable, str(tool), str(gt), str(out)], check=True, capture_output=True, text=True
    )
    return json.loads(res.stdout.strip().splitlines()[-1])


def gt_shot_run(src: RunDir, media: Path, dst: Path) -> Path | None:
    """A run whose dev_broadcast detections carry the ground-truth shot of their frame (a diagnostic).

    It separates the tracker from the cut detector: any impurity left is the tracker's own.
    """
    gt = json.loads((media / "dev_broadcast.gt.json").read_text())
    names = video_ids(src)
    out = RunDir(dst)
    for shard, name in names.items():
        if name != gt["video"]:
            continue
        det = read_table(src.ingest.table_path("detections", shard), DETECTIONS)
        frames = det.column("frame_idx").to_numpy()
        shots = [next(s["index"] for s in gt["shots"] if s["start"] <= f < s["end"]) for f in frames]
        det = det.set_column(det.schema.get_field_index("shot_id"), "shot_id", pa.array(shots, pa.int32()))
        write_table(out.ingest.table_path("detections", shard), det, DETECTIONS, "detections", "gt-shots")
        out.ingest.mark_done(shard, "gt-shots")
        return dst
    return None


def impure_sequences(media: Path, out: Path) -> list[str]:
    """Each exported dev_broadcast sequence holding more than one ground-truth label, with its frames."""
    gt = json.loads((media / "dev_broadcast.gt.json").read_text())
    faces = pa.concat_tables([read_table(p) for p in sorted((out / "faces").glob("*.parquet"))])
    df = faces.select(["seq_id", "source", "frame_idx", "x1", "y1", "x2", "y2"]).to_pandas()
    df = df[df["source"].map(lambda s: Path(s).name == gt["video"])]
    lines = []
    for seq_id, seq in df.sort_values("frame_idx").groupby("seq_id"):
        labels = []
        for f, x1, y1, x2, y2 in seq[["frame_idx", "x1", "y1", "x2", "y2"]].itertuples(index=False):
            cx, cy = (x1 + x2) / 2, (y1 + y2) / 2
            shot = next((s for s in gt["shots"] if s["start"] <= f < s["end"]), None)
            ident = "none"
            for pane in shot["panes"] if shot else []:
                x, y, w, h = pane["rect"]
                if x <= cx < x + w and y <= cy < y + h:
                    ident = pane["identity"]
            labels.append((int(f), shot["index"] if shot else None, ident))
        if len({(s, i) for _, s, i in labels}) > 1:
            parts = []
            for f, shot, ident in labels:
                if not parts or parts[-1][1:3] != [shot, ident]:
                    parts.append([f, shot, ident, f])
                parts[-1][3] = f
            lines.append(
                f"{seq_id}: "
                + ", ".join(f"frames {a}-{b} ground-truth shot {sh} ({i})" for a, sh, i, b in parts)
            )
    return lines


def bench(run: Path, media: Path, work: Path) -> dict:
    """Track ``run``'s ingest output with each tracker and measure it."""
    src = RunDir(run)
    names = video_ids(src)
    results = {}
    for name in TRACKERS:
        tr_run = work / name
        tr_run.mkdir(parents=True, exist_ok=True)
        link = tr_run / "ingest"
        if not link.exists():
            link.symlink_to(src.root.resolve() / "ingest", target_is_directory=True)
        rd = RunDir(tr_run)
        gt_run = gt_shot_run(src, media, work / f"{name}-gt-shots")
        for shard in rd.track.done_shards():
            rd.track.clear(shard)
        start = time.perf_counter()
        summary = run_track(tr_run, TrackConfig(tracker=name), progress=False).to_dict()
        seconds = time.perf_counter() - start
        out = work / f"{name}-export"
        export_stage(rd, "track", out)
        row = {"seconds": seconds, "summary": summary, "dev_broadcast": score(media, out)}
        row["impure"] = impure_sequences(media, out)
        row["frame_step"] = sorted(
            {rd.track.marker(s).get("frame_step") for s in rd.track.done_shards()} - {None}
        )
        if gt_run is not None:
            run_track(gt_run, TrackConfig(tracker=name), progress=False)
            export_stage(RunDir(gt_run), "track", work / f"{name}-gt-export")
            row["dev_broadcast_gt_shots"] = score(media, work / f"{name}-gt-export")
        for shard in rd.track.done_shards():
            if names.get(shard, "").startswith("crowd_walk"):
                faces = faces_for_shard(rd, "track", shard)
                jumps, pairs = box_jumps(faces)
                seqs = len(set(faces.column("seq_id").to_pylist()))
                row["crowd_walk"] = {
                    "sequences": seqs,
                    "faces": faces.num_rows,
                    "jumps": jumps,
                    "pairs": pairs,
                }
        results[name] = row
    return results


SENSITIVITY = [
    {},
    {"min_iou": 0.2},
    {"min_iou": 0.4},
    {"ambiguity_margin": 0.05},
    {"ambiguity_margin": 0.3},
    {"max_mahalanobis": 3.5},
    {"max_mahalanobis": 6.0},
    {"max_landmark_shift": 0.2},
    {"max_scale_jump": 0.25},
    {"max_age": 1},
    {"max_age": 5},
]
"""One-at-a-time changes of the kalman defaults, to show the figures do not hang on one setting."""


def sensitivity(run: Path, media: Path, work: Path) -> str:
    """dev_broadcast (ground-truth shots) and crowd_walk figures of the kalman tracker under SENSITIVITY."""
    src = RunDir(run)
    names = video_ids(src)
    gt_run = gt_shot_run(src, media, work / "sens-gt-shots")
    lines = [
        "| kalman setting | dev seq_purity | dev cut_crossing | dev recall | dev fragmentation "
        "| crowd sequences | crowd jumps / pairs |",
        "| --- | --- | --- | --- | --- | --- | --- |",
    ]
    for i, change in enumerate(SENSITIVITY):
        cfg = TrackConfig(**change)
        label = ", ".join(f"{k}={v}" for k, v in change.items()) or "defaults"
        dev = {}
        if gt_run is not None:
            for shard in RunDir(gt_run).track.done_shards():
                RunDir(gt_run).track.clear(shard)
            run_track(gt_run, cfg, progress=False)
            export_stage(RunDir(gt_run), "track", work / f"sens-export-{i}")
            dev = score(media, work / f"sens-export-{i}")
        crowd = work / f"sens-crowd-{i}"
        crowd.mkdir()
        (crowd / "ingest").symlink_to(src.root.resolve() / "ingest", target_is_directory=True)
        run_track(crowd, cfg, progress=False)
        seqs = jumps = pairs = 0
        for shard in RunDir(crowd).track.done_shards():
            if names.get(shard, "").startswith("crowd_walk"):
                faces = faces_for_shard(RunDir(crowd), "track", shard)
                jumps, pairs = box_jumps(faces)
                seqs = len(set(faces.column("seq_id").to_pylist()))
        lines.append(
            f"| {label} | {dev.get('seq_purity')} | {dev.get('cut_crossing')} | {dev.get('recall')} "
            f"| {dev.get('fragmentation')} | {seqs} | {jumps} / {pairs} |"
        )
    return "\n".join(lines)


SCORE_HEADER = (
    "| tracker | sequences | seq_purity | face_purity | cut_crossing | recall | fragmentation | faces |",
    "| --- | --- | --- | --- | --- | --- | --- | --- |",
)


def score_row(name: str, d: dict) -> str:
    """One Markdown table row of the scorer's figures for a tracker."""
    return (
        f"| {name} | {d['sequences']} | {d['seq_purity']} | {d['face_purity']} | {d['cut_crossing']} "
        f"| {d['recall']} | {d['fragmentation']} | {d['faces']} |"
    )


def markdown(results: dict, command: str, ingest_seconds: float | None) -> str:
    """The docs/benchmarks.md block."""
    load = " ".join(f"{x:.2f}" for x in os.getloadavg())
    lines = [
        "## Track",
        "",
        f"Command: `{command}`; detector passes every {'/'.join(map(str, results['kalman']['frame_step']))} frames "
        "(as read by the tracker from the detections' frame numbers).",
        f"Machine: {platform.machine()} CPU, {os.cpu_count()} cores, no GPU; load average at the end: {load} "
        "(the machine is shared, so times are noisy; quality figures are not).",
        "",
        "dev_broadcast.mp4 (45 s, 1280x720), scored by `score_sequences.py`:",
        "",
        *SCORE_HEADER,
    ]
    lines += [score_row(name, row["dev_broadcast"]) for name, row in results.items()]
    for name, row in results.items():
        if row.get("impure"):
            lines += ["", f"Sequences of {name} that hold more than one ground-truth (shot, identity):", ""]
            lines += [f"- {line}" for line in row["impure"]]
    if any("dev_broadcast_gt_shots" in r for r in results.values()):
        lines += [
            "",
            "Diagnostic, same detections with `shot_id` replaced by the ground-truth shot of each frame "
            "(separates the tracker from where the cut detector places cuts):",
            "",
            *SCORE_HEADER,
        ]
        lines += [
            score_row(name, row["dev_broadcast_gt_shots"])
            for name, row in results.items()
            if row.get("dev_broadcast_gt_shots")
        ]
    if any("crowd_walk" in r for r in results.values()):
        lines += [
            "",
            "crowd_walk.mp4 (4 s, 1920x1080, a crowd walking towards the camera): sequences kept, and consecutive "
            "boxes of a sequence that neither overlap nor stay within one face size (a jump to another person):",
            "",
            "| tracker | sequences | faces | jumps / consecutive pairs |",
            "| --- | --- | --- | --- |",
        ]
        for name, row in results.items():
            c = row.get("crowd_walk")
            if c:
                lines.append(f"| {name} | {c['sequences']} | {c['faces']} | {c['jumps']} / {c['pairs']} |")
    base = results["greedy_iou"]
    kal = results["kalman"]
    faces_in = kal["summary"]["faces"] + kal["summary"]["removed_faces"]
    lines += [
        "",
        f"Speed (track stage only, both videos, {faces_in} detections, same process): kalman "
        f"{kal['seconds']:.2f} s, greedy_iou {base['seconds']:.2f} s "
        f"(kalman/greedy time ratio {kal['seconds'] / max(base['seconds'], 1e-9):.1f}x).",
    ]
    if ingest_seconds is not None:
        lines.append(
            f"Ingest of both videos beforehand took {ingest_seconds:.0f} s (not part of the track figures)."
        )
    return "\n".join(lines)


def write_doc(block: str) -> None:
    """Replace the track block of docs/benchmarks.md."""
    text = DOC.read_text()
    new = re.sub(
        r"<!-- track:start -->.*?<!-- track:end -->",
        lambda _: f"<!-- track:start -->\n{block}\n<!-- track:end -->",
        text,
        flags=re.S,
    )
    DOC.write_text(new)


def main() -> None:
    """Parse arguments, ingest if needed, benchmark, print (and optionally write) the figures."""
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--run", help="run directory with ingest output of dev_broadcast (and crowd_walk)")
    ap.add_argument("--media", help="shared media folder")
    ap.add_argument("--write-doc", action="store_true", help="replace the track block of docs/benchmarks.md")
    ap.add_argument("--sensitivity", action="store_true", help="also vary each kalman setting one at a time")
    args = ap.parse_args()
    media = media_dir(args.media)
    with tempfile.TemporaryDirectory(prefix="bench-track-") as tmp:
        work = Path(tmp)
        ingest_seconds = None
        run = Path(args.run) if args.run else work / "run"
        if not args.run:
            ingest_seconds = ingest(run, [media / "dev_broadcast.mp4", media / "clips" / "crowd_walk.mp4"])
        results = bench(run, media, work)
        sens = sensitivity(run, media, work) if args.sensitivity else ""
    print(
        json.dumps(
            {
                k: {**v, "summary": {**v["summary"], "failures": len(v["summary"]["failures"])}}
                for k, v in results.items()
            },
            indent=1,
        )
    )
    command = "make bench-track" if not args.sensitivity else "python -m benchmarks.bench_track --sensitivity"
    block = markdown(results, command, ingest_seconds)
    if sens:
        block += (
            "\n\nSensitivity (one kalman setting changed at a time; dev_broadcast with ground-truth shots, "
            "crowd_walk as above):\n\n" + sens
        )
    print(block)
    if args.write_doc:
        write_doc(block)


if __name__ == "__main__":
    main()
