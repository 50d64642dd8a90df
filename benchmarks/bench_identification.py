"""Identification benchmark: the MegaFace protocol at 1M distractors on 2 CPU cores, and FaceNet on the
real faces of the shared media.

``scale``: 1,000,000 x 512 synthetic distractor features (uniform on the sphere, written once as
``distractors.npy`` + ``.txt``) and 3,520 probe features (80 Gaussian identities of 44 images, as many as
MegaFace's FaceScrub probe set). `seqbuild eval` runs on them in a fresh process per memory setting
(``--memory-mb``), timed, with the peak RSS of that process (``os.wait4``). Baseline in the same
benchmark run: a plain numpy pass over the same file (matrix product + top-10 per probe, batches of the
same size), i.e. what the search costs without the protocol. Check: for distractors uniform on the
sphere, a mate scoring s is first among N of them with probability F(s)^N (F the Beta CDF of the cosine
in 512 dimensions), so the measured rank-1 curve must follow the mean of F(s)^N; the FPIR at a fixed
threshold must follow 1 - (1 - FAR)^N with the exact FAR, and the normal-fit model is compared with both.

``real``: faces found by MTCNN and aligned as ingest aligns them (``seqbuild.ingest.align``), written as
aligned-crop image folders, then ``seqbuild eval facenet --identification PROBES --distractors
DISTRACTORS --aligned``. Probes: the six talk-clip people (frames spread over each clip, and the
dev_broadcast faces, labelled by its ground-truth panes). Distractors: every face of crowd_walk and
hamilton_stage (other people) and the gallery photos. The FPIR-vs-N figures use dedup-overlap's
default threshold for FaceNet (0.45).

Run: ``make bench-identification`` (= ``python -m benchmarks.bench_identification``); ``--part
scale|real|all``; ``--out DIR`` (default runs/bench-identification; the 2 GB distractor file is kept
there and re-used).
"""

from __future__ import annotations

import argparse
import json
import os
import pickle
import subprocess
import sys
import time
from pathlib import Path

import numpy as np

from benchmarks.bench_embed import media_dir, n_frames, pane_at, read_frames
from benchmarks.bench_overlap import machine

REPO = Path(__file__).resolve().parents[1]
PROBE_IDENTITIES, PROBE_IMAGES = 80, 44
DIM = 512


# --------------------------------------------------------------------------- processes


