"""Dedup-overlap benchmark: FAISS search at gallery scale, and the real check on hamilton_stage.mp4.

``scale``: a gallery index of N (default 1,000,000) random 512-d unit vectors, built as IndexFlatIP
(exact) and as the IVF option; Q (default 100,000) query centres searched against both. Queries are half
"genuine" (a gallery vector plus noise, cosine ~0.7 to it, like a sequence centre of a gallery person)
and half random (no match). The exact search of all Q queries would take many minutes on a 2-core
machine, so exact search runs on a subset (--exact-queries) and the full time is extrapolated
linearly (exact search cost is linear in the number of queries; this is said in the output). IVF runs
on all Q queries; its recall@1 against exact is measured on the subset. Baseline in the same process:
numpy's matrix product + argmax over the same subset (what the search would cost without FAISS).

``real``: hamilton_stage.mp4 through ingest, track, embed, clean and dedup-overlap against the shared
gallery, into a temporary run; prints what was removed and kept, and writes a contact sheet PNG.

``threshold``: genuine/impostor cosines between sequence centres and gallery identity centres on the
real clips (see :func:`threshold_study`), used to choose the default centre threshold.

``decisions``: the identity scores (cosine, vote, csls, snorm) on every real face there is: runs of
dev_broadcast, dev_broadcast_2 and two more broadcasts composed from the talk clips
(``benchmarks/media/identity/``), the six talk clips, hamilton_stage and crowd_walk; galleries of the
shared photos, of talk-clip frames (people of the broadcasts, and strangers to the broadcasts that do
not show them) and of faces of crowd_walk and hamilton_stage's audience (strangers). Per option: genuine
and impostor distributions, each scenario decided with the library's calibration, the implied FPIR at
6, 100, 5,749 and 85,742 identities, and ``seqbuild dedup-overlap`` end to end with the defaults.

``align``: insightface's 112 ArcFace crop derived from the stored 144 crop against the same crop aligned
from the frame, on real faces: pixel difference and FaceNet embedding agreement.

Run: ``make bench-overlap`` (= ``python -m benchmarks.bench_overlap``, parts scale and real); ``--part
scale|real|threshold|decisions|align`` (comma-separated); ``make bench-decisions`` runs decisions and align.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import time
from pathlib import Path

import numpy as np

REPO = Path(__file__).resolve().parents[1]


def media_dir() -> Path | None:
    """SEQBUILD_MEDIA or ../shared/media."""
    env = os.environ.get("SEQBUILD_MEDIA")
    path = Path(env) if env else REPO.parent / "shared" / "media"
    return path if path.is_dir() else None


def machine() -> dict:
    """The machine and its load, recorded with every figure."""
    import faiss

    return {
        "cpu": platform.processor() or platform.machine(),
        "cores": os.cpu_count(),
        "faiss": faiss.__version__,
        "faiss_gpus": faiss.get_num_gpus(),
        "faiss_threads": faiss.omp_get_max_threads(),
        "loadavg": os.getloadavg(),
    }


def unit_rows(rng: np.random.Generator, n: int, dim: int) -> np.ndarray:
    """``n`` random unit vectors (uniform on the sphere)."""
    x = rng.standard_normal((n, dim), dtype=np.float32)
    x /= np.linalg.norm(x, axis=1, keepdims=True)
    return x


def _note(out: dict, key: str) -> None:
    """Print one finished figure to stderr at once (a long run on a busy machine shows where it is)."""
    import sys

    print(f"[scale] {key} = {out[key]}", file=sys.stderr, flush=True)


def scale_bench(
    n: int, n_queries: int, exact_queries: int, dim: int = 512, nprobe: int = 32, seed: int = 0
) -> dict:
    """Build and search times of IndexFlatIP and IVF at gallery scale; IVF recall@1 against exact."""
    import faiss

    from seqbuild.overlap.search import ivf_nlist

    rng = np.random.default_rng(seed)
    out: dict = {"n_gallery": n, "n_queries": n_queries, "dim": dim, "machine_before": machine()}
    t0 = time.perf_counter()
    gallery = unit_rows(rng, n, dim)
    out["generate_s"] = time.perf_counter() - t0
    _note(out, "generate_s")

    # queries: half genuine (gallery row + noise at cosine ~0.7), half random
    n_gen = n_queries // 2
    src_rows = rng.choice(n, n_gen, replace=False)
    noise = unit_rows(rng, n_gen, dim)
    genuine = 0.7 * gallery[src_rows] + np.sqrt(1 - 0.7**2) * noise
    genuine /= np.linalg.norm(genuine, axis=1, keepdims=True)
    queries = np.concatenate([genuine, unit_rows(rng, n_queries - n_gen, dim)]).astype(np.float32)
    truth_rows = np.concatenate([src_rows, np.full(n_queries - n_gen, -1)])
    # the exact subset: the first half of it genuine, the second half random
    half = exact_queries // 2
    sub = np.concatenate([np.arange(half), n_gen + np.arange(exact_queries - half)])

    t0 = time.perf_counter()
    flat = faiss.IndexFlatIP(dim)
    flat.add(gallery)
    out["flat_build_s"] = time.perf_counter() - t0
    _note(out, "flat_build_s")

    t0 = time.perf_counter()
    ex_scores, ex_ids = flat.search(queries[sub], 1)
    t_exact = time.perf_counter() - t0
    out["flat_search_subset_s"] = t_exact
    _note(out, "flat_search_subset_s")
    out["flat_search_subset_queries"] = len(sub)
    out["flat_search_full_s_extrapolated"] = t_exact * n_queries / len(sub)
    out["flat_queries_per_s"] = len(sub) / t_exact
    out["flat_genuine_top1_is_source"] = float(np.mean(ex_ids[:half, 0] == truth_rows[sub[:half]]))

    # baseline: numpy matrix product + argmax on part of the subset, in gallery blocks
    nb = min(len(sub), 500)
    t0 = time.perf_counter()
    best = np.full(nb, -np.inf, np.float32)
    best_id = np.zeros(nb, np.int64)
    q = queries[sub[:nb]]
    for start in range(0, n, 100_000):
        s = q @ gallery[start : start + 100_000].T
        j = s.argmax(axis=1)
        v = s[np.arange(nb), j]
        better = v > best
        best[better], best_id[better] = v[better], j[better] + start
    t_np = time.perf_counter() - t0
    out["numpy_queries_per_s"] = nb / t_np
    _note(out, "numpy_queries_per_s")
    out["numpy_agrees_with_flat"] = float(np.mean(best_id == ex_ids[:nb, 0]))
    out["flat_vs_numpy_speedup"] = out["flat_queries_per_s"] / out["numpy_queries_per_s"]

    nlist = ivf_nlist(n)
    t0 = time.perf_counter()
    quantizer = faiss.IndexFlatIP(dim)
    ivf = faiss.IndexIVFFlat(quantizer, dim, nlist, faiss.METRIC_INNER_PRODUCT)
    train = gallery[rng.choice(n, min(n, 64 * nlist), replace=False)]
    ivf.train(train)
    t_train = time.perf_counter() - t0
    ivf.add(gallery)
    out["ivf_nlist"] = nlist
    out["ivf_train_s"] = t_train
    out["ivf_build_s"] = time.perf_counter() - t0
    _note(out, "ivf_build_s")
    del gallery, train
    results = {}
    for probe in sorted({8, nprobe, 4 * nprobe}):
        # recall on the exact subset for each nprobe; the full query set timed for the default only
        ivf.nprobe = probe
        t0 = time.perf_counter()
        _, iv_ids = ivf.search(queries[sub], 1)
        t_sub = time.perf_counter() - t0
        same = iv_ids[:, 0] == ex_ids[:, 0]
        results[probe] = {
            "search_subset_s": t_sub,
            "queries_per_s": len(sub) / t_sub,
            "speedup_vs_flat": (len(sub) / t_sub) / out["flat_queries_per_s"],
            "recall_at_1_genuine": float(np.mean(same[:half])),
            "recall_at_1_random": float(np.mean(same[half:])),
        }
    ivf.nprobe = nprobe
    t0 = time.perf_counter()
    ivf.search(queries, 1)
    out["ivf_search_all_s"] = time.perf_counter() - t0
    _note(out, "ivf_search_all_s")
    out["ivf_search_all_nprobe"] = nprobe
    out["ivf"] = results
    _note(out, "ivf")
    out["machine_after"] = machine()
    return out


# --------------------------------------------------------------------------- real clips


def run_chain(videos: list[Path], run: Path, galleries: list[str], sets: list[str] = ()) -> list:
    """ingest -> track -> embed -> clean -> dedup-overlap with the default pipeline config (plus ``sets``)."""
    from seqbuild.pipeline.loading import load_pipeline
    from seqbuild.pipeline.run import run_pipeline

    flags = {"ingest": {"inputs": [str(v) for v in videos]}, "dedup_overlap": {"galleries": galleries}}
    pipeline = load_pipeline(None, list(sets), flags)
    return run_pipeline(run, pipeline, progress=False)


def sequence_table(run: Path, stage: str = "clean") -> list[dict]:
    """Per sequence of ``stage``: video, frames, faces, centre and a few crops (for scores and sheets)."""
    from seqbuild.layout import RunDir
    from seqbuild.overlap.stage import sequence_centres
    from seqbuild.schema import ASSIGNMENTS, DETECTIONS, SEQUENCES
    from seqbuild.storage import read_table

    rd = RunDir(run)
    store = rd.stage(stage)
    out = []
    for shard in store.done_shards():
        assign = read_table(store.table_path("assignments", shard), ASSIGNMENTS).to_pydict()
        seqs = read_table(store.table_path("sequences", shard), SEQUENCES).to_pylist()
        emb = read_table(rd.embed.table_path("embeddings", shard), columns=["face_id", "embedding"])
        row_of = {f: i for i, f in enumerate(emb.column("face_id").to_pylist())}
        flat = emb.column("embedding").combine_chunks()
        vecs = flat.flatten().to_numpy(zero_copy_only=False).reshape(len(row_of), -1)
        det = read_table(
            rd.ingest.table_path("detections", shard),
            DETECTIONS,
            columns=["face_id", "frame_idx", "image", "source"],
        )
        det_rows = {
            f: (fr, im, src)
            for f, fr, im, src in zip(*(det.column(c).to_pylist() for c in det.column_names), strict=True)
        }
        faces = [f for f in assign["face_id"] if f in row_of]
        seq_of = dict(zip(assign["face_id"], assign["seq_id"], strict=True))
        keys, centres = sequence_centres([seq_of[f] for f in faces], vecs[[row_of[f] for f in faces]])
        centre = dict(zip(keys, centres, strict=True))
        for seq in seqs:
            members = sorted((det_rows[f][0], f) for f in assign["face_id"] if seq_of[f] == seq["seq_id"])
            pick = (
                [members[int(i)] for i in np.linspace(0, len(members) - 1, min(6, len(members)))]
                if members
                else []
            )
            out.append(
                {
                    "video": Path(det_rows[members[0][1]][2]).name if members else shard,
                    "seq_id": seq["seq_id"],
                    "first_frame": seq["first_frame"],
                    "last_frame": seq["last_frame"],
                    "n_faces": len(members),
                    "face_vectors": vecs[[row_of[f] for _, f in members if f in row_of]],
                    "centre": centre.get(seq["seq_id"]),
                    "crops": [det_rows[f][1] for _, f in pick],
                }
            )
    return out


def contact_sheet(rows: list[dict], path: Path, title: str) -> None:
    """A PNG: one row per sequence, a label (removed/kept, identity, score) then up to six crops."""
    import cv2

    from seqbuild.imaging import decode_jpeg

    tile, label_w, pad = 96, 380, 4
    height = 40 + len(rows) * (tile + pad)
    sheet = np.full((height, label_w + 6 * (tile + pad), 3), 255, np.uint8)
    cv2.putText(sheet, title, (8, 26), cv2.FONT_HERSHEY_SIMPLEX, 0.6, (0, 0, 0), 1, cv2.LINE_AA)
    for r, row in enumerate(rows):
        y = 40 + r * (tile + pad)
        colour = (200, 0, 0) if row["removed"] else (0, 130, 0)
        for k, text in enumerate(row["lines"]):
            cv2.putText(
                sheet, text, (8, y + 22 + 22 * k), cv2.FONT_HERSHEY_SIMPLEX, 0.5, colour, 1, cv2.LINE_AA
            )
        for j, crop in enumerate(row["crops"]):
            img = cv2.resize(decode_jpeg(crop), (tile, tile), interpolation=cv2.INTER_AREA)
            x = label_w + j * (tile + pad)
            sheet[y : y + tile, x : x + tile] = img
    path.parent.mkdir(parents=True, exist_ok=True)
    cv2.imwrite(str(path), cv2.cvtColor(sheet, cv2.COLOR_RGB2BGR))


RELAXED_CLEAN = ["clean.max_yaw=1.0", "clean.min_blur=0.0"]
"""Clean's pose and sharpness filters off, so that the small, blurred, turned audience faces of
hamilton_stage.mp4 reach dedup-overlap (with the defaults clean removes every audience sequence)."""


def real_check(media: Path, out: Path, sets: list[str] = (), variant: str = "default") -> dict:
    """hamilton_stage.mp4 through the whole chain against the shared gallery; a contact sheet of the result."""
    import shutil

    from seqbuild.layout import RunDir
    from seqbuild.schema import FACES, REMOVALS
    from seqbuild.storage import read_tables

    run = out / f"hamilton-{variant}"
    base = out / "hamilton-default"
    if variant != "default" and base.exists() and not run.exists():
        # ingest, track and embed do not depend on clean's settings: start from the default run's output
        for stage in ("ingest", "track", "embed"):
            shutil.copytree(base / stage, run / stage)
    t0 = time.perf_counter()
    results = run_chain([media / "clips" / "hamilton_stage.mp4"], run, [str(media / "gallery")], sets)
    wall = time.perf_counter() - t0
    stages = {
        r.stage: {"status": r.status, "seconds": round(r.seconds, 1), "reason": r.reason} for r in results
    }
    rd = RunDir(run)
    removals = read_tables(rd.dedup_overlap.paths("removals"), REMOVALS).to_pylist()
    removed = {r["seq_id"]: r for r in removals if r["scope"] == "sequence"}
    seqs = sequence_table(run, "clean")
    from seqbuild.overlap.gallery import load_gallery

    (gallery_dir,) = (run / "dedup_overlap" / "_galleries").iterdir()
    gallery = load_gallery(gallery_dir)
    rows = []
    for s in seqs:
        rem = removed.get(s["seq_id"])
        frames = f"frames {s['first_frame']}-{s['last_frame']}, {s['n_faces']} faces"
        if rem:
            lines = [
                f"REMOVED {s['seq_id'][-6:]}",
                f"{rem['gallery']}: {rem['identity']}",
                f"score {rem['value']:.3f} >= {rem['threshold']:.3f}",
                frames,
            ]
        else:
            scores = gallery.centres @ s["centre"] if s["centre"] is not None else np.zeros(1)
            best = int(np.argmax(scores))
            s["best"] = (gallery.identities[best], round(float(scores[best]), 3))
            lines = [f"kept {s['seq_id'][-6:]}", f"best: {s['best'][0]} {s['best'][1]:.3f}", frames]
        rows.append({"removed": bool(rem), "lines": lines, "crops": s["crops"], "first": s["first_frame"]})
    rows.sort(key=lambda r: r["first"])
    sheet = out / f"hamilton_contact_sheet_{variant}.png"
    contact_sheet(
        rows, sheet, f"hamilton_stage.mp4 ({variant}): red = removed by dedup-overlap, green = kept"
    )
    faces = read_tables(sorted((rd.dataset / "faces").glob("*.parquet")), FACES)
    return {
        "variant": variant,
        "sets": list(sets),
        "wall_s": wall,
        "stages": stages,
        "sequences_after_clean": len(seqs),
        "removed": [
            {
                "seq_id": k,
                "gallery": v["gallery"],
                "identity": v["identity"],
                "score": round(v["value"], 3),
                "threshold": v["threshold"],
            }
            for k, v in sorted(removed.items())
        ],
        "kept": [
            {
                "seq_id": s["seq_id"],
                "frames": [s["first_frame"], s["last_frame"]],
                "n_faces": s["n_faces"],
                "best_gallery_match": s.get("best"),
            }
            for s in seqs
            if s["seq_id"] not in removed
        ],
        "dataset_faces": faces.num_rows,
        # Miranda (frames ~0-12, ~84-210) and Lacamoire (~24-72) are the only people before frame 211
        "dataset_faces_before_frame_211": int(sum(f < 211 for f in faces.column("frame_idx").to_pylist())),
        "track_removed_too_short": sorted(
            {
                r["seq_id"]
                for r in read_tables(rd.track.paths("removals"), REMOVALS).to_pylist()
                if r["reason"] == "too_short"
            }
        ),
        "contact_sheet": str(sheet),
    }


def threshold_study(run: Path, gallery_dir: Path) -> dict:
    """Cosines of sequence centres (talk clips: one known person each, none in the gallery) to gallery centres.

    Impostor scores: every sequence centre of the talk clips and crowd_walk (people not in the gallery)
    against every gallery identity centre, and gallery centres against each other. Genuine scores: per
    talk clip, the centre of the first half of its faces against that of the second half (same person,
    other moments), and each gallery photo against the centre of its identity's other photos.
    """
    from seqbuild.overlap.gallery import load_gallery, read_gallery_images
    from seqbuild.overlap.search import normalise

    g = load_gallery(gallery_dir)
    seqs = [
        s
        for s in sequence_table(run, "clean" if (run / "clean" / "_done").exists() else "track")
        if s["centre"] is not None
    ]
    talk = [s for s in seqs if s["video"].startswith("talk_")]
    gal_pairs = g.centres @ g.centres.T
    impostor_gal = gal_pairs[np.triu_indices(len(g.centres), 1)]
    genuine_seq = []
    by_video: dict[str, list] = {}
    for s in talk:
        by_video.setdefault(s["video"], []).append(s)
    for items in by_video.values():
        # one person per clip: the centre of the first half of its faces against that of the second half
        vecs = np.concatenate([t["face_vectors"] for t in items])
        half = len(vecs) // 2
        if half >= 3:
            a = normalise(normalise(vecs[:half]).sum(0, keepdims=True))[0]
            b = normalise(normalise(vecs[half:]).sum(0, keepdims=True))[0]
            genuine_seq.append(float(a @ b))
    strangers = [s for s in seqs if s["video"].startswith(("talk_", "crowd_"))]
    impostor_seq = np.array([float(c) for s in strangers for c in g.centres @ s["centre"]])
    impostor_face_max = np.array([float((s["face_vectors"] @ g.centres.T).max()) for s in strangers])
    imgs = read_gallery_images(gallery_dir).to_pydict()
    ok = [
        (i, e)
        for i, s, e in zip(imgs["identity"], imgs["status"], imgs["embedding"], strict=True)
        if s == "ok"
    ]
    genuine_gal = []
    for k, (ident, e) in enumerate(ok):
        rest = [np.asarray(f) for j, (other, f) in enumerate(ok) if other == ident and j != k]
        if rest:
            genuine_gal.append(
                float(normalise(np.sum(normalise(np.stack(rest)), 0, keepdims=True))[0] @ np.asarray(e))
            )
    ham = [s for s in seqs if s["video"].startswith("hamilton")]
    ham_scores = [
        {
            "seq_id": s["seq_id"],
            "frames": [s["first_frame"], s["last_frame"]],
            "best": g.identities[int(np.argmax(g.centres @ s["centre"]))],
            "score": round(float(np.max(g.centres @ s["centre"])), 3),
        }
        for s in ham
    ]

    def stats(x):
        x = np.asarray(x, float)
        return (
            {
                "n": len(x),
                "min": round(float(x.min()), 3),
                "p50": round(float(np.median(x)), 3),
                "max": round(float(x.max()), 3),
            }
            if len(x)
            else {"n": 0}
        )

    return {
        "talk_videos": sorted(by_video),
        "stranger_sequences": len(strangers),
        "impostor_seq_vs_gallery": stats(impostor_seq),
        "impostor_best_single_face_per_seq": stats(impostor_face_max),
        "impostor_gallery_vs_gallery": stats(impostor_gal),
        "genuine_seq_vs_same_clip": stats(genuine_seq),
        "genuine_gallery_leave_one_out": stats(genuine_gal),
        "hamilton_best_gallery_match": ham_scores,
    }


# --------------------------------------------------------------------------- identity decisions

IDENTITY_SPECS = REPO / "benchmarks" / "media" / "identity"
TALK = ("talk_d0", "talk_d3", "talk_d6", "talk_d9", "talk_d12", "talk_d18")
SHARED = ("alex_lacamoire", "barack_obama", "joe_biden", "kit_harington", "lin_manuel_miranda", "rose_leslie")
STRANGERS4 = ("alex_lacamoire", "joe_biden", "kit_harington", "rose_leslie")
HAMILTON_LABELS = {  # frames of hamilton_stage: Miranda on stage, the Obamas and a guest in the audience
    "lin_manuel_miranda": (84, 210),
}
SIZES = (6, 100, 5749, 85742)


def compose_identity_media(media: Path, out: Path) -> dict[str, tuple[Path, Path | None]]:
    """name -> (video, ground truth) of every video the decisions study runs on (composing what is missing)."""
    from benchmarks.bench_transitions import compose_spec

    out.mkdir(parents=True, exist_ok=True)
    found: dict[str, tuple[Path, Path | None]] = {
        "dev_broadcast": (media / "dev_broadcast.mp4", media / "dev_broadcast.gt.json")
    }
    specs = [REPO / "benchmarks" / "media" / "dev_broadcast_2.json", *sorted(IDENTITY_SPECS.glob("*.json"))]
    for spec_path in specs:
        if not spec_path.exists():
            continue
        name = f"identity_{spec_path.stem}" if spec_path.parent == IDENTITY_SPECS else spec_path.stem
        found[name] = compose_spec(spec_path, media, out, name)
    for clip in (*TALK, "hamilton_stage", "crowd_walk"):
        found[clip] = (media / "clips" / f"{clip}.mp4", None)
    return found


def prepare_run(video: Path, run: Path) -> None:
    """ingest -> track -> embed -> clean with the defaults (each video in its own run: clean's rerun step
    would otherwise take a talk clip for a rerun of the broadcast made from it)."""
    from seqbuild.pipeline.loading import load_pipeline
    from seqbuild.pipeline.run import run_pipeline

    flags = {"ingest": {"inputs": [str(video)]}, "run": {"stages": ["ingest", "track", "embed", "clean"]}}
    run_pipeline(run, load_pipeline(None, [], flags), progress=False)


def _pane(gt: dict, frame: int, box: list[float]) -> str:
    from benchmarks.bench_embed import pane_at

    shot = next((s for s in gt["shots"] if s["start"] <= frame < s["end"]), None)
    return (pane_at(shot["panes"], box) if shot else None) or "none"


def sequence_faces(rd, stage: str, shard: str) -> tuple[dict, dict[str, int], dict[str, list[str]]]:
    """A shard's detections (face_id, frame and box columns), the row of each face id, and the face ids
    of each sequence of ``stage``'s assignments."""
    from seqbuild.storage import read_table

    a = read_table(rd.stage(stage).table_path("assignments", shard)).to_pydict()
    cols = ["face_id", "frame_idx", "x1", "y1", "x2", "y2"]
    det = read_table(rd.ingest.table_path("detections", shard), columns=cols).to_pydict()
    drow = {f: i for i, f in enumerate(det["face_id"])}
    seqs: dict[str, list[str]] = {}
    for f, s in zip(a["face_id"], a["seq_id"], strict=True):
        seqs.setdefault(s, []).append(f)
    return det, drow, seqs


