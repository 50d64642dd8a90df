"""Top-k distractor scores of every probe for nested distractor subsets, in one streamed pass.

The MegaFace protocol measures identification against distractor sets of growing size (10, 100, ...,
1M) where each set contains the smaller ones. Here the subsets are prefixes of one seeded random order of
the distractor file, so each distractor belongs to a *level*: the smallest subset that holds it. The file
is read in its own order, in batches of rows (memory bounded by the batch, not the file); within a batch
the rows are grouped by level and each group is searched exactly (FAISS brute-force inner product, on a
GPU when FAISS has one); the running top-k of each level is merged per probe. At the end the top-k of
subset j is the merge of levels 0..j. The scores of every probe against the first
``sample`` distractors of the random order are kept whole: the impostor sample for verification and
for the impostor-score fit.
"""

from __future__ import annotations

import logging
import time
from dataclasses import dataclass

import numpy as np

from .features import FeatureSource, normalise_rows

log = logging.getLogger(__name__)


@dataclass
class DistractorScores:
    """What one pass over the distractors yields."""

    sizes: list[int]
    topk: np.ndarray
    """(len(sizes), probes, k) top distractor scores per subset, descending, -inf where fewer than k."""
    impostor_sample: np.ndarray
    """(probes, n) scores of every probe against the first n distractors of the random order."""
    distractors: int
    batch_rows: int
    seconds: float
    device: str


def subset_levels(count: int, sizes: list[int], seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """(level, position) of each distractor row: its position in the seeded random order, and the index
    of the smallest subset (prefix of that order) of ``sizes`` that holds it (``len(sizes)``: none)."""
    order = np.random.default_rng(seed).permutation(count)
    position = np.empty(count, np.int64)
    position[order] = np.arange(count)
    level = np.searchsorted(np.asarray(sizes, np.int64), position, side="right")
    return level.astype(np.int32), position


def batch_rows_for(memory_mb: float, dim: int) -> int:
    """Distractor rows per batch so that the batch buffers stay within ``memory_mb``.

    Per row: the read buffer and its level-sorted, normalised copy (2 x dim float32); FAISS's own blocks
    (a few tens of MB) and the probe-side arrays come on top."""
    per_row = 2 * 4 * int(dim)
    return int(max(256, memory_mb * 2**20 // per_row))


class _Knn:
    """Exact top-k inner products of queries against a block, with FAISS (GPU when FAISS has one)."""

    def __init__(self, queries: np.ndarray, use_gpu: bool | None) -> None:
        from ..overlap.search import _faiss, gpu_available

        self.faiss = _faiss()
        self.queries = np.ascontiguousarray(queries, dtype=np.float32)
        self.gpu = gpu_available() if use_gpu is None else bool(use_gpu)
        self.res = self.faiss.StandardGpuResources() if self.gpu else None  # not exercised without a GPU
        self.device = "faiss-gpu" if self.gpu else "faiss-cpu"

    def __call__(self, block: np.ndarray, k: int) -> np.ndarray:
        """(queries, k) scores, descending, -inf padded where the block has fewer than k rows."""
        kk = min(k, len(block))
        out = np.full((len(self.queries), k), -np.inf, np.float32)
        if kk == 0 or len(self.queries) == 0:
            return out
        block = np.ascontiguousarray(block, dtype=np.float32)
        metric = self.faiss.METRIC_INNER_PRODUCT
        if self.gpu:
            scores, _ = self.faiss.knn_gpu(self.res, self.queries, block, kk, metric=metric)
        else:
            scores, _ = self.faiss.knn(self.queries, block, kk, metric=metric)
        out[:, :kk] = scores
        return out


def merge_topk(a: np.ndarray, b: np.ndarray, k: int) -> np.ndarray:
    """Row-wise top-k of two descending score arrays, descending."""
    c = np.concatenate([a, b], axis=1)
    if c.shape[1] > k:
        c = np.take_along_axis(c, np.argpartition(-c, k - 1, axis=1)[:, :k], axis=1)
    return -np.sort(-c, axis=1)


def search_distractors(
    probes: np.ndarray,
    distractors: FeatureSource,
    sizes: list[int],
    k: int,
    sample: int,
    seed: int = 0,
    memory_mb: float = 512,
    use_gpu: bool | None = None,
    progress: bool = False,
) -> DistractorScores:
    """Stream ``distractors`` once: top-``k`` scores of each (normalised) probe per nested subset of
    ``sizes``, and the full scores against the first ``sample`` distractors of the random order."""
    from tqdm import tqdm

    t0 = time.perf_counter()
    sizes = sorted(int(s) for s in sizes)
    count = distractors.count
    if distractors.dim != probes.shape[1]:
        raise ValueError(f"distractors have dimension {distractors.dim}, probes {probes.shape[1]}")
    level, position = subset_levels(count, sizes, seed)
    knn = _Knn(probes, use_gpu)
    q = len(probes)
    running = np.full((len(sizes), q, k), -np.inf, np.float32)
    sample = int(min(sample, count, sizes[-1]))  # only distractors of some subset are read
    impostors = np.empty((q, sample), np.float32)
    rows = batch_rows_for(memory_mb, distractors.dim)
    bar = tqdm(total=count, desc="distractors", unit="row", disable=not progress)
    start = 0
    for block in distractors.batches(rows):
        n = len(block)
        lv = level[start : start + n]
        pos = position[start : start + n]
        used = lv < len(sizes)
        if used.any():
            idx = np.flatnonzero(used)
            idx = idx[np.argsort(lv[idx], kind="stable")]
            grouped = normalise_rows(block[idx], inplace=True)  # block[idx] is already a copy
            bounds = np.searchsorted(lv[idx], np.arange(len(sizes) + 1))
            for j in range(len(sizes)):
                lo, hi = bounds[j], bounds[j + 1]
                if hi > lo:
                    running[j] = merge_topk(running[j], knn(grouped[lo:hi], k), k)
            in_sample = pos[idx] < sample
            if in_sample.any():
                impostors[:, pos[idx][in_sample]] = probes @ grouped[in_sample].T
            del grouped  # else it would still be alive while the next batch's copy is made
        start += n
        bar.update(n)
    bar.close()
    if start != count:
        raise ValueError(f"{distractors.path}: read {start} rows, expected {count}")
    for j in range(1, len(sizes)):
        running[j] = merge_topk(running[j - 1], running[j], k)
    return DistractorScores(sizes, running, impostors, count, rows, time.perf_counter() - t0, knn.device)
