"""Feature sets for identification: the formats, reading in row batches with bounded memory, and
embedding image sources once into the project's own format.

Formats (docs/evaluation.md has the details):

* ``NAME.npy`` (float32 ``(n, d)``) + ``NAME.txt`` (one identity per line, one line per row) and,
  optionally, ``NAME.json`` (``{"model": "facenet", ...}``): the project's format, the same pair that
  `seqbuild gallery build` reads. Read in batches straight from the file: memory does not grow with n.
* ``NAME.npz``: arrays ``features`` ``(n, d)`` and ``labels`` ``(n,)`` (strings), optionally ``ids`` and
  a 0-d string ``model``. Read whole (meant for probe sets).
* a MegaFace feature tree: a folder of per-image ``*.bin`` files in the MegaFace devkit layout (int32
  rows, cols, element size, OpenCV type 5 = float32; then rows x cols float32); the identity is the
  folder holding the file. Read one file at a time.
* ``NAME.pkl``: a pickled ``{image path: vector}`` dict, as the SeqFace authors publish their test
  features; the identity is the folder in the path. Only plain containers and numpy arrays are
  unpickled.
* ``NAME.parquet`` with ``identity`` and ``embedding`` columns (the gallery's features format).

Image sources, an image folder with one sub-folder per identity or an insightface ``train.rec`` +
``train.idx``, are detected, aligned and embedded as gallery photos are (``seqbuild.overlap.gallery``)
and written once as ``NAME.npy/.txt/.json`` in a features folder, where a later run with the same
source, model and options finds them.
"""

from __future__ import annotations

import io
import json
import logging
import os
import pickle
import struct
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path, PurePosixPath
from typing import Any

import numpy as np

from ..errors import InputError
from ..storage import atomic_path, write_json_atomic

log = logging.getLogger(__name__)

FEATURE_KINDS = ("npy", "npz", "megaface", "pkl", "parquet")
IMAGE_KINDS = ("folder", "rec")
MEGAFACE_HEADER = struct.Struct("<4i")
CV_32F = 5
FEATURES_FORMAT = 1


@dataclass
class FeatureSet:
    """A feature set in memory: L2-normalised float32 rows with their identity labels."""

    vectors: np.ndarray
    labels: np.ndarray
    source: str
    model: str | None = None

    def __len__(self) -> int:
        return len(self.vectors)


def normalise_rows(x: np.ndarray, inplace: bool = False) -> np.ndarray:
    """Rows scaled to unit length as contiguous float32 (all-zero rows stay zero); ``inplace`` reuses a
    float32 ``x`` instead of copying it (no full-size temporary either way: norms come from einsum)."""
    x = np.asarray(x, dtype=np.float32) if inplace else np.array(x, dtype=np.float32)
    x = np.ascontiguousarray(x)
    norms = np.sqrt(np.einsum("ij,ij->i", x, x))
    x /= np.maximum(norms, 1e-12)[:, None]
    return x


# --------------------------------------------------------------------------- kinds


def _first_file(root: Path) -> Path | None:
    for folder, dirs, files in os.walk(root):
        dirs[:] = sorted(d for d in dirs if not d.startswith("."))
        for name in sorted(files):
            if not name.startswith("."):
                return Path(folder) / name
    return None


def source_kind(src: str | os.PathLike[str]) -> str:
    """``npy``, ``npz``, ``megaface``, ``pkl``, ``parquet`` (features) or ``folder``, ``rec`` (images)."""
    path = Path(src)
    if not path.exists():
        raise InputError(f"{path}: not found")
    if path.is_dir():
        if (path / "train.rec").exists():
            return "rec"
        first = _first_file(path)
        if first is None:
            raise InputError(f"{path}: an empty folder")
        if first.suffix.lower() == ".bin":
            return "megaface"
        if any(p.is_dir() for p in path.iterdir()):
            return "folder"
        raise InputError(f"{path}: expected one sub-folder per identity, a train.rec folder or .bin features")
    suffix = path.suffix.lower()
    kinds = {
        ".rec": "rec",
        ".npy": "npy",
        ".npz": "npz",
        ".pkl": "pkl",
        ".pickle": "pkl",
        ".parquet": "parquet",
    }
    if suffix in kinds:
        return kinds[suffix]
    raise InputError(
        f"{path}: unknown input (expected an image folder, train.rec, .npy (+ .txt), .npz, .pkl, .parquet "
        "or a folder of MegaFace .bin features)"
    )


