"""Rerun detection over a whole run with memory bounded by a setting (clean's step 2).

A rerun is a sequence aired again: the same pictures, so its faces match an earlier sequence's faces
almost exactly. The search never holds every face of the run, only what a setting allows:

1. **Candidates.** Every sequence centre is searched against all centres; its ``rerun_neighbours``
   nearest other centres at ``rerun_threshold`` or more are candidate pairs.

   - ``exact`` (``rerun_search = "auto"`` up to ``rerun_exact_max`` sequences): one exact inner-product
     index over all centres, as small runs always had: tens of MB, no training, nothing approximate.
   - ``ivf`` (beyond): an IVF index with 8-bit residual codes (``ivf_sq8`` of
     :mod:`seqbuild.overlap.search`, a quarter of the float32 size). Its cells are trained on a
     uniform sample of the centres; it is filled, then queried, video by video from the per-video
     centres files, so the centres are never all in memory at once. Candidates are taken a little below
     the threshold (:data:`CODE_MARGIN`, more than the codes' error) and re-scored with the exact
     centres, so the threshold is applied to exact similarities. When the codes of all centres do not
     fit in half of ``rerun_memory_mb``, the centres are indexed in slices that do; every centre is
     searched in every slice and the nearest are merged. The slices share the trained cells, so a
     query probes the same cells as in one index: the result does not depend on the memory setting.

2. **Confirmation.** A candidate pair is a rerun when ``rerun_min_share`` of the shorter sequence's
   faces have a face above ``rerun_face_threshold`` in the other. The faces of the candidate sequences
   are gathered in one pass over the videos, each video read once and only for its candidate sequences
   (:class:`FaceStore`): in memory when they fit in a quarter of ``rerun_memory_mb``, else in a scratch
   file read back by offset through an LRU cache of that size. Pairs are then checked in row order.

3. **Groups.** Confirmed pairs are joined (union-find) in the order an exact search lists them, and each
   group keeps its first airing (the earliest sequence of the first video in id order: within a video,
   the original before its reruns); the others are returned as rerun rows with the best evidence each.

Memory: the index (or one slice of it) and the faces held are bounded by ``rerun_memory_mb``; on top,
about 150 bytes per sequence of bookkeeping (ids, first frames, the neighbour lists) and 40 per candidate
pair grow with the run. Disk: the scratch file holds the candidates' faces (at most the run's own
embeddings), next to the run. GPU: with faiss-gpu and a GPU (``faiss.get_num_gpus() > 0``), the filled
index is searched on the GPU; the training and the confirmation stay on the CPU.
"""

from __future__ import annotations

import logging
import os
import tempfile
import time
from collections import OrderedDict
from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import Any, NamedTuple, Protocol

import numpy as np
import pyarrow as pa

from ..overlap import search as vsearch
from . import filters
from .config import CleanConfig

log = logging.getLogger(__name__)

CODE_MARGIN = 0.02
"""Candidates of the IVF search are taken this far below ``rerun_threshold`` and re-scored exactly:
with 8-bit residual codes a 512-d inner product was at most 0.011 off its exact value over 630,000
candidate pairs of benchmarks/bench_global.py (the search report records the largest error it met)."""

QUERY_BATCH = 8192
"""Centres searched per FAISS call in the IVF search (several videos at a time)."""

TRAIN_PER_CELL = 64
"""Training points per IVF cell (k-means gains nothing from more)."""

MAX_TRAIN = 131_072
"""At most this many centres train the cells (256 MB at 512-d, inside the smallest memory setting)."""


class SequenceFaces(NamedTuple):
    """One sequence's faces (rows L2-normalised, in time order) and its centre."""

    faces: np.ndarray
    centre: np.ndarray


class CentreSource(Protocol):
    """The sequence centres of a run, in blocks of rows (one per video, in run order)."""

    videos: list[str]
    """The video of each block (the name handed to the face source)."""

    def read(self, block: int, columns: list[str] | None = None) -> pa.Table:
        """Block ``block``'s rows (columns seq_id, video_id, first_frame, centre, or those asked)."""


