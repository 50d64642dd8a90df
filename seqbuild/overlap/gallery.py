"""Reference galleries: per-image embeddings, per-identity centres and a FAISS index over the centres.

A gallery is built from one of the sources of :mod:`seqbuild.overlap.sources` (an image folder with one
sub-folder per identity, an insightface ``train.rec``, or precomputed features).

Photos are detected and aligned exactly as ingest does (``create_detector`` + ``align_face``) and embedded
with the same embedder as the run, since only embeddings of one model are comparable. Each image gets a
status: ``ok``, ``no_face``, ``several_faces`` (no face dominates, so the name cannot be attached to one)
or ``unreadable`` (missing, undecodable or a damaged record), with the reason in ``error``; only ``ok``
images feed the centres. Layout of ``GALLERY/``::

    manifest.json               embedder, dim, threshold, index kind, counts
    images/part-NNNNN.parquet   gallery_images_schema(dim), one row per image, in parts of chunk_size
    identities.parquet          gallery_identities_schema(dim): identity, n_images, centre
    index.faiss                 FAISS inner-product index over the centres (row i = identities row i)

Parts are written atomically and reused by a re-run with the same options, so a long build resumes.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow as pa

from ..config import config_hash, default_of
from ..embed.models import model_id, model_name
from ..errors import InputError
from ..ingest.config import IngestConfig
from ..schema import gallery_identities_schema, gallery_images_schema
from ..storage import read_table, table_metadata, write_json_atomic, write_table
from .config import OverlapConfig
from .search import build_index, choose_kind, group_centres, load_index, normalise, save_index
from .sources import MANIFEST, GalleryItem, iter_source

log = logging.getLogger(__name__)

GALLERY_FORMAT = 2

CENTRE_THRESHOLDS: dict[str, float] = {"facenet": 0.45}
"""Fallback cosine threshold between a sequence centre and a gallery identity centre, per embedder, used
only when a run has too few sequences to calibrate its thresholds (:mod:`seqbuild.overlap.decide`).