# --------------------------------------------------------------------------- readers


class FeatureSource:
    """A feature set on disk: its size, dimension and recorded model, read in batches of rows."""

    kind = ""

    def __init__(self, path: Path, count: int, dim: int, model: str | None) -> None:
        self.path = path
        self.count = count
        self.dim = dim
        self.model = model

    def batches(self, rows: int) -> Iterator[np.ndarray]:
        """Consecutive float32 blocks of at most ``rows`` rows, as stored (not normalised)."""
        raise NotImplementedError

    def labels(self) -> Iterator[str]:
        """The identity of each row, in order."""
        raise NotImplementedError

    def load(self) -> FeatureSet:
        """All rows, normalised, with their labels (for probe sets, which are held in memory)."""
        vectors = np.empty((self.count, self.dim), np.float32)
        start = 0
        for block in self.batches(65536):
            vectors[start : start + len(block)] = block
            start += len(block)
        labels = np.array(list(self.labels()), dtype=object)
        return FeatureSet(normalise_rows(vectors), labels, str(self.path), self.model)


def _sidecar_model(path: Path) -> str | None:
    meta = path.with_suffix(".json")
    if not meta.is_file():
        return None
    try:
        data = json.loads(meta.read_text())
    except ValueError as exc:
        raise InputError(f"{meta}: not valid JSON ({exc})") from None
    model = data.get("model") if isinstance(data, dict) else None
    return str(model) if model else None


class NpyFeatures(FeatureSource):
    """``NAME.npy`` + ``NAME.txt``: rows read with plain file reads into one reused buffer."""

    kind = "npy"

    def __init__(self, path: Path, labels_path: Path | None = None) -> None:
        self.labels_path = labels_path or path.with_suffix(".txt")
        try:
            with open(path, "rb") as fh:
                version = np.lib.format.read_magic(fh)
                if version == (1, 0):
                    shape, fortran, dtype = np.lib.format.read_array_header_1_0(fh)
                else:
                    shape, fortran, dtype = np.lib.format.read_array_header_2_0(fh)
                self.offset = fh.tell()
        except (OSError, ValueError) as exc:
            raise InputError(f"{path}: not a readable .npy file ({exc})") from None
        if len(shape) != 2 or fortran or dtype.kind != "f":
            raise InputError(f"{path}: expected a C-order 2-d float array, got {dtype} {shape}")
        self.dtype = dtype
        expected = self.offset + shape[0] * shape[1] * dtype.itemsize
        if path.stat().st_size < expected:
            raise InputError(f"{path}: truncated ({path.stat().st_size} bytes, {expected} expected)")
        if not self.labels_path.is_file():
            raise InputError(f"{path}: identity list {self.labels_path} not found (one identity per row)")
        with open(self.labels_path, "rb") as fh:
            lines = sum(1 for line in fh if line.strip())
        if lines != shape[0]:
            raise InputError(f"{path}: {shape[0]} rows but {lines} identities in {self.labels_path}")
        super().__init__(path, int(shape[0]), int(shape[1]), _sidecar_model(path))

    def batches(self, rows: int) -> Iterator[np.ndarray]:
        """Blocks read with ``readinto``: only the buffer is resident, never the whole file."""
        rows = max(int(rows), 1)
        buf = np.empty((min(rows, max(self.count, 1)), self.dim), self.dtype)
        with open(self.path, "rb") as fh:
            fh.seek(self.offset)
            start = 0
            while start < self.count:
                n = min(rows, self.count - start)
                view = buf[:n]
                got = fh.readinto(memoryview(view).cast("B"))
                if got != view.nbytes:
                    raise InputError(f"{self.path}: truncated at row {start}")
                yield view.astype(np.float32, copy=False)
                start += n

    def labels(self) -> Iterator[str]:
        """Lines of the identity list (blank lines skipped)."""
        with open(self.labels_path, encoding="utf-8") as fh:
            for line in fh:
                if line.strip():
                    yield line.strip()


