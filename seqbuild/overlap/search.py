"""Nearest neighbours by cosine similarity with FAISS: exact or inverted-file (IVF), CPU or GPU.

Vectors are L2-normalised float32, so inner product = cosine. Index kinds (:data:`INDEX_KINDS`):

- ``flat``: exact (IndexFlatIP), a scan of every vector per query; 4 bytes per dimension per vector.
- ``ivf``: IVF with the full vectors (IndexIVFFlat): k-means cells, ``nprobe`` cells searched per query;
  scores are exact, the neighbours approximate. 4 bytes per dimension per vector.
- ``ivf_sq8``: IVF with each vector's residual to its cell stored in 8 bits per dimension
  (IndexIVFScalarQuantizer): a quarter of the memory; scores within about 1e-3 of exact.
- ``auto``: ``flat`` up to ``exact_max`` vectors (where a scan is cheap and no training is needed),
  ``ivf_sq8`` beyond (:func:`choose_kind`).

The cells are trained on a sample (:func:`ivf_train_size`), so an index can be built from vectors that
arrive in batches without holding all of them (:func:`new_index`, then ``add`` batch by batch). A GPU
copy is used only when FAISS reports a GPU (``faiss.get_num_gpus() > 0``, i.e. the faiss-gpu build).
"""

from __future__ import annotations

import math
import os
from collections.abc import Callable, Iterable
from pathlib import Path

import numpy as np

from ..errors import InputError, requires
from ..storage import atomic_path


def _faiss():
    return requires("faiss", "gpu")  # faiss-cpu is a core dependency; faiss-gpu provides the same module


def faiss_module():
    """The ``faiss`` module (faiss-cpu or faiss-gpu), imported when first needed."""
    return _faiss()


def normalise(vectors: np.ndarray) -> np.ndarray:
    """Rows scaled to unit L2 norm as contiguous float32 (all-zero rows stay zero)."""
    x = np.ascontiguousarray(np.asarray(vectors, dtype=np.float32))
    if x.ndim != 2:
        raise ValueError(f"expected a 2-d array of vectors, got shape {x.shape}")
    norms = np.linalg.norm(x, axis=1, keepdims=True)
    return np.ascontiguousarray(x / np.maximum(norms, 1e-12), dtype=np.float32)