facenet 0.45, from benchmarks/bench_overlap.py (docs/benchmarks.md), with FaceNet's "fixed" input
standardisation (the one the model was trained with) on both sides: the centres of sequences of people
absent from the gallery (five talk clips, a street crowd, two audience members) scored at most 0.36
against any gallery identity, while gallery people on video scored 0.58 (a small, dark, three-quarter
audience face) and 0.78; 0.45 sits in the middle of that gap. With "prewhiten" standardisation the same faces do not separate (strangers up
to 0.53, the audience face of a gallery person 0.45), whatever the threshold. Galleries of many
thousands of identities (whose best impostor score grows with their size) may need a higher
per-gallery threshold or a stronger embedder.
An embedder missing here falls back to its own ``same_identity_threshold`` (a face-pair threshold).
"""

# Photos at most this many pixels on their longest side are padded before detection: MTCNN misses faces
# that fill the whole frame (tight or pre-cropped photos, insightface's 112x112 crops).
_PAD_BELOW = 320
_PAD_FRACTION = 0.25


@dataclass
class ImageResult:
    """What became of one gallery image."""

    status: str
    error: str | None = None
    vector: np.ndarray | None = None


# --------------------------------------------------------------------------- photos -> embeddings


def choose_face(faces: list[Any], dominant_ratio: float) -> tuple[int | None, str, str | None]:
    """Which detected face a gallery photo is of: (index, status, note).

    One face: it. None: ``no_face``. Several: the largest only when its side is at least
    ``dominant_ratio`` times the next one's (a portrait with bystanders); otherwise ``several_faces``,
    because the identity label cannot be attached to one of comparable faces without guessing.
    """
    if not faces:
        return None, "no_face", "no face found"
    if len(faces) == 1:
        return 0, "ok", None
    order = sorted(range(len(faces)), key=lambda i: -faces[i].size)
    first, second = faces[order[0]].size, faces[order[1]].size
    sizes = ", ".join(f"{faces[i].size:.0f}" for i in order[:5])
    if first >= dominant_ratio * max(second, 1e-6):
        return order[0], "ok", f"{len(faces)} faces (sides {sizes} px); the largest dominates and was used"
    return None, "several_faces", f"{len(faces)} faces of comparable size (sides {sizes} px); none used"


def _pad(image: np.ndarray) -> tuple[np.ndarray, int]:
    if max(image.shape[:2]) > _PAD_BELOW:
        return image, 0
    pad = int(round(_PAD_FRACTION * max(image.shape[:2])))
    return np.pad(image, ((pad, pad), (pad, pad), (0, 0)), mode="constant"), pad


class PhotoEmbedder:
    """Detect, choose, align and embed gallery photos the way ingest + embed treat video frames."""

    def __init__(
        self,
        embedder: Any,
        detector: Any | None,
        dominant_ratio: float = 2.0,
        prealigned: bool = False,
        crop_size: int | None = None,
    ) -> None:
        self.embedder = embedder
        self.detector = detector
        self.dominant_ratio = dominant_ratio
        self.prealigned = prealigned
        self.crop_size = int(crop_size or default_of(IngestConfig, "crop_size"))

    def crops(self, images: list[np.ndarray]) -> list[tuple[np.ndarray | None, str, str | None]]:
        """One (aligned crop of ``crop_size``, as ingest makes them, or None; status; note) per RGB photo."""
        import cv2

        if self.prealigned:
            size = (self.crop_size, self.crop_size)
            return [(cv2.resize(im, size, interpolation=cv2.INTER_AREA), "ok", None) for im in images]
        from ..ingest.align import align_face

        padded = [_pad(im) for im in images]
        detections = self.detector.detect([p for p, _ in padded])
        out = []
        for (image, _), faces in zip(padded, detections, strict=True):
            index, status, note = choose_face(faces, self.dominant_ratio)
            crop = (
                None
                if index is None
                else align_face(image, np.asarray(faces[index].landmarks), size=self.crop_size)
            )
            out.append((crop, status, note))
        return out

    def embed_images(self, images: list[np.ndarray]) -> list[ImageResult]:
        """An ImageResult per RGB photo (vectors L2-normalised)."""
        chosen = self.crops(images)
        crops = [c for c, _, _ in chosen if c is not None]
        vectors = iter(normalise(self.embedder.embed(crops)) if crops else [])
        return [
            ImageResult(status, note, next(vectors) if crop is not None else None)
            for crop, status, note in chosen
        ]


def _decode(item: GalleryItem) -> tuple[np.ndarray | None, str | None]:
    from ..imaging import decode_jpeg

    try:
        data = item.read()
    except (OSError, InputError) as exc:
        return None, f"{item.source}: {getattr(exc, 'strerror', None) or exc}"
    try:
        return decode_jpeg(data), None
    except Exception as exc:  # ValueError, or cv2.error on some damaged files
        return None, f"{item.source}: not a decodable image ({str(exc).splitlines()[0][:80] or 'empty'})"


def embed_items(
    items: list[GalleryItem], photos: PhotoEmbedder | None, dim: int, batch_size: int = 32
) -> list[ImageResult]:
    """Embed one chunk of gallery items (photos through ``photos``; features are checked and normalised)."""
    results: list[ImageResult | None] = [None] * len(items)
    pending: list[tuple[int, np.ndarray]] = []

    def flush() -> None:
        if not pending:
            return
        for (i, _), res in zip(pending, photos.embed_images([im for _, im in pending]), strict=True):
            results[i] = res
        pending.clear()

    for i, item in enumerate(items):
        if item.vector is not None:
            v = item.vector
            if v.shape != (dim,) or not np.all(np.isfinite(v)) or not np.any(v):
                results[i] = ImageResult(
                    "unreadable", f"{item.source}: invalid feature vector (shape {v.shape})"
                )
            else:
                results[i] = ImageResult("ok", None, normalise(v[None])[0])
            continue
        image, err = _decode(item)
        if image is None:
            results[i] = ImageResult("unreadable", err)
            continue
        pending.append((i, image))
        if len(pending) >= batch_size:
            flush()
    flush()
    return results  # type: ignore[return-value]


# --------------------------------------------------------------------------- building


def same_model(a: str, b: str) -> bool:
    """True when two model ids (:func:`seqbuild.embed.models.model_id`) name the same weights, input and
    alignment: only then are their vectors comparable."""
    return a == b


def default_threshold(model: str, embedder: Any | None = None) -> float:
    """The default centre-to-centre threshold of an embedder (see :data:`CENTRE_THRESHOLDS`)."""
    name = model_name(model)
    if name in CENTRE_THRESHOLDS:
        return CENTRE_THRESHOLDS[name]
    if embedder is not None and getattr(embedder, "same_identity_threshold", None) is not None:
        return float(embedder.same_identity_threshold)
    from ..embed.models import EMBEDDERS

    return float(getattr(EMBEDDERS.get(name), "same_identity_threshold", 0.5))


def build_options(cfg: OverlapConfig, model: str) -> dict[str, Any]:
    """The options that change a gallery's contents (hashed into its parts and manifest)."""
    return {
        "model": model,
        "weights": cfg.weights,
        "detector": cfg.detector,
        "min_face": cfg.min_face,
        "det_threshold": cfg.det_threshold,
        "max_side": cfg.max_side,
        "dominant_ratio": cfg.dominant_ratio,
        "prealigned": cfg.prealigned,
        "chunk_size": cfg.chunk_size,
        "format": GALLERY_FORMAT,
    }


