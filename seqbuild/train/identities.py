"""`seqbuild import-identities`: a labelled identity set as aligned 144x144 crops in Parquet.

Sources: an image folder with one sub-folder per identity (photos are detected and aligned with the
ingest detector and aligner, or taken as already aligned with ``aligned=True``), or an insightface
``train.rec`` + ``train.idx`` pair (already aligned crops; resized to the crop size). Images that cannot
be used are listed with the reason in ``OUT/skipped.json``, never dropped silently.
"""

from __future__ import annotations

import hashlib
import logging
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow as pa

from ..errors import InputError
from ..imaging import decode_jpeg, encode_jpeg, read_image
from ..schema import IDENTITY_IMAGES
from ..storage import write_json_atomic, write_table
from .config import ImportConfig
from .data import IDENTITY_TABLE

log = logging.getLogger("seqbuild.train")

IMAGE_SUFFIXES = {".jpg", ".jpeg", ".png", ".bmp", ".webp"}
PART_ROWS = 50_000


class _PartWriter:
    def __init__(self, out: Path) -> None:
        self.folder = out / IDENTITY_TABLE
        self.rows: list[dict[str, Any]] = []
        self.parts = 0
        self.count = 0

    def add(self, row: dict[str, Any]) -> None:
        self.rows.append(row)
        if len(self.rows) >= PART_ROWS:
            self.flush()

    def flush(self) -> None:
        if not self.rows and self.parts:
            return
        table = pa.Table.from_pylist(self.rows, schema=IDENTITY_IMAGES)
        write_table(self.folder / f"part-{self.parts:05d}.parquet", table, IDENTITY_IMAGES, "identity_images")
        self.count += len(self.rows)
        self.parts += 1
        self.rows = []


def _largest_face(faces: list) -> Any:
    return max(faces, key=lambda f: (f.box[2] - f.box[0]) * (f.box[3] - f.box[1])) if faces else None


def import_folder(src: Path, out: Path, cfg: ImportConfig, progress: bool = True) -> dict[str, int]:
    """Import ``src/<identity>/<image>``; unaligned photos keep their largest detected face, aligned."""
    identities = sorted(p for p in src.iterdir() if p.is_dir())
    if not identities:
        raise InputError(f"{src}: no identity sub-folders")
    size = cfg.size
    detector = None
    if not cfg.aligned:
        from ..ingest.align import align_face
        from ..ingest.detect import create_detector

        detector = create_detector(
            cfg.detector,
            device=cfg.device,
            min_face=cfg.min_face,
            threshold=cfg.threshold,
            max_side=cfg.max_side,
        )
    writer, skipped = _PartWriter(out), []
    files = [
        (label, ident.name, f)
        for label, ident in enumerate(identities)
        for f in sorted(ident.iterdir())
        if f.suffix.lower() in IMAGE_SUFFIXES
    ]
    iterator = files
    if progress:
        from tqdm import tqdm

        iterator = tqdm(files, desc="import", unit="img")
    for label, name, f in iterator:
        try:
            rgb = read_image(str(f))
        except InputError as exc:
            skipped.append({"source": str(f), "identity": name, "reason": "unreadable", "detail": str(exc)})
            continue
        if detector is not None:
            face = _largest_face(detector.detect([rgb])[0])
            if face is None:
                skipped.append({"source": str(f), "identity": name, "reason": "no_face", "detail": ""})
                continue
            crop = align_face(rgb, np.asarray(face.landmarks, np.float32).reshape(5, 2), size=size)
        else:
            import cv2

            crop = (
                rgb
                if rgb.shape[:2] == (size, size)
                else cv2.resize(rgb, (size, size), interpolation=cv2.INTER_AREA)
            )
        image_id = hashlib.sha1(str(f.resolve()).encode()).hexdigest()[:16]
        writer.add(
            {
                "image_id": image_id,
                "identity": name,
                "label": label,
                "source": str(f),
                "image": encode_jpeg(crop),
            }
        )
    writer.flush()
    write_json_atomic(out / "skipped.json", skipped)
    for s in skipped:
        log.warning("%s: skipped (%s)", s["source"], s["reason"])
    return {"identities": len(identities), "images": writer.count, "skipped": len(skipped)}


def import_recordio(rec: Path, out: Path, size: int = 144, progress: bool = True) -> dict[str, int]:
    """Import an insightface train.rec/.idx (aligned crops, resized to ``size``)."""
    import cv2

    from ..recordio import RecordIOReader

    writer, skipped, labels = _PartWriter(out), [], set()
    with RecordIOReader(rec) as reader:
        keys = reader.image_keys()
        iterator = keys
        if progress:
            from tqdm import tqdm

            iterator = tqdm(keys, desc="import", unit="img")
        for key in iterator:
            header, data = reader.read_image(key)
            try:
                rgb = decode_jpeg(data)
            except ValueError:
                skipped.append(
                    {
                        "source": f"rec:{key}",
                        "identity": str(header.class_label),
                        "reason": "unreadable",
                        "detail": "undecodable image bytes",
                    }
                )
                continue
            crop = (
                rgb
                if rgb.shape[:2] == (size, size)
                else cv2.resize(rgb, (size, size), interpolation=cv2.INTER_AREA)
            )
            label = header.class_label
            labels.add(label)
            writer.add(
                {
                    "image_id": f"rec{key}",
                    "identity": f"{label:07d}",
                    "label": label,
                    "source": f"rec:{key}",
                    "image": encode_jpeg(crop),
                }
            )
    writer.flush()
    write_json_atomic(out / "skipped.json", skipped)
    return {"identities": len(labels), "images": writer.count, "skipped": len(skipped)}


def import_identities(
    src: str | Path, out: str | Path, cfg: ImportConfig | None = None, progress: bool = True
) -> dict[str, int]:
    """Import an identity set from an image folder or a ``.rec`` file (its ``.idx`` beside it)."""
    cfg = cfg or ImportConfig()
    src, out = Path(src), Path(out)
    if src.is_file() and src.suffix == ".rec":
        return import_recordio(src, out, cfg.size, progress)
    if src.is_dir() and (src / "train.rec").is_file():
        return import_recordio(src / "train.rec", out, cfg.size, progress)
    if src.is_dir():
        return import_folder(src, out, cfg, progress=progress)
    raise InputError(f"{src}: not an image folder or a .rec file")