def group_centres(vectors: np.ndarray, groups: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Per group: the normalised mean of the normalised vectors -> (group keys, counts, centres)."""
    x = normalise(vectors)
    keys, inverse, counts = np.unique(np.asarray(groups), return_inverse=True, return_counts=True)
    sums = np.zeros((len(keys), x.shape[1]), dtype=np.float64)
    np.add.at(sums, inverse, x)
    return keys, counts, normalise(sums)


INDEX_KINDS = ("auto", "flat", "ivf", "ivf_sq8")
"""Index kinds a config can name (see the module docstring)."""

EXACT_MAX = 100_000
"""``auto`` searches exactly up to this many vectors: at 512-d a scan of 100,000 vectors costs about
as much per query as an IVF search with its cells trained, and needs no training (docs/benchmarks.md,
"Global steps")."""

MIN_TRAIN_PER_CELL = 39
"""FAISS's minimum number of training points per IVF cell."""


CELLS_PER_ROOT = 4.0
"""Index builds use ``4 sqrt(n)`` IVF cells: a query then scans ``nlist + nprobe n / nlist`` vectors,
three times fewer than with ``sqrt(n)`` cells at nprobe 32, and finer cells follow the clusters of
face embeddings more closely (docs/benchmarks.md, "Global steps")."""


def ivf_nlist(n: int, per_root: float = 1.0) -> int:
    """IVF cells for ``n`` vectors: about ``per_root`` sqrt(n), with at least 39 training points per cell
    (FAISS's minimum)."""
    return int(max(1, min(round(per_root * math.sqrt(n)), n // MIN_TRAIN_PER_CELL)))


def ivf_train_size(nlist: int, n: int, per_cell: int = 64) -> int:
    """Vectors to train ``nlist`` cells on: ``per_cell`` per cell (k-means needs no more), at most ``n``."""
    return int(min(n, per_cell * nlist))


def choose_kind(kind: str, n: int, exact_max: int = EXACT_MAX) -> str:
    """The concrete index kind for ``kind`` over ``n`` vectors (``auto``: flat up to ``exact_max``, else
    ivf_sq8; an IVF kind too small to train its cells falls back to flat)."""
    if kind not in INDEX_KINDS:
        raise ValueError(f"unknown index kind {kind!r} ({' | '.join(INDEX_KINDS)})")
    if kind == "auto":
        kind = "flat" if n <= exact_max else "ivf_sq8"
    if kind != "flat" and n < 2 * MIN_TRAIN_PER_CELL:
        return "flat"  # an IVF index needs enough points to train its cells
    return kind


def bytes_per_vector(kind: str, dim: int) -> int:
    """Memory an index of ``kind`` takes per stored vector (codes plus, for IVF, its 8-byte id)."""
    if kind == "flat":
        return 4 * dim
    if kind == "ivf":
        return 4 * dim + 8
    if kind == "ivf_sq8":
        return dim + 8
    raise ValueError(f"unknown index kind {kind!r}")


def new_index(kind: str, dim: int, nlist: int = 1):
    """An empty CPU inner-product index of a concrete ``kind`` (IVF kinds still to be trained)."""
    faiss = _faiss()
    if kind == "flat":
        return faiss.IndexFlatIP(dim)
    quantizer = faiss.IndexFlatIP(dim)
    if kind == "ivf":
        index = faiss.IndexIVFFlat(quantizer, dim, nlist, faiss.METRIC_INNER_PRODUCT)
    elif kind == "ivf_sq8":
        index = faiss.IndexIVFScalarQuantizer(
            quantizer, dim, nlist, faiss.ScalarQuantizer.QT_8bit, faiss.METRIC_INNER_PRODUCT
        )
    else:
        raise ValueError(f"unknown index kind {kind!r} (flat | ivf | ivf_sq8)")
    return index


def set_nprobe(index, nprobe: int) -> None:
    """Cells searched per query of a CPU IVF index (set it before moving the index to a GPU, whose copy
    keeps it); nothing for other indexes."""
    faiss = _faiss()
    ivf = faiss.downcast_index(index)
    if isinstance(ivf, faiss.IndexIVF):
        ivf.nprobe = int(min(nprobe, ivf.nlist))


def build_index(
    vectors: np.ndarray,
    kind: str = "flat",
    nlist: int = 0,
    nprobe: int = 32,
    train_size: int = 0,
    seed: int = 0,
    exact_max: int = EXACT_MAX,
):
    """A CPU FAISS inner-product index over ``vectors`` (normalised here) of ``kind`` (see INDEX_KINDS)."""
    x = normalise(vectors)
    dim = x.shape[1]
    kind = choose_kind(kind, len(x), exact_max)
    if kind == "flat":
        index = new_index("flat", dim)
    else:
        nlist = nlist or ivf_nlist(len(x), CELLS_PER_ROOT)
        index = new_index(kind, dim, nlist)
        n_train = train_size or ivf_train_size(nlist, len(x))
        n_train = min(len(x), n_train)
        # The same sample, in row order, as build_index_blocks draws: both build the same index.
        chosen = np.sort(np.random.default_rng(seed).choice(len(x), n_train, replace=False))
        sample = x if n_train == len(x) else x[chosen]
        index.train(sample)
        set_nprobe(index, nprobe)
    index.add(x)
    return index


def build_index_blocks(
    blocks: Callable[[], Iterable[np.ndarray]],
    n: int,
    dim: int,
    kind: str = "auto",
    nlist: int = 0,
    nprobe: int = 32,
    seed: int = 0,
    exact_max: int = EXACT_MAX,
):
    """The index :func:`build_index` makes, over ``n`` vectors that ``blocks()`` yields in row blocks
    (called once for the training sample and once to add): never more than one block and the training
    sample in memory besides the index."""
    kind = choose_kind(kind, n, exact_max)
    if kind == "flat":
        index = new_index("flat", dim)
    else:
        nlist = nlist or ivf_nlist(n, CELLS_PER_ROOT)
        index = new_index(kind, dim, nlist)
        size = ivf_train_size(nlist, n)
        chosen = np.sort(np.random.default_rng(seed).choice(n, size, replace=False))
        sample, start = [], 0
        for block in blocks():
            lo, hi = np.searchsorted(chosen, [start, start + len(block)])
            sample.append(normalise(block[chosen[lo:hi] - start]))
            start += len(block)
        index.train(np.concatenate(sample))
        del sample
        set_nprobe(index, nprobe)
    for block in blocks():
        index.add(normalise(block))
    return index


def gpu_available() -> bool:
    """True when the installed FAISS can use a GPU."""
    faiss = _faiss()
    return hasattr(faiss, "StandardGpuResources") and faiss.get_num_gpus() > 0


def to_search_device(index, use_gpu: bool | None = None):
    """The index moved to all GPUs when FAISS has them (and ``use_gpu`` is not False), else unchanged."""
    if use_gpu is False or (use_gpu is None and not gpu_available()):
        return index
    faiss = _faiss()
    return faiss.index_cpu_to_all_gpus(index)  # not measured here: no GPU on the development machine


def search(index, queries: np.ndarray, k: int = 1, batch: int = 65536) -> tuple[np.ndarray, np.ndarray]:
    """Top-``k`` (scores, ids) of each normalised query; ids are -1 where the index has fewer than k."""
    q = normalise(queries)
    if len(q) == 0 or index.ntotal == 0:
        return np.full((len(q), k), -np.inf, np.float32), np.full((len(q), k), -1, np.int64)
    scores, ids = [], []
    for start in range(0, len(q), batch):
        s, i = index.search(q[start : start + batch], k)
        scores.append(s)
        ids.append(i)
    return np.concatenate(scores), np.concatenate(ids)


def save_index(index, path: str | os.PathLike[str]) -> None:
    """Write a (CPU) index to ``path`` atomically (straight to the file: no second copy in memory)."""
    faiss = _faiss()
    with atomic_path(path) as tmp:
        faiss.write_index(index, str(tmp))


def load_index(path: str | os.PathLike[str]):
    """Read an index written by :func:`save_index` (InputError naming the file when unreadable)."""
    faiss = _faiss()
    path = Path(path)
    if not path.is_file():
        raise InputError(f"{path}: not a readable FAISS index (no such file)")
    try:
        return faiss.read_index(str(path))
    except (OSError, RuntimeError) as exc:
        raise InputError(f"{path}: not a readable FAISS index ({str(exc).splitlines()[0][:120]})") from None


def index_kind(index) -> str:
    """``flat``, ``ivf`` or ``ivf_sq8`` for an index made by :func:`build_index`."""
    faiss = _faiss()
    cpu = faiss.downcast_index(index)
    if isinstance(cpu, faiss.IndexIVFScalarQuantizer):
        return "ivf_sq8"
    return "ivf" if isinstance(cpu, faiss.IndexIVF) else "flat"