class ArrayFeatures(FeatureSource):
    """Features already in memory (``.npz``, ``.pkl``, ``.parquet``)."""

    def __init__(
        self, path: Path, kind: str, vectors: np.ndarray, labels: list[str], model: str | None
    ) -> None:
        vectors = np.asarray(vectors)
        if vectors.ndim != 2 or vectors.dtype.kind != "f" or len(vectors) != len(labels):
            raise InputError(f"{path}: {vectors.shape} {vectors.dtype} features for {len(labels)} labels")
        self.kind = kind
        self.vectors = vectors
        self._labels = labels
        super().__init__(path, int(vectors.shape[0]), int(vectors.shape[1]), model)

    def batches(self, rows: int) -> Iterator[np.ndarray]:
        """Slices of the array."""
        rows = max(int(rows), 1)
        for start in range(0, self.count, rows):
            yield np.asarray(self.vectors[start : start + rows], dtype=np.float32)

    def labels(self) -> Iterator[str]:
        """The labels, in order."""
        yield from self._labels


def read_npz(path: Path) -> ArrayFeatures:
    """``features`` + ``labels`` (+ ``model``) of an ``.npz`` file (no pickled objects allowed)."""
    try:
        with np.load(path, allow_pickle=False) as data:
            names = set(data.files)
            if not {"features", "labels"} <= names:
                raise InputError(
                    f"{path}: an .npz feature file needs 'features' and 'labels' (has {sorted(names)})"
                )
            vectors = data["features"]
            labels = [str(v) for v in data["labels"].tolist()]
            model = str(data["model"]) if "model" in names else None
    except (OSError, ValueError) as exc:
        raise InputError(f"{path}: not a readable .npz file ({str(exc).splitlines()[0]})") from None
    return ArrayFeatures(path, "npz", vectors, labels, model)


class _FeaturePickle(pickle.Unpickler):
    """Refuses every global except numpy's array reconstruction (a pickle can run any callable)."""

    _ALLOWED = {
        ("numpy.core.multiarray", "_reconstruct"),
        ("numpy._core.multiarray", "_reconstruct"),
        ("numpy", "ndarray"),
        ("numpy", "dtype"),
        ("numpy.core.multiarray", "scalar"),
        ("numpy._core.multiarray", "scalar"),
        ("_codecs", "encode"),
        ("copy_reg", "_reconstructor"),
        ("copyreg", "_reconstructor"),
        ("__builtin__", "object"),
        ("builtins", "object"),
    }

    def find_class(self, module: str, name: str) -> Any:
        """Only the numpy array reconstructors."""
        if (module, name) in self._ALLOWED:
            import importlib

            return getattr(importlib.import_module(module), name)
        raise pickle.UnpicklingError(f"global {module}.{name} is not allowed in a feature pickle")


def identity_of_path(key: str) -> str:
    """The identity a per-image feature belongs to: the folder its image is in."""
    parent = PurePosixPath(key.replace("\\", "/")).parent.name
    return parent or "?"


