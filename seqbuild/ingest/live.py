"""Live streams: read until a duration or the end, reconnect after drops, commit fixed-length segments.

A stream is cut into segments of ``segment_seconds`` of stream time; each segment is its own shard
(video_id ``<stream id>-pNNNN``, kind ``segment``, parent_id the stream's id) and is committed as soon
as it is complete, so a crash loses at most the open segment. After a drop the reader waits with a
growing back-off and reconnects; the gap is logged and reported, not fatal. Once the reconnections are
used up, the stream counts as ended. The stream's own videos row (kind ``stream``) is written last.
"""

from __future__ import annotations

import logging
import time
from typing import Any

from ..errors import InputError
from ..storage import ShardStore
from .config import IngestConfig
from .decode import iter_frames, open_container, video_info

log = logging.getLogger("seqbuild.ingest")

BACKOFF_START = 0.5
BACKOFF_MAX = 8.0


def finite_source(url: str, timeout: float = 10.0) -> bool:
    """True when ``url`` serves something of known length that ends: an HTTP(S) file whose response
    carries a Content-Length (not chunked), or an HLS playlist that carries ``#EXT-X-ENDLIST``.

    Anything else (RTSP, UDP, a live HTTP feed, a server that answers nothing useful) counts as a live
    stream, read until ``duration`` or until it stops for good.
    """
    import urllib.error
    import urllib.request
    from urllib.parse import urlparse

    parsed = urlparse(url)
    if parsed.scheme not in ("http", "https"):
        return False
    try:
        if parsed.path.lower().endswith(".m3u8"):
            with urllib.request.urlopen(url, timeout=timeout) as resp:
                return b"#EXT-X-ENDLIST" in resp.read(1 << 20)
        request = urllib.request.Request(url, method="HEAD")
        with urllib.request.urlopen(request, timeout=timeout) as resp:
            length = resp.headers.get("Content-Length")
            chunked = "chunked" in (resp.headers.get("Transfer-Encoding") or "").lower()
            return resp.status == 200 and bool(length) and int(length) > 0 and not chunked
    except (urllib.error.URLError, OSError, ValueError):
        return False


def _next_segment_number(store: ShardStore, stream_id: str) -> int:
    """Segments of an earlier, interrupted read of the same stream keep their numbers."""
    done = [s for s in store.done_shards() if s.startswith(f"{stream_id}-p")]
    numbers = [int(s.rsplit("-p", 1)[1]) for s in done if s.rsplit("-p", 1)[1].isdigit()]
    return max(numbers) + 1 if numbers else 0


