"""RecordIO reading without MXNet: records, split records, insightface header, damaged files."""

from __future__ import annotations

import struct

import numpy as np
import pytest

from seqbuild.errors import InputError
from seqbuild.recordio import (
    MAGIC,
    RecordIOError,
    RecordIOReader,
    RecordIOWriter,
    pack_record,
    read_index,
    unpack_record,
    write_insightface_rec,
)


def test_record_layout_matches_the_format(tmp_path):
    rec = tmp_path / "a.rec"
    with RecordIOWriter(rec) as w:
        w.write(0, b"abcde")
    raw = rec.read_bytes()
    magic, lrec = struct.unpack("<II", raw[:8])
    assert magic == MAGIC
    assert lrec >> 29 == 0 and lrec & ((1 << 29) - 1) == 5
    assert raw[8:13] == b"abcde" and raw[13:16] == b"\0\0\0"  # padded to 4 bytes
    assert len(raw) == 16
    assert read_index(tmp_path / "a.idx") == {0: 0}


def test_payload_containing_the_magic_round_trips_through_continuation_parts(tmp_path):
    magic = struct.pack("<I", MAGIC)
    payload = b"1234" + magic + b"5678" + magic + b"xyz"
    rec = tmp_path / "b.rec"
    with RecordIOWriter(rec) as w:
        w.write(7, payload)
        w.write(8, b"tail")
    raw = rec.read_bytes()
    flags = []
    pos = 0
    while pos < len(raw):
        _, lrec = struct.unpack("<II", raw[pos : pos + 8])
        flags.append(lrec >> 29)
        pos += 8 + ((lrec & ((1 << 29) - 1)) + 3) // 4 * 4
    assert flags == [1, 2, 3, 0]
    with RecordIOReader(rec) as r:
        assert r.read(7) == payload
        assert r.read(8) == b"tail"
        assert [p for _, p in r.scan()] == [payload, b"tail"]


def test_irheader_single_and_multi_label():
    h, img = unpack_record(pack_record(3.0, b"JPEG", id=11))
    assert (h.flag, h.label, h.id, img) == (0, 3.0, 11, b"JPEG")
    h, img = unpack_record(pack_record((5.0, 2.0), b"JPEG"))
    assert h.flag == 2 and h.label == (5.0, 2.0) and h.class_label == 5 and img == b"JPEG"
    with pytest.raises(ValueError):
        unpack_record(b"short")


def test_insightface_layout_header_record_gives_image_range(tmp_path):
    images = [(0, b"a" * 10), (0, b"b" * 3), (1, b"c"), (2, b"d" * 9)]
    write_insightface_rec(tmp_path / "train.rec", images)
    with RecordIOReader(tmp_path / "train.rec", tmp_path / "train.idx") as r:
        assert r.image_keys() == [1, 2, 3, 4]
        header0, _ = r.read_image(0)
        assert header0.label == (5.0, 8.0)
        got = [(r.read_image(k)[0].class_label, r.read_image(k)[1]) for k in r.image_keys()]
        assert got == images
        # identity record of label 0: images 1..2 (end exclusive 3)
        assert r.read_image(5)[0].label == (1.0, 3.0)


def test_corrupt_record_names_file_and_index(tmp_path):
    images = [(0, bytes(range(40))), (1, bytes(range(40)))]
    write_insightface_rec(tmp_path / "train.rec", images)
    offsets = read_index(tmp_path / "train.idx")
    raw = bytearray((tmp_path / "train.rec").read_bytes())
    raw[offsets[2] : offsets[2] + 4] = b"\0\0\0\0"  # break the magic of record 2
    (tmp_path / "train.rec").write_bytes(bytes(raw))
    with RecordIOReader(tmp_path / "train.rec") as r:
        assert r.read_image(1)[1] == bytes(range(40))
        with pytest.raises(RecordIOError, match=r"train\.rec: record 2: bad magic") as exc:
            r.read(2)
        assert isinstance(exc.value, InputError)
        with pytest.raises(RecordIOError, match="record 99 is not in"):
            r.read(99)


def test_truncated_file_is_reported_not_read_short(tmp_path):
    write_insightface_rec(tmp_path / "train.rec", [(0, np.arange(100, dtype=np.uint8).tobytes())])
    raw = (tmp_path / "train.rec").read_bytes()
    offsets = read_index(tmp_path / "train.idx")
    (tmp_path / "train.rec").write_bytes(raw[: offsets[1] + 20])
    with (
        RecordIOReader(tmp_path / "train.rec") as r,
        pytest.raises(RecordIOError, match="record 1: .*past the end"),
    ):
        r.read(1)


def test_malformed_idx_line(tmp_path):
    (tmp_path / "x.idx").write_text("0\t0\nbroken\n")
    with pytest.raises(RecordIOError, match=r"x\.idx: line 2"):
        read_index(tmp_path / "x.idx")
