"""Schemas round-trip, writes are atomic and validated, damaged files are reported, shards resume."""

from __future__ import annotations

import errno

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from seqbuild import schema, storage
from seqbuild.errors import CorruptTableError, DiskFullError, SchemaMismatchError
from seqbuild.layout import RunDir


def detections(n: int = 3) -> pa.Table:
    rng = np.random.default_rng(0)
    return pa.table(
        {
            "face_id": [f"v1:{i:08d}:00" for i in range(n)],
            "video_id": ["v1"] * n,
            "source": ["/data/a.mp4"] * n,
            "frame_idx": list(range(n)),
            "pts": [i / 25 for i in range(n)],
            "shot_id": [0] * n,
            "x1": [1.0] * n,
            "y1": [2.0] * n,
            "x2": [30.0] * n,
            "y2": [40.0] * n,
            "landmarks": [rng.random(10).astype(np.float32).tolist() for _ in range(n)],
            "det_score": [0.99] * n,
            "face_size": [30.0] * n,
            "blur": [100.0] * n,
            "yaw": [0.0] * n,
            "roll": [0.0] * n,
            "image": [b"\xff\xd8jpeg"] * n,
        }
    )


def test_detections_round_trip_with_metadata(tmp_path):
    path = storage.write_table(
        tmp_path / "d.parquet", detections(), schema.DETECTIONS, "detections", "abc123"
    )
    back = storage.read_table(path, schema.DETECTIONS)
    assert back.schema.remove_metadata().equals(schema.DETECTIONS)
    assert back.column("face_id").to_pylist() == detections().column("face_id").to_pylist()
    assert back.column("landmarks").type == pa.list_(pa.float32(), 10)
    meta = storage.table_metadata(path)
    assert meta == {"table": "detections", "schema_version": schema.SCHEMA_VERSION, "config_hash": "abc123"}


def test_outputs_get_the_ordinary_file_mode(tmp_path):
    import os

    old = os.umask(0o022)
    try:
        path = storage.write_table(tmp_path / "d.parquet", detections(), schema.DETECTIONS, "detections")
    finally:
        os.umask(old)
    assert path.stat().st_mode & 0o777 == 0o644


def test_every_table_schema_writes_and_reads_empty(tmp_path):
    for name, sch in schema.TABLES.items():
        path = storage.write_table(tmp_path / f"{name}.parquet", sch.empty_table(), sch, name)
        assert storage.read_table(path, sch).num_rows == 0
    emb = schema.embeddings_schema(512)
    table = pa.table(
        {
            "face_id": ["a"],
            "video_id": ["v"],
            "model": ["m"],
            "embedding": pa.array([np.ones(512, np.float32)], type=pa.list_(pa.float32(), 512)),
        }
    )
    back = storage.read_table(storage.write_table(tmp_path / "e.parquet", table, emb, "embeddings"), emb)
    assert np.allclose(np.asarray(back.column("embedding")[0].as_py()), 1.0)


def test_schema_mismatch_is_refused_and_nothing_written(tmp_path):
    bad = detections().drop_columns(["image"])
    with pytest.raises(SchemaMismatchError, match="image"):
        storage.write_table(tmp_path / "d.parquet", bad, schema.DETECTIONS, "detections")
    nulls = detections().set_column(0, "face_id", pa.array([None, "b", "c"], pa.string()))
    with pytest.raises(SchemaMismatchError, match="nulls"):
        storage.write_table(tmp_path / "d.parquet", nulls, schema.DETECTIONS, "detections")
    assert list(tmp_path.iterdir()) == []


def test_truncated_parquet_is_reported_not_read_as_empty(tmp_path):
    path = storage.write_table(tmp_path / "d.parquet", detections(50), schema.DETECTIONS, "detections")
    data = path.read_bytes()
    path.write_bytes(data[: len(data) // 2])
    with pytest.raises(CorruptTableError, match="d.parquet"):
        storage.read_table(path, schema.DETECTIONS)


def test_failed_write_keeps_previous_file(tmp_path, monkeypatch):
    path = storage.write_table(tmp_path / "d.parquet", detections(2), schema.DETECTIONS, "detections")

    def full_disk(*args, **kwargs):
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(pq, "write_table", full_disk)
    with pytest.raises(DiskFullError, match="no space left"):
        storage.write_table(path, detections(5), schema.DETECTIONS, "detections")
    monkeypatch.undo()
    assert storage.read_table(path).num_rows == 2
    assert [p.name for p in tmp_path.iterdir()] == ["d.parquet"]


def test_shard_store_marks_and_resumes(tmp_path):
    store = RunDir(tmp_path).ingest
    storage.write_table(store.table_path("detections", "v1"), detections(), schema.DETECTIONS, "detections")
    assert not store.is_done("v1")
    store.mark_done("v1", "h1", rows=3)
    assert store.is_done("v1") and store.is_done("v1", "h1") and not store.is_done("v1", "h2")
    assert store.done_shards() == ["v1"]
    assert store.read("detections", schema.DETECTIONS).num_rows == 3
    store.clear("v1")
    assert not store.is_done("v1") and not store.table_path("detections", "v1").exists()


def test_manifest_paths_cannot_escape_the_run(tmp_path):
    run = RunDir(tmp_path / "run")
    assert run.resolve("ingest/detections/a.parquet").is_relative_to((tmp_path / "run").resolve())
    with pytest.raises(Exception, match="escapes"):
        run.resolve("../../etc/passwd")
