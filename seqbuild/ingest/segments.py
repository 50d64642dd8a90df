"""One long video file in parallel: parts read from keyframes, each owning the shots that start in it.

A file is split at nominal frames ``k * frames / n``. Part k's work item seeks to the last keyframe at
least ``warm-up`` frames before its nominal start (the transition detector's memory, twice over, so
that its decisions from there on are the ones a reading of the whole file makes), reads from there,
and owns the shots that start at or after its nominal start: from the first shot start known when it
came due (see :meth:`ShotSegmenter.first_reset`) to the first one at or after its nominal end, where
the next part begins; it reads on past its end until every decision about its own frames is final.
Frames, shots and faces carry the video's own frame indices, pts and ids, and tracks never cross a
shot, so the parts need no joining: :func:`merge_segments` renumbers the shots and writes the
video's one shard, after checking that the parts tile the video exactly (each begins at the frame,
with the pts, where the one before ends, and the last reached the end). If they do not (a decoder
that drops frames, a seek that lands elsewhere), the file is read again whole, with a warning.

Frame indices come from the packets' presentation times, read by demuxing the file once (no
decoding): a keyframe's index is the number of packets shown before it.
"""

from __future__ import annotations

import logging
import math
import shutil
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import av
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq

from ..config import config_hash
from ..driver import VideoTask
from ..errors import InputError, SeqbuildError
from ..layout import RunDir
from ..schema import DETECTIONS, REMOVALS, SHOTS
from ..storage import ShardStore, read_table, write_table
from .config import IngestConfig
from .decode import Frame, iter_frames, open_container, video_info
from .shots import create_shot_detector

log = logging.getLogger("seqbuild.ingest")

MIN_SEGMENT_SECONDS = 60.0
"""Automatic splitting never makes parts shorter than this (each part reads a warm-up before it)."""

SEGMENTS_FOLDER = "_segments"
"""``RUN/ingest/_segments/<video_id>/``: the parts of a video until they are merged into its shard."""


class SegmentMismatch(SeqbuildError):
    """The parts of a video do not tile it exactly."""


@dataclass(frozen=True)
class Segment:
    """Part ``index`` of ``count``: nominal frames [start, end) and the keyframe reading starts from."""

    index: int
    count: int
    start: int
    end: int | None
    seek_pts: int
    seek_frame: int


def warmup_frames(cfg: IngestConfig) -> int:
    """Frames read before a part's nominal start: twice the transition detector's memory."""
    detector = create_shot_detector(
        cfg.shot_detector, cut_threshold=cfg.cut_threshold, max_transition=cfg.max_transition
    )
    return 2 * int(detector.history) + int(detector.latency)


def keyframe_index(source: str) -> tuple[int, list[tuple[int, int]]]:
    """(frames, [(frame index, pts) of every keyframe]) of a file's first video stream, by demuxing it.

    SeqbuildError when a packet has no timestamp (frame indices could not be told from packets)."""
    container = open_container(source)
    try:
        stream = container.streams.video[0]
        pts_all: list[int] = []
        keys: list[int] = []
        for packet in container.demux(stream):
            if packet.size == 0 or getattr(packet, "is_discard", False):
                continue
            if packet.pts is None:
                raise SeqbuildError(f"{source}: a video packet without a timestamp; not split")
            pts_all.append(int(packet.pts))
            if packet.is_keyframe:
                keys.append(int(packet.pts))
    finally:
        container.close()
    order = sorted(pts_all)
    rank = {p: i for i, p in enumerate(order)}
    return len(order), sorted((rank[p], p) for p in keys)


def plan_segments(source: str, count: int, warmup: int) -> list[Segment]:
    """``count`` parts of a file (fewer when it has too few keyframes or frames; one means whole)."""
    frames, keys = keyframe_index(source)
    if count <= 1 or frames < 2 * count or not keys or keys[0][0] != 0:
        return []
    out: list[Segment] = []
    for k in range(count):
        start = k * frames // count
        end = (k + 1) * frames // count if k + 1 < count else None
        want = max(0, start - warmup)
        seek_frame, seek_pts = max((kf for kf in keys if kf[0] <= want), default=keys[0])
        out.append(Segment(k, count, start, end, seek_pts, seek_frame))
    return out