def read_pickle(path: Path) -> ArrayFeatures:
    """``{image path: vector}`` pickles (Python 2 or 3), identity = the image's folder."""
    try:
        obj = _FeaturePickle(io.BytesIO(path.read_bytes()), encoding="latin1").load()
    except OSError as exc:
        raise InputError(f"{path}: cannot read ({exc.strerror})") from None
    except pickle.UnpicklingError as exc:
        raise InputError(f"{path}: refused: {exc}") from None
    except Exception as exc:
        raise InputError(f"{path}: not a feature pickle ({type(exc).__name__}: {exc})") from None
    if not isinstance(obj, dict) or not obj:
        raise InputError(f"{path}: expected a non-empty {{image path: vector}} dict")
    keys = sorted(obj, key=str)
    try:
        vectors = np.stack([np.asarray(obj[k], dtype=np.float32).ravel() for k in keys])
    except ValueError as exc:
        raise InputError(f"{path}: features of different lengths ({exc})") from None
    return ArrayFeatures(path, "pkl", vectors, [identity_of_path(str(k)) for k in keys], None)


def read_parquet(path: Path) -> ArrayFeatures:
    """The gallery features format: a Parquet file with ``identity`` and ``embedding`` columns."""
    from ..overlap.gallery import iter_features_parquet

    labels, vectors = [], []
    for item in iter_features_parquet(path):
        labels.append(item.identity)
        vectors.append(item.vector)
    if not vectors:
        raise InputError(f"{path}: no features")
    try:
        stacked = np.stack(vectors)
    except ValueError as exc:
        raise InputError(f"{path}: features of different lengths ({exc})") from None
    return ArrayFeatures(path, "parquet", stacked, labels, None)


def _walk_bins(root: Path) -> Iterator[Path]:
    for folder, dirs, files in os.walk(root):
        dirs.sort()
        for name in sorted(files):
            if name.endswith(".bin") and not name.startswith("."):
                yield Path(folder) / name


def read_megaface_bin(path: Path) -> np.ndarray:
    """One MegaFace devkit feature file: header (rows, cols, element size, type) then float32 values."""
    try:
        data = path.read_bytes()
    except OSError as exc:
        raise InputError(f"{path}: cannot read ({exc.strerror})") from None
    if len(data) < MEGAFACE_HEADER.size:
        raise InputError(f"{path}: too short for a MegaFace feature file")
    rows, cols, size, cv_type = MEGAFACE_HEADER.unpack_from(data)
    n = rows * cols
    if size != 4 or cv_type != CV_32F or n <= 0 or len(data) != MEGAFACE_HEADER.size + 4 * n:
        raise InputError(
            f"{path}: not a float32 MegaFace feature (rows {rows}, cols {cols}, size {size}, type {cv_type}, "
            f"{len(data)} bytes)"
        )
    return np.frombuffer(data, dtype="<f4", offset=MEGAFACE_HEADER.size).astype(np.float32)


def write_megaface_bin(path: str | os.PathLike[str], vector: np.ndarray) -> None:
    """Write one vector in the MegaFace devkit layout (for exporting and for tests)."""
    v = np.asarray(vector, dtype="<f4").ravel()
    Path(path).parent.mkdir(parents=True, exist_ok=True)
    Path(path).write_bytes(MEGAFACE_HEADER.pack(len(v), 1, 4, CV_32F) + v.tobytes())


class MegaFaceFeatures(FeatureSource):
    """A folder tree of per-image MegaFace ``.bin`` features, walked in sorted order, one file at a time."""

    kind = "megaface"

    def __init__(self, root: Path) -> None:
        count, first = 0, None
        for p in _walk_bins(root):
            first = first or p
            count += 1
        if first is None:
            raise InputError(f"{root}: no .bin feature files")
        super().__init__(root, count, len(read_megaface_bin(first)), _sidecar_model(root))

    def batches(self, rows: int) -> Iterator[np.ndarray]:
        """Blocks of ``rows`` files."""
        rows = max(int(rows), 1)
        buf = np.empty((min(rows, self.count), self.dim), np.float32)
        n = 0
        for p in _walk_bins(self.path):
            v = read_megaface_bin(p)
            if len(v) != self.dim:
                raise InputError(f"{p}: {len(v)} values where the other features have {self.dim}")
            buf[n] = v
            n += 1
            if n == len(buf):
                yield buf
                n = 0
        if n:
            yield buf[:n]

    def labels(self) -> Iterator[str]:
        """The folder of each file, relative to the root (MegaFace's identity folders)."""
        for p in _walk_bins(self.path):
            yield p.parent.relative_to(self.path).as_posix() if p.parent != self.path else "?"


