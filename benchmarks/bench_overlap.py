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

Run: ``make bench-overlap`` (= ``python -m benchmarks.bench_overlap``); ``--part scale|real|threshold|all``.
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


def main() -> None:
    """Run the chosen parts and print JSON."""
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--part", default="all", choices=("scale", "real", "threshold", "all"))
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
    if args.part in ("real", "all"):
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
    if args.part == "threshold":
        if not args.run:
            ap.error(
                "--part threshold needs --run RUN (a run with the talk clips and hamilton_stage ingested)"
            )
        print(
            json.dumps(
                {"threshold": threshold_study(Path(args.run), Path(args.gallery))}, indent=1, default=float
            )
        )
    if args.part in ("scale", "all"):
        res = scale_bench(args.n, args.queries, args.exact_queries, nprobe=args.nprobe)
        print(json.dumps({"scale": res}, indent=1, default=float))


if __name__ == "__main__":
    main()