class FaceSource(Protocol):
    """Reads the faces of some sequences of one video."""

    def read(self, video: str, seq_ids: list[str]) -> dict[str, SequenceFaces]:
        """Faces and centre of each of ``seq_ids`` (all sequences of ``video``)."""


class TableCentres:
    """Centres held in one table (a dry run, tests): consecutive rows of one video form a block."""

    def __init__(self, table: pa.Table) -> None:
        self.table = table
        videos = table.column("video_id").to_pylist()
        starts = [i for i in range(len(videos)) if i == 0 or videos[i] != videos[i - 1]]
        self.bounds = list(zip(starts, starts[1:] + [len(videos)], strict=True))
        self.videos = [videos[a] for a, _ in self.bounds]

    def read(self, block: int, columns: list[str] | None = None) -> pa.Table:
        """Rows of block ``block``."""
        a, b = self.bounds[block]
        part = self.table.slice(a, b - a)
        return part.select(columns) if columns else part


class DictFaces:
    """Faces held in memory as ``{seq_id: faces}``; centres taken from a centre table."""

    def __init__(self, faces: dict[str, np.ndarray], centres: pa.Table) -> None:
        self.faces = faces
        ids = centres.column("seq_id").to_pylist()
        self.row = {s: i for i, s in enumerate(ids)}
        self.centres = centres.column("centre")

    def read(self, video: str, seq_ids: list[str]) -> dict[str, SequenceFaces]:
        """The held faces of ``seq_ids``."""
        return {
            s: SequenceFaces(
                self.faces[s], np.asarray(self.centres[self.row[s]].values.to_numpy(), np.float32)
            )
            for s in seq_ids
        }


def centre_matrix(table: pa.Table, dim: int) -> np.ndarray:
    """The ``centre`` column of a centres table as a contiguous float32 matrix."""
    if table.num_rows == 0:
        return np.zeros((0, dim), np.float32)
    flat = table.column("centre").combine_chunks().flatten().to_numpy(zero_copy_only=False)
    return np.ascontiguousarray(np.asarray(flat, np.float32).reshape(table.num_rows, dim))


@dataclass
class Sequences:
    """Every sequence of the run in run order: its block, id and first frame (no centres, no faces)."""

    videos: list[str]
    video_ids: list[str]
    offsets: np.ndarray
    ids: list[pa.Array]
    first_frame: np.ndarray
    n_faces: np.ndarray
    dim: int

    @property
    def n(self) -> int:
        """Number of sequences."""
        return int(self.offsets[-1])

    def block_of(self, rows: np.ndarray) -> np.ndarray:
        """The block of each global row."""
        return np.searchsorted(self.offsets, rows, side="right") - 1

    def seq_id(self, row: int) -> str:
        """The seq_id of global row ``row``."""
        b = int(self.block_of(np.array([row]))[0])
        return str(self.ids[b][row - int(self.offsets[b])].as_py())

    def video_id(self, row: int) -> str:
        """The video_id of global row ``row``."""
        return self.video_ids[int(self.block_of(np.array([row]))[0])]


def read_sequences(source: CentreSource) -> Sequences:
    """The ids and first frames of every sequence, block by block (the centres are not read)."""
    ids, firsts, sizes, video_ids, counts = [], [], [], [], []
    dim = 0
    for b, video in enumerate(source.videos):
        table = source.read(b, ["seq_id", "video_id", "first_frame", "n_faces"])
        ids.append(table.column("seq_id").combine_chunks())
        firsts.append(np.asarray(table.column("first_frame").to_numpy(), np.int64))
        sizes.append(np.asarray(table.column("n_faces").to_numpy(), np.int32))
        video_ids.append(str(table.column("video_id")[0].as_py()) if table.num_rows else video)
        counts.append(table.num_rows)
        if not dim and table.num_rows:
            dim = source.read(b, ["centre"]).schema.field("centre").type.list_size
    offsets = np.zeros(len(counts) + 1, np.int64)
    offsets[1:] = np.cumsum(counts)
    first = np.concatenate(firsts) if firsts else np.zeros(0, np.int64)
    n_faces = np.concatenate(sizes) if sizes else np.zeros(0, np.int32)
    return Sequences(list(source.videos), video_ids, offsets, ids, first, n_faces, dim)


