"""The embed stage: one L2-normalised vector per face kept by track, stored by face_id.

Reads RUN/ingest/detections and RUN/track/assignments, writes RUN/embed/embeddings/<video_id>.parquet
(``embeddings_schema(dim)``) and marks the video done. A re-run skips videos already embedded with the
same config and the same track output; a video that fails is reported and the others carry on.
"""

from __future__ import annotations

import logging
import math
import shutil
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq

from ..config import output_hash
from ..devices import resolve_device
from ..driver import StageSummary, VideoTask, auto_workers, drive, process_cached
from ..errors import SeqbuildError
from ..executors import Executor
from ..imaging import decode_jpeg
from ..layout import RunDir
from ..schema import ASSIGNMENTS, embeddings_schema
from ..storage import read_table, safe_name, write_table
from .config import EmbedConfig
from .models import Embedder, create_embedder, model_id, resolve_precision

log = logging.getLogger(__name__)

PARTS_FOLDER = "_parts"
PART_FACES = 1000
"""Faces per worker before another worker pays for its start-up (importing torch, loading the model:
a few seconds, the time of some hundreds of faces on one CPU core)."""

CHUNK = 256  # crops decoded at a time: 4 FaceNet batches, about 16 MiB of pixels whatever the video length


def get_embedder(cfg: EmbedConfig) -> Embedder:
    """The embedder of ``cfg``, created once per process."""
    key = ("embedder", cfg.model, cfg.weights, cfg.device, cfg.batch_size, cfg.normalisation, cfg.precision)
    return process_cached(
        key,
        lambda: create_embedder(
            cfg.model,
            weights=cfg.weights,
            device=cfg.device,
            batch_size=cfg.batch_size,
            normalisation=cfg.normalisation,
            precision=cfg.precision,
        ),
    )


def embed_precision(cfg: EmbedConfig) -> str:
    """The precision ``cfg`` resolves to on this machine (part of the output hash)."""
    return resolve_precision(cfg.precision, resolve_device(cfg.device))


def embed_faces(embedder: Embedder, images: pa.ChunkedArray | pa.Array, face_ids: list[str]) -> np.ndarray:
    """Embeddings of JPEG crops, decoded and embedded a chunk at a time (bounded memory)."""
    out = np.zeros((len(images), embedder.dim), np.float32)
    for start in range(0, len(images), CHUNK):
        crops = []
        for k, data in enumerate(images.slice(start, CHUNK).to_pylist()):
            try:
                crops.append(decode_jpeg(data))
            except ValueError:
                raise SeqbuildError(f"face {face_ids[start + k]}: undecodable crop image") from None
        out[start : start + len(crops)] = embedder.embed(crops)
    return out


def parts_folder(run: RunDir, video: str) -> Path:
    """``RUN/embed/_parts/<video>/``: the parts of a video embedded in parallel, until they are merged."""
    return run.embed.root / PARTS_FOLDER / safe_name(video, "video id")


def part_path(run: RunDir, task: VideoTask) -> Path:
    """The file of one part of a video's embeddings."""
    return parts_folder(run, task.video) / f"part-{task.part:03d}-of-{task.parts:03d}.parquet"


def embed_video(task: VideoTask) -> dict[str, Any]:
    """Embed the tracked faces of one video (or of one part of them) and write them; returns counts."""
    import torch

    run = RunDir(task.run)
    assign = read_table(run.track.table_path("assignments", task.video), ASSIGNMENTS)
    if task.parts > 1:  # rows [lo, hi) of the video's tracked faces
        lo, hi = task.params["rows"]
        assign = assign.slice(lo, hi - lo)
    det = read_table(
        run.ingest.table_path("detections", task.video), columns=["face_id", "video_id", "image"]
    )
    threads_before = torch.get_num_threads()
    if task.cfg.threads:
        torch.set_num_threads(task.cfg.threads)
    try:
        embedder = get_embedder(task.cfg)
        table = embed_tracked_faces(embedder, assign, det, run.ingest.table_path("detections", task.video))
    finally:
        torch.set_num_threads(threads_before)
    schema = embeddings_schema(embedder.dim)
    if task.parts > 1:
        write_table(part_path(run, task), table, schema, "embeddings", task.key)
        return {"faces": table.num_rows}
    write_table(run.embed.table_path("embeddings", task.video), table, schema, "embeddings", task.key)
    run.embed.mark_done(task.video, task.key, faces=table.num_rows, dim=embedder.dim)
    return {"faces": table.num_rows}


