"""The ingest stage: sources in, ``RUN/ingest/{videos,shots,detections}/<video_id>.parquet`` out.

Each source (a file or a stream URL) is one work item for ``executor.map``; :func:`ingest_source` is
the picklable per-source function. A file becomes one shard; a live stream becomes one shard per
segment (committed as it finishes) plus one shard for the stream's own videos row. A shard is marked
done only after its three tables are written, so an interrupted run redoes exactly the unfinished shards.
A source that cannot be read gives a ``failed`` videos row with a one-line error; the others carry on.
"""

from __future__ import annotations

import hashlib
import logging
import os
import stat
import time
from collections.abc import Iterable
from pathlib import Path
from typing import Any

from ..config import config_hash, output_hash
from ..driver import StageSummary, VideoTask, auto_workers, drive, guarded
from ..errors import InputError
from ..executors import Executor
from ..layout import RunDir
from ..storage import ShardStore
from .builder import ScanAhead, ShardBuilder, ShardRead, write_video_row
from .config import IngestConfig
from .decode import is_url, open_container, video_info

log = logging.getLogger("seqbuild.ingest")

VIDEO_EXTENSIONS = frozenset(
    ".mp4 .m4v .mov .mkv .webm .avi .ts .m2ts .mts .mpg .mpeg .flv .wmv .3gp .ogv .vob .mxf".split()
)
"""File extensions picked up when a folder is given as input."""


def source_id(source: str) -> str:
    """The video_id of a source: 12 hex chars of sha1 of its absolute path (files) or its URL (streams)."""
    key = source if is_url(source) else os.path.abspath(source)
    return hashlib.sha1(key.encode()).hexdigest()[:12]


def segment_id(stream_id: str, n: int) -> str:
    """The video_id of the n-th segment of a stream."""
    return f"{stream_id}-p{n:04d}"


def expand_inputs(inputs: Iterable[str]) -> list[str]:
    """Sources from files, folders (searched recursively for videos), ``.txt`` lists and URLs, in order.

    Missing paths are kept as sources so that they fail with their own one-line error; duplicates are
    dropped. Lines of a list that are blank or start with ``#`` are skipped; relative paths in a list
    are relative to the list's folder.
    """
    out: list[str] = []
    seen: set[str] = set()

    def add(source: str) -> None:
        key = source if is_url(source) else os.path.abspath(source)
        if key not in seen:
            seen.add(key)
            out.append(source)

    for item in inputs:
        item = str(item).strip()
        if not item:
            continue
        if is_url(item):
            add(item)
            continue
        path = Path(item)
        if path.is_dir():
            found = sorted(p for p in path.rglob("*") if p.is_file() and p.suffix.lower() in VIDEO_EXTENSIONS)
            if not found:
                log.warning("%s: folder holds no video files (%s)", item, ", ".join(sorted(VIDEO_EXTENSIONS)))
            for p in found:
                add(str(p))
        elif path.suffix.lower() == ".txt" and path.is_file():
            for line in path.read_text(errors="replace").splitlines():
                line = line.strip()
                if not line or line.startswith("#"):
                    continue
                if is_url(line) or Path(line).is_absolute():
                    add(line)
                else:
                    add(str(path.parent / line))
        else:
            add(item)
    return out


def failed_row(
    video_id: str, source: str, kind: str, error: str, wall: float, parent_id: str | None = None
) -> dict:
    """The videos row of a source that could not be read."""
    return {
        "video_id": video_id,
        "source": source,
        "kind": kind,
        "parent_id": parent_id,
        "status": "failed",
        "error": error,
        "wall_seconds": wall,
    }


# ---------------------------------------------------------------------------------------------------
# Per-source work (top-level and picklable: executors, including Ray, call it unchanged)


