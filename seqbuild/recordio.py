"""Read (and write) MXNet RecordIO ``train.rec`` + ``train.idx`` pairs without MXNet.

This is how insightface distributes MS1M-ArcFace, MS1MV3, Glint360K and friends. The format
(dmlc-core ``recordio.h``, MXNet ``recordio.py``):

* ``train.idx``: text lines ``index<TAB>offset`` giving the byte offset of each record in ``train.rec``.
* each record: the magic ``0xced7230a`` (uint32 LE), then a uint32 whose upper 3 bits are the
  continuation flag (0 whole, 1 first part, 2 middle part, 3 last part) and lower 29 bits the part
  length, then the part, zero-padded to a multiple of 4 bytes. A payload that contains the magic at an
  aligned position is split there: the magic itself is dropped and the reader puts it back between parts.
* an image record's payload starts with ``IRHeader`` (flag uint32, label float32, id uint64, id2 uint64);
  when ``flag > 0`` the label is instead ``flag`` float32 values following the header. The image bytes
  (JPEG) follow.
* in insightface datasets record 0 is a header record whose label ``(a, b)`` says images are records
  ``1 .. a-1`` and records ``a .. b-1`` are per-identity records whose label is the image-index range.

Damaged files raise :class:`RecordIOError`, a one-line InputError that names the file and the record.
"""

from __future__ import annotations

import math
import os
import struct
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from .errors import InputError
from .storage import atomic_path

MAGIC = 0xCED7230A
_MAGIC_BYTES = struct.pack("<I", MAGIC)
_LEN_MASK = (1 << 29) - 1
_IR_FORMAT = "<IfQQ"
_IR_SIZE = struct.calcsize(_IR_FORMAT)
MAX_LABEL = 1 << 31
"""Class labels are below this (insightface's largest sets hold a few million identities)."""


class RecordIOError(InputError):
    """A RecordIO file or one of its records is damaged (the message names the file and the index)."""


@dataclass(frozen=True)
class IRHeader:
    """The header of an image record: ``label`` is one float, or a tuple when ``flag > 0``."""

    flag: int
    label: float | tuple[float, ...]
    id: int
    id2: int

    @property
    def class_label(self) -> int:
        """The identity class of an image record (the first label value when there are several).

        ValueError when it is not a class number: NaN, infinite, negative, fractional or above 2**31.
        """
        value = self.label[0] if isinstance(self.label, tuple) else self.label
        if not math.isfinite(value) or value < 0 or value != int(value) or value >= MAX_LABEL:
            raise ValueError(
                f"label {value!r} is not a class number (a whole number from 0 to {MAX_LABEL - 1})"
            )
        return int(value)


def unpack_record(payload: bytes) -> tuple[IRHeader, bytes]:
    """Split an image record's payload into its IRHeader and the image bytes (ValueError if too short)."""
    if len(payload) < _IR_SIZE:
        raise ValueError(f"payload of {len(payload)} bytes is shorter than the {_IR_SIZE}-byte IRHeader")
    flag, label, id1, id2 = struct.unpack_from(_IR_FORMAT, payload, 0)
    rest = payload[_IR_SIZE:]
    if flag > 0:
        need = 4 * flag
        if len(rest) < need:
            raise ValueError(f"IRHeader says {flag} label values but only {len(rest)} bytes follow")
        labels = tuple(float(v) for v in np.frombuffer(rest[:need], dtype="<f4"))
        return IRHeader(flag, labels, id1, id2), rest[need:]
    return IRHeader(flag, float(label), id1, id2), rest


def pack_record(
    label: float | tuple[float, ...] | list[float], image: bytes, id: int = 0, id2: int = 0
) -> bytes:
    """An image record's payload: IRHeader (several labels go after it, as MXNet does) then the image."""
    if isinstance(label, (tuple, list)):
        values = np.asarray(label, dtype="<f4")
        return struct.pack(_IR_FORMAT, len(values), 0.0, id, id2) + values.tobytes() + image
    return struct.pack(_IR_FORMAT, 0, float(label), id, id2) + image


