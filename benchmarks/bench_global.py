"""Global steps at a month of 32 channels: clean's rerun search and dedup-overlap's gallery search on a
synthetic corpus of 1,000,000 sequences, with planted reruns and planted gallery identities.

The corpus (all 512-d, float32, L2-normalised; every vector a deterministic function of the seed and
an index, so any part can be regenerated on its own):

- 1,000 appearance groups (random unit vectors); 100,000 people, each ``unit(0.5 group + 0.87 own)``
  (people of one group at cosine ~0.25, of two groups ~0); 2,000 of them are regulars (anchors) who
  appear in half of the original sequences (~250 sequences each), the other 98,000 share the other half.
- A sequence of person p: a shot direction ``unit(p + a w)`` (``a`` uniform in 0.3..0.8: cosine 0.78 to
  0.96 to the person; two shots of one person at 0.61 to 0.92, so studio shots of a regular can be
  above the rerun threshold 0.9 and only the face check tells them apart), and 5 + Poisson(8) faces
  ``unit(shot + 0.3 z)`` (faces of one sequence at cosine ~0.92, as consecutive faces of a talking
  person).
- Reruns: 4% of the sequences are copies of an earlier one (70% from an earlier video, 30% earlier in
  the same video; a copy of a copy makes a chain; 40% are excerpts, a contiguous two thirds of the faces);
  a copied face is ``unit(original + 0.004 n)`` per dimension (cosine ~0.996, a re-encoded picture).
- Videos: 2,000 videos of 500 sequences; video ids in airing order, first frames in airing order.
- Gallery: 1,000,000 identity centres; every 50th (20,000) is one of every 5th corpus person,
  ``unit(p + 0.5 w)`` (cosine ~0.89 to the person), the others are new people of the same groups.

Real files: the per-video centres files ``RUN/clean/_local/centres/<video>.parquet`` (what clean's step
1 writes; ~2 GB) and the gallery folder (``manifest.json``, ``identities.parquet``, ``index.faiss``,
~2.5 GB). Generated on demand: the faces of a sequence (13 x 512 floats each, 26 GB for the corpus if
stored), through the same face-reading interface the run's files are read by
(:class:`seqbuild.clean.reruns.FaceSource`); a read regenerates the asked sequences from their ids.

Steps, each in a child process so that its peak RSS (VmHWM) is its own:

- ``reruns``: :func:`seqbuild.clean.reruns.search_reruns` over the 1M centres files (auto = IVF with
  8-bit codes) and the generated faces; recall of planted copies, false merges, first airing kept.
- ``crossover``: exact vs IVF rerun search on the first 5k / 20k / 50k sequences (the baseline in the
  same run, and where ``rerun_exact_max`` comes from).
- ``gallery-index``: the gallery's IVF index built from identities.parquet by ``Gallery.index``
  (streamed), saved as the gallery's index.faiss.
- ``gallery``: every sequence centre searched video by video against the gallery through
  ``seqbuild.overlap.stage.gallery_scores`` (what dedup-overlap does per video); recall of planted
  identities at the facenet threshold 0.45, false matches.
- ``gallery-exact``: the exact scan (IndexFlatIP over the 1M centres) on a sample of queries: the
  baseline's queries/s, the answers the IVF search is compared with, and the gallery's saved index on
  the same queries in the same process (the speed ratio at equal load).
- ``geometry``: IVF recall against exact search for three shapes of embedding cloud (in memory).

Run: ``make bench-global`` (= ``python -m benchmarks.bench_global``; ``--sequences``, ``--gallery``,
``--out DIR``, ``--steps``). Prints JSON and writes it to ``OUT/results.json``.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from benchmarks.bench_overlap import machine

REPO = Path(__file__).resolve().parents[1]
DIM = 512
GROUPS = 1000
PEOPLE = 100_000
REGULARS = 2000
PER_VIDEO = 500
RERUN_RATE = 0.04
WITHIN_VIDEO = 0.3
EXCERPT = 0.4
GALLERY_EVERY = 50  # every 50th gallery row is a corpus person ...
PERSON_EVERY = 5  # ... namely every 5th corpus person
THRESHOLD = 0.45  # facenet's default centre threshold (seqbuild.overlap.gallery.CENTRE_THRESHOLDS)


def unit(v: np.ndarray) -> np.ndarray:
    """Rows (or a vector) scaled to unit length, float32."""
    v = np.asarray(v, np.float32)
    return v / np.linalg.norm(v, axis=-1, keepdims=True)


def peak_rss_mb() -> float:
    """This process's peak resident set (VmHWM), MB."""
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("VmHWM:"):
            return int(line.split()[1]) / 1024
    import resource

    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