def merge_parts(tasks: list[VideoTask]) -> dict[str, Any]:
    """Write a video's shard from its embedded parts, in row order, and mark it done."""
    task = tasks[0]
    run = RunDir(task.run)
    tables = [read_table(part_path(run, t)) for t in sorted(tasks, key=lambda t: t.part)]
    table = pa.concat_tables(tables)
    dim = table.schema.field("embedding").type.list_size
    write_table(
        run.embed.table_path("embeddings", task.video), table, embeddings_schema(dim), "embeddings", task.key
    )
    run.embed.mark_done(task.video, task.key, faces=table.num_rows, dim=dim)
    shutil.rmtree(parts_folder(run, task.video), ignore_errors=True)
    return {}


def split_video(task: VideoTask, faces: int, parts: int) -> list[VideoTask]:
    """``task`` as ``parts`` items of consecutive rows of its tracked faces (itself when one)."""
    if parts <= 1:
        return [task]
    bounds = [k * faces // parts for k in range(parts + 1)]
    return [
        VideoTask(task.run, task.video, task.key, task.cfg, {"rows": (bounds[k], bounds[k + 1])}, k, parts)
        for k in range(parts)
    ]


def embed_tracked_faces(embedder: Embedder, assign: pa.Table, det: pa.Table, source: Any = "") -> pa.Table:
    """The embeddings table of the tracked faces (``assign``) found in ``det``'s crops; no I/O."""
    keep = pc.is_in(det.column("face_id"), value_set=assign.column("face_id"))
    det = det.filter(keep)
    missing = assign.num_rows - det.num_rows
    if missing:
        raise SeqbuildError(f"{source}: {missing} tracked faces have no detection row")
    vectors = embed_faces(embedder, det.column("image"), det.column("face_id").to_pylist())
    return pa.table(
        {
            "face_id": det.column("face_id"),
            "video_id": det.column("video_id"),
            "model": pa.array([model_id(embedder)] * det.num_rows, pa.string()),
            "embedding": pa.FixedSizeListArray.from_arrays(pa.array(vectors.reshape(-1)), embedder.dim),
        }
    )


def run_embed(
    run: str | Path, cfg: EmbedConfig, executor: Executor | None = None, progress: bool = True
) -> StageSummary:
    """Embed every video that track completed; resumable."""
    rundir = RunDir(run)
    videos = rundir.require("track", "embed").done_shards()
    if videos and cfg.model.startswith("onnx"):
        get_embedder(cfg)  # a bad model file is one error here, not one per video
    summary = StageSummary("embed", videos=len(videos))
    precision = embed_precision(cfg)  # "auto" is hashed as what it means here
    todo: list[VideoTask] = []
    for video in videos:
        key = output_hash(cfg, track=rundir.track.marker(video).get("config_hash", ""), precision=precision)
        if rundir.embed.is_done(video, key):
            summary.skipped += 1
            continue
        rundir.embed.clear(video)
        shutil.rmtree(parts_folder(rundir, video), ignore_errors=True)
        todo.append(VideoTask(str(rundir.root), video, key, cfg))
    faces = {t.video: table_rows(rundir.track.table_path("assignments", t.video)) for t in todo}
    total = sum(faces.values())
    workers = auto_workers(cfg.workers, total, PART_FACES)
    tasks: list[VideoTask] = []
    for t in todo:
        # With fewer videos than workers, a video's faces are shared out like the videos would be.
        share = math.ceil(workers * faces[t.video] / total - 1e-9) if total and executor is None else 1
        tasks += split_video(t, faces[t.video], max(1, min(share, faces[t.video] // PART_FACES)))
    return drive(summary, tasks, embed_video, executor, workers, progress, merge=merge_parts)


def table_rows(path: Path) -> int:
    """Rows of a Parquet file, from its footer (0 when it cannot be read: the work item reports why)."""
    try:
        return pq.ParquetFile(path).metadata.num_rows
    except (OSError, pa.ArrowException):
        return 0
