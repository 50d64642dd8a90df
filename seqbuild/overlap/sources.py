"""Gallery sources: what a reference gallery is built from, read one item at a time.

* an image folder with one sub-folder per identity (LFW, MS-Celeb-1M, VGGFace2 layout);
* insightface's RecordIO pair ``train.rec`` + ``train.idx`` (MS1M-ArcFace, MS1MV3, ...), read directly;
* precomputed features: an ``.npy`` matrix plus an identity list (``.txt``, one per row), or a Parquet
  file with ``identity`` and ``embedding`` columns (``image_id`` and ``source`` optional).
"""

from __future__ import annotations

import hashlib
import os
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pyarrow as pa

from ..errors import InputError
from ..recordio import RecordIOError, RecordIOReader
from ..storage import read_regular_file

IMAGE_EXTENSIONS = (".jpg", ".jpeg", ".png", ".bmp", ".webp", ".tif", ".tiff")
MANIFEST = "manifest.json"


@dataclass
class GalleryItem:
    """One gallery image to embed (``read`` returns its encoded bytes) or one precomputed ``vector``."""

    image_id: str
    identity: str
    source: str
    read: Callable[[], bytes] | None = None
    vector: np.ndarray | None = None


def source_kind(src: str | os.PathLike[str]) -> str:
    """``gallery``, ``folder``, ``rec``, ``npy`` or ``parquet`` for a gallery source (InputError otherwise)."""
    path = Path(src)
    if not path.exists():
        raise InputError(f"{path}: gallery source not found")
    if path.is_dir():
        if (path / MANIFEST).exists():
            return "gallery"
        if (path / "train.rec").exists():
            return "rec"
        if any(p.is_dir() for p in path.iterdir()):
            return "folder"
        raise InputError(
            f"{path}: not a gallery, a train.rec folder, or an image folder with one sub-folder per identity"
        )
    suffix = path.suffix.lower()
    if suffix == ".rec":
        return "rec"
    if suffix == ".npy":
        return "npy"
    if suffix == ".parquet":
        return "parquet"
    raise InputError(f"{path}: unknown gallery source (expected a folder, .rec, .npy or .parquet)")


def _read_file(path: Path) -> Callable[[], bytes]:
    return lambda: read_regular_file(path)


def iter_image_folder(root: str | os.PathLike[str]) -> Iterator[GalleryItem]:
    """Images of ``ROOT/<identity>/*`` in sorted order (files at the top level are not identities)."""
    root = Path(root)
    for identity_dir in sorted(p for p in root.iterdir() if p.is_dir() and not p.name.startswith(".")):
        for path in sorted(identity_dir.rglob("*")):
            if path.is_file() and path.suffix.lower() in IMAGE_EXTENSIONS and not path.name.startswith("."):
                rel = path.relative_to(root).as_posix()
                yield GalleryItem(rel, identity_dir.name, str(path), read=_read_file(path))


def _rec_paths(src: Path) -> tuple[Path, Path]:
    rec = src / "train.rec" if src.is_dir() else src
    idx = rec.with_suffix(".idx")
    if not idx.exists():
        raise InputError(f"{rec}: the index {idx.name} is missing beside it (needed to find the records)")
    return rec, idx


def _failing(err: str) -> Callable[[], bytes]:
    def fail() -> bytes:
        raise RecordIOError(err)

    return fail