def open_features(src: str | os.PathLike[str], labels: str | os.PathLike[str] | None = None) -> FeatureSource:
    """A feature source for a features input (InputError for image inputs, which must be embedded first)."""
    path = Path(src)
    kind = source_kind(path)
    if kind == "npy":
        return NpyFeatures(path, Path(labels) if labels else None)
    if kind == "npz":
        return read_npz(path)
    if kind == "pkl":
        return read_pickle(path)
    if kind == "parquet":
        return read_parquet(path)
    if kind == "megaface":
        return MegaFaceFeatures(path)
    raise InputError(f"{path}: an image source ({kind}); embed it with extract_features first")


# --------------------------------------------------------------------------- writing


def _npy_header(rows: int, dim: int) -> bytes:
    buf = io.BytesIO()
    np.lib.format.write_array_header_1_0(buf, {"descr": "<f4", "fortran_order": False, "shape": (rows, dim)})
    return buf.getvalue()


class NpyFeatureWriter:
    """Streams rows into ``STEM.npy`` and labels into ``STEM.txt``; both appear (atomically) on ``close``."""

    def __init__(self, stem: str | os.PathLike[str], dim: int) -> None:
        self.stem = Path(stem)
        self.dim = int(dim)
        self.rows = 0
        self.stem.parent.mkdir(parents=True, exist_ok=True)
        self._npy_ctx = atomic_path(self.stem.with_suffix(".npy"))
        self._txt_ctx = atomic_path(self.stem.with_suffix(".txt"))
        self._npy = open(self._npy_ctx.__enter__(), "wb")  # noqa: SIM115 - closed in close()
        self._txt = open(self._txt_ctx.__enter__(), "w", encoding="utf-8")  # noqa: SIM115
        self._header_len = len(_npy_header(0, self.dim))
        self._npy.write(_npy_header(0, self.dim))

    def write(self, vectors: np.ndarray, labels: list[str]) -> None:
        """Append rows and their identities (identities may not contain line breaks)."""
        v = np.ascontiguousarray(vectors, dtype="<f4")
        if v.ndim != 2 or v.shape[1] != self.dim or len(v) != len(labels):
            raise ValueError(f"expected ({len(labels)}, {self.dim}) features, got {v.shape}")
        for label in labels:
            if "\n" in label or "\r" in label or not label.strip():
                raise InputError(f"identity {label!r} cannot be written one per line")
        self._npy.write(v.tobytes())
        self._txt.write("".join(f"{label.strip()}\n" for label in labels))
        self.rows += len(v)

    def close(self, ok: bool = True) -> None:
        """Write the final header and move both files into place (``ok=False`` discards them)."""
        header = _npy_header(self.rows, self.dim)
        if len(header) != self._header_len:
            raise RuntimeError("npy header length changed")  # cannot happen below 10^40 rows
        self._npy.seek(0)
        self._npy.write(header)
        self._npy.close()
        self._txt.close()
        exc = None if ok else (RuntimeError, RuntimeError("discarded"), None)
        for ctx in (self._npy_ctx, self._txt_ctx):
            if exc is None:
                ctx.__exit__(None, None, None)
            else:
                try:
                    ctx.__exit__(*exc)
                except RuntimeError:
                    pass


def write_features(
    stem: str | os.PathLike[str], vectors: np.ndarray, labels: list[str], model: str | None = None
) -> Path:
    """Write an in-memory feature set as ``STEM.npy`` + ``STEM.txt`` (+ ``STEM.json`` with the model)."""
    writer = NpyFeatureWriter(stem, np.asarray(vectors).shape[1])
    try:
        writer.write(np.asarray(vectors), [str(x) for x in labels])
    except BaseException:
        writer.close(ok=False)
        raise
    writer.close()
    if model:
        write_json_atomic(Path(stem).with_suffix(".json"), {"model": model, "format": FEATURES_FORMAT})
    return Path(stem).with_suffix(".npy")