def labelled_sequences(name: str, run: Path, gt_path: Path | None, stage: str = "clean") -> list[dict]:
    """Sequences of a run with their faces' vectors and a label: the ground-truth pane (broadcasts), the
    clip (talk clips), or by frame range and gallery look-up (hamilton_stage, crowd_walk)."""
    from seqbuild.layout import RunDir
    from seqbuild.storage import read_table

    rd = RunDir(run)
    gt = json.loads(gt_path.read_text()) if gt_path else None
    out = []
    for shard in rd.stage(stage).done_shards():
        emb = read_table(rd.embed.table_path("embeddings", shard), columns=["face_id", "embedding"])
        row = {f: i for i, f in enumerate(emb.column("face_id").to_pylist())}
        vec = np.asarray(emb.column("embedding").combine_chunks().flatten().to_numpy(zero_copy_only=False))
        vec = vec.reshape(len(row), -1).astype(np.float32)
        cols = ["face_id", "frame_idx", "x1", "y1", "x2", "y2"]
        det, drow, seqs = sequence_faces(rd, stage, shard)
        for s, faces in sorted(seqs.items()):
            frames = [det["frame_idx"][drow[f]] for f in faces]
            if gt is not None:
                labels = [
                    _pane(gt, fr, [det[c][drow[f]] for c in cols[2:]])
                    for f, fr in zip(faces, frames, strict=True)
                ]
                values, counts = np.unique(labels, return_counts=True)
                label = str(values[counts.argmax()])
            elif name.startswith("talk_"):
                label = name
            else:
                # one unknown person per sequence (hamilton_stage's are labelled below); the same name as
                # the stranger photos made from the sequence (stranger_photos)
                label = f"{name}_{s[-6:]}"
            v = vec[[row[f] for f in faces]]
            v /= np.linalg.norm(v, axis=1, keepdims=True)
            c = v.sum(0)
            out.append(
                {
                    "video": name,
                    "seq_id": s,
                    "label": label,
                    "faces": v,
                    "centre": c / np.linalg.norm(c),
                    "frames": (min(frames), max(frames)),
                }  # fmt: skip
            )
    return out