def run_measured(cmd: list[str]) -> dict:
    """Run ``cmd`` in a fresh process: wall time, exit status and that process's peak RSS (MiB)."""
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    t0 = time.perf_counter()
    proc = subprocess.Popen(cmd, cwd=REPO, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    # wait4 gives this child's own rusage (RUSAGE_CHILDREN would be the maximum over all children so far)
    out_buf, err_buf = [], []
    import threading

    def drain(stream, buf):
        buf.append(stream.read())

    threads = [
        threading.Thread(target=drain, args=(proc.stdout, out_buf)),
        threading.Thread(target=drain, args=(proc.stderr, err_buf)),
    ]
    for t in threads:
        t.start()
    _, status, usage = os.wait4(proc.pid, 0)
    for t in threads:
        t.join()
    proc.returncode = os.waitstatus_to_exitcode(status)
    seconds = time.perf_counter() - t0
    if proc.returncode != 0:
        raise RuntimeError(f"{' '.join(cmd)} failed:\n{err_buf[0].decode()[-2000:]}")
    return {
        "seconds": round(seconds, 2),
        "peak_rss_mib": round(usage.ru_maxrss / 1024, 1),
        "stdout": out_buf[0].decode(),
    }


# --------------------------------------------------------------------------- scale


def write_synthetic(out: Path, n: int, seed: int = 0) -> tuple[Path, Path]:
    """1M uniform unit distractors and 80 x 44 Gaussian probe identities, as .npy + .txt (re-used)."""
    from seqbuild.identification.features import NpyFeatureWriter, write_features

    probes, distractors = out / "probes.npy", out / f"distractors_{n}.npy"
    rng = np.random.default_rng(seed)
    if not probes.exists():
        centres = rng.standard_normal((PROBE_IDENTITIES, DIM))
        centres /= np.linalg.norm(centres, axis=1, keepdims=True)
        # spread 1.87: two images of one identity have cosine about 1 / (1 + 1.87^2) = 0.22, where 1M
        # random distractors (cosine sd 1/sqrt(512) = 0.044) start to out-score the mate
        x = np.repeat(centres, PROBE_IMAGES, axis=0)
        x += 1.87 * rng.standard_normal(x.shape) / np.sqrt(DIM)
        labels = [f"id{i:03d}" for i in range(PROBE_IDENTITIES) for _ in range(PROBE_IMAGES)]
        write_features(out / "probes", x.astype(np.float32), labels, model="synthetic")
    if not distractors.exists():
        writer = NpyFeatureWriter(distractors.with_suffix(""), DIM)
        for start in range(0, n, 65536):
            m = min(65536, n - start)
            x = rng.standard_normal((m, DIM), dtype=np.float32)
            x /= np.linalg.norm(x, axis=1, keepdims=True)
            writer.write(x, [f"d{start + i}" for i in range(m)])
        writer.close()
    return probes, distractors


BASELINE = """
import sys, time, numpy as np
from seqbuild.identification.features import open_features
from seqbuild.identification.search import batch_rows_for
probes = open_features(sys.argv[1]).load().vectors
src = open_features(sys.argv[2])
rows = batch_rows_for(float(sys.argv[3]), src.dim)
top = np.full((len(probes), 10), -np.inf, np.float32)
t0 = time.perf_counter()
for block in src.batches(rows):
    s = probes @ (block / np.linalg.norm(block, axis=1, keepdims=True)).T
    part = np.partition(s, s.shape[1] - 10, axis=1)[:, -10:]
    top = -np.sort(-np.concatenate([top, part], axis=1), axis=1)[:, :10]
print(time.perf_counter() - t0)
"""

IMPORTS = "import faiss, numpy, seqbuild.identification.protocol, seqbuild.train.evaluate"


def closed_form_rank1(probes_path: Path, sizes: list[int]) -> list[float]:
    """Expected rank-1 rate against N uniform distractors: mean over mated pairs of F(s)^N."""
    from scipy.special import betainc

    from seqbuild.identification.features import open_features
    from seqbuild.identification.protocol import identity_groups, mated_searches

    probes = open_features(probes_path).load()
    mated = mated_searches(probes.vectors, identity_groups(probes.labels)).scores.astype(np.float64)
    a = (DIM - 1) / 2
    upper = betainc(a, a, (1 - mated) / 2)  # P(cos >= s) for a uniform distractor, accurate in the tail
    return [float(np.mean(np.exp(n * np.log1p(-upper)))) for n in sizes]


def exact_fpir(threshold: float, sizes: list[int]) -> list[float]:
    """1 - (1 - FAR)^N with the exact FAR of a uniform distractor (the Beta tail)."""
    from scipy.special import betainc

    a = (DIM - 1) / 2
    far = float(betainc(a, a, (1 - threshold) / 2))
    return [float(-np.expm1(n * np.log1p(-far))) for n in sizes]


def scale_part(out: Path, n: int, memories: list[float], threshold: float) -> dict:
    """Time and peak RSS of `seqbuild eval` on 1M distractor features, against a numpy pass."""
    out.mkdir(parents=True, exist_ok=True)
    t0 = time.perf_counter()
    probes, distractors = write_synthetic(out, n)
    result: dict = {"n_distractors": n, "dim": DIM, "generate_seconds": round(time.perf_counter() - t0, 1)}
    result["machine_before"] = machine()
    py = sys.executable
    result["imports_only"] = run_measured([py, "-c", IMPORTS])
    base = run_measured([py, "-c", BASELINE, str(probes), str(distractors), "512"])
    result["numpy_baseline"] = {
        "seconds": float(base["stdout"].strip()),
        "peak_rss_mib": base["peak_rss_mib"],
    }
    runs = []
    for mem in memories:
        json_path = out / f"scale_{int(mem)}mb.json"
        cmd = [py, "-m", "seqbuild", "eval", "synthetic", "--identification", str(probes)]
        cmd += ["--distractors", str(distractors), "--memory-mb", str(mem), "--threshold", str(threshold)]
        cmd += ["--no-progress", "--out", str(json_path)]
        measured = run_measured(cmd)
        r = json.loads(json_path.read_text())["identification"]
        runs.append(
            {
                "memory_mb": mem,
                "batch_rows": r["run"]["batch_rows"],
                "wall_seconds": measured["seconds"],
                "search_seconds": r["run"]["search_seconds"],
                "peak_rss_mib": measured["peak_rss_mib"],
                "search_vs_numpy": round(r["run"]["search_seconds"] / result["numpy_baseline"]["seconds"], 3),
            }
        )
        print(f"[scale] {runs[-1]}", file=sys.stderr, flush=True)
    result["runs"] = runs
    r = json.loads((out / f"scale_{int(memories[-1])}mb.json").read_text())["identification"]
    sizes = r["sizes"]
    result["sizes"] = sizes
    result["rank1_measured"] = r["rank1"]
    result["rank1_closed_form"] = closed_form_rank1(probes, sizes)
    result["cmc"] = r["cmc"]
    result["mated_searches"] = r["probes"]["mated_searches"]
    result["threshold"] = threshold
    result["fpir_measured"] = r["open_set"]["fpir_at_threshold"]
    result["fpir_exact"] = exact_fpir(threshold, sizes)
    models = r["open_set"]["models"]
    for method, model in models.items():
        if "fpir_at_threshold" in model:
            result[f"fpir_{method}_model"] = [model["fpir_at_threshold"][str(s)] for s in sizes]
    result["impostor_models"] = {
        m: {k: v[k] for k in ("fit", "tail_check") if k in v} for m, v in models.items()
    }
    result["tar_at_far"] = {k: v["tar"] for k, v in r["verification"]["tar_at_far"].items()}
    result["machine_after"] = machine()
    return result


# --------------------------------------------------------------------------- real faces


def detect_faces(media: Path) -> list[dict]:
    """Aligned 144x144 crops with identity and source: probes (talk people), distractors (others)."""
    from facenet_pytorch import MTCNN

    from seqbuild.imaging import read_image
    from seqbuild.ingest.align import align_face

    mtcnn = MTCNN(device="cpu", keep_all=True, min_face_size=40, thresholds=[0.6, 0.7, 0.9])
    faces: list[dict] = []

    def add(img, role, identity_of, source, frame, largest_only=False):
        boxes, probs, lms = mtcnn.detect(img, landmarks=True)
        if boxes is None:
            return
        keep = np.flatnonzero(probs >= 0.95)
        if largest_only and len(keep):
            keep = keep[
                [int(np.argmax([(boxes[k, 2] - boxes[k, 0]) * (boxes[k, 3] - boxes[k, 1]) for k in keep]))]
            ]
        for k in keep:
            identity = identity_of(boxes[k])
            if identity is not None:
                faces.append(
                    {
                        "role": role,
                        "identity": identity,
                        "source": source,
                        "frame": int(frame),
                        "crop": align_face(img, lms[k], 144),
                    }
                )

    clips = media / "clips"
    for clip in sorted(clips.glob("talk_*.mp4")):
        count, _ = n_frames(clip)
        idx = [int(i) for i in np.linspace(0, max(count - 2, 0), 40)]
        for i, img in read_frames(clip, idx).items():
            add(img, "probe", lambda box, c=clip.stem: c, clip.stem, i, largest_only=True)
        print(f"[real] {clip.name}: {len(faces)} faces so far", file=sys.stderr, flush=True)
    gt = json.loads((media / "dev_broadcast.gt.json").read_text())
    for shot in gt["shots"]:
        if not shot["panes"] or shot["kind"] == "rerun":
            continue
        length = shot["end"] - shot["start"]
        idx = [shot["start"] + int(f * length) for f in (0.3, 0.5, 0.7, 0.9)]
        for i, img in read_frames(media / gt["video"], idx).items():

            def pane(box, panes=shot["panes"]):
                return pane_at(panes, box)

            add(img, "probe", pane, "dev_broadcast", i)
    print(f"[real] dev_broadcast: {len(faces)} faces so far", file=sys.stderr, flush=True)
    for name, step in (("crowd_walk", 1), ("hamilton_stage", 1)):
        count, _ = n_frames(clips / f"{name}.mp4")
        for i, img in read_frames(clips / f"{name}.mp4", list(range(0, count, step))).items():
            add(img, "distractor", lambda box, n=name: n, name, i)
        print(f"[real] {name}: {len(faces)} faces so far", file=sys.stderr, flush=True)
    for folder in sorted((media / "gallery").iterdir()):
        for k, path in enumerate(sorted(folder.iterdir())):
            add(
                read_image(str(path)),
                "distractor",
                lambda box, f=folder.name: f,
                f"gallery/{folder.name}",
                k,
                True,
            )
    return faces


def write_crops(faces: list[dict], out: Path) -> tuple[Path, Path]:
    """Aligned crops as image folders, one sub-folder per identity (probes) or per source (distractors)."""
    import cv2

    roots = {"probe": out / "probes", "distractor": out / "distractors"}
    for i, f in enumerate(faces):
        folder = roots[f["role"]] / f["identity"]
        folder.mkdir(parents=True, exist_ok=True)
        path = folder / f"{f['source'].replace('/', '_')}_{f['frame']:05d}_{i:05d}.png"
        if not path.exists():
            cv2.imwrite(str(path), cv2.cvtColor(f["crop"], cv2.COLOR_RGB2BGR))
    return roots["probe"], roots["distractor"]


def real_part(out: Path, faces_cache: Path | None) -> dict:
    """FaceNet on the real faces: rank-1 vs distractors, FNIR at FPIR, FPIR vs N at 0.45."""
    media = media_dir()
    if media is None:
        return {"skipped": "no media (set SEQBUILD_MEDIA or place ../shared/media beside the checkout)"}
    out.mkdir(parents=True, exist_ok=True)
    result: dict = {"machine_before": machine()}
    cache = faces_cache or out / "faces.pkl"
    t0 = time.perf_counter()
    if cache.exists():
        faces = pickle.loads(cache.read_bytes())
    else:
        faces = detect_faces(media)
        cache.write_bytes(pickle.dumps(faces))
    result["detect_seconds"] = round(time.perf_counter() - t0, 1)
    probes, distractors = write_crops(faces, out)
    counts: dict[str, int] = {}
    for f in faces:
        key = f"{f['role']}:{f['source'] if f['role'] == 'distractor' else f['identity']}"
        counts[key] = counts.get(key, 0) + 1
    result["faces"] = counts
    json_path = out / "identification.json"
    cmd = [sys.executable, "-m", "seqbuild", "eval", "facenet", "--identification", str(probes)]
    cmd += ["--distractors", str(distractors), "--aligned", "--device", "cpu", "--no-progress"]
    cmd += ["--out", str(json_path)]
    measured = run_measured(cmd)
    result["eval_seconds"] = measured["seconds"]
    result["summary"] = measured["stdout"]
    r = json.loads(json_path.read_text())["identification"]
    o = r["open_set"]
    result.update(
        {
            "model": r["model"],
            "probes": r["probes"],
            "distractors": r["distractors"]["count"],
            "sizes": r["sizes"],
            "rank1": r["rank1"],
            "cmc": r["cmc"],
            "threshold": o.get("threshold"),
            "fpir_at_threshold": o.get("fpir_at_threshold"),
            "fnir_at_threshold": o.get("fnir_at_threshold"),
            "fnir_at_fpir": o["fnir_at_fpir"],
            "far_at_threshold": o.get("far_at_threshold"),
            "independent_fpir_at_threshold": o.get("independent_fpir_at_threshold"),
            "probewise_fpir_at_threshold": o.get("probewise_fpir_at_threshold"),
            "models": o["models"],
            "verification": r["verification"],
        }
    )
    result["machine_after"] = machine()
    return result


def main() -> None:
    """Run the requested parts and print one JSON document."""
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--part", choices=("scale", "real", "all"), default="all")
    ap.add_argument("--out", default=str(REPO / "runs" / "bench-identification"))
    ap.add_argument("--distractors", type=int, default=1_000_000)
    ap.add_argument("--memory-mb", default="128,512,2048", help="memory settings of the scale runs")
    ap.add_argument("--threshold", type=float, default=0.2, help="FPIR-vs-N threshold of the scale part")
    ap.add_argument("--faces-cache", default=None, help="pickle of detected faces (real part)")
    args = ap.parse_args()
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    report: dict = {}
    if args.part in ("scale", "all"):
        memories = [float(m) for m in args.memory_mb.split(",")]
        report["scale"] = scale_part(out / "scale", args.distractors, memories, args.threshold)
    if args.part in ("real", "all"):
        report["real"] = real_part(out / "real", Path(args.faces_cache) if args.faces_cache else None)
    text = json.dumps(report, indent=1)
    (out / f"report_{args.part}.json").write_text(text)
    print(text)


if __name__ == "__main__":
    main()