def iter_recordio(src: str | os.PathLike[str]) -> Iterator[GalleryItem]:
    """Image records of an insightface ``train.rec`` (identity = the class label as a string).

    A damaged record (bad framing, a label that is not a class number, no image bytes) is yielded as
    an item whose ``read`` raises, so the build reports it as unreadable and carries on; so is a header
    that does not match the index (every record is then read, and the non-image ones left out).
    """
    rec, idx = _rec_paths(Path(src))
    reader = RecordIOReader(rec, idx)
    try:
        keys = reader.image_keys()
    except RecordIOError as exc:
        yield GalleryItem("rec:0", "?", "rec:0", read=_failing(str(exc)))
        keys = [k for k in reader.keys() if k != 0]  # read every record and report the bad ones
    for key in keys:
        try:
            header, image = reader.read_image(key)
            if header.flag > 0 and not image:
                continue  # a header or identity-range record, not an image
            label = reader.image_label(key, header, image)
        except RecordIOError as exc:
            yield GalleryItem(f"rec:{key}", "?", f"rec:{key}", read=_failing(str(exc)))
            continue
        yield GalleryItem(f"rec:{key}", str(label), f"rec:{key}", read=lambda image=image: image)


def iter_features_npy(
    src: str | os.PathLike[str], identities: str | os.PathLike[str] | None = None
) -> Iterator[GalleryItem]:
    """Rows of an ``.npy`` feature matrix with identities from a text file (default: ``SRC`` with .txt)."""
    src = Path(src)
    ids_path = Path(identities) if identities else src.with_suffix(".txt")
    if not ids_path.exists():
        raise InputError(
            f"{src}: identity list {ids_path} not found (one identity per line, one line per row)"
        )
    try:
        feats = np.load(src, mmap_mode="r")
    except (OSError, ValueError) as exc:
        raise InputError(f"{src}: not a readable .npy file ({exc})") from None
    names = [line.strip() for line in ids_path.read_text().splitlines() if line.strip()]
    if feats.ndim != 2 or len(names) != len(feats):
        raise InputError(f"{src}: {feats.shape} features but {len(names)} identities in {ids_path}")
    for i, name in enumerate(names):
        yield GalleryItem(f"row:{i}", name, f"{src.name}:{i}", vector=np.asarray(feats[i], dtype=np.float32))


def iter_features_parquet(src: str | os.PathLike[str]) -> Iterator[GalleryItem]:
    """Rows of a Parquet file with ``identity`` and ``embedding`` columns (``image_id``/``source`` optional)."""
    import pyarrow.parquet as pq

    src = Path(src)
    try:
        pf = pq.ParquetFile(src)
    except (pa.ArrowInvalid, OSError) as exc:
        raise InputError(f"{src}: not a readable Parquet file ({exc})") from None
    names = pf.schema_arrow.names
    if "identity" not in names or "embedding" not in names:
        raise InputError(f"{src}: features need 'identity' and 'embedding' columns (found {names})")
    row = 0
    for batch in pf.iter_batches(batch_size=8192):
        data = batch.to_pydict()
        for j in range(batch.num_rows):
            image_id = str(data["image_id"][j]) if "image_id" in data else f"row:{row}"
            source = str(data["source"][j]) if "source" in data else f"{src.name}:{row}"
            vec = data["embedding"][j]
            vec = np.asarray(vec if vec is not None else [], dtype=np.float32)
            yield GalleryItem(image_id, str(data["identity"][j]), source, vector=vec)
            row += 1


def iter_source(
    src: str | os.PathLike[str], identities: str | None = None
) -> tuple[str, Iterator[GalleryItem]]:
    """The kind of ``src`` and its items."""
    kind = source_kind(src)
    if kind == "gallery":
        raise InputError(f"{src}: already a built gallery")
    if kind == "folder":
        return kind, iter_image_folder(src)
    if kind == "rec":
        return kind, iter_recordio(src)
    if kind == "npy":
        return kind, iter_features_npy(src, identities)
    return kind, iter_features_parquet(src)


def source_fingerprint(src: str | os.PathLike[str]) -> str:
    """A hash of a source's files (names, sizes, modification times): changes when the source changes."""
    path = Path(src).resolve()
    h = hashlib.sha1(str(path).encode())
    files = [path] if path.is_file() else sorted(p for p in path.rglob("*") if p.is_file())
    for p in files:
        st = p.stat()
        h.update(f"{p.relative_to(path.parent)}\0{st.st_size}\0{st.st_mtime_ns}\n".encode())
    return h.hexdigest()[:16]