def talk_frames(media: Path, out: Path, per_clip: int = 5) -> Path:
    """OUT/<talk_dX>/NN.jpg: frames spread over each talk clip, as gallery photos of its person."""
    import cv2

    for clip in TALK:
        folder = out / clip
        if folder.is_dir() and len(list(folder.glob("*.jpg"))) >= per_clip:
            continue
        folder.mkdir(parents=True, exist_ok=True)
        cap = cv2.VideoCapture(str(media / "clips" / f"{clip}.mp4"))
        n = int(cap.get(cv2.CAP_PROP_FRAME_COUNT))
        for k, i in enumerate(np.linspace(5, n - 5, per_clip).astype(int)):
            cap.set(cv2.CAP_PROP_POS_FRAMES, int(i))
            ok, frame = cap.read()
            if ok:
                cv2.imwrite(str(folder / f"{k:02d}.jpg"), frame)
    return out


def stranger_photos(media: Path, runs: Path, out: Path) -> Path:
    """OUT/<clip_seq>/k.jpg: three frame crops of each tracked sequence of crowd_walk and of the audience
    of hamilton_stage who are not in the shared gallery (Michelle Obama, a guest): gallery strangers."""
    import cv2

    from seqbuild.layout import RunDir

    for clip in ("crowd_walk", "hamilton_stage"):
        rd = RunDir(runs / clip)
        cap = cv2.VideoCapture(str(media / "clips" / f"{clip}.mp4"))
        frames = []
        while True:
            ok, f = cap.read()
            if not ok:
                break
            frames.append(f)
        for shard in rd.track.done_shards():
            det, drow, seqs = sequence_faces(rd, "track", shard)
            for s, faces in sorted(seqs.items()):
                first = det["frame_idx"][drow[faces[0]]]
                if clip == "hamilton_stage" and first < 216:
                    continue  # the stage: gallery people (Miranda, Lacamoire)
                folder = out / f"{clip}_{s[-6:]}"
                folder.mkdir(parents=True, exist_ok=True)
                for k, f in enumerate([faces[0], faces[len(faces) // 2], faces[-1]]):
                    i = drow[f]
                    x1, y1, x2, y2 = (det[c][i] for c in ("x1", "y1", "x2", "y2"))
                    cx, cy, side = (x1 + x2) / 2, (y1 + y2) / 2, max(x2 - x1, y2 - y1) * 2.2
                    img = frames[det["frame_idx"][i]]
                    crop = img[
                        int(max(cy - side / 2, 0)) : int(cy + side / 2),
                        int(max(cx - side / 2, 0)) : int(cx + side / 2),
                    ]
                    if min(crop.shape[:2]) < 80:
                        crop = cv2.resize(crop, None, fx=2, fy=2, interpolation=cv2.INTER_CUBIC)
                    cv2.imwrite(str(folder / f"{k}.jpg"), crop)
    return out


def link_gallery(folder: Path, sources: dict[str, Path]) -> Path:
    """A gallery folder of symbolic links to identity folders."""
    folder.mkdir(parents=True, exist_ok=True)
    for name, src in sources.items():
        link = folder / name
        if not link.exists():
            link.symlink_to(src.resolve(), target_is_directory=True)
    return folder


def scenarios(media: Path, work: Path) -> dict[str, tuple[list[str], dict[str, Path]]]:
    """name -> (runs, gallery identities): a gallery of the broadcast's people plus strangers, the
    shared gallery against video it has and has not, and the shared gallery plus every stranger."""
    shared = {n: media / "gallery" / n for n in SHARED}
    talk = {n: work / "talk_frames" / n for n in TALK}
    strangers = {p.name: p for p in sorted((work / "strangers").iterdir()) if p.is_dir()}
    four = {n: shared[n] for n in STRANGERS4}
    return {
        "hamilton_stage / shared gallery": (["hamilton_stage"], shared),
        "hamilton_stage / shared + talk people": (["hamilton_stage"], {**shared, **talk}),
        "dev_broadcast / shared + strangers": (["dev_broadcast"], {**shared, **strangers}),
        "dev_broadcast_2 / shared + strangers": (["dev_broadcast_2"], {**shared, **strangers}),
        "talk clips + crowd / shared + strangers": ([*TALK, "crowd_walk"], {**shared, **strangers}),
        "dev_broadcast / 2 of its people + 4": (
            ["dev_broadcast"],
            {**{k: talk[k] for k in ("talk_d3", "talk_d12")}, **four},
        ),
        "dev_broadcast_2 / 2 of its people + 4": (
            ["dev_broadcast_2"],
            {**{k: talk[k] for k in ("talk_d6", "talk_d18")}, **four},
        ),
        "broadcast_a / 2 of its people + 6": (
            ["identity_broadcast_a"],
            {**{k: talk[k] for k in ("talk_d0", "talk_d6", "talk_d12", "talk_d18")}, **four},
        ),
        "broadcast_b / 2 of its people + 7": (
            ["identity_broadcast_b"],
            {
                **{k: talk[k] for k in ("talk_d9", "talk_d18", "talk_d0", "talk_d6")},
                **four,
                "barack_obama": shared["barack_obama"],
            },
        ),
    }


def _hamilton_labels(seqs: list[dict], gallery) -> None:
    """Label hamilton_stage's sequences: Miranda on stage; in the audience Barack Obama is the one whose
    centre is closest to his gallery photos (0.6), the others are Michelle Obama and a guest."""
    aud = [s for s in seqs if s["video"] == "hamilton_stage" and s["frames"][0] >= 211]
    obama = gallery.identities.index("barack_obama")
    best = max(aud, key=lambda s: float(gallery.centres[obama] @ s["centre"])) if aud else None
    for s in seqs:
        if s["video"] != "hamilton_stage":
            continue
        if s["frames"][0] < 211:
            s["label"] = "lin_manuel_miranda" if s["frames"][1] > 80 else "alex_lacamoire"
        elif s is best:
            s["label"] = "barack_obama"


def decisions_study(media: Path, out: Path) -> dict:
    """The identity scores against each other on the real faces, then dedup-overlap with the defaults."""
    from seqbuild import openset
    from seqbuild.overlap import decide
    from seqbuild.overlap.calibrate import gallery_images
    from seqbuild.overlap.config import OverlapConfig
    from seqbuild.overlap.gallery import build_gallery, load_gallery

    res: dict = {"machine_before": machine()}
    t0 = time.perf_counter()
    videos = compose_identity_media(media, out / "media")
    for name, (video, _) in videos.items():
        if not (out / "runs" / name / "clean" / "_done").is_dir():
            prepare_run(video, out / "runs" / name)
    talk_frames(media, out / "talk_frames")
    stranger_photos(media, out / "runs", out / "strangers")
    res["prepare_s"] = time.perf_counter() - t0
    every = {**{n: media / "gallery" / n for n in SHARED}, **{n: out / "talk_frames" / n for n in TALK}}
    every.update({p.name: p for p in sorted((out / "strangers").iterdir()) if p.is_dir()})
    all_dir = link_gallery(out / "galleries" / "all", every)
    built = out / "galleries" / "all_built"
    if not (built / "manifest.json").exists():
        build_gallery(all_dir, built, OverlapConfig(), progress=False)
    full = load_gallery(built)
    images, image_rows = gallery_images(full)
    seqs = [s for name, (_, gt) in videos.items() for s in labelled_sequences(name, out / "runs" / name, gt)]
    _hamilton_labels(seqs, full)
    res["sequences"] = len(seqs)
    res["gallery_identities_built"] = len(full.identities)
    options = ("cosine", "vote", "csls", "snorm")
    pooled = {o: {"genuine": [], "impostor": [], "genuine_names": []} for o in options}
    per_scenario = {}
    for scen, (runs, members) in scenarios(media, out).items():
        ids = [n for n in members if n in full.identities]
        rows = [full.identities.index(n) for n in ids]
        centres = full.centres[rows]
        keep = np.isin(image_rows, rows)
        remap = {r: i for i, r in enumerate(rows)}
        img = images[keep]
        img_rows = np.array([remap[r] for r in image_rows[keep]])
        qs = [s for s in seqs if s["video"] in runs]
        q = np.stack([s["centre"] for s in qs])
        faces = [s["faces"] for s in qs]
        stats = decide.identity_stats(centres, q, k=5)
        entry = {"identities": len(ids), "sequences": len(qs), "options": {}}
        for opt in options:
            scorer = decide.GalleryScorer(centres, decide.create_score(opt), stats)
            cand = scorer.candidates(q, faces)
            scores = scorer.scores(cand)
            imp = scorer.impostor_sample(q, faces, include_best=len(ids) < 2)
            typical = decide.GalleryScorer(centres, decide.create_score(opt), decide.typical_stats(stats))
            genuine, _ = typical.gallery_self_scores(img, img_rows)
            _, cohort = scorer.gallery_self_scores(img, img_rows)
            cal = decide.calibrate(scen, full.embedder, opt, len(ids), imp, genuine, 0.001, 1e-5, cohort=cohort,
                                   default_threshold=0.45, n_sequences=len(qs))  # fmt: skip
            best, brow = decide.best(scores, cand)
            wrong, removed_gallery, kept_strangers, strangers = [], 0, 0, 0
            for s, b, j in zip(qs, best, brow, strict=True):
                outcome = cal.outcome(b)
                mate = s["label"] in ids
                strangers += not mate
                kept_strangers += (not mate) and outcome == "kept"
                removed_gallery += mate and outcome != "kept"
                if (outcome != "kept") != mate:
                    wrong.append(f"{s['label']} -> {ids[j]} {b:.3f} {outcome}")
                for col, jj in enumerate(cand.ids[list(qs).index(s)]):
                    if jj < 0:
                        continue
                    v = float(scores[list(qs).index(s), col])
                    (pooled[opt]["genuine"] if ids[jj] == s["label"] else pooled[opt]["impostor"]).append(v)
                    if ids[jj] == s["label"]:
                        pooled[opt]["genuine_names"].append(f"{scen}: {s['label']}")
            at_sizes = {}
            for n in SIZES:
                c = decide.calibrate(scen, full.embedder, opt, n, imp, genuine, 0.001, 1e-5, cohort=cohort,
                                     default_threshold=0.45, n_sequences=len(qs))  # fmt: skip
                at_sizes[str(n)] = {
                    "threshold": c.threshold_for_target,
                    "genuine_kept_at_target": None
                    if not len(genuine)
                    else float(np.mean(genuine >= c.threshold_for_target)),
                    "fpir_keeping_95pct_genuine": c.fpir_for_genuine,
                    "warning": c.warning is not None,
                }
            # What the run alone would give: its own robust spread, without the gallery's.
            run_only = openset.fit_impostor(imp, "robust") if len(imp) >= 2 else None
            t_run_only = (
                float(openset.threshold_for_fpir(run_only, 0.001, len(ids))) if run_only is not None else None
            )
            entry["options"][opt] = {
                "run_only_spread": None if run_only is None else run_only.scale,
                "run_only_threshold": t_run_only,
                "run_only_strangers_kept": None
                if t_run_only is None
                else int(
                    sum((s["label"] not in ids) and b < t_run_only for s, b in zip(qs, best, strict=True))
                ),
                "at_sizes": at_sizes,
                "threshold": round(cal.threshold, 3),
                "confident": round(cal.confident_threshold, 3),
                "fit": [round(cal.fit["loc"], 3), round(cal.fit["scale"], 3)] if cal.fit else None,
                "gallery_people": sum(s["label"] in ids for s in qs),
                "gallery_people_removed": removed_gallery,
                "strangers": strangers,
                "strangers_kept": kept_strangers,
                "wrong": wrong,
                "warning": bool(cal.warning),
            }
        per_scenario[scen] = entry
    res["scenarios"] = per_scenario
    summary = {}
    for opt, d in pooled.items():
        g, i = np.asarray(d["genuine"]), np.asarray(d["impostor"])
        fit = openset.fit_impostor(i, "robust")
        t_op = float(g.min())  # the operating point: the lowest threshold that keeps every genuine match
        lowest = int(np.argmin(g))
        summary[opt] = {
            "genuine": {"n": len(g), "min": float(g.min()), "median": float(np.median(g)), "lowest": d["genuine_names"][lowest]},
            "impostor": {"n": len(i), "mean": float(i.mean()), "sd": float(i.std()), "max": float(i.max()),
                         "p99": float(np.quantile(i, 0.99))},
            "genuine_min_sd_above_impostor_mean": float((g.min() - i.mean()) / i.std()),
            "impostor_above_genuine_min": int((i >= g.min()).sum()),
            "operating_point": t_op,
            "fpir_at_operating_point": {str(n): float(openset.model_fpir(fit, t_op, n)) for n in SIZES},
            "fpir_at_operating_point_moments_fit": {
                str(n): float(openset.model_fpir(openset.fit_impostor(i, "moments"), t_op, n)) for n in SIZES
            },
            "observed_far_at_operating_point": float(np.mean(i >= t_op)),
            "tail_check": openset.tail_check(fit, i, min_count=5),
            "wrong_decisions": sum(len(e["options"][opt]["wrong"]) for e in per_scenario.values()),
        }  # fmt: skip
    res["pooled"] = summary
    res["end_to_end"] = end_to_end(media, out)
    res["machine_after"] = machine()
    res["wall_s"] = time.perf_counter() - t0
    return res


def end_to_end(media: Path, out: Path) -> list[dict]:
    """``seqbuild dedup-overlap`` with the defaults on a copy of each scenario's run(s)."""
    import shutil

    from seqbuild.layout import RunDir
    from seqbuild.overlap.config import OverlapConfig
    from seqbuild.overlap.stage import run_dedup_overlap
    from seqbuild.schema import MATCHES
    from seqbuild.storage import read_table

    results = []
    videos = compose_identity_media(media, out / "media")
    for scen, (runs, members) in scenarios(media, out).items():
        if len(runs) != 1:
            continue
        slug = scen.replace(" / ", "__").replace(" ", "_").replace("+", "plus")
        gallery = link_gallery(out / "galleries" / slug, members)
        run = out / "e2e" / slug
        if not run.exists():
            shutil.copytree(
                out / "runs" / runs[0], run, ignore=shutil.ignore_patterns("dedup_overlap", "dataset")
            )
        t0 = time.perf_counter()
        summary = run_dedup_overlap(run, OverlapConfig(galleries=[str(gallery)]), progress=False)
        labels = {s["seq_id"]: s["label"] for s in labelled_sequences(runs[0], run, videos[runs[0]][1])}
        if runs[0] == "hamilton_stage":
            from seqbuild.overlap.gallery import load_gallery

            seqs = labelled_sequences(runs[0], run, None)
            _hamilton_labels(seqs, load_gallery(out / "galleries" / "all_built"))
            labels = {s["seq_id"]: s["label"] for s in seqs}
        rows = []
        for shard in RunDir(run).dedup_overlap.done_shards():
            rows += read_table(RunDir(run).dedup_overlap.table_path("matches", shard), MATCHES).to_pylist()
        decided = [
            {"label": labels.get(r["seq_id"], "?"), "in_gallery": labels.get(r["seq_id"]) in members,
             "score": round(r["score"], 3), "identity": r["identity"], "outcome": r["outcome"], "action": r["action"]}
            for r in rows if r["face_id"] is None
        ]  # fmt: skip
        g = next(iter(summary["galleries"].values()))
        results.append(
            {
                "scenario": scen,
                "seconds": round(time.perf_counter() - t0, 1),
                "gallery": {k: g[k] for k in ("identities", "score", "threshold", "confident_threshold", "fpir", "calibration")},
                "warnings": summary.get("warnings", []),
                "gallery_people_removed": sum(d["in_gallery"] and d["action"] == "removed" for d in decided),
                "gallery_people": sum(d["in_gallery"] for d in decided),
                "strangers_kept": sum(not d["in_gallery"] and d["action"] == "kept" for d in decided),
                "strangers": sum(not d["in_gallery"] for d in decided),
                "sequences": decided,
            }
        )  # fmt: skip
    return results


def align_check(media: Path, out: Path, per_video: int = 40) -> dict:
    """The ArcFace 112 crop derived from the stored crop against the same crop aligned from the frame."""
    import cv2

    from seqbuild.embed.models import create_embedder
    from seqbuild.embed.onnx_embedder import ARCFACE_112, arcface_crops
    from seqbuild.imaging import decode_jpeg
    from seqbuild.ingest.align import umeyama_similarity
    from seqbuild.layout import RunDir
    from seqbuild.storage import read_table

    facenet = create_embedder("facenet", device="cpu")
    direct, derived, labels = [], [], []
    videos = compose_identity_media(media, out / "media")
    for name in ("dev_broadcast", *TALK, "hamilton_stage"):
        rd = RunDir(out / "runs" / name)
        # people, not sequences: a talk clip's person is also in the broadcast (its ground-truth pane)
        person = {
            s["seq_id"]: s["label"] for s in labelled_sequences(name, out / "runs" / name, videos[name][1])
        }
        for shard in rd.clean.done_shards():
            keep = read_table(rd.clean.table_path("assignments", shard)).to_pydict()
            det = read_table(
                rd.ingest.table_path("detections", shard),
                columns=["face_id", "frame_idx", "landmarks", "image", "source"],
            )
            det = det.to_pydict()
            kept = set(keep["face_id"])
            seq_of = dict(zip(keep["face_id"], keep["seq_id"], strict=True))
            idx = [i for i, f in enumerate(det["face_id"]) if f in kept]
            idx = (
                [idx[k] for k in np.linspace(0, len(idx) - 1, min(per_video, len(idx))).astype(int)]
                if idx
                else []
            )
            if not idx:
                continue
            cap = cv2.VideoCapture(det["source"][idx[0]])
            wanted = {det["frame_idx"][i] for i in idx}
            frames, n = {}, 0
            while wanted - set(frames):
                ok, f = cap.read()
                if not ok:
                    break
                if n in wanted:
                    frames[n] = cv2.cvtColor(f, cv2.COLOR_BGR2RGB)
                n += 1
            for i in idx:
                frame = frames.get(det["frame_idx"][i])
                if frame is None:
                    continue
                lm = np.asarray(det["landmarks"][i], np.float64).reshape(5, 2)
                m = umeyama_similarity(lm, ARCFACE_112)
                direct.append(
                    cv2.warpAffine(
                        frame, m, (112, 112), flags=cv2.INTER_LINEAR, borderMode=cv2.BORDER_REPLICATE
                    )
                )
                derived.append(arcface_crops(decode_jpeg(det["image"][i])[None])[0])
                labels.append(person.get(seq_of[det["face_id"][i]], "?"))
    a = np.stack(direct).astype(np.float32)
    b = np.stack(derived).astype(np.float32)
    ea, eb = facenet.embed(list(np.stack(direct))), facenet.embed(list(np.stack(derived)))
    same = np.sum(ea * eb, axis=1)
    lab = np.asarray(labels)

    def separation(e):
        from seqbuild.train.evaluate import tar_at_far

        s = e @ e.T
        iu = np.triu_indices(len(e), 1)
        same = (lab[:, None] == lab[None, :])[iu]
        scores = s[iu]
        return {
            "genuine_mean": float(scores[same].mean()),
            "impostor_mean": float(scores[~same].mean()),
            "tar_at_far_1e-3": float(tar_at_far(scores, same, 1e-3)[0]),
            "tar_at_far_1e-4": float(tar_at_far(scores, same, 1e-4)[0]),
        }

    return {
        "faces": len(a),
        "pixel_mean_abs_diff": float(np.abs(a - b).mean()),
        "pixel_mean_abs_diff_centre_96": float(np.abs(a[:, 8:104, 8:104] - b[:, 8:104, 8:104]).mean()),
        "facenet_cos_direct_vs_derived": {"min": float(same.min()), "median": float(np.median(same))},
        "pairs_aligned_from_frame": separation(ea),
        "pairs_derived_from_stored_crop": separation(eb),
    }


def main() -> None:
    """Run the chosen parts and print JSON."""
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument(
        "--part", default="all", help="scale | real | threshold | decisions | align | all (comma-separated)"
    )
    ap.add_argument("--n", type=int, default=1_000_000, help="gallery vectors")
    ap.add_argument("--queries", type=int, default=100_000, help="query centres")
    ap.add_argument(
        "--exact-queries", type=int, default=2000, help="queries searched exactly (then extrapolated)"
    )
    ap.add_argument("--nprobe", type=int, default=32)
    ap.add_argument(
        "--out", default="/tmp/seqbuild-bench-overlap", help="where runs and the contact sheet go"
    )
    ap.add_argument(
        "--set", action="append", default=[], help="SECTION.KEY=VALUE for the real check's pipeline"
    )
    ap.add_argument("--run", default="", help="threshold study: a run with track/clean + embed output")
    ap.add_argument("--gallery", default="", help="threshold study: a built gallery")
    args = ap.parse_args()
    out = Path(args.out)
    media = media_dir()
    parts = set(args.part.split(","))
    if "all" in parts:
        parts = {"scale", "real"}  # decisions and align: `make bench-decisions`
    for part in ("decisions", "align"):
        if part not in parts:
            continue
        if media is None:
            print(
                f"{part} skipped: no media (set SEQBUILD_MEDIA or place ../shared/media beside the checkout)"
            )
            continue
        res = (
            decisions_study(media, out / "identity")
            if part == "decisions"
            else align_check(media, out / "identity")
        )
        (out / f"{part}.json").write_text(json.dumps(res, indent=1, default=float))
        print(json.dumps({part: res}, indent=1, default=float))
    if parts & {"real"}:
        if media is None:
            print(
                "real check skipped: no media (set SEQBUILD_MEDIA or place ../shared/media beside the checkout)"
            )
        else:
            res = [
                real_check(media, out, args.set, "default"),
                real_check(media, out, [*args.set, *RELAXED_CLEAN], "relaxed_clean"),
            ]
            print(json.dumps({"real": res}, indent=1, default=float))
    if "threshold" in parts:
        if not args.run:
            ap.error(
                "--part threshold needs --run RUN (a run with the talk clips and hamilton_stage ingested)"
            )
        print(
            json.dumps(
                {"threshold": threshold_study(Path(args.run), Path(args.gallery))}, indent=1, default=float
            )
        )
    if "scale" in parts:
        res = scale_bench(args.n, args.queries, args.exact_queries, nprobe=args.nprobe)
        print(json.dumps({"scale": res}, indent=1, default=float))


if __name__ == "__main__":
    main()