def _chunks(items: Iterator[GalleryItem], size: int) -> Iterator[list[GalleryItem]]:
    chunk: list[GalleryItem] = []
    for item in items:
        chunk.append(item)
        if len(chunk) >= size:
            yield chunk
            chunk = []
    if chunk:
        yield chunk


def _reusable_part(
    path: Path, items: list[GalleryItem], schema: pa.Schema, build_hash: str
) -> pa.Table | None:
    if not path.exists():
        return None
    try:
        if table_metadata(path)["config_hash"] != build_hash:
            return None
        table = read_table(path, schema)
    except Exception:  # a damaged part is simply rebuilt
        return None
    if table.column("image_id").to_pylist() != [it.image_id for it in items]:
        return None
    return table


def build_gallery(
    src: str | os.PathLike[str],
    out: str | os.PathLike[str],
    cfg: OverlapConfig | None = None,
    name: str | None = None,
    identities: str | None = None,
    embedder: Any | None = None,
    detector: Any | None = None,
    progress: bool = True,
    crop_size: int | None = None,
) -> dict[str, Any]:
    """Build the gallery ``out`` from ``src``; returns the manifest (counts by status included).

    ``embedder`` and ``detector`` default to ``create_embedder(cfg.model or 'facenet', ...)`` and
    ``create_detector(cfg.detector, ...)``; features sources need neither, only the model name.
    """
    from tqdm import tqdm

    cfg = cfg or OverlapConfig()
    out = Path(out)
    src_path = Path(src)
    kind, items = iter_source(src_path, identities)
    # A model id (name@digest/input/alignment) names its registry entry; a spec such as onnx:PATH is kept
    # whole, since the path is the model.
    model = (
        (model_name(cfg.model) if "@" in cfg.model else cfg.model)
        or (getattr(embedder, "name", None) if embedder is not None else None)
        or "facenet"
    )
    photos = None
    if kind in ("folder", "rec"):
        if embedder is None:
            from ..embed.models import create_embedder

            embedder = create_embedder(
                model, weights=cfg.weights, device=cfg.device, normalisation=cfg.normalisation
            )
        if detector is None and not cfg.prealigned:
            from ..ingest.detect import create_detector

            detector = create_detector(
                cfg.detector,
                device=cfg.device,
                min_face=cfg.min_face,
                threshold=cfg.det_threshold,
                max_side=cfg.max_side,
            )
        photos = PhotoEmbedder(embedder, detector, cfg.dominant_ratio, cfg.prealigned, crop_size)
        dim = int(embedder.dim)
        model = model_id(embedder)
        threshold = default_threshold(model, embedder)
    else:
        first = next(items, None)
        if first is None:
            raise InputError(f"{src_path}: no features found")
        dim = int(first.vector.shape[0])
        items = _prepend(first, items)
        model = cfg.model or model
        threshold = default_threshold(model, embedder)

    options = {**build_options(cfg, model), "crop_size": photos.crop_size if photos else None}
    build_hash = config_hash({**options, "source": str(src_path.resolve()), "kind": kind, "dim": dim})
    images_schema = gallery_images_schema(dim)
    # Until the new manifest is written, the folder must not pass for a complete gallery.
    (out / MANIFEST).unlink(missing_ok=True)
    (out / "images").mkdir(parents=True, exist_ok=True)
    sums: dict[str, np.ndarray] = {}
    counts: dict[str, int] = {}
    seen: set[str] = set()
    status_counts: dict[str, int] = {}
    n_parts = 0
    bar = tqdm(desc=f"gallery {name or out.name}", unit="img", disable=not progress)
    for n_parts, chunk in enumerate(_chunks(items, cfg.chunk_size), 1):
        part = out / "images" / f"part-{n_parts - 1:05d}.parquet"
        table = _reusable_part(part, chunk, images_schema, build_hash)
        if table is None:
            results = embed_items(chunk, photos, dim, cfg.batch_size)
            table = pa.table(
                {
                    "image_id": [it.image_id for it in chunk],
                    "identity": [it.identity for it in chunk],
                    "source": [it.source for it in chunk],
                    "status": [r.status for r in results],
                    "error": [r.error for r in results],
                    "embedding": [None if r.vector is None else r.vector.tolist() for r in results],
                },
                schema=images_schema,
            )
            write_table(part, table, images_schema, "gallery_images", build_hash)
        statuses = table.column("status").to_pylist()
        ids = table.column("identity").to_pylist()
        emb = table.column("embedding")
        for i, (status, identity) in enumerate(zip(statuses, ids, strict=True)):
            status_counts[status] = status_counts.get(status, 0) + 1
            if status == "unreadable" and identity == "?":
                continue  # a damaged record: its identity is unknown
            seen.add(identity)
            if status == "ok":
                vec = np.asarray(emb[i].as_py(), dtype=np.float64)
                sums[identity] = sums.get(identity, 0.0) + vec
                counts[identity] = counts.get(identity, 0) + 1
        for status, error in zip(statuses, table.column("error").to_pylist(), strict=True):
            if status != "ok":
                log.warning("gallery %s: %s (%s)", src_path, error, status)
        bar.update(len(chunk))
    bar.close()
    # Parts of an earlier, longer build of the same folder would otherwise be read as part of this one.
    for stale in sorted((out / "images").glob("part-*.parquet"))[n_parts:]:
        stale.unlink()
    if not sums:
        raise InputError(f"{src_path}: no usable gallery image (statuses: {status_counts})")

    names = sorted(sums)
    centres = normalise(np.stack([sums[n] for n in names]))
    ident_schema = gallery_identities_schema(dim)
    identities_table = pa.table(
        {"identity": names, "n_images": [counts[n] for n in names], "centre": [c.tolist() for c in centres]},
        schema=ident_schema,
    )
    write_table(out / "identities.parquet", identities_table, ident_schema, "gallery_identities", build_hash)
    index = build_index(centres, kind=cfg.index, nprobe=cfg.nprobe)
    save_index(index, out / "index.faiss")
    missing = sorted(seen - set(names))
    if missing:
        log.warning(
            "gallery %s: %d identities have no usable image and cannot be matched: %s",
            src_path,
            len(missing),
            ", ".join(missing[:10]) + (" ..." if len(missing) > 10 else ""),
        )
    manifest = {
        "name": name or out.name,
        "format": GALLERY_FORMAT,
        "source": str(src_path.resolve()),
        "source_kind": kind,
        "embedder": model,
        "weights": cfg.weights,
        "dim": dim,
        "threshold": float(threshold),
        "index": choose_kind(cfg.index, len(names)),
        "nprobe": cfg.nprobe,
        "options": options,
        "build_hash": build_hash,
        "n_images": int(sum(status_counts.values())),
        "status_counts": status_counts,
        "n_identities": len(names),
        "identities_without_images": missing,
    }
    write_json_atomic(out / MANIFEST, manifest)
    return manifest


