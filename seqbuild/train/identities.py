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
from ..storage import ensure_folder, unsafe_name_reason, write_json_atomic, write_table
from .config import ImportConfig
from .data import IDENTITY_TABLE

log = logging.getLogger("seqbuild.train")

IMAGE_SUFFIXES = {".jpg", ".jpeg", ".png", ".bmp", ".webp"}
REFUSED = ("bad_identity", "damaged")
"""Reasons of ``skipped.json`` that mean the source itself is damaged or unsafe (the command fails)."""
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
    """Import ``src/<identity>/<image>``; unaligned photos keep their largest detected face, aligned.

    A folder whose name is not usable as an identity (``..evil``, control characters) is refused and
    listed with the reason ``bad_identity``; files that are not regular files (named pipes, devices)
    are listed as ``not_a_file`` and never opened.
    """
    folders = sorted(p for p in src.iterdir() if p.is_dir())
    refused = []
    identities = []
    for folder in folders:
        why = unsafe_name_reason(folder.name)
        if why:
            detail = f"{folder}: not usable as an identity name ({why})"
            refused.append(
                {"source": str(folder), "identity": folder.name, "reason": "bad_identity", "detail": detail}
            )
        else:
            identities.append(folder)
    if not identities:
        raise InputError(f"{src}: no identity sub-folders" + (" with a usable name" if refused else ""))
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
    writer, skipped = _PartWriter(out), list(refused)
    files = []
    for label, ident in enumerate(identities):
        for f in sorted(ident.iterdir()):
            if f.suffix.lower() not in IMAGE_SUFFIXES:
                continue
            if f.is_file():
                files.append((label, ident.name, f))
            else:
                skipped.append(
                    {"source": str(f), "identity": ident.name, "reason": "not_a_file", "detail": ""}
                )
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
        log.warning("%s: skipped (%s%s)", s["source"], s["reason"], f": {s['detail']}" if s["detail"] else "")
    return {
        "identities": len(identities),
        "images": writer.count,
        "skipped": len(skipped),
        "refused": len(refused),
    }


def import_recordio(rec: Path, out: Path, size: int = 144, progress: bool = True) -> dict[str, int]:
    """Import an insightface train.rec/.idx (aligned crops, resized to ``size``).

    A damaged record (bad framing, a label that is not a class number, no image) is refused: listed in
    ``skipped.json`` with the reason ``damaged`` and counted as ``refused``; the other records are
    imported. A header that does not match the index is a RecordIOError: nothing is imported.
    """
    import cv2

    from ..recordio import RecordIOError, RecordIOReader

    writer, skipped, labels, refused = _PartWriter(out), [], set(), 0
    with RecordIOReader(rec) as reader:
        keys = reader.image_keys()
        iterator = keys
        if progress:
            from tqdm import tqdm

            iterator = tqdm(keys, desc="import", unit="img")
        for key in iterator:
            try:
                label, data = reader.read_labelled_image(key)
            except RecordIOError as exc:
                skipped.append(
                    {"source": f"rec:{key}", "identity": "", "reason": "damaged", "detail": str(exc)}
                )
                log.warning("%s", exc)
                refused += 1
                continue
            try:
                rgb = decode_jpeg(data)
            except ValueError as exc:
                skipped.append(
                    {
                        "source": f"rec:{key}",
                        "identity": str(label),
                        "reason": "unreadable",
                        "detail": str(exc),
                    }
                )
                continue
            crop = (
                rgb
                if rgb.shape[:2] == (size, size)
                else cv2.resize(rgb, (size, size), interpolation=cv2.INTER_AREA)
            )
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
    return {"identities": len(labels), "images": writer.count, "skipped": len(skipped), "refused": refused}


def import_identities(
    src: str | Path, out: str | Path, cfg: ImportConfig | None = None, progress: bool = True
) -> dict[str, int]:
    """Import an identity set from an image folder or a ``.rec`` file (its ``.idx`` beside it)."""
    cfg = cfg or ImportConfig()
    src, out = Path(src), Path(out)
    if not src.exists():
        raise InputError(f"{src}: not found")
    ensure_folder(out, "identity dataset folder")
    if src.is_file() and src.suffix == ".rec":
        return import_recordio(src, out, cfg.size, progress)
    if src.is_dir() and (src / "train.rec").is_file():
        return import_recordio(src / "train.rec", out, cfg.size, progress)
    if src.is_dir():
        return import_folder(src, out, cfg, progress=progress)
    raise InputError(f"{src}: not an image folder or a .rec file")