def ingest_stream(task: Any, cfg: IngestConfig, store: ShardStore) -> dict[str, Any]:
    """Ingest a (possibly live) stream URL into committed segments plus the stream's own videos row."""
    import av

    from .builder import ShardBuilder, write_video_row
    from .stage import _summary, failed_row, segment_id

    t0 = time.perf_counter()
    stream_id = task.video
    finite = finite_source(task.params["source"], cfg.timeout)
    if finite:
        log.info("%s: a file of known length: read to its end once", task.params["source"])
    seg_no = _next_segment_number(store, stream_id)
    builder: ShardBuilder | None = None
    seg_start_pts: float | None = None
    seg_index = 0
    segments: list[str] = []
    gaps: list[tuple[float, float]] = []
    read_seconds = 0.0
    frames_total = faces_total = 0
    fps = None
    width = height = None
    first_error: str | None = None
    attempts_left = cfg.reconnect_attempts
    backoff = BACKOFF_START
    offset = 0.0  # added to pts after a reconnection whose clock restarted, so pts keep rising
    last_pts: float | None = None
    drop_wall: float | None = None
    done = False

    def commit_segment() -> None:
        nonlocal builder, frames_total, faces_total
        if builder is None:
            return
        if builder.frames_read:
            row = builder.commit(
                {
                    "kind": "segment",
                    "parent_id": stream_id,
                    "status": "ok",
                    "error": None,
                    "fps": fps,
                    "duration": (builder.last_pts - builder.first_pts) + (1.0 / fps if fps else 0.0),
                    "wall_seconds": None,
                }
            )
            segments.append(row["video_id"])
            frames_total += builder.frames_read
            faces_total += builder.n_faces
        else:
            builder.abort()
        builder = None

    try:
        while not done:
            try:
                container = open_container(task.params["source"], cfg.timeout)
            except InputError as exc:
                if first_error is None:
                    first_error = str(exc)
                if last_pts is None and attempts_left == cfg.reconnect_attempts and not segments:
                    # Never answered: a bad URL, not a drop. Fail at once with the reason.
                    break
                if attempts_left <= 0:
                    break
                attempts_left -= 1
                time.sleep(backoff)
                backoff = min(backoff * 2, BACKOFF_MAX)
                continue
            try:
                info = video_info(container)
                fps = fps or info.fps
                width, height = width or info.width, height or info.height
                first_of_connection = True
                connection_first_pts: float | None = None
                try:
                    for frame in iter_frames(container):
                        if finite and last_pts is not None and frame.pts <= last_pts:
                            continue  # a file read again after a drop: skip what was read before
                        pts = frame.pts + offset
                        if first_of_connection:
                            first_of_connection = False
                            if last_pts is not None:
                                if pts <= last_pts and not finite:
                                    # The clock restarted with the new connection: keep pts rising.
                                    offset += last_pts - pts + (1.0 / fps if fps else 0.04)
                                    pts = frame.pts + offset
                                waited = time.monotonic() - drop_wall if drop_wall else 0.0
                                gaps.append((last_pts, waited))
                                log.warning(
                                    "%s: reconnected after %.1f s; stream time jumped %.2f s",
                                    task.params["source"],
                                    waited,
                                    pts - last_pts,
                                )
                            attempts_left = cfg.reconnect_attempts
                            backoff = BACKOFF_START
                        elif last_pts is not None:
                            read_seconds += max(0.0, pts - last_pts)
                        frame.pts = pts
                        if connection_first_pts is None:
                            connection_first_pts = frame.pts - offset
                        if seg_start_pts is None:
                            seg_start_pts = pts
                        if pts - seg_start_pts >= cfg.segment_seconds:
                            commit_segment()
                            seg_no += 1
                            seg_start_pts = pts
                        if builder is None:
                            builder = ShardBuilder(
                                segment_id(stream_id, seg_no), task.params["source"], cfg, store, task.key
                            )
                            seg_index = 0
                        builder.feed(frame, seg_index)
                        seg_index += 1
                        last_pts = pts
                        if cfg.duration and read_seconds >= cfg.duration:
                            done = True
                            break
                    # A source with a known length (a file served over HTTP, a finished recording) that
                    # was read to its end is over: reconnecting would only read it again.
                    if finite or (
                        info.duration
                        and connection_first_pts is not None
                        and last_pts is not None
                        and last_pts - offset >= connection_first_pts + info.duration - 1.0
                    ):
                        done = True
                except (av.error.FFmpegError, OSError) as exc:
                    log.warning(
                        "%s: stream read failed at %.2f s: %s", task.params["source"], last_pts or 0.0, exc
                    )
            finally:
                container.close()
            if done:
                break
            # End of data: a drop or the end of the stream; try to reconnect.
            if attempts_left <= 0:
                break
            drop_wall = time.monotonic()
            log.warning(
                "%s: stream stopped at %.2f s; reconnecting in %.1f s",
                task.params["source"],
                last_pts or 0.0,
                backoff,
            )
            attempts_left -= 1
            time.sleep(backoff)
            backoff = min(backoff * 2, BACKOFF_MAX)
        commit_segment()
    except BaseException:
        if builder is not None:
            builder.abort()
        raise
    wall = time.perf_counter() - t0
    if not segments:
        row = failed_row(
            stream_id,
            task.params["source"],
            "stream",
            first_error or f"{task.params['source']}: no video frames received",
            wall,
        )
        store.clear(stream_id)
        write_video_row(store, row, task.key)
        return _summary(row, gaps=gaps)
    row = {
        "video_id": stream_id,
        "source": task.params["source"],
        "kind": "stream",
        "parent_id": None,
        "status": "ok",
        "error": None,
        "fps": fps,
        "duration": read_seconds,
        "width": width,
        "height": height,
        "frames_read": frames_total,
        "n_faces": faces_total,
        "n_shots": None,
        "wall_seconds": wall,
    }
    store.clear(stream_id)
    write_video_row(store, row, task.key)
    return _summary(row, gaps=gaps, segments=segments)