def _prepend(first: GalleryItem, rest: Iterator[GalleryItem]) -> Iterator[GalleryItem]:
    yield first
    yield from rest


def centres_from_embeddings(
    identities: list[str], vectors: np.ndarray
) -> tuple[list[str], np.ndarray, np.ndarray]:
    """Identity centres from per-image vectors: (names, counts, centres) (for tests and tools)."""
    keys, n, centres = group_centres(vectors, np.asarray(identities))
    return [str(k) for k in keys], n, centres


# --------------------------------------------------------------------------- loading


@dataclass
class Gallery:
    """A built gallery, loaded for search: its identities at once, its centres only when needed.

    Searching needs only the saved index; the centres (4 bytes per dimension per identity, 2 GB for a
    million 512-d identities) are read when an index must be built from them or when asked for.
    """

    path: Path
    name: str
    manifest: dict[str, Any]
    identities: list[str]
    _centres: np.ndarray | None = field(default=None, repr=False)
    _indexes: dict[tuple[str, int], Any] = field(default_factory=dict, repr=False)
    _fingerprint: str = field(default="", repr=False)

    @property
    def embedder(self) -> str:
        """The embedder the gallery's vectors come from."""
        return str(self.manifest["embedder"])

    @property
    def dim(self) -> int:
        """Vector dimension."""
        return int(self.manifest["dim"])

    @property
    def threshold(self) -> float:
        """The gallery's default threshold (the embedder's centre threshold when it was built)."""
        return float(self.manifest["threshold"])

    @property
    def centres(self) -> np.ndarray:
        """The identity centres, row i for ``identities[i]`` (read on first use, then kept)."""
        if self._centres is None:
            self._centres = read_centres(self.path, self.dim)
        return self._centres

    @property
    def fingerprint(self) -> str:
        """A hash of what the gallery holds, for the config hash of runs that search it."""
        if not self._fingerprint:
            digest = hashlib.sha1()
            if self._centres is not None:
                digest.update(self._centres.tobytes())
            else:
                for block in iter_centres(self.path, self.dim):
                    digest.update(block.tobytes())
            self._fingerprint = str(self.manifest.get("build_hash", "")) + ":" + digest.hexdigest()[:12]
        return self._fingerprint

    def index_kind(self, kind: str = "auto") -> str:
        """The concrete index kind ``kind`` means for this gallery's size (see ``search.choose_kind``)."""
        from .search import choose_kind

        return choose_kind(kind, len(self.identities))

    def index(self, kind: str = "auto", nprobe: int = 32) -> Any:
        """A FAISS index of the centres (the saved one when of the asked kind), on GPU when available."""
        from .search import build_index, build_index_blocks, index_kind, set_nprobe, to_search_device

        kind = self.index_kind(kind)
        key = (kind, nprobe)
        if key not in self._indexes:
            index = None
            path = self.path / "index.faiss"
            if path.exists():
                saved = load_index(path)
                if saved.ntotal == len(self.identities) and index_kind(saved) == kind:
                    index = saved
                del saved
            if index is None and kind != "flat":
                log.warning(
                    "gallery %s: no saved %s index; building one from its %d centres in this process"
                    " (`seqbuild gallery build ... --index %s` saves it with the gallery)",
                    self.name,
                    kind,
                    len(self.identities),
                    kind,
                )
            if index is None and self._centres is not None:
                index = build_index(self._centres, kind=kind, nprobe=nprobe)
            elif index is None:
                # Searching needs the index only: the centres stream from the file into it.
                index = build_index_blocks(
                    lambda: iter_centres(self.path, self.dim),
                    len(self.identities),
                    self.dim,
                    kind=kind,
                    nprobe=nprobe,
                )
            set_nprobe(index, nprobe)
            self._indexes[key] = to_search_device(index)
        return self._indexes[key]


