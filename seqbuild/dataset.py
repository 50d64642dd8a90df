"""Materialise faces: join the detections of ingest with the sequence assignments of a later stage."""

from __future__ import annotations

from pathlib import Path

import pyarrow as pa
import pyarrow.compute as pc

from .layout import RunDir
from .schema import ASSIGNMENTS, DETECTIONS, FACES, REMOVALS, SEQUENCES
from .storage import ShardStore, ensure_folder, read_table, write_table


def faces_for_shard(run: RunDir, stage: str, shard: str) -> pa.Table:
    """The FACES rows of one video that survive ``stage`` (detections joined with its assignments)."""
    det = read_table(run.ingest.table_path("detections", shard), DETECTIONS)
    assign = read_table(run.stage(stage).table_path("assignments", shard), ASSIGNMENTS)
    # Join on the keys only (Arrow joins cannot carry fixed-size-list columns such as landmarks), then
    # take the matching detection rows.
    keys = pa.table({"face_id": det.column("face_id"), "_row": pa.array(range(det.num_rows), pa.int64())})
    matched = keys.join(assign.select(["face_id", "seq_id"]), keys="face_id", join_type="inner")
    joined = det.take(matched.column("_row")).append_column("seq_id", matched.column("seq_id"))
    order = pc.sort_indices(joined, sort_keys=[("seq_id", "ascending"), ("frame_idx", "ascending")])
    return joined.take(order).select(FACES.names).cast(FACES)


def export_stage(run: RunDir, stage: str, out: str | Path, config_hash: str = "") -> dict[str, int]:
    """Write ``out/faces``, ``out/sequences`` and ``out/removals`` for every video completed by ``stage``."""
    dest = ShardStore(ensure_folder(out, "export folder"))
    store = run.stage(stage)
    counts = {"videos": 0, "faces": 0, "sequences": 0}
    for shard in store.done_shards():
        faces_path, seqs_path = dest.table_path("faces", shard), dest.table_path("sequences", shard)
        faces = faces_for_shard(run, stage, shard)
        write_table(faces_path, faces, FACES, "faces", config_hash)
        seqs = read_table(store.table_path("sequences", shard), SEQUENCES)
        write_table(seqs_path, seqs, SEQUENCES, "sequences", config_hash)
        counts["videos"] += 1
        counts["faces"] += faces.num_rows
        counts["sequences"] += seqs.num_rows
    return counts


def all_removals(run: RunDir) -> pa.Table:
    """Every removal of every stage of a run (an empty REMOVALS table when none)."""
    from .layout import STAGES
    from .storage import read_tables

    paths = []
    for stage in STAGES:
        store = run.stage(stage)
        paths += store.paths("removals")
    return read_tables(paths, REMOVALS)
