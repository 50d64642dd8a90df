"""Nearest gallery identity by cosine similarity with FAISS: exact (IndexFlatIP) or IVF, CPU or GPU.

Vectors are L2-normalised float32, so inner product = cosine. The exact index is the default; the IVF
index (inverted lists over k-means cells, searched ``nprobe`` cells at a time) is for galleries of
millions of identities or images, where an exact scan per query becomes the cost. A GPU index is used
only when FAISS reports a GPU (``faiss.get_num_gpus() > 0``, i.e. the faiss-gpu build).
"""

from __future__ import annotations

import math
import os
from pathlib import Path

import numpy as np

from ..errors import InputError, requires
from ..storage import write_bytes_atomic


def _faiss():
    return requires("faiss", "gpu")  # faiss-cpu is a core dependency; faiss-gpu provides the same module


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


def ivf_nlist(n: int) -> int:
    """IVF cells for ``n`` vectors: about sqrt(n), with at least 39 training points per cell (FAISS's minimum)."""
    return int(max(1, min(round(math.sqrt(n)), n // 39)))


def gpu_available() -> bool:
    """True when the installed FAISS can use a GPU."""
    faiss = _faiss()
    return hasattr(faiss, "StandardGpuResources") and faiss.get_num_gpus() > 0


def build_index(
    vectors: np.ndarray,
    kind: str = "flat",
    nlist: int = 0,
    nprobe: int = 32,
    train_size: int = 0,
    seed: int = 0,
):
    """A CPU FAISS inner-product index over ``vectors`` (normalised here): ``flat`` exact or ``ivf``."""
    faiss = _faiss()
    x = normalise(vectors)
    dim = x.shape[1]
    if kind == "flat" or (kind == "ivf" and len(x) < 2 * 39):
        # An IVF index needs enough points to train its cells; a tiny gallery is searched exactly.
        index = faiss.IndexFlatIP(dim)
    elif kind == "ivf":
        nlist = nlist or ivf_nlist(len(x))
        quantizer = faiss.IndexFlatIP(dim)
        index = faiss.IndexIVFFlat(quantizer, dim, nlist, faiss.METRIC_INNER_PRODUCT)
        # 64 points per cell is plenty for k-means here; more only slows training.
        n_train = min(len(x), train_size or 64 * nlist)
        sample = (
            x if n_train == len(x) else x[np.random.default_rng(seed).choice(len(x), n_train, replace=False)]
        )
        index.train(sample)
        index.nprobe = min(nprobe, nlist)
    else:
        raise ValueError(f"unknown index kind {kind!r} (flat | ivf)")
    index.add(x)
    return index


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
    """Write a (CPU) index to ``path`` atomically."""
    faiss = _faiss()
    write_bytes_atomic(path, faiss.serialize_index(index).tobytes())


def load_index(path: str | os.PathLike[str]):
    """Read an index written by :func:`save_index` (InputError naming the file when unreadable)."""
    faiss = _faiss()
    path = Path(path)
    try:
        data = np.fromfile(path, dtype=np.uint8)
        return faiss.deserialize_index(data)
    except (OSError, RuntimeError) as exc:
        raise InputError(f"{path}: not a readable FAISS index ({str(exc).splitlines()[0][:120]})") from None


def index_kind(index) -> str:
    """``flat`` or ``ivf`` for an index made by :func:`build_index`."""
    faiss = _faiss()
    return "ivf" if isinstance(faiss.downcast_index(index), faiss.IndexIVF) else "flat"