def read_index(idx_path: str | os.PathLike[str]) -> dict[int, int]:
    """The ``index -> offset`` map of a ``.idx`` file (RecordIOError naming the line when malformed)."""
    idx_path = Path(idx_path)
    out: dict[int, int] = {}
    try:
        text = idx_path.read_text()
    except OSError as exc:
        raise RecordIOError(f"{idx_path}: cannot read the RecordIO index ({exc.strerror or exc})") from None
    for lineno, line in enumerate(text.splitlines(), 1):
        if not line.strip():
            continue
        parts = line.split("\t") if "\t" in line else line.split()
        try:
            key, offset = int(parts[0]), int(parts[1])
        except (IndexError, ValueError):
            raise RecordIOError(
                f"{idx_path}: line {lineno} is not 'index<TAB>offset': {line[:60]!r}"
            ) from None
        out[key] = offset
    return out


class RecordIOReader:
    """Random and sequential access to a RecordIO file, by the keys of its ``.idx`` when there is one."""

    def __init__(
        self, rec_path: str | os.PathLike[str], idx_path: str | os.PathLike[str] | None = None
    ) -> None:
        self.rec_path = Path(rec_path)
        if idx_path is None:
            guess = self.rec_path.with_suffix(".idx")
            idx_path = guess if guess.exists() else None
        self.idx_path = Path(idx_path) if idx_path is not None else None
        try:
            self._fh = open(self.rec_path, "rb")  # noqa: SIM115 (closed by close())
        except OSError as exc:
            raise RecordIOError(
                f"{self.rec_path}: cannot open RecordIO file ({exc.strerror or exc})"
            ) from None
        self.size = os.fstat(self._fh.fileno()).st_size
        self.index = read_index(self.idx_path) if self.idx_path is not None else None

    def __enter__(self) -> RecordIOReader:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def close(self) -> None:
        """Close the file."""
        self._fh.close()

    def keys(self) -> list[int]:
        """Record keys from the index, in file order (empty without an index)."""
        if self.index is None:
            return []
        return sorted(self.index, key=lambda k: self.index[k])

    def _read_at(self, offset: int, where: str) -> tuple[bytes, int]:
        """The payload of the record starting at ``offset`` and the offset just after it."""
        chunks: list[bytes] = []
        pos = offset
        while True:
            if pos + 8 > self.size:
                raise RecordIOError(f"{self.rec_path}: {where}: truncated record header at byte {pos}")
            self._fh.seek(pos)
            head = self._fh.read(8)
            magic, lrec = struct.unpack("<II", head)
            if magic != MAGIC:
                raise RecordIOError(
                    f"{self.rec_path}: {where}: bad magic 0x{magic:08x} at byte {pos} (expected 0x{MAGIC:08x})"
                )
            cflag, length = lrec >> 29, lrec & _LEN_MASK
            if cflag > 3:
                raise RecordIOError(
                    f"{self.rec_path}: {where}: invalid continuation flag {cflag} at byte {pos}"
                )
            padded = (length + 3) & ~3
            if pos + 8 + length > self.size:
                raise RecordIOError(
                    f"{self.rec_path}: {where}: record of {length} bytes at byte {pos} runs past the end of the file"
                )
            data = self._fh.read(length)
            pos += 8 + padded
            if not chunks and cflag in (2, 3):
                raise RecordIOError(f"{self.rec_path}: {where}: record starts with a continuation part")
            chunks.append(data)
            if cflag in (0, 3):
                return _MAGIC_BYTES.join(chunks), pos

    def read(self, key: int) -> bytes:
        """The payload of record ``key`` (by the ``.idx``); RecordIOError when missing or damaged."""
        if self.index is None:
            raise RecordIOError(f"{self.rec_path}: no .idx file, so records cannot be read by index")
        if key not in self.index:
            raise RecordIOError(f"{self.rec_path}: record {key} is not in {self.idx_path}")
        offset = self.index[key]
        if offset < 0 or offset >= self.size:
            raise RecordIOError(f"{self.rec_path}: record {key}: offset {offset} is outside the file")
        return self._read_at(offset, f"record {key}")[0]

    def read_image(self, key: int) -> tuple[IRHeader, bytes]:
        """The IRHeader and image bytes of record ``key``."""
        payload = self.read(key)
        try:
            return unpack_record(payload)
        except ValueError as exc:
            raise RecordIOError(f"{self.rec_path}: record {key}: {exc}") from None

    def read_labelled_image(self, key: int) -> tuple[int, bytes]:
        """The class label and image bytes of image record ``key``; RecordIOError for a record that is
        damaged, has no usable label, or holds no image."""
        header, image = self.read_image(key)
        return self.image_label(key, header, image), image

    def image_label(self, key: int, header: IRHeader, image: bytes) -> int:
        """The class label of image record ``key`` (read as ``header`` and ``image``); RecordIOError
        naming the file and the record when the label is not a class number or there is no image."""
        try:
            label = header.class_label
        except ValueError as exc:
            raise RecordIOError(f"{self.rec_path}: record {key}: {exc}") from None
        if not image:
            raise RecordIOError(f"{self.rec_path}: record {key}: empty image (no bytes after the header)")
        return label

    def scan(self) -> Iterator[tuple[int, bytes]]:
        """Every record in file order as ``(position, payload)``, without the index."""
        pos, n = 0, 0
        while pos < self.size:
            payload, pos = self._read_at(pos, f"record #{n} (sequential)")
            yield n, payload
            n += 1

    def image_keys(self) -> list[int]:
        """Keys of the image records: ``1 .. a-1`` when record 0 is an insightface header, else every key."""
        keys = self.keys()
        if not keys:
            return []
        if 0 in self.index:
            header, _ = self.read_image(0)
            if header.flag > 0 and isinstance(header.label, tuple) and len(header.label) >= 2:
                end = header.label[0]
                images = [k for k in keys if k >= 1]
                if not math.isfinite(end) or end != int(end) or not 1 <= end <= len(images) + 1:
                    raise RecordIOError(
                        f"{self.rec_path}: record 0 (the header) says the images are records 1 to {end - 1:.0f}, "
                        f"but the index lists {len(images)} records after it (damaged header)"
                    )
                return [k for k in keys if 1 <= k < end]
        return keys