def ingest_source(task: VideoTask) -> dict[str, Any]:
    """Ingest one source into its shard(s); counts, and ``error`` when it could not be read whole."""
    import torch

    cfg = task.cfg
    store = RunDir(task.run).ingest
    threads_before = torch.get_num_threads()
    if cfg.threads:
        torch.set_num_threads(cfg.threads)
    elif cfg.workers > 1:
        torch.set_num_threads(max(1, (os.cpu_count() or 1) // cfg.workers))
    try:
        if "segment" in task.params:
            from .segments import ingest_segment

            row = ingest_segment(task, cfg)
            return {"error": row["error"]} if row["status"] not in ("ok", "unread") else {}
        if is_url(task.params["source"]):
            from .live import ingest_stream

            result = ingest_stream(task, cfg, store)
        else:
            result = ingest_file(task, cfg, store)
    finally:
        torch.set_num_threads(threads_before)
    for gap in result.get("gaps", []):
        log.warning("%s: stream dropped at %.2f s, reconnected after %.1f s", task.params["source"], *gap)
    return _counts(result)


def _counts(result: dict[str, Any]) -> dict[str, Any]:
    counts = {
        "ok": int(result["status"] == "ok"),
        "frames": result["frames"],
        "faces": result["faces"],
        "video_seconds": result["duration"],
    }
    if result["status"] != "ok":
        counts["error"] = result["error"] or f"{result['source']}: {result['status']}"
    return counts


def ingest_file(task: VideoTask, cfg: IngestConfig, store: ShardStore) -> dict[str, Any]:
    """Ingest a video file into one shard."""
    import av

    source = task.params["source"]
    t0 = time.perf_counter()
    try:
        container = open_container(source, cfg.timeout)
    except InputError as exc:
        row = failed_row(task.video, source, "file", str(exc), time.perf_counter() - t0)
        store.clear(task.video)
        write_video_row(store, row, task.key)
        return _summary(row)
    with ShardRead(container) as read:
        info = video_info(container)
        builder = ShardBuilder(task.video, source, cfg, store, task.key)
        read.builder = builder
        status, error = "ok", None
        bar = _frame_bar(task, info.frames)
        scan = ScanAhead(container, builder, depth=2 * builder.batch_size)
        read.scan = scan
        try:
            with scan as frames:
                for n, item in frames:
                    if item is not None:
                        builder.add(item)
                    if bar is not None:
                        bar.update(n)
        except (av.error.FFmpegError, OSError) as exc:
            status = "partial" if builder.frames_read else "failed"
            where = f"at frame {builder.frames_read}" + (
                f" ({builder.last_pts:.2f} s)" if builder.last_pts is not None else ""
            )
            error = f"{source}: decoding failed {where}: {exc} (truncated or corrupt video?)"
        finally:
            if bar is not None:
                bar.close()
        if status == "ok":
            if builder.frames_read == 0:
                status, error = (
                    "failed",
                    f"{source}: no decodable video frames (corrupt or not a video?)",
                )
            elif info.duration and builder.last_pts is not None and info.frames:
                expected = info.frames
                if builder.frames_read < 0.95 * expected - 2:
                    status = "partial"
                    error = (
                        f"{source}: decoded {builder.frames_read} of the {expected} frames its header "
                        f"announces (truncated video?)"
                    )
        read = 0.0 if builder.first_pts is None else builder.last_pts - builder.first_pts + _period(info.fps)
        row = builder.commit(
            {
                "kind": "file",
                "parent_id": None,
                "status": status,
                "error": error,
                "fps": info.fps,
                "duration": read,
                "wall_seconds": time.perf_counter() - t0,
            }
        )
        return _summary(row)


def _period(fps: float | None) -> float:
    return 1.0 / fps if fps else 0.0


def _frame_bar(task: VideoTask, total: int | None):
    if not task.params.get("progress"):
        return None
    from tqdm.auto import tqdm

    source = task.params["source"]
    name = Path(source).name if not is_url(source) else source
    return tqdm(total=total, desc=name[:40], unit="frame", leave=False, position=1, dynamic_ncols=True)


def _summary(row: dict[str, Any], **extra: Any) -> dict[str, Any]:
    return {
        "video_id": row["video_id"],
        "source": row["source"],
        "status": row["status"],
        "error": row.get("error"),
        "frames": int(row.get("frames_read") or 0),
        "faces": int(row.get("n_faces") or 0),
        "duration": float(row.get("duration") or 0.0),
        "wall_seconds": float(row.get("wall_seconds") or 0.0),
        **extra,
    }


# ---------------------------------------------------------------------------------------------------
# The stage


def ingest_hash(cfg: IngestConfig) -> str:
    """Hash of the options that change ingest's output (recorded in every table and marker)."""
    return output_hash(cfg)


FINGERPRINT_BYTES = 1 << 16
"""Bytes read from each end of a video file for its fingerprint."""


def source_fingerprint(source: str) -> str:
    """What identifies the contents of a video file without reading it all: its size, its modification
    time and a hash of its first and last 64 KiB ("" for streams and files that cannot be read)."""
    if is_url(source):
        return ""
    try:
        with open(source, "rb") as fh:
            st = os.fstat(fh.fileno())
            if not stat.S_ISREG(st.st_mode):
                return ""
            h = hashlib.sha256(f"{st.st_size}:{st.st_mtime_ns}:".encode())
            h.update(fh.read(FINGERPRINT_BYTES))
            if st.st_size > 2 * FINGERPRINT_BYTES:
                fh.seek(st.st_size - FINGERPRINT_BYTES)
                h.update(fh.read(FINGERPRINT_BYTES))
    except OSError:
        return ""
    return h.hexdigest()[:16]


def source_key(cfg_hash: str, source: str) -> str:
    """The hash a source's shards are marked with: the ingest options, and for a file its fingerprint,
    so that a file replaced at the same path is read again (and every later stage redoes it too)."""
    fingerprint = source_fingerprint(source)
    return config_hash({"ingest": cfg_hash, "file": fingerprint}) if fingerprint else cfg_hash


def plan(
    run: str | Path, cfg: IngestConfig, sources: list[str]
) -> tuple[list[tuple[str, str]], list[str], list[str]]:
    """Split sources into (to do as (source, key), skipped, failed earlier): done ones with the same
    config and file contents are skipped; ones that failed before are redone only with ``retry_failed``."""
    store = RunDir(run).ingest
    cfg_hash = ingest_hash(cfg)
    todo, skipped, failed_before = [], [], []
    for source in sources:
        vid = source_id(source)
        key = source_key(cfg_hash, source)
        marker = store.marker(vid) if store.is_done(vid, key) else None
        if marker is None:
            previous = store.marker(vid).get("config_hash")
            if previous is not None and previous != key:
                log.warning(
                    "%s: changed since it was ingested (size, time or contents) or ingested with other "
                    "options: it is read again",
                    source,
                )
            todo.append((source, key))
        elif marker.get("status", "ok") != "ok":
            if cfg.retry_failed:
                todo.append((source, key))
            else:
                failed_before.append(source)
        else:
            skipped.append(source)
    return todo, skipped, failed_before


def check_inputs(run: str | Path, cfg: IngestConfig) -> None:
    """InputError when ``cfg.inputs`` names no source at all (checked before a changed run is reset)."""
    if not expand_inputs(cfg.inputs):
        raise InputError("no inputs given (video files, folders, .txt lists or stream URLs)")


def run_ingest(
    run: str | Path, cfg: IngestConfig, executor: Executor | None = None, progress: bool = True
) -> StageSummary:
    """Ingest ``cfg.inputs`` into ``run``; resumable. Sources that failed in an earlier run and were not
    retried count as failures again, with their recorded error."""
    t0 = time.perf_counter()
    sources = expand_inputs(cfg.inputs)
    if not sources:
        raise InputError("no inputs given (video files, folders, .txt lists or stream URLs)")
    todo, skipped, failed_before = plan(run, cfg, sources)
    store = RunDir(run).ingest
    summary = StageSummary("ingest", videos=len(sources), skipped=len(skipped))
    for source in failed_before:
        error = store.marker(source_id(source)).get("error") or f"{source}: failed"
        summary.fail(
            source_id(source),
            f"{error} (failed in an earlier run; --retry-failed, or --set ingest.retry_failed=true under seqbuild run, tries it again)",
        )
    if skipped:
        log.info("ingest: %d source(s) already done with this config, skipped", len(skipped))
    from .segments import merge_parts, probe_duration, split_tasks

    durations = {s: probe_duration(s) for s, _ in todo if not is_url(s)}
    workers = auto_workers(cfg.workers, sum(d or 0.0 for d in durations.values()), 60.0)
    if workers > 1:
        log.info("ingest: %d workers", workers)
    tasks, ready = split_tasks(run, cfg, todo, progress, durations, workers)
    for parts in ready:  # every part finished by an earlier run: only the merge is left
        counts = guarded(merge_parts, parts)
        error = counts.pop("error", None)
        summary.add(counts)
        if error:
            summary.fail(parts[0].video, str(error))
        else:
            summary.done += 1
    drive(summary, tasks, ingest_source, executor, workers, progress, merge=merge_parts)
    wall = time.perf_counter() - t0
    summary.counts["wall_seconds"] = round(wall, 3)
    if wall > 0 and summary.counts.get("frames"):
        summary.counts["frames_per_second"] = round(summary.counts["frames"] / wall, 2)
        summary.counts["realtime_factor"] = round(summary.counts.get("video_seconds", 0.0) / wall, 3)
    return summary