# ---------------------------------------------------------------- the corpus


@dataclass
class Corpus:
    """The plan of the synthetic corpus: per sequence its person, shot spread, faces and copy source."""

    seed: int
    n: int
    person: np.ndarray
    spread: np.ndarray
    n_faces: np.ndarray
    copy_of: np.ndarray
    excerpt_start: np.ndarray
    groups: np.ndarray

    @classmethod
    def make(cls, n: int, seed: int = 0) -> Corpus:
        """The plan for ``n`` sequences (a few bytes per sequence; the vectors come from :meth:`faces`)."""
        rng = np.random.default_rng([seed, 9])
        regular = rng.random(n) < 0.5
        person = np.where(regular, rng.integers(0, REGULARS, n), rng.integers(REGULARS, PEOPLE, n)).astype(
            np.int32
        )
        spread = rng.uniform(0.3, 0.8, n).astype(np.float32)
        n_faces = np.minimum(5 + rng.poisson(8, n), 40).astype(np.int16)
        copy_of = np.full(n, -1, np.int32)
        start = np.zeros(n, np.int16)
        idx = np.arange(n)
        video, k = idx // PER_VIDEO, idx % PER_VIDEO
        is_copy = (rng.random(n) < RERUN_RATE) & (idx >= PER_VIDEO)
        within = rng.random(n) < WITHIN_VIDEO
        excerpt = rng.random(n) < EXCERPT
        u = rng.random(n)
        for j in np.flatnonzero(is_copy):
            if within[j] and k[j] > 0:
                src = video[j] * PER_VIDEO + int(u[j] * k[j])
            else:
                src = int(u[j] * video[j] * PER_VIDEO)
            copy_of[j] = src
            person[j] = person[src]
            m = int(n_faces[src])
            if excerpt[j]:
                length = max(5, math.ceil(2 * m / 3))
                start[j] = int(rng.integers(0, m - length + 1))
                n_faces[j] = length
            else:
                n_faces[j] = m
        groups = unit(np.random.default_rng([seed, 3]).standard_normal((GROUPS, DIM)))
        return cls(seed, n, person, spread, n_faces, copy_of, start, groups)

    @property
    def videos(self) -> list[str]:
        """Video ids in airing order."""
        return [video_id(v) for v in range((self.n + PER_VIDEO - 1) // PER_VIDEO)]

    def person_vector(self, p: int) -> np.ndarray:
        """Person ``p``'s direction."""
        own = unit(np.random.default_rng([self.seed, 2, p]).standard_normal(DIM))
        return unit(0.5 * self.groups[p % GROUPS] + math.sqrt(0.75) * own)

    def faces(self, i: int) -> np.ndarray:
        """The faces of sequence ``i`` (rows unit length, in time order)."""
        src = int(self.copy_of[i])
        if src >= 0:
            base = self.faces(src)
            a = int(self.excerpt_start[i])
            base = base[a : a + int(self.n_faces[i])]
            noise = np.random.default_rng([self.seed, 1, i]).standard_normal(base.shape, np.float32)
            return unit(base + 0.004 * noise)
        rng = np.random.default_rng([self.seed, 0, i])
        shot = unit(self.person_vector(int(self.person[i])) + self.spread[i] * unit(rng.standard_normal(DIM)))
        z = unit(rng.standard_normal((int(self.n_faces[i]), DIM), np.float32))
        return unit(shot + 0.3 * z)

    def root(self, i: int) -> int:
        """The first airing of sequence ``i``'s footage."""
        while self.copy_of[i] >= 0:
            i = int(self.copy_of[i])
        return i

    # gallery

    def gallery_person(self, q: np.ndarray) -> np.ndarray:
        """The corpus person of each gallery row, -1 for people not in the corpus."""
        q = np.asarray(q)
        p = (q // GALLERY_EVERY) * PERSON_EVERY
        return np.where((q % GALLERY_EVERY == 0) & (p < PEOPLE), p, -1)

    def gallery_vector(self, q: int) -> np.ndarray:
        """Gallery row ``q``'s identity centre."""
        rng = np.random.default_rng([self.seed, 4, q])
        p = int(self.gallery_person(np.array([q]))[0])
        if p >= 0:
            return unit(self.person_vector(p) + 0.5 * unit(rng.standard_normal(DIM)))
        own = unit(rng.standard_normal(DIM))
        return unit(0.5 * self.groups[q % GROUPS] + math.sqrt(0.75) * own)

    def gallery_row_of_person(self, p: np.ndarray) -> np.ndarray:
        """The gallery row of each corpus person, -1 for people not in the gallery."""
        p = np.asarray(p)
        return np.where(p % PERSON_EVERY == 0, (p // PERSON_EVERY) * GALLERY_EVERY, -1)


def video_id(v: int) -> str:
    """The id of video ``v`` (12 hex digits, in airing order)."""
    return f"{v:012x}"


def seq_id(i: int) -> str:
    """The id of sequence ``i``."""
    return f"{video_id(i // PER_VIDEO)}-s{i % PER_VIDEO:05d}"


def seq_index(s: str) -> int:
    """The index of sequence id ``s``."""
    return int(s[:12], 16) * PER_VIDEO + int(s[-5:])


class SyntheticFaces:
    """The FaceSource of the corpus: a read regenerates the asked sequences' faces and centres."""

    def __init__(self, corpus: Corpus) -> None:
        self.corpus = corpus
        self.sequences_read = 0

    def read(self, video: str, seq_ids: list[str]):
        """{seq_id: SequenceFaces} for ``seq_ids``."""
        from seqbuild.clean.filters import normalise
        from seqbuild.clean.reruns import SequenceFaces

        out = {}
        for s in seq_ids:
            faces = self.corpus.faces(seq_index(s))
            out[s] = SequenceFaces(faces, normalise(faces.mean(axis=0)))
        self.sequences_read += len(seq_ids)
        return out


def write_centres(out: Path, corpus: Corpus, videos: range) -> None:
    """Step 1's centres files of ``videos`` (centre = unit mean of the faces, as clean computes it)."""
    import pyarrow as pa

    from seqbuild.clean.filters import normalise
    from seqbuild.clean.stage import centres_schema, local_store
    from seqbuild.layout import RunDir

    store = local_store(RunDir(out / "run"))
    schema = centres_schema(DIM)
    for v in videos:
        path = store.table_path("centres", video_id(v))
        if path.exists():
            continue
        rows = range(v * PER_VIDEO, min(corpus.n, (v + 1) * PER_VIDEO))
        centres = np.stack([normalise(corpus.faces(i).mean(axis=0)) for i in rows])
        table = pa.table(
            {
                "seq_id": [seq_id(i) for i in rows],
                "video_id": [video_id(v)] * len(rows),
                "n_faces": corpus.n_faces[rows.start : rows.stop].astype(np.int32),
                "first_frame": (np.arange(len(rows)) * 100).astype(np.int64),
                "centre": pa.FixedSizeListArray.from_arrays(pa.array(centres.ravel()), DIM),
            },
            schema=schema,
        )
        from seqbuild.storage import write_table

        write_table(path, table, schema, "centres", "synthetic")


def write_gallery(out: Path, corpus: Corpus, size: int, block: int = 20000) -> Path:
    """A gallery folder of ``size`` identity centres (manifest.json and identities.parquet; no index)."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    from seqbuild.schema import SCHEMA_VERSION, gallery_identities_schema
    from seqbuild.storage import META_CONFIG, META_TABLE, META_VERSION, atomic_path, write_json_atomic

    folder = out / f"gallery-{size}"
    if (folder / "manifest.json").exists():
        return folder
    folder.mkdir(parents=True, exist_ok=True)
    schema = gallery_identities_schema(DIM).with_metadata(
        {META_TABLE: b"gallery_identities", META_VERSION: SCHEMA_VERSION.encode(), META_CONFIG: b"synthetic"}
    )
    with atomic_path(folder / "identities.parquet") as tmp, pq.ParquetWriter(tmp, schema) as writer:
        for a in range(0, size, block):
            rows = range(a, min(size, a + block))
            mat = np.stack([corpus.gallery_vector(q) for q in rows])
            writer.write_table(
                pa.table(
                    {
                        "identity": [f"id{q:07d}" for q in rows],
                        "n_images": np.ones(len(rows), np.int32),
                        "centre": pa.FixedSizeListArray.from_arrays(pa.array(mat.ravel()), DIM),
                    },
                    schema=schema,
                )
            )
    manifest = {
        "name": "synthetic",
        "format": 2,
        "embedder": "synthetic",
        "dim": DIM,
        "threshold": THRESHOLD,
        "build_hash": f"synthetic-{corpus.seed}-{size}",
        "n_identities": size,
    }
    write_json_atomic(folder / "manifest.json", manifest)
    return folder


def generate(out: Path, n: int, gallery: int, seed: int, workers: int = 2) -> dict:
    """Write the centres files (in ``workers`` processes) and the gallery; returns timings."""
    corpus = Corpus.make(n, seed)
    t0 = time.perf_counter()
    n_videos = len(corpus.videos)
    procs = [
        subprocess.Popen(
            [sys.executable, "-m", "benchmarks.bench_global", "--child", "centres", "--out", str(out),
             "--sequences", str(n), "--seed", str(seed), "--videos", f"{w}:{n_videos}:{workers}"],
            cwd=REPO,
        )
        for w in range(workers)
    ]  # fmt: skip
    for p in procs:
        if p.wait():
            raise SystemExit("centres generation failed")
    t_centres = time.perf_counter() - t0
    t0 = time.perf_counter()
    write_gallery(out, corpus, gallery)
    return {"centres_s": t_centres, "gallery_s": time.perf_counter() - t0}


# ---------------------------------------------------------------- steps (child processes)


def step_reruns(out: Path, corpus: Corpus, videos: int, method: str, memory_mb: int, nprobe: int) -> dict:
    """The rerun search over the first ``videos`` videos; recall and false merges against the plan."""
    from seqbuild.clean.config import CleanConfig
    from seqbuild.clean.reruns import SearchReport, search_reruns
    from seqbuild.clean.stage import RunCentres
    from seqbuild.layout import RunDir

    cfg = CleanConfig(rerun_search=method, rerun_memory_mb=memory_mb, rerun_nprobe=nprobe)
    faces = SyntheticFaces(corpus)
    report = SearchReport()
    t0 = time.perf_counter()
    source = RunCentres(RunDir(out / "run"), corpus.videos[:videos])
    rows = search_reruns(source, faces, cfg, report, scratch_dir=out)
    seconds = time.perf_counter() - t0
    n = min(corpus.n, videos * PER_VIDEO)
    planted = {i for i in range(n) if corpus.copy_of[i] >= 0}
    flagged = {seq_index(r["seq_id"]): r["detail"] for r in rows}
    found = planted & set(flagged)
    right_original = sum(flagged[i].startswith(f"copy of {seq_id(corpus.root(i))} ") for i in found)
    return {
        "sequences": n,
        "method": report.method,
        "seconds": seconds,
        "phases_s": {k: round(v, 1) for k, v in report.seconds.items()},
        "nlist": report.nlist,
        "nprobe": report.nprobe,
        "slices": report.slices,
        "candidate_pairs": report.candidates,
        "pairs_checked": report.pairs_checked,
        "candidate_sequences": report.candidate_sequences,
        "video_reads": report.video_reads,
        "faces_in_memory": report.faces_in_memory,
        "scratch_reads": report.scratch_reads,
        "cache_hits": report.cache_hits,
        "code_error_max": report.code_error_max,
        "sequences_read": faces.sequences_read,
        "planted_copies": len(planted),
        "found": len(found),
        "recall": len(found) / max(1, len(planted)),
        "flagged_not_planted": len(set(flagged) - planted),
        "copy_of_wrong_first_airing": len(found) - right_original,
        "peak_rss_mb": peak_rss_mb(),
    }


def step_gallery_index(out: Path, corpus: Corpus, size: int, kind: str, nprobe: int) -> dict:
    """Build the gallery's index from identities.parquet (streamed) and save it beside it."""
    from seqbuild.overlap.gallery import load_gallery
    from seqbuild.overlap.search import index_kind, save_index

    folder = out / f"gallery-{size}"
    t0 = time.perf_counter()
    g = load_gallery(folder)
    t_load = time.perf_counter() - t0
    t0 = time.perf_counter()
    index = g.index(kind, nprobe)
    t_build = time.perf_counter() - t0
    save_index(index, folder / "index.faiss")
    return {
        "identities": len(g.identities),
        "kind": index_kind(index),
        "nlist": int(getattr(__import__("faiss").downcast_index(index), "nlist", 0)),
        "load_s": t_load,
        "build_s": t_build,
        "index_mb": (folder / "index.faiss").stat().st_size / 2**20,
        "peak_rss_mb": peak_rss_mb(),
    }


def step_gallery(out: Path, corpus: Corpus, size: int, kind: str, nprobe: int, exact_file: str) -> dict:
    """Every sequence centre against the gallery, video by video, as dedup-overlap searches."""
    from seqbuild.clean.reruns import centre_matrix
    from seqbuild.clean.stage import RunCentres
    from seqbuild.layout import RunDir
    from seqbuild.overlap.gallery import load_gallery
    from seqbuild.overlap.stage import gallery_scores

    g = load_gallery(out / f"gallery-{size}")
    t0 = time.perf_counter()
    g.index(kind, nprobe)
    t_load = time.perf_counter() - t0
    source = RunCentres(RunDir(out / "run"), corpus.videos)
    ids = np.full(corpus.n, -1, np.int64)
    scores = np.zeros(corpus.n, np.float32)
    t0 = time.perf_counter()
    for b in range(len(source.videos)):
        mat = centre_matrix(source.read(b, ["centre"]), DIM)
        (best,) = gallery_scores(mat, [(g, THRESHOLD)], kind, nprobe)
        a = b * PER_VIDEO
        ids[a : a + len(mat)], scores[a : a + len(mat)] = best.ids, best.scores
    seconds = time.perf_counter() - t0
    want = corpus.gallery_row_of_person(corpus.person)
    want = np.where(want < size, want, -1)
    genuine = want >= 0
    hit = (ids == want) & (scores >= THRESHOLD)
    res = {
        "queries": corpus.n,
        "kind": g.index_kind(kind),
        "nprobe": nprobe,
        "index_load_s": t_load,
        "search_s": seconds,
        "queries_per_s": corpus.n / seconds,
        "planted_sequences": int(genuine.sum()),
        "recall": float(hit[genuine].mean()),
        "planted_matched_to_another_identity": int(((ids != want) & (scores >= THRESHOLD))[genuine].sum()),
        "not_in_gallery_matched": int((scores[~genuine] >= THRESHOLD).sum()),
        "genuine_score_p1": float(np.percentile(scores[genuine], 1)),
        "impostor_best_score_p99_9": float(np.percentile(scores[~genuine], 99.9)),
        "peak_rss_mb": peak_rss_mb(),
    }
    if exact_file and Path(exact_file).exists():
        ex = np.load(exact_file)
        rows = ex["rows"]
        res["vs_exact_queries"] = len(rows)
        res["same_top1_as_exact"] = float(np.mean(ids[rows] == ex["ids"]))
        res["same_decision_as_exact"] = float(
            np.mean((scores[rows] >= THRESHOLD) == (ex["scores"] >= THRESHOLD))
        )
        same = ids[rows] == ex["ids"]
        res["score_error_max"] = float(np.abs(scores[rows][same] - ex["scores"][same]).max())
    return res


def step_gallery_exact(
    out: Path, corpus: Corpus, size: int, queries: int, save: str, kind: str = "auto", nprobe: int = 32
) -> dict:
    """The exact scan (IndexFlatIP over all centres) on a sample of sequence centres: the baseline."""
    from seqbuild.clean.filters import normalise
    from seqbuild.overlap.gallery import iter_centres, load_gallery
    from seqbuild.overlap.search import new_index

    g = load_gallery(out / f"gallery-{size}")
    index = new_index("flat", DIM)
    t0 = time.perf_counter()
    for block in iter_centres(g.path, DIM):
        index.add(block)
    t_build = time.perf_counter() - t0
    rng = np.random.default_rng([corpus.seed, 7])
    rows = np.sort(rng.choice(corpus.n, queries, replace=False))
    q = np.stack([normalise(corpus.faces(int(i)).mean(axis=0)) for i in rows])
    t0 = time.perf_counter()
    s, i = index.search(q, 1)
    seconds = time.perf_counter() - t0
    np.savez(save, rows=rows, ids=i[:, 0], scores=s[:, 0])
    res = {
        "queries": queries,
        "load_and_add_s": t_build,
        "search_s": seconds,
        "queries_per_s": queries / seconds,
        "peak_rss_mb": peak_rss_mb(),
    }
    if (g.path / "index.faiss").exists():
        # The gallery's own index on the same queries, in this process: the speed ratio at equal load.
        del index
        ivf = g.index(kind, nprobe)
        t0 = time.perf_counter()
        for a in range(0, queries, PER_VIDEO):  # a video's sequences per call, as dedup-overlap searches
            ivf.search(q[a : a + PER_VIDEO], 1)
        res["index_kind"] = g.index_kind(kind)
        res["index_queries_per_s"] = queries / (time.perf_counter() - t0)
        res["index_speedup"] = res["index_queries_per_s"] / res["queries_per_s"]
    return res


def geometry_study(n: int, queries: int, seed: int = 0) -> dict:
    """IVF recall against exact search for three shapes of the embedding cloud, in memory: n gallery
    identities, ``queries`` sequence centres of gallery people (cosine ~0.75-0.85 to their entry).

    ``clustered`` is the corpus above (1,000 groups); ``isotropic`` has no groups (every direction as
    likely: the hardest case for cells); ``anisotropic`` draws people and noise from a Gaussian whose
    variances fall as k^-0.75 over a random basis (participation ratio ~100).
    """
    from seqbuild.overlap.search import CELLS_PER_ROOT, build_index, ivf_nlist, new_index, set_nprobe

    rng = np.random.default_rng([seed, 11])
    lam = np.arange(1, DIM + 1) ** -0.75
    basis, _ = np.linalg.qr(rng.standard_normal((DIM, DIM)))
    shape = (np.sqrt(lam / lam.sum())[None, :] * basis).astype(np.float32)
    groups = unit(rng.standard_normal((GROUPS, DIM)))

    def draw(kind: str, m: int) -> np.ndarray:
        z = rng.standard_normal((m, DIM), np.float32)
        return unit(z @ shape.T) if kind == "anisotropic" else unit(z)

    out = {}
    for kind in ("clustered", "isotropic", "anisotropic"):
        people = draw(kind, n)
        if kind == "clustered":
            people = unit(0.5 * groups[np.arange(n) % GROUPS] + math.sqrt(0.75) * people)
        gallery = unit(people + 0.5 * draw(kind, n))
        a = rng.uniform(0.15, 0.6, queries)[:, None].astype(np.float32)
        q = unit(unit(people[:queries] + a * draw(kind, queries)) + 0.08 * draw(kind, queries))
        flat = new_index("flat", DIM)
        flat.add(gallery)
        _, exact = flat.search(q, 1)
        t0 = time.perf_counter()
        ivf = build_index(gallery, "ivf_sq8")
        res = {
            "nlist": ivf_nlist(n, CELLS_PER_ROOT),
            "build_s": time.perf_counter() - t0,
            "exact_top1_is_planted": float(np.mean(exact[:, 0] == np.arange(queries))),
        }
        for nprobe in (8, 16, 32, 64, 128):
            set_nprobe(ivf, nprobe)
            t0 = time.perf_counter()
            _, got = ivf.search(q, 1)
            res[f"recall_nprobe_{nprobe}"] = float(np.mean(got[:, 0] == exact[:, 0]))
            res[f"queries_per_s_nprobe_{nprobe}"] = queries / (time.perf_counter() - t0)
        out[kind] = res
        print(f"[geometry {kind}] {res}", file=sys.stderr, flush=True)
    out["peak_rss_mb"] = peak_rss_mb()
    return out


def child(args: argparse.Namespace) -> None:
    """Run one step in this process and print its JSON line."""
    corpus = Corpus.make(args.sequences, args.seed)
    out = Path(args.out)
    before = os.getloadavg()
    if args.child == "centres":
        w, total, stride = (int(x) for x in args.videos.split(":"))
        write_centres(out, corpus, range(w, total, stride))
        return
    if args.child == "reruns":
        res = step_reruns(out, corpus, args.first_videos, args.method, args.memory_mb, args.nprobe)
    elif args.child == "gallery-index":
        res = step_gallery_index(out, corpus, args.gallery, args.kind, args.gallery_nprobe)
    elif args.child == "gallery":
        res = step_gallery(out, corpus, args.gallery, args.kind, args.gallery_nprobe, args.exact_file)
    elif args.child == "geometry":
        res = geometry_study(args.geometry_size, args.exact_queries, args.seed)
    elif args.child == "gallery-exact":
        res = step_gallery_exact(
            out, corpus, args.gallery, args.exact_queries, args.exact_file, args.kind, args.gallery_nprobe
        )
    else:
        raise SystemExit(f"unknown step {args.child}")
    res["loadavg_before"] = [round(x, 2) for x in before]
    res["loadavg_after"] = [round(x, 2) for x in os.getloadavg()]
    print("RESULT " + json.dumps(res, default=float), flush=True)


def run_child(args: argparse.Namespace, step: str, *extra: str) -> dict:
    """Run ``step`` in a child process; its result (with wall time) or the error."""
    cmd = [sys.executable, "-m", "benchmarks.bench_global", "--child", step, "--out", args.out,
           "--sequences", str(args.sequences), "--gallery", str(args.gallery), "--seed", str(args.seed),
           "--exact-file", str(Path(args.out) / "exact.npz"), *extra]  # fmt: skip
    t0 = time.perf_counter()
    proc = subprocess.run(cmd, cwd=REPO, capture_output=True, text=True)
    wall = time.perf_counter() - t0
    lines = [x for x in proc.stdout.splitlines() if x.startswith("RESULT ")]
    if proc.returncode or not lines:
        res = {"error": proc.stderr.strip().splitlines()[-1:] if proc.stderr else f"exit {proc.returncode}"}
    else:
        res = json.loads(lines[-1][len("RESULT ") :])
    res["wall_s"] = wall
    print(f"[{step} {' '.join(extra)}] {json.dumps(res, default=float)}", file=sys.stderr, flush=True)
    return res


def main() -> None:
    """Generate the corpus (once) and run the asked steps; print and save the results as JSON."""
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--out", default="/tmp/seqbuild-bench-global", help="corpus and results folder")
    ap.add_argument("--sequences", type=int, default=1_000_000)
    ap.add_argument("--gallery", type=int, default=1_000_000)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument(
        "--steps",
        default="generate,crossover,reruns,gallery-index,gallery-exact,gallery,geometry",
        help="comma-separated steps to run",
    )
    ap.add_argument("--memory-mb", type=int, default=2048, help="clean.rerun_memory_mb")
    ap.add_argument("--nprobe", type=int, default=0, help="clean.rerun_nprobe (0 = the default)")
    ap.add_argument("--gallery-nprobe", type=int, default=0, help="dedup_overlap.nprobe (0 = the default)")
    ap.add_argument("--kind", default="auto", help="dedup_overlap.index")
    ap.add_argument("--exact-queries", type=int, default=2000)
    ap.add_argument("--geometry-size", type=int, default=100_000, help="gallery size of the geometry study")
    ap.add_argument("--crossover", default="10,40,100", help="videos (of 500 sequences) for the crossover")
    # child-process arguments
    ap.add_argument("--child", default="")
    ap.add_argument("--videos", default="")
    ap.add_argument("--first-videos", type=int, default=0)
    ap.add_argument("--method", default="auto")
    ap.add_argument("--exact-file", default="")
    args = ap.parse_args()
    from seqbuild.clean.config import CleanConfig
    from seqbuild.config import default_of
    from seqbuild.overlap.config import OverlapConfig

    args.nprobe = args.nprobe or default_of(CleanConfig, "rerun_nprobe")
    args.gallery_nprobe = args.gallery_nprobe or default_of(OverlapConfig, "nprobe")
    if args.child:
        child(args)
        return
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    steps = args.steps.split(",")
    results: dict = {"machine_before": machine(), "sequences": args.sequences, "gallery": args.gallery}
    common = ["--memory-mb", str(args.memory_mb), "--nprobe", str(args.nprobe)]
    gal = ["--kind", args.kind, "--gallery-nprobe", str(args.gallery_nprobe)]
    if "generate" in steps:
        results["generate"] = generate(out, args.sequences, args.gallery, args.seed)
        print(f"[generate] {results['generate']}", file=sys.stderr, flush=True)
    if "crossover" in steps:
        results["crossover"] = [
            run_child(args, "reruns", "--first-videos", v, "--method", m, *common)
            for v in args.crossover.split(",")
            for m in ("exact", "ivf")
        ]
    if "reruns" in steps:
        videos = str((args.sequences + PER_VIDEO - 1) // PER_VIDEO)
        results["reruns"] = run_child(args, "reruns", "--first-videos", videos, "--method", "auto", *common)
    if "gallery-index" in steps:
        results["gallery_index"] = run_child(args, "gallery-index", *gal)
    if "gallery-exact" in steps:
        results["gallery_exact"] = run_child(
            args, "gallery-exact", "--exact-queries", str(args.exact_queries), *gal
        )
    if "gallery" in steps:
        results["gallery_search"] = run_child(args, "gallery", *gal)
    if "geometry" in steps:
        results["geometry"] = run_child(
            args,
            "geometry",
            "--geometry-size",
            str(args.geometry_size),
            "--exact-queries",
            str(args.exact_queries),
        )
    results["machine_after"] = machine()
    (out / "results.json").write_text(json.dumps(results, indent=1, default=float))
    print(json.dumps(results, indent=1, default=float))


if __name__ == "__main__":
    main()