def iter_centres(path: str | os.PathLike[str], dim: int, batch_rows: int = 65536) -> Iterator[np.ndarray]:
    """The centres of a gallery's identities.parquet as float32 blocks of rows, in file order."""
    import pyarrow.parquet as pq

    from ..errors import CorruptTableError

    file = Path(path) / "identities.parquet"
    want = gallery_identities_schema(dim).field("centre").type
    try:
        parquet = pq.ParquetFile(file)
        if parquet.schema_arrow.field("centre").type != want:
            raise InputError(f"{file}: centres are not {dim}-d float32 vectors")
        # Row group by row group: iter_batches reads ahead and held the whole file (2.8 GB at 1M x 512).
        for group in range(parquet.metadata.num_row_groups):
            table = parquet.read_row_group(group, columns=["centre"])
            for start in range(0, table.num_rows, batch_rows):
                part = table.column(0).slice(start, batch_rows).combine_chunks()
                flat = part.flatten().to_numpy(zero_copy_only=False)
                yield np.asarray(flat, dtype=np.float32).reshape(-1, dim)
            del table
    except (pa.ArrowInvalid, OSError, KeyError) as exc:
        raise CorruptTableError(f"{file}: corrupt or truncated Parquet file ({exc})") from exc


def read_centres(path: str | os.PathLike[str], dim: int) -> np.ndarray:
    """All centres of a gallery as one float32 matrix (no per-value Python objects on the way)."""
    blocks = list(iter_centres(path, dim))
    return np.concatenate(blocks) if blocks else np.zeros((0, dim), np.float32)


