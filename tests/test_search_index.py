"""Index kinds of the gallery search: chosen by size, built in memory or streamed alike, saved and loaded;
a gallery searched without reading its centres; per-gallery best scores."""

from __future__ import annotations

import hashlib

import numpy as np
import pytest
from test_overlap_fakes import MODEL_ID

from seqbuild.errors import InputError
from seqbuild.overlap.config import OverlapConfig
from seqbuild.overlap.gallery import build_gallery, iter_centres, load_gallery
from seqbuild.overlap.search import (
    EXACT_MAX,
    build_index,
    build_index_blocks,
    choose_kind,
    index_kind,
    load_index,
    save_index,
    search,
)
from seqbuild.overlap.stage import gallery_scores

DIM = 24


def unit(v):
    return (v / np.linalg.norm(v, axis=-1, keepdims=True)).astype(np.float32)


@pytest.fixture(scope="module")
def vectors():
    rng = np.random.default_rng(5)
    groups = unit(rng.normal(size=(20, DIM)))
    return unit(groups[np.arange(3000) % 20] + 0.6 * unit(rng.normal(size=(3000, DIM))))


def test_kind_is_chosen_by_size():
    assert choose_kind("auto", EXACT_MAX) == "flat"
    assert choose_kind("auto", EXACT_MAX + 1) == "ivf_sq8"
    assert choose_kind("auto", 500, exact_max=100) == "ivf_sq8"
    assert choose_kind("ivf", 50) == "flat"  # too few vectors to train cells
    with pytest.raises(ValueError, match="unknown index kind"):
        choose_kind("hnsw", 10)


@pytest.mark.parametrize("kind", ["flat", "ivf", "ivf_sq8"])
def test_streamed_build_equals_in_memory_build_and_survives_a_save(tmp_path, vectors, kind):
    a = build_index(vectors, kind, nprobe=8)
    b = build_index_blocks(
        lambda: (vectors[i : i + 700] for i in range(0, 3000, 700)), 3000, DIM, kind, nprobe=8
    )
    assert index_kind(a) == index_kind(b) == kind
    sa, ia = search(a, vectors[:200], 3)
    sb, ib = search(b, vectors[:200], 3)
    assert np.array_equal(ia, ib) and np.array_equal(sa, sb)
    save_index(b, tmp_path / "i.faiss")
    again = load_index(tmp_path / "i.faiss")
    assert index_kind(again) == kind and np.array_equal(search(again, vectors[:200], 3)[1], ib)
    # an IVF search finds a vector's own entry, and 8-bit codes keep scores within a few thousandths
    assert (ib[:, 0] == np.arange(200)).mean() > 0.95
    assert np.abs(sb[:, 0] - 1.0).max() < (0.01 if kind == "ivf_sq8" else 1e-5)


def test_damaged_index_file_is_a_clear_error(tmp_path):
    (tmp_path / "i.faiss").write_bytes(b"not an index at all")
    with pytest.raises(InputError, match="i.faiss: not a readable FAISS index"):
        load_index(tmp_path / "i.faiss")


def _gallery(tmp_path, vectors, index: str):
    names = [f"id{i:05d}" for i in range(len(vectors))]
    np.save(tmp_path / "feats.npy", vectors)
    (tmp_path / "feats.txt").write_text("\n".join(names) + "\n")
    out = tmp_path / f"g-{index}"
    manifest = build_gallery(
        tmp_path / "feats.npy", out, OverlapConfig(model=MODEL_ID, index=index), progress=False
    )
    return out, manifest


def test_gallery_is_searched_from_its_saved_index_without_reading_centres(tmp_path, vectors):
    path, manifest = _gallery(tmp_path, vectors, "ivf_sq8")
    assert manifest["index"] == "ivf_sq8"
    g = load_gallery(path)
    fingerprint = g.fingerprint  # streamed from the file
    index = g.index("ivf_sq8", nprobe=16)
    assert g._centres is None and index_kind(index) == "ivf_sq8"
    _, ids = search(index, vectors[:100], 1)
    assert (ids[:, 0] == np.arange(100)).mean() > 0.95
    # the fingerprint is the one the loaded centres give
    assert fingerprint.endswith(hashlib.sha1(g.centres.tobytes()).hexdigest()[:12])
    assert load_gallery(path).fingerprint == fingerprint
    assert np.array_equal(np.concatenate(list(iter_centres(path, DIM, batch_rows=7))), g.centres)
    # auto: a gallery this small is searched exactly (built from the centres: the saved index is IVF)
    assert g.index_kind("auto") == "flat" and index_kind(g.index("auto")) == "flat"


def test_gallery_scores_give_every_gallery_best_whatever_the_threshold(tmp_path, vectors):
    path, _ = _gallery(tmp_path, vectors[:300], "flat")
    g = load_gallery(path)
    queries = np.stack([vectors[7], unit(np.ones(DIM))])
    (got,) = gallery_scores(queries, [(g, 0.99)], "auto", 8)
    assert got.identity(0) == "id00007" and got.scores[0] > 0.999
    assert got.identity(1) is not None and got.scores[1] < 0.99  # reported although under the threshold