class RecordIOWriter:
    """Write a ``.rec`` + ``.idx`` pair (atomically: both appear only when the writer closes cleanly)."""

    def __init__(
        self, rec_path: str | os.PathLike[str], idx_path: str | os.PathLike[str] | None = None
    ) -> None:
        self.rec_path = Path(rec_path)
        self.idx_path = Path(idx_path) if idx_path is not None else self.rec_path.with_suffix(".idx")
        self._rec_ctx = atomic_path(self.rec_path)
        self._idx_ctx = atomic_path(self.idx_path)
        self._rec_tmp = self._rec_ctx.__enter__()
        self._idx_tmp = self._idx_ctx.__enter__()
        self._fh = open(self._rec_tmp, "wb")  # noqa: SIM115
        self._lines: list[str] = []

    def __enter__(self) -> RecordIOWriter:
        return self

    def __exit__(self, exc_type, exc, tb) -> None:
        self._fh.close()
        if exc_type is None:
            self._idx_tmp.write_text("".join(self._lines))
        self._idx_ctx.__exit__(exc_type, exc, tb)
        self._rec_ctx.__exit__(exc_type, exc, tb)

    def write(self, key: int, payload: bytes) -> None:
        """Append one record under ``key``, splitting it at aligned magic numbers as dmlc-core does."""
        if len(payload) >= 1 << 29:
            raise ValueError("a RecordIO record must be shorter than 2**29 bytes")
        self._lines.append(f"{key}\t{self._fh.tell()}\n")
        start = 0
        for i in range(0, len(payload) - 3, 4):
            if payload[i : i + 4] == _MAGIC_BYTES:
                self._part(1 if start == 0 else 2, payload[start:i])
                start = i + 4
        self._part(3 if start else 0, payload[start:])

    def _part(self, cflag: int, data: bytes) -> None:
        self._fh.write(struct.pack("<II", MAGIC, (cflag << 29) | len(data)))
        self._fh.write(data)
        pad = (-len(data)) % 4
        if pad:
            self._fh.write(b"\0" * pad)


def write_insightface_rec(
    rec_path: str | os.PathLike[str],
    images: list[tuple[int, bytes]],
    idx_path: str | os.PathLike[str] | None = None,
) -> None:
    """Write ``(class_label, jpeg)`` pairs in insightface's layout: header record 0, images, identity records."""
    n = len(images)
    labels = sorted({label for label, _ in images})
    first_identity_key = n + 1
    with RecordIOWriter(rec_path, idx_path) as writer:
        writer.write(
            0, pack_record((float(first_identity_key), float(first_identity_key + len(labels))), b"")
        )
        for key, (label, jpeg) in enumerate(images, 1):
            writer.write(key, pack_record(float(label), jpeg, id=key))
        for j, label in enumerate(labels):
            keys = [k for k, (lab, _) in enumerate(images, 1) if lab == label]
            writer.write(first_identity_key + j, pack_record((float(min(keys)), float(max(keys) + 1)), b""))