def is_gallery(path: str | os.PathLike[str]) -> bool:
    """True when ``path`` is a built gallery folder."""
    return (Path(path) / MANIFEST).is_file()


def load_gallery(path: str | os.PathLike[str], name: str | None = None) -> Gallery:
    """Load a gallery folder (InputError naming it when incomplete or damaged)."""
    path = Path(path)
    manifest_path = path / MANIFEST
    try:
        manifest = json.loads(manifest_path.read_text())
    except FileNotFoundError:
        raise InputError(
            f"{path}: not a built gallery (no {MANIFEST}); build it with `seqbuild gallery build`"
        ) from None
    except ValueError as exc:
        raise InputError(f"{manifest_path}: damaged manifest ({exc})") from None
    dim = int(manifest["dim"])
    table = read_table(path / "identities.parquet", gallery_identities_schema(dim), columns=["identity"])
    return Gallery(
        path, name or str(manifest.get("name") or path.name), manifest, table.column(0).to_pylist()
    )


def read_gallery_images(path: str | os.PathLike[str]) -> pa.Table:
    """The per-image table of a gallery (all parts)."""
    path = Path(path)
    manifest = json.loads((path / MANIFEST).read_text())
    from ..storage import read_tables

    return read_tables(
        sorted((path / "images").glob("part-*.parquet")), gallery_images_schema(int(manifest["dim"]))
    )