@dataclass
class SearchReport:
    """How the rerun search ran (logged, and measured by benchmarks/bench_global.py)."""

    method: str = "exact"
    sequences: int = 0
    candidates: int = 0
    pairs_checked: int = 0
    confirmed: int = 0
    nlist: int = 0
    nprobe: int = 0
    slices: int = 0
    candidate_sequences: int = 0
    video_reads: int = 0
    faces_in_memory: bool = True
    scratch_reads: int = 0
    cache_hits: int = 0
    code_error_max: float = 0.0
    """Largest difference between a candidate's similarity from the 8-bit codes and its exact value."""
    seconds: dict[str, float] = field(default_factory=dict)

    def line(self) -> str:
        """One line for the log."""
        times = " ".join(f"{k}={v:.1f}s" for k, v in self.seconds.items())
        ivf = (
            f" nlist={self.nlist} nprobe={self.nprobe} slices={self.slices}" if self.method != "exact" else ""
        )
        held = "in memory" if self.faces_in_memory else f"scratch file, {self.scratch_reads} reads"
        return (
            f"reruns: {self.method}{ivf} over {self.sequences} sequences, {self.candidates} candidate pairs,"
            f" {self.pairs_checked} checked face by face, {self.confirmed} confirmed;"
            f" faces of {self.candidate_sequences} sequences from {self.video_reads} video reads"
            f" ({held}); {times}"
        )


def search_method(cfg: CleanConfig, n: int) -> str:
    """``exact`` or ``ivf`` for ``n`` sequences (``auto``: exact up to ``rerun_exact_max``)."""
    if cfg.rerun_search == "auto":
        method = "exact" if n <= cfg.rerun_exact_max else "ivf"
    else:
        method = cfg.rerun_search
    # Too few centres to train IVF cells: the exact search is the only sensible one.
    return "exact" if n < 4 * vsearch.MIN_TRAIN_PER_CELL else method


def rerun_nlist(n: int) -> int:
    """IVF cells for ``n`` centres: about 2 sqrt(n) (cells of ~500 at a million: reruns are near
    duplicates, found in the first cells probed, so coarser cells than a gallery's train faster)."""
    return vsearch.ivf_nlist(n, 2.0)


# ---------------------------------------------------------------- candidate search


def exact_neighbours(source: CentreSource, seqs: Sequences, k: int) -> tuple[np.ndarray, np.ndarray]:
    """Top-``k`` (similarities, rows) of every centre among all centres by one exact index."""
    index = vsearch.new_index("flat", seqs.dim)
    mat = np.concatenate([centre_matrix(source.read(b), seqs.dim) for b in range(len(seqs.videos))])
    index.add(mat)
    index = vsearch.to_search_device(index)
    return index.search(mat, k)


def _query_blocks(source: CentreSource, seqs: Sequences) -> Iterator[tuple[int, np.ndarray]]:
    """(first row, centres) of consecutive blocks gathered to about QUERY_BATCH rows."""
    pending: list[np.ndarray] = []
    start = rows = 0
    for b in range(len(seqs.videos)):
        mat = centre_matrix(source.read(b, ["centre"]), seqs.dim)
        pending.append(mat)
        rows += len(mat)
        if rows >= QUERY_BATCH:
            yield start, np.concatenate(pending)
            start += rows
            pending, rows = [], 0
    if pending:
        yield start, np.concatenate(pending)


def _train_sample(source: CentreSource, seqs: Sequences, size: int, seed: int = 0) -> np.ndarray:
    """A uniform sample of ``size`` centres, read block by block."""
    chosen = np.sort(np.random.default_rng(seed).choice(seqs.n, size, replace=False))
    parts = []
    for b in range(len(seqs.videos)):
        a, e = int(seqs.offsets[b]), int(seqs.offsets[b + 1])
        lo, hi = np.searchsorted(chosen, [a, e])
        if hi > lo:
            mat = centre_matrix(source.read(b, ["centre"]), seqs.dim)
            parts.append(mat[chosen[lo:hi] - a])
    return np.concatenate(parts)


