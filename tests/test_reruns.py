"""The rerun search (clean's step 2): the streaming IVF path against the exact path and against an
all-in-memory reference, on a few thousand synthetic sequences with planted reruns."""

from __future__ import annotations

import dataclasses

import numpy as np
import pyarrow as pa
import pytest

from seqbuild.clean import filters
from seqbuild.clean.config import CleanConfig
from seqbuild.clean.reruns import (
    DictFaces,
    SearchReport,
    SequenceFaces,
    TableCentres,
    read_sequences,
    search_method,
    search_reruns,
    slice_blocks,
)
from seqbuild.clean.stage import centres_schema, find_reruns

DIM = 64


def unit(v: np.ndarray) -> np.ndarray:
    return (v / np.linalg.norm(v, axis=-1, keepdims=True)).astype(np.float32)


@dataclasses.dataclass
class Corpus:
    """Centres table (videos in id order), faces per sequence, and the planted rerun groups."""

    centres: pa.Table
    faces: dict[str, np.ndarray]
    groups: list[list[str]]  # each planted group, first airing first


def make_corpus(videos: int = 24, per_video: int = 120, seed: int = 3) -> Corpus:
    """Sequences of a few hundred people in clusters (so many centres of one person are close), with
    reruns planted across videos and within a video, excerpts, and chains of three airings."""
    rng = np.random.default_rng(seed)
    groups = unit(rng.normal(size=(12, DIM)))
    people = unit(0.6 * groups[rng.integers(0, 12, 300)] + 0.8 * unit(rng.normal(size=(300, DIM))))
    faces: dict[str, np.ndarray] = {}
    order: list[tuple[str, str, int]] = []  # (video, seq, first frame)
    planted: dict[str, list[str]] = {}
    originals: list[str] = []
    for v in range(videos):
        vid = f"{v:012x}"
        for k in range(per_video):
            seq = f"{vid}-s{k:05d}"
            r = rng.random()
            if originals and r < 0.08:
                # a rerun: the same pictures again (re-encoded), sometimes an excerpt
                src = originals[int(rng.integers(len(originals)))]
                base = faces[src]
                if rng.random() < 0.4:
                    a = int(rng.integers(0, len(base) // 3 + 1))
                    base = base[a : a + max(5, 2 * len(base) // 3)]
                faces[seq] = unit(base + 0.004 * rng.normal(size=base.shape))
                root = next((g for g, m in planted.items() if src in m), src)
                planted.setdefault(root, [root]).append(seq)
            else:
                p = people[int(rng.integers(0, 40 if r < 0.5 else 300))]  # 40 regulars
                shot = unit(p + rng.uniform(0.15, 0.6) * unit(rng.normal(size=DIM)))
                n = int(rng.integers(5, 14))
                faces[seq] = unit(shot + 0.3 * unit(rng.normal(size=(n, DIM))))
                originals.append(seq)
            order.append((vid, seq, 10 * k))
    rows = [
        {
            "seq_id": s,
            "video_id": v,
            "n_faces": len(faces[s]),
            "first_frame": f,
            "centre": filters.normalise(faces[s].mean(axis=0)).tolist(),
        }
        for v, s, f in order
    ]
    table = pa.Table.from_pylist(rows, schema=centres_schema(DIM))
    return Corpus(table, faces, [g for g in planted.values()])


def cfg(**kw) -> CleanConfig:
    base = dict(rerun_threshold=0.9, rerun_face_threshold=0.98, rerun_min_share=0.5, rerun_neighbours=10)
    return CleanConfig(**{**base, **kw})


def reference_reruns(centres: pa.Table, faces: dict[str, np.ndarray], c: CleanConfig) -> list[dict]:
    """The rerun search as it was written with everything in memory: exact k-NN over all centres."""
    import faiss

    n = centres.num_rows
    ids = centres.column("seq_id").to_pylist()
    videos = centres.column("video_id").to_pylist()
    first = centres.column("first_frame").to_numpy()
    mat = np.asarray(centres.column("centre").to_pylist(), np.float32)
    index = faiss.IndexFlatIP(mat.shape[1])
    index.add(mat)
    sims, nbrs = index.search(mat, min(c.rerun_neighbours + 1, n))
    parent = list(range(n))

    def find(i):
        while parent[i] != i:
            parent[i] = parent[parent[i]]
            i = parent[i]
        return i

    evidence = {}
    for i in range(n):
        for s, j in zip(sims[i], nbrs[i], strict=True):
            if j < 0 or j <= i or s < c.rerun_threshold:
                continue
            share = filters.face_match_share(faces[ids[i]], faces[ids[j]], c.rerun_face_threshold)
            if share >= c.rerun_min_share:
                parent[find(i)] = find(j)
                for a, b in ((i, j), (j, i)):
                    if a not in evidence or share > evidence[a][0]:
                        evidence[a] = (share, float(s), b)
    groups = {}
    for i in evidence:
        groups.setdefault(find(i), []).append(i)
    rows = []
    for members in groups.values():
        keep = min(members, key=lambda m: (videos[m], int(first[m]), ids[m]))
        for m in members:
            if m != keep:
                share, centre_sim, _ = evidence[m]
                rows.append(
                    {
                        "video_id": videos[m],
                        "seq_id": ids[m],
                        "value": share,
                        "threshold": c.rerun_min_share,
                        "detail": f"copy of {ids[keep]} (centre similarity {centre_sim:.3f})",
                    }
                )
    return rows


@pytest.fixture(scope="module")
def corpus() -> Corpus:
    return make_corpus()


def _key(rows: list[dict]) -> list[tuple]:
    return sorted((r["seq_id"], r["video_id"], r["value"], r["detail"].split(" (")[0]) for r in rows)


def test_exact_path_is_the_in_memory_search_row_for_row(corpus):
    c = cfg(rerun_search="exact")
    got = search_reruns(TableCentres(corpus.centres), DictFaces(corpus.faces, corpus.centres), c)
    assert got == reference_reruns(corpus.centres, corpus.faces, c)
    assert find_reruns(corpus.centres, corpus.faces, cfg()) == got  # auto: a small run is searched exactly


def test_planted_reruns_are_found_and_the_first_airing_is_kept(corpus):
    rows = find_reruns(corpus.centres, corpus.faces, cfg())
    flagged = {r["seq_id"]: r["detail"] for r in rows}
    planted = {s for g in corpus.groups for s in g[1:]}
    within = sum(g[0][:12] == s[:12] for g in corpus.groups for s in g[1:])
    across = len(planted) - within
    assert within >= 5 and across >= 50 and max(map(len, corpus.groups)) >= 3  # the corpus has each case
    assert set(flagged) == planted  # every copy, and nothing else (same person, other footage, is kept)
    for g in corpus.groups:
        for s in g[1:]:
            assert flagged[s].startswith(f"copy of {g[0]} ")  # the first airing is the one kept


def test_ivf_path_equals_exact_path_with_slices_and_a_small_face_cache(corpus):
    exact = search_reruns(
        TableCentres(corpus.centres), DictFaces(corpus.faces, corpus.centres), cfg(rerun_search="exact")
    )
    report = SearchReport()
    # No memory at all (below what a config accepts): every video's centres are a slice of their own,
    # and the candidates' faces go to a scratch file, read back through a cache of one pair.
    small = cfg(rerun_search="ivf", rerun_nprobe=8, rerun_memory_mb=0)
    got = search_reruns(TableCentres(corpus.centres), DictFaces(corpus.faces, corpus.centres), small, report)
    assert report.method == "ivf" and report.slices > 1
    assert not report.faces_in_memory and report.scratch_reads > report.candidate_sequences
    assert _key(got) == _key(exact)
    sims = {r["seq_id"]: float(r["detail"].split("similarity ")[1][:-1]) for r in exact}
    assert all(abs(float(r["detail"].split("similarity ")[1][:-1]) - sims[r["seq_id"]]) <= 0.001 for r in got)

    big = SearchReport()
    again = search_reruns(
        TableCentres(corpus.centres),
        DictFaces(corpus.faces, corpus.centres),
        cfg(rerun_search="ivf", rerun_nprobe=8),
        big,
    )
    assert big.slices == 1 and big.faces_in_memory and again == got  # memory changes how, not what
    assert report.video_reads == big.video_reads <= len(TableCentres(corpus.centres).videos)  # once each


class CountingFaces(DictFaces):
    """A face source that records which sequences were read."""

    def __init__(self, faces, centres) -> None:
        super().__init__(faces, centres)
        self.asked: list[str] = []

    def read(self, video: str, seq_ids: list[str]) -> dict[str, SequenceFaces]:
        self.asked += seq_ids
        return super().read(video, seq_ids)


def test_only_candidate_sequences_are_read(corpus):
    from seqbuild.clean.reruns import CODE_MARGIN

    source = CountingFaces(corpus.faces, corpus.centres)
    report = SearchReport()
    c = cfg(rerun_search="ivf")
    search_reruns(TableCentres(corpus.centres), source, c, report)
    mat = np.asarray(corpus.centres.column("centre").to_pylist(), np.float32)
    sims = mat @ mat.T
    np.fill_diagonal(sims, -1.0)
    ids = np.array(corpus.centres.column("seq_id").to_pylist())
    lonely = set(ids[sims.max(axis=1) < c.rerun_threshold - CODE_MARGIN - 0.005])
    assert lonely and not lonely & set(source.asked)  # no close centre: its faces are never read
    assert report.candidates >= report.pairs_checked >= report.confirmed > 0


def test_search_method_by_size_and_slices():
    assert search_method(cfg(rerun_exact_max=1000), 1000) == "exact"
    assert search_method(cfg(rerun_exact_max=1000), 1001) == "ivf"
    assert search_method(cfg(rerun_search="ivf"), 50) == "exact"  # too few centres to train cells
    t = make_corpus(videos=5, per_video=10).centres
    seqs = read_sequences(TableCentres(t))
    assert seqs.n == 50 and seqs.seq_id(23) == t.column("seq_id")[23].as_py()
    assert slice_blocks(seqs, 20) == [(0, 2), (2, 4), (4, 5)]
    assert slice_blocks(seqs, 5) == [(0, 1), (1, 2), (2, 3), (3, 4), (4, 5)]  # a block never splits
    assert slice_blocks(seqs, 1000) == [(0, 5)]


def test_fewer_than_two_sequences_have_no_rerun():
    t = make_corpus(videos=1, per_video=1).centres
    assert find_reruns(t, {}, cfg()) == []
