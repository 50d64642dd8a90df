"""The embed stage: one L2-normalised vector per face kept by track, stored by face_id.

Reads RUN/ingest/detections and RUN/track/assignments, writes RUN/embed/embeddings/<video_id>.parquet
(``embeddings_schema(dim)``) and marks the video done. A re-run skips videos already embedded with the
same config and the same track output; a video that fails is reported and the others carry on.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from ..config import config_hash
from ..errors import SeqbuildError
from ..imaging import decode_jpeg
from ..layout import RunDir
from ..pipeline.executors import Executor, LocalExecutor
from ..schema import ASSIGNMENTS, embeddings_schema
from ..storage import read_table, write_table
from .config import EmbedConfig
from .models import Embedder, create_embedder

log = logging.getLogger(__name__)

_HASH_IGNORE = ("workers", "batch_size")
_EMBEDDERS: dict[tuple, Embedder] = {}
CHUNK = 256  # crops decoded at a time: 4 FaceNet batches, about 16 MiB of pixels whatever the video length


def get_embedder(cfg: EmbedConfig) -> Embedder:
    """The embedder of ``cfg``, created once per process."""
    key = (cfg.model, cfg.weights, cfg.device, cfg.batch_size, cfg.normalisation)
    if key not in _EMBEDDERS:
        _EMBEDDERS[key] = create_embedder(
            cfg.model,
            weights=cfg.weights,
            device=cfg.device,
            batch_size=cfg.batch_size,
            normalisation=cfg.normalisation,
        )
    return _EMBEDDERS[key]


def shard_hash(run: RunDir, cfg: EmbedConfig, shard: str) -> str:
    """Config hash of one video's embeddings: the embed options and the track output they were made from."""
    upstream = run.track.marker(shard).get("config_hash", "")
    return config_hash({**{k: v for k, v in vars(cfg).items() if k not in _HASH_IGNORE}, "track": upstream})


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


def model_id(embedder: Embedder) -> str:
    """``name:weights-file-name[:normalisation]``, stored with every vector so that later stages and
    galleries can tell which model (and input standardisation) made it."""
    weights = Path(str(getattr(embedder, "weights", "") or "")).name
    norm = getattr(embedder, "normalisation", "fixed")
    tag = f"{embedder.name}:{weights}" if weights else embedder.name
    return tag if norm == "fixed" else f"{tag}:{norm}"


@dataclass
class EmbedTask:
    """One video's embedding job (picklable, for any executor)."""

    run: str
    shard: str
    cfg: EmbedConfig
    config_hash: str


def embed_video(task: EmbedTask) -> dict[str, Any]:
    """Embed the tracked faces of one video and write its shard; returns counts or the error."""
    run = RunDir(task.run)
    try:
        assign = read_table(run.track.table_path("assignments", task.shard), ASSIGNMENTS)
        det = read_table(
            run.ingest.table_path("detections", task.shard), columns=["face_id", "video_id", "image"]
        )
        keep = pc.is_in(det.column("face_id"), value_set=assign.column("face_id"))
        det = det.filter(keep)
        missing = assign.num_rows - det.num_rows
        if missing:
            raise SeqbuildError(
                f"{run.ingest.table_path('detections', task.shard)}: {missing} tracked faces have no detection row"
            )
        embedder = get_embedder(task.cfg)
        vectors = embed_faces(embedder, det.column("image"), det.column("face_id").to_pylist())
        schema = embeddings_schema(embedder.dim)
        table = pa.table(
            {
                "face_id": det.column("face_id"),
                "video_id": det.column("video_id"),
                "model": pa.array(
                    [f"{embedder.name}:{Path(str(getattr(embedder, 'weights', ''))).name}"] * det.num_rows
                ),
                "embedding": pa.FixedSizeListArray.from_arrays(pa.array(vectors.reshape(-1)), embedder.dim),
            }
        )
        write_table(
            run.embed.table_path("embeddings", task.shard), table, schema, "embeddings", task.config_hash
        )
        run.embed.mark_done(task.shard, task.config_hash, faces=det.num_rows, dim=embedder.dim)
        return {"faces": det.num_rows}
    except (SeqbuildError, OSError, pa.ArrowException) as exc:
        return {"error": str(exc)}


def run_embed(
    run: str | Path, cfg: EmbedConfig, executor: Executor | None = None, progress: bool = True
) -> dict[str, Any]:
    """Embed every video that track completed; returns counts (videos done/skipped/failed, faces)."""
    from tqdm import tqdm

    rundir = RunDir(run)
    shards = rundir.require("track", "embed").done_shards()
    summary: dict[str, Any] = {
        "videos": len(shards),
        "done": 0,
        "skipped": 0,
        "failed": 0,
        "faces": 0,
        "errors": [],
    }
    tasks = []
    for shard in shards:
        h = shard_hash(rundir, cfg, shard)
        if rundir.embed.is_done(shard, h):
            summary["skipped"] += 1
            continue
        rundir.embed.clear(shard)
        tasks.append(EmbedTask(str(run), shard, cfg, h))
    executor = executor or LocalExecutor(cfg.workers)
    bar = tqdm(total=len(tasks), desc="embed", unit="video", disable=not progress)
    for task, result in executor.map(embed_video, tasks):
        bar.update(1)
        if "error" in result:
            summary["failed"] += 1
            summary["errors"].append(f"{task.shard}: {result['error']}")
            log.error("embed %s: %s", task.shard, result["error"])
        else:
            summary["done"] += 1
            summary["faces"] += result["faces"]
    bar.close()
    return summary