def segment_counts(cfg: IngestConfig, durations: dict[str, float | None], workers: int = 1) -> dict[str, int]:
    """Parts per file: ``split_segments`` when set; else enough for parts of at most ``split_minutes``
    and, with several ``workers``, a share of them in proportion to its length (so that one long
    file keeps every worker busy), never parts under MIN_SEGMENT_SECONDS."""
    out = {}
    known = {s: d for s, d in durations.items() if d}
    total = sum(known.values())
    for source, seconds in known.items():
        if cfg.split_segments:
            out[source] = cfg.split_segments
            continue
        n = math.ceil(seconds / (60.0 * cfg.split_minutes)) if cfg.split_minutes > 0 else 1
        if workers > 1 and total > 0:
            n = max(n, math.ceil(workers * seconds / total - 1e-9))
        out[source] = max(1, min(n, int(seconds // MIN_SEGMENT_SECONDS)))
    return out


def probe_duration(source: str) -> float | None:
    """A file's duration from its header (None when it cannot be opened or does not say)."""
    try:
        container = open_container(source)
    except InputError:
        return None
    try:
        return video_info(container).duration
    finally:
        container.close()


def segment_store(run: str | Path, video: str) -> ShardStore:
    """Where the parts of ``video`` are written until they are merged."""
    return ShardStore(RunDir(run).ingest.root / SEGMENTS_FOLDER / video)


def segment_shard(video: str, index: int, count: int) -> str:
    """The shard id of part ``index`` of ``count`` of ``video``."""
    return f"{video}-s{index:03d}-of-{count:03d}"


def segment_key(key: str, segments: list[Segment]) -> str:
    """The hash a video's parts are marked with: the video's key and the plan that made them."""
    return config_hash({"video": key, "plan": [s.__dict__ for s in segments]})


def discard_segments(run: str | Path, video: str) -> None:
    """Remove what parts of ``video`` left (after a merge, or when it is read whole)."""
    shutil.rmtree(segment_store(run, video).root, ignore_errors=True)


def segment_frames(container: Any, segment: Segment, source: str) -> Iterator[Frame]:
    """The frames of a file from a part's keyframe on, carrying the whole file's frame indices."""
    stream = container.streams.video[0]
    if segment.seek_frame > 0:
        container.seek(segment.seek_pts, stream=stream, backward=True, any_frame=False)
    started = segment.seek_frame == 0
    index = segment.seek_frame
    for frame in iter_frames(container):
        if not started:
            raw = frame.frame.pts
            if raw is None or raw < segment.seek_pts:
                continue  # a frame shown before the keyframe (or a seek that landed early)
            if raw != segment.seek_pts:
                raise SegmentMismatch(
                    f"{source}: seeking to frame {segment.seek_frame} landed on another frame"
                )
            started = True
        yield Frame(index=index, pts=frame.pts, frame=frame.frame, orientation=frame.orientation)
        index += 1


def ingest_segment(task: VideoTask, cfg: IngestConfig) -> dict[str, Any]:
    """Read one part of a video file into its part shard; its videos row (kind ``segment``)."""
    from .builder import ScanAhead, SegmentWindow, ShardBuilder, ShardRead
    from .stage import failed_row

    source = task.params["source"]
    seg: Segment = task.params["segment"]
    store = segment_store(task.run, task.video)
    shard = segment_shard(task.video, seg.index, seg.count)
    part_key = task.params["part_key"]
    t0 = time.perf_counter()
    try:
        container = open_container(source, cfg.timeout)
    except InputError as exc:
        return failed_row(shard, source, "segment", str(exc), time.perf_counter() - t0, task.video)
    with ShardRead(container) as read:
        info = video_info(container)
        window = SegmentWindow(seg.start if seg.index else None, seg.end)
        builder = ShardBuilder(task.video, source, cfg, store, part_key, shard=shard, window=window)
        read.builder = builder
        scan = ScanAhead(
            container,
            builder,
            depth=2 * builder.batch_size,
            frames=segment_frames(container, seg, source),
        )
        read.scan = scan
        try:
            with scan as frames:
                for _n, item in frames:
                    if item is not None:
                        builder.add(item)
        except (av.error.FFmpegError, OSError) as exc:
            # No marker for this part: the merge then reads the file whole, which reports a damaged or
            # truncated video the way a file never split is reported (a partial or failed videos row).
            builder.abort()
            log.warning("%s: part %d of %d could not be decoded (%s)", source, seg.index + 1, seg.count, exc)
            return {"video_id": shard, "status": "unread", "error": None}
        row = builder.commit(
            {
                "kind": "segment",
                "parent_id": task.video,
                "status": "ok",
                "error": None,
                "fps": info.fps,
                "duration": None,
                "wall_seconds": time.perf_counter() - t0,
            },
            end_of_video=not scan.ended_early,
        )
        part = {
            **builder.part,
            "first_pts": builder.first_pts,
            "last_pts": builder.last_pts,
            "n_shots": builder.n_shots,
            "n_faces": builder.n_faces,
            "frames_detected": builder.frames_detected,
            "width": builder.width,
            "height": builder.height,
            "fps": info.fps,
            "header_frames": info.frames,
            "header_duration": info.duration,
            "wall_seconds": row["wall_seconds"],
        }
        store.mark_done(shard, part_key, status="ok", source=source, part=part)
        return row


def _with_shot_offset(table: pa.Table, offset: int) -> pa.Table:
    i = table.schema.get_field_index("shot_id")
    shifted = pc.add(table.column("shot_id"), pa.scalar(offset, pa.int32())).cast(pa.int32())
    return table.set_column(i, table.schema.field(i), shifted)


def check_tiling(parts: list[dict[str, Any]], source: str) -> None:
    """SegmentMismatch unless the parts' frames follow each other from frame 0 to the video's end."""
    covered, end_pts, last = 0, None, None
    for k, part in enumerate(parts):
        if not part:
            raise SegmentMismatch(f"{source}: part {k + 1} of {len(parts)} was not read to its end")
        if part["end"] <= part["first"]:
            continue  # owns no shot: the part before read through it
        if part["first"] != covered:
            raise SegmentMismatch(
                f"{source}: part {k} begins at frame {part['first']}, the parts before end at {covered}"
            )
        if end_pts is not None and part["first_pts"] != end_pts:
            raise SegmentMismatch(
                f"{source}: part {k} begins at frame {covered} with pts {part['first_pts']}, "
                f"the part before saw pts {end_pts} there"
            )
        covered, end_pts, last = part["end"], part["end_pts"], part
    if last is None or not last["end_of_video"]:
        raise SegmentMismatch(f"{source}: no part read to the end of the video (frame {covered})")


def merge_segments(run: str | Path, video: str, source: str, key: str, count: int) -> dict[str, Any]:
    """Write ``video``'s shard from its ``count`` finished parts; its videos row."""
    from .builder import StreamingTable, write_video_row
    from .stage import _period

    pstore = segment_store(run, video)
    shards = [segment_shard(video, k, count) for k in range(count)]
    parts = [pstore.marker(s).get("part") or {} for s in shards]
    check_tiling(parts, source)
    store = RunDir(run).ingest
    store.clear(video)
    detections = StreamingTable(store.table_path("detections", video), DETECTIONS, "detections", key)
    shots: list[pa.Table] = []
    offset = 0
    try:
        for shard, part in zip(shards, parts, strict=True):
            if part["end"] <= part["first"]:
                continue
            file = pq.ParquetFile(pstore.table_path("detections", shard))
            for batch in file.iter_batches(batch_size=1024):
                detections.write(_with_shot_offset(pa.Table.from_batches([batch]), offset))
            shots.append(_with_shot_offset(read_table(pstore.table_path("shots", shard), SHOTS), offset))
            offset += int(part["n_shots"])
        detections.commit()
    except BaseException:
        detections.abort()
        raise
    shot_table = pa.concat_tables(shots) if shots else SHOTS.empty_table()
    write_table(store.table_path("shots", video), shot_table, SHOTS, "shots", key)
    write_table(store.table_path("removals", video), REMOVALS.empty_table(), REMOVALS, "removals", key)
    owned = [p for p in parts if p["end"] > p["first"]]
    frames = sum(p["end"] - p["first"] for p in owned)
    first, last_pts = owned[0], float(owned[-1]["last_pts"])
    status, error = "ok", None
    expected = first.get("header_frames")
    if expected and first.get("header_duration") and frames < 0.95 * expected - 2:
        status = "partial"
        error = f"{source}: decoded {frames} of the {expected} frames its header announces (truncated video?)"
    row = {
        "video_id": video,
        "source": source,
        "kind": "file",
        "parent_id": None,
        "status": status,
        "error": error,
        "fps": first["fps"],
        "duration": last_pts - first["first_pts"] + _period(first["fps"]),
        "width": first["width"] or None,
        "height": first["height"] or None,
        "frames_read": frames,
        "frames_detected": sum(int(p["frames_detected"]) for p in owned),
        "n_faces": sum(int(p["n_faces"]) for p in owned),
        "n_shots": offset,
        "start_pts": first["first_pts"],
        "wall_seconds": sum(float(p["wall_seconds"]) for p in parts),
    }
    write_video_row(store, row, key, write_empty_faces=False)
    discard_segments(run, video)
    return row


def split_tasks(
    run: str | Path,
    cfg: IngestConfig,
    todo: list[tuple[str, str]],
    progress: bool,
    durations: dict[str, float | None],
    workers: int,
) -> tuple[list[VideoTask], list[list[VideoTask]]]:
    """The work items for ``todo``: one per source, or one per part of the files that are split (parts
    finished by an earlier, interrupted run are not redone); and the parts of videos that only wait to
    be merged (every part finished before)."""
    from .stage import source_id

    counts = segment_counts(cfg, durations, workers) if cfg.split_segments != 1 else {}
    tasks: list[VideoTask] = []
    ready: list[list[VideoTask]] = []
    for source, key in todo:
        vid = source_id(source)
        whole = VideoTask(str(run), vid, key, cfg, {"source": source, "progress": progress})
        segments = []
        if counts.get(source, 1) > 1:
            try:
                segments = plan_segments(source, counts[source], warmup_frames(cfg))
            except (SeqbuildError, OSError) as exc:
                log.info("%s: read whole (%s)", source, exc)
        if not segments:
            discard_segments(run, vid)
            tasks.append(whole)
            continue
        part_key = segment_key(key, segments)
        store = segment_store(run, vid)
        params = {"source": source, "progress": False, "part_key": part_key}
        parts = [
            VideoTask(str(run), vid, key, cfg, {**params, "segment": s}, s.index, s.count) for s in segments
        ]
        left = [t for t in parts if not store.is_done(segment_shard(vid, t.part, t.parts), part_key)]
        if left:
            log.info("%s: read in %d parts (%d left)", source, len(parts), len(left))
            tasks += left
        else:
            ready.append(parts)
    return tasks, ready


def merge_parts(tasks: list[VideoTask]) -> dict[str, Any]:
    """Merge the parts of one video into its shard (the driver calls this once they have all returned);
    read the video whole if they do not tile it."""
    from .stage import _counts, _summary, ingest_source

    task = tasks[0]
    source = task.params["source"]
    try:
        row = merge_segments(task.run, task.video, source, task.key, task.parts)
    except SegmentMismatch as exc:
        log.warning("%s: %s; reading it whole", source, exc)
        discard_segments(task.run, task.video)
        whole = VideoTask(task.run, task.video, task.key, task.cfg, {"source": source, "progress": False})
        return ingest_source(whole)
    return _counts(_summary(row))