# --------------------------------------------------------------------------- images -> features


def extract_features(
    src: str | os.PathLike[str],
    stem: str | os.PathLike[str],
    embedder: Any,
    model: str,
    options: dict[str, Any],
    detector: Any | None = None,
    device: str = "auto",
    chunk_size: int = 256,
    progress: bool = False,
) -> dict[str, Any]:
    """Detect, align and embed every image of an image folder or ``train.rec`` into ``STEM.npy/.txt``;
    ``STEM.json`` (written last) records the source, model, options and what became of each image."""
    from tqdm import tqdm

    from ..overlap.config import OverlapConfig
    from ..overlap.gallery import PhotoEmbedder
    from ..overlap.sources import iter_source, source_fingerprint

    cfg = OverlapConfig()
    prealigned = bool(options.get("aligned", False))
    if detector is None and not prealigned:
        from ..ingest.detect import create_detector

        detector = create_detector(
            cfg.detector,
            device=device,
            min_face=cfg.min_face,
            threshold=cfg.det_threshold,
            max_side=cfg.max_side,
        )
    photos = PhotoEmbedder(embedder, detector, cfg.dominant_ratio, prealigned)
    kind, items = iter_source(src)
    writer = NpyFeatureWriter(stem, int(embedder.dim))
    statuses: dict[str, int] = {}
    bar = tqdm(desc=f"embed {Path(src).name}", unit="img", disable=not progress)
    try:
        chunk = []
        for item in items:
            chunk.append(item)
            if len(chunk) >= chunk_size:
                _embed_chunk(chunk, photos, writer, statuses, cfg.batch_size)
                bar.update(len(chunk))
                chunk = []
        if chunk:
            _embed_chunk(chunk, photos, writer, statuses, cfg.batch_size)
            bar.update(len(chunk))
    except BaseException:
        writer.close(ok=False)
        raise
    finally:
        bar.close()
    writer.close()
    manifest = {
        "format": FEATURES_FORMAT,
        "model": model,
        "source": str(Path(src).resolve()),
        "source_kind": kind,
        "fingerprint": source_fingerprint(src),
        "options": options,
        "rows": writer.rows,
        "status_counts": statuses,
    }
    write_json_atomic(Path(stem).with_suffix(".json"), manifest)
    return manifest


def _embed_chunk(
    chunk: list, photos: Any, writer: NpyFeatureWriter, statuses: dict[str, int], batch: int
) -> None:
    from ..overlap.gallery import embed_items

    results = embed_items(chunk, photos, writer.dim, batch)
    vectors, labels = [], []
    for item, res in zip(chunk, results, strict=True):
        statuses[res.status] = statuses.get(res.status, 0) + 1
        if res.status == "ok":
            vectors.append(res.vector)
            labels.append(item.identity)
        else:
            log.warning("%s: %s (%s), left out", item.source, res.error, res.status)
    if vectors:
        writer.write(np.stack(vectors), labels)


def cached_features(
    stem: str | os.PathLike[str], src: str | os.PathLike[str], model: str, options: dict
) -> dict | None:
    """The manifest of features already extracted from ``src`` with this model and options, else None."""
    from ..overlap.gallery import same_model
    from ..overlap.sources import source_fingerprint

    stem = Path(stem)
    meta = stem.with_suffix(".json")
    if not (meta.is_file() and stem.with_suffix(".npy").is_file() and stem.with_suffix(".txt").is_file()):
        return None
    try:
        manifest = json.loads(meta.read_text())
    except ValueError:
        return None
    same = (
        manifest.get("format") == FEATURES_FORMAT
        and same_model(str(manifest.get("model", "")), model)
        and manifest.get("source") == str(Path(src).resolve())
        and manifest.get("options") == options
        and manifest.get("fingerprint") == source_fingerprint(src)
    )
    return manifest if same else None