def slice_blocks(seqs: Sequences, max_rows: int) -> list[tuple[int, int]]:
    """Consecutive block ranges [b0, b1) of at most ``max_rows`` centres each (a larger block alone)."""
    out, b0 = [], 0
    for b in range(1, len(seqs.videos) + 1):
        if seqs.offsets[b] - seqs.offsets[b0] > max_rows and b - 1 > b0:
            out.append((b0, b - 1))
            b0 = b - 1
    if b0 < len(seqs.videos):
        out.append((b0, len(seqs.videos)))
    return out


def _merge_top(
    sims: np.ndarray, rows: np.ndarray, more_sims: np.ndarray, more_rows: np.ndarray, k: int
) -> tuple[np.ndarray, np.ndarray]:
    s = np.concatenate([sims, more_sims], axis=1)
    r = np.concatenate([rows, more_rows], axis=1)
    order = np.argsort(-s, axis=1, kind="stable")[:, :k]
    return np.take_along_axis(s, order, axis=1), np.take_along_axis(r, order, axis=1)


def ivf_neighbours(
    source: CentreSource, seqs: Sequences, k: int, cfg: CleanConfig, report: SearchReport
) -> tuple[np.ndarray, np.ndarray]:
    """Top-``k`` (similarities from 8-bit codes, rows) of every centre by IVF search, slice by slice."""
    faiss = vsearch.faiss_module()
    n, dim = seqs.n, seqs.dim
    nlist = rerun_nlist(n)
    report.nlist, report.nprobe = nlist, min(cfg.rerun_nprobe, nlist)
    t0 = time.perf_counter()
    trained = vsearch.new_index("ivf_sq8", dim, nlist)
    sample = _train_sample(source, seqs, min(n, MAX_TRAIN, TRAIN_PER_CELL * nlist))
    trained.train(sample)
    del sample
    report.seconds["train"] = time.perf_counter() - t0
    budget = cfg.rerun_memory_mb * 2**20 // 2
    per_slice = max(1, budget // vsearch.bytes_per_vector("ivf_sq8", dim))
    slices = slice_blocks(seqs, per_slice)
    report.slices = len(slices)
    top_sims = np.full((n, k), -np.inf, np.float32)
    top_rows = np.full((n, k), -1, np.int32)
    report.seconds["add"] = report.seconds["search"] = 0.0
    for b0, b1 in slices:
        t0 = time.perf_counter()
        index = faiss.clone_index(trained)
        for b in range(b0, b1):
            mat = centre_matrix(source.read(b, ["centre"]), dim)
            if len(mat):
                start = int(seqs.offsets[b])
                index.add_with_ids(mat, np.arange(start, start + len(mat), dtype=np.int64))
        vsearch.set_nprobe(index, cfg.rerun_nprobe)
        index = vsearch.to_search_device(index)
        report.seconds["add"] += time.perf_counter() - t0
        t0 = time.perf_counter()
        for start, queries in _query_blocks(source, seqs):
            s, r = index.search(queries, k)
            r = r.astype(np.int32)
            stop = start + len(queries)
            if len(slices) == 1:
                top_sims[start:stop], top_rows[start:stop] = s, r
            else:
                s = np.where(r >= 0, s, -np.inf).astype(np.float32)
                top_sims[start:stop], top_rows[start:stop] = _merge_top(
                    top_sims[start:stop], top_rows[start:stop], s, r, k
                )
        report.seconds["search"] += time.perf_counter() - t0
        del index
    return top_sims, top_rows


# ---------------------------------------------------------------- face-level confirmation


class FaceStore:
    """The faces and centres of the candidate sequences, gathered in one pass over the videos (each video
    read once, only for its candidate sequences).

    They are held in memory when they fit in ``budget`` bytes; otherwise they go to a scratch file in
    ``scratch_dir``, one record per sequence, and are read back by offset through an LRU cache of
    ``budget`` bytes. (Reading videos on demand instead, pair by pair, reads a video once per video pair
    with candidates: a person seen every day puts candidates in nearly every pair of videos.)
    """

    def __init__(
        self,
        seqs: Sequences,
        rows: np.ndarray,
        n_faces: np.ndarray,
        faces: FaceSource,
        budget: int,
        scratch_dir: str | os.PathLike[str] | None = None,
    ) -> None:
        self.dim, self.budget = seqs.dim, budget
        self.held: OrderedDict[int, SequenceFaces] = OrderedDict()
        self.bytes = self.reads = self.hits = 0
        self.in_memory = int((n_faces.astype(np.int64) + 1).sum()) * 4 * seqs.dim <= budget
        self.offsets: dict[int, tuple[int, int]] = {}
        self.scratch = None
        self.video_reads = 0
        if not self.in_memory:
            self.scratch = tempfile.TemporaryFile(prefix="seqbuild-reruns-", dir=scratch_dir)
        blocks = seqs.block_of(rows)
        position = 0
        for b in np.unique(blocks):
            mine = rows[blocks == b]
            names = {seqs.seq_id(int(r)): int(r) for r in mine}
            got = faces.read(seqs.videos[int(b)], list(names))
            self.video_reads += 1
            for name, row in names.items():
                item = got[name]
                record = SequenceFaces(
                    np.ascontiguousarray(item.faces, np.float32),
                    np.ascontiguousarray(item.centre, np.float32),
                )
                if self.in_memory:
                    self.held[row] = record
                else:
                    data = record.centre.tobytes() + record.faces.tobytes()
                    self.scratch.write(data)
                    self.offsets[row] = (position, len(record.faces))
                    position += len(data)
        if self.scratch is not None:
            self.scratch.flush()
            self.bytes_on_disk = position

    def get(self, row: int) -> SequenceFaces:
        """Faces and centre of the candidate sequence at global row ``row``."""
        if self.in_memory:
            return self.held[row]
        if row in self.held:
            self.hits += 1
            self.held.move_to_end(row)
            return self.held[row]
        offset, n = self.offsets[row]
        raw = os.pread(self.scratch.fileno(), 4 * self.dim * (n + 1), offset)
        vec = np.frombuffer(raw, np.float32)
        item = SequenceFaces(vec[self.dim :].reshape(n, self.dim), vec[: self.dim])
        self.reads += 1
        while len(self.held) > 1 and self.bytes + len(raw) > self.budget:
            _, old = self.held.popitem(last=False)
            self.bytes -= old.faces.nbytes + old.centre.nbytes
        self.held[row] = item
        self.bytes += len(raw)
        return item

    def close(self) -> None:
        """Delete the scratch file."""
        if self.scratch is not None:
            self.scratch.close()
            self.scratch = None


def confirm_pairs(
    seqs: Sequences,
    pairs_i: np.ndarray,
    pairs_j: np.ndarray,
    faces: FaceSource,
    cfg: CleanConfig,
    rescore: bool,
    report: SearchReport,
    scratch_dir: str | os.PathLike[str] | None = None,
) -> tuple[np.ndarray, np.ndarray]:
    """Face-match share of each candidate pair (-1 when its exact centre similarity, re-scored when
    ``rescore``, is below the threshold) and that exact similarity (NaN when not re-scored)."""
    m = len(pairs_i)
    shares = np.full(m, -1.0)
    exact = np.full(m, np.nan)
    if m == 0:
        return shares, exact
    rows = np.unique(np.concatenate([pairs_i, pairs_j]))
    store = FaceStore(seqs, rows, seqs.n_faces[rows], faces, cfg.rerun_memory_mb * 2**20 // 4, scratch_dir)
    try:
        for p in range(m):  # in row order: one side stays in the cache while its pairs are checked
            fa, fb = store.get(int(pairs_i[p])), store.get(int(pairs_j[p]))
            if rescore:
                exact[p] = float(np.dot(fa.centre, fb.centre))
                if exact[p] < cfg.rerun_threshold:
                    continue
            shares[p] = filters.face_match_share(fa.faces, fb.faces, cfg.rerun_face_threshold)
            report.pairs_checked += 1
    finally:
        store.close()
    report.candidate_sequences = len(rows)
    report.video_reads = store.video_reads
    report.faces_in_memory = store.in_memory
    report.scratch_reads, report.cache_hits = store.reads, store.hits
    return shares, exact


# ---------------------------------------------------------------- groups


def rerun_rows(
    seqs: Sequences,
    pairs_i: np.ndarray,
    pairs_j: np.ndarray,
    sims: np.ndarray,
    shares: np.ndarray,
    cfg: CleanConfig,
) -> list[dict[str, Any]]:
    """Join confirmed pairs (given in exact-search order) into groups; every member but the first airing
    is a rerun row naming the sequence it copies."""
    parent: dict[int, int] = {}

    def find(i: int) -> int:
        parent.setdefault(i, i)
        while parent[i] != i:
            parent[i] = parent[parent[i]]
            i = parent[i]
        return i

    evidence: dict[int, tuple[float, float, int]] = {}
    for i, j, s, share in zip(
        pairs_i.tolist(), pairs_j.tolist(), sims.tolist(), shares.tolist(), strict=True
    ):
        if share < cfg.rerun_min_share:
            continue
        parent[find(i)] = find(j)
        for a, b in ((i, j), (j, i)):
            if a not in evidence or share > evidence[a][0]:
                evidence[a] = (share, float(s), b)
    groups: dict[int, list[int]] = {}
    for i in evidence:
        groups.setdefault(find(i), []).append(i)
    rows = []
    for members in groups.values():
        keep = min(members, key=lambda m: (seqs.video_id(m), int(seqs.first_frame[m]), seqs.seq_id(m)))
        for m in members:
            if m == keep:
                continue
            share, centre_sim, _ = evidence[m]
            rows.append(
                {
                    "video_id": seqs.video_id(m),
                    "seq_id": seqs.seq_id(m),
                    "value": share,
                    "threshold": cfg.rerun_min_share,
                    "detail": f"copy of {seqs.seq_id(keep)} (centre similarity {centre_sim:.3f})",
                }
            )
    return rows


def search_reruns(
    centres: CentreSource,
    faces: FaceSource,
    cfg: CleanConfig,
    report: SearchReport | None = None,
    scratch_dir: str | os.PathLike[str] | None = None,
) -> list[dict[str, Any]]:
    """Rerun copies among all sequences of ``centres`` (see the module docstring), as RERUNS rows;
    candidates' faces that do not fit in memory go to a scratch file in ``scratch_dir`` (default: the
    system's temporary folder), deleted at the end."""
    report = report if report is not None else SearchReport()
    t0 = time.perf_counter()
    seqs = read_sequences(centres)
    n = report.sequences = seqs.n
    report.seconds["read_ids"] = time.perf_counter() - t0
    if n < 2:
        return []
    report.method = search_method(cfg, n)
    k = min(cfg.rerun_neighbours + 1, n)
    t0 = time.perf_counter()
    if report.method == "exact":
        sims, rows = exact_neighbours(centres, seqs, k)
        floor = cfg.rerun_threshold
    else:
        sims, rows = ivf_neighbours(centres, seqs, k, cfg, report)
        floor = cfg.rerun_threshold - CODE_MARGIN
    report.seconds["neighbours"] = time.perf_counter() - t0
    # Candidates in the order an exact search lists them: by row, then by rank among its neighbours.
    own = np.arange(n, dtype=np.int64)[:, None]
    mask = (rows > own) & (sims >= floor)
    pairs_i = np.broadcast_to(own, rows.shape)[mask]
    pairs_j = rows[mask].astype(np.int64)
    pair_sims = sims[mask].astype(np.float64)
    del sims, rows, mask
    report.candidates = len(pairs_i)
    t0 = time.perf_counter()
    rescore = report.method != "exact"
    shares, exact = confirm_pairs(seqs, pairs_i, pairs_j, faces, cfg, rescore, report, scratch_dir)
    if rescore:
        seen = ~np.isnan(exact)
        if seen.any():
            report.code_error_max = float(np.abs(exact[seen] - pair_sims[seen]).max())
        pair_sims = exact
    report.confirmed = int((shares >= cfg.rerun_min_share).sum())
    report.seconds["confirm"] = time.perf_counter() - t0
    out = rerun_rows(seqs, pairs_i, pairs_j, pair_sims, shares, cfg)
    log.info("%s", report.line())
    return out
