"""Building one ingest shard: frames in, shots and detections out (used for files, parts of files, streams).

:class:`ShardBuilder` follows the shots of the frames it is given, holds each frame back until its
shot is settled, runs the face detector on the due ones in batches and appends aligned crops to the
shard's detections table; :class:`ScanAhead` decodes and scans in a thread ahead of the detector;
:func:`write_video_row` writes a shard's videos row and marks it done.
"""

from __future__ import annotations

import logging
import queue
import threading
import time
from collections import deque
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow as pa

from ..driver import process_cached
from ..imaging import encode_jpeg
from ..memory import release_free_memory
from ..schema import DETECTIONS, REMOVALS, SHOTS, VIDEOS
from ..storage import AppendingTableWriter, ShardStore, remove_stale_temporaries, write_table
from .align import align_face, face_quality
from .config import IngestConfig
from .decode import Frame, iter_frames
from .shots import ShotDetector, ShotSegmenter, create_shot_detector, thumbnail_size

log = logging.getLogger("seqbuild.ingest")

TRIM_EVERY = 4
"""Detector batches between two returns of the heap's free pages to the kernel (``malloc_trim``)."""

DETECTION_FLUSH_ROWS = 1024
"""Detections buffered before they are appended to the shard's Parquet file (bounds memory per video)."""


# ---------------------------------------------------------------------------------------------------
# Per-process detector cache: the model is built inside the worker, once per process and config.


def cached_detector(cfg: IngestConfig) -> Any:
    """The face detector for ``cfg``, built once per process (workers never receive a model by pickle)."""
    from .detect import create_detector

    key = ("detector", cfg.detector, cfg.device, cfg.min_face, cfg.threshold, cfg.max_side, cfg.batch_size)
    return process_cached(
        key,
        lambda: create_detector(
            cfg.detector,
            device=cfg.device,
            min_face=cfg.min_face,
            threshold=cfg.threshold,
            max_side=cfg.max_side,
            batch_size=cfg.batch_size,
        ),
    )


# ---------------------------------------------------------------------------------------------------
# Writing one shard


class StreamingTable(AppendingTableWriter):
    """The detections of one shard, appended in batches (see :class:`seqbuild.storage.AppendingTableWriter`)."""

    def __init__(self, path: Path, schema: pa.Schema, name: str, cfg_hash: str) -> None:
        # Temporaries of killed runs go; a live writer's (another command on the same run) is locked and kept.
        if path.parent.is_dir():
            remove_stale_temporaries(path.parent, f".{path.name}.*.tmp")
        super().__init__(path, schema, name, cfg_hash)


@dataclass(frozen=True)
class SegmentWindow:
    """The part of a video one work item owns, given by nominal frames: ``start`` (None: from frame 0)
    and ``end`` (None: to the end of the video).

    The part owns the shots that start inside it: from the first shot start at or after ``start`` that
    was known when it came due (:meth:`ShotSegmenter.first_reset`) up to the first such start at or
    after ``end``, which the next part begins with. Frames before (a warm-up for the transition
    detector) and after (until the decisions about the owned frames are final) are read, not kept.
    """

    start: int | None = None
    end: int | None = None


class ShardBuilder:
    """Turns the frames of one shard (a video or a stream segment) into its shots and detections.

    Frames are fed in order; each gives a thumbnail to the transition detector (:class:`ShotSegmenter`)
    and waits ``latency`` frames in a short queue, until a hard cut at it would be known. Then, if it is
    due for the face detector (a shot's first frame, every k-th frame), it is held until it is settled:
    a dissolve is recognised only once it is over, so a frame may turn out to be a blend of two shots,
    and such a frame never reaches the face detector (its faces would show two people at once). A
    settled frame has its final shot, so each detection is written with it.

    With a ``window`` the builder makes one part of a video (frames carry the video's own indices):
    only the frames the window owns are detected and written, shot ids count from the part's first
    shot, and :attr:`complete` says when reading can stop.
    """

    def __init__(
        self,
        video_id: str,
        source: str,
        cfg: IngestConfig,
        store: ShardStore,
        cfg_hash: str,
        shard: str | None = None,
        window: SegmentWindow | None = None,
    ) -> None:
        self.video_id = video_id
        self.shard = shard or video_id
        self.window = window
        self.source = source
        self.cfg = cfg
        self.store = store
        self.cfg_hash = cfg_hash
        store.clear(self.shard)
        self.detector = cached_detector(cfg)
        self.batch_size = cfg.batch_size or self.detector.batch_size
        """Frames gathered per detector call (the detector's own default when the config says 0)."""
        self.segmenter = ShotSegmenter(
            create_shot_detector(
                cfg.shot_detector, cut_threshold=cfg.cut_threshold, max_transition=cfg.max_transition
            ),
            cfg.detect_every,
        )
        self.detections = StreamingTable(
            store.table_path("detections", self.shard), DETECTIONS, "detections", cfg_hash
        )
        self._queue: deque[tuple[int, Frame]] = deque()  # frames until a cut at them would be known
        self._held: deque[tuple[int, Frame]] = deque()  # due frames until they are settled
        self._pending: list[tuple[int, float, int, np.ndarray]] = []
        self._rows: list[dict[str, Any]] = []
        self._pts: list[float] = []
        self.frames_read = 0
        self.frames_detected = 0
        self._batches = 0
        self.frames_blended = 0
        self.n_faces = 0
        self.n_shots = 0
        self.first_pts: float | None = None
        self.last_pts: float | None = None
        self.width = 0
        self.height = 0
        self._thumb: tuple[int, int] | None = None
        self._pts_offset: int | None = None  # index of the first frame fed
        self._base_shot: int | None = None  # the detector's shot number of the part's first shot

    @property
    def shot_detector(self) -> ShotDetector:
        """The transition detector the segmenter runs."""
        return self.segmenter.detector

    @shot_detector.setter
    def shot_detector(self, detector: ShotDetector) -> None:
        self.segmenter = ShotSegmenter(detector, self.cfg.detect_every)

    def feed(self, frame: Frame, index: int) -> None:
        """Add the shard's frame number ``index`` (decoded ``frame``)."""
        item = self.scan(frame, index)
        if item is not None:
            self.add(item)

    def scan(self, frame: Frame, index: int) -> tuple[int, float, int, np.ndarray] | None:
        """Transition detection for one frame; an earlier frame as a detection item once it is due and
        settled (at most one per call). Only this method feeds the segmenter, so it may run in a decoding
        thread ahead of :meth:`add`."""
        if self._thumb is None:
            self.width, self.height = frame.width, frame.height
            self._thumb = thumbnail_size(self.width, self.height)
        if self.first_pts is None:
            self.first_pts = frame.pts
            self._pts_offset = index
        self.segmenter.push(index, frame.thumbnail(*self._thumb))
        self._pts.append(frame.pts)
        self.last_pts = frame.pts
        self.frames_read += 1
        self._queue.append((index, frame))
        if len(self._queue) > self.segmenter.latency:
            self._check_due()
        return self._release()

    def _check_due(self) -> None:
        index, frame = self._queue.popleft()
        if self.segmenter.due(index):
            self._held.append((index, frame))

    def _release(self) -> tuple[int, float, int, np.ndarray] | None:
        while self._held:
            index, frame = self._held[0]
            settled, shot, blend = self.segmenter.settled(index)
            if not settled:
                return None
            self._held.popleft()
            if self.window is not None:
                if not self._owns(index):
                    continue  # read for the transition detector only
                shot -= self._base_shot or 0
            if blend is not None:
                self.frames_blended += 1  # two shots mixed: not a frame to take faces from
                continue
            return (index, frame.pts, shot, frame.rgb())
        return None

    def owned_range(self) -> tuple[int, int | None]:
        """(first, end) frames of the window's part as far as known now (first == end: it owns none;
        end None: up to the last frame read)."""
        w = self.window
        if w is None:
            return 0, None
        seg = self.segmenter
        first = 0 if w.start is None else seg.first_reset(w.start)
        end = None if w.end is None else seg.first_reset(w.end)
        if first is None:  # no shot starts in [start, end) (else it would be known by now)
            first = end if end is not None else (self._pts_offset or 0) + len(self._pts)
        if end is not None and first > end:
            first = end
        return first, end

    def _owns(self, index: int) -> bool:
        """Whether a settled frame belongs to the window's part (every shot start up to it is known)."""
        first, end = self.owned_range()
        if index < first or (end is not None and index >= end):
            return False
        if self._base_shot is None:
            self._base_shot = self.segmenter.settled(first)[1]
        return True

    @property
    def complete(self) -> bool:
        """True when a window's part is read far enough: every frame it owns is settled and each of its
        shots knows what opened it (a fade is told from a cut only ``max_transition`` frames later)."""
        w = self.window
        if w is None or w.end is None:
            return False
        seg = self.segmenter
        end = seg.first_reset(w.end)
        if end is None:
            # Every frame before `end` has come due without a shot starting in [start, end): the part
            # owns nothing (the part before reads on until a shot starts).
            return w.start is not None and seg.due_upto >= w.end - 1 and seg.first_reset(w.start) is None
        pending = seg.detector.undecided_from()
        return pending is None or pending >= end

    def add(self, item: tuple[int, float, int, np.ndarray]) -> None:
        """Queue a frame for detection (from :meth:`scan`); detect once a batch is full."""
        self._pending.append(item)
        if len(self._pending) >= self.batch_size:
            self._run_detector()

    def _run_detector(self) -> None:
        if not self._pending:
            return
        batch, self._pending = self._pending, []
        results = self.detector.detect([item[3] for item in batch])
        self._batches += 1
        if self._batches % TRIM_EVERY == 0:
            release_free_memory()  # the heap's free pages go back: RSS does not creep up over hours
        for (index, pts, shot_id, rgb), faces in zip(batch, results, strict=True):
            self.frames_detected += 1
            for k, face in enumerate(faces):
                crop = align_face(rgb, face.landmarks, self.cfg.crop_size)
                q = face_quality(face.box, face.landmarks, crop)
                x1, y1, x2, y2 = (float(v) for v in face.box)
                self._rows.append(
                    {
                        "face_id": f"{self.video_id}-f{index:08d}-{k:02d}",
                        "video_id": self.video_id,
                        "source": self.source,
                        "frame_idx": index,
                        "pts": pts,
                        "shot_id": shot_id,
                        "x1": x1,
                        "y1": y1,
                        "x2": x2,
                        "y2": y2,
                        "landmarks": [float(v) for v in np.asarray(face.landmarks).reshape(-1)],
                        "det_score": face.score,
                        "face_size": q.face_size,
                        "blur": q.blur,
                        "yaw": q.yaw,
                        "roll": q.roll,
                        "image": encode_jpeg(crop, self.cfg.jpeg_quality),
                    }
                )
                self.n_faces += 1
        if len(self._rows) >= DETECTION_FLUSH_ROWS:
            self._flush()

    def _flush(self) -> None:
        self.detections.write(self._rows)
        self._rows = []

    def commit(self, video_row: dict[str, Any], end_of_video: bool = True) -> dict[str, Any]:
        """Settle the last frames, detect what is still due, write the shard's tables and its marker.

        ``end_of_video`` False: a window's part stopped once :attr:`complete` (nothing is settled by an
        end that is not the video's)."""
        if end_of_video:
            self.segmenter.finish()
            while self._queue:
                self._check_due()
        else:
            self._queue.clear()  # frames after the part's end
        while (item := self._release()) is not None:
            self._pending.append(item)
        self._run_detector()
        self._flush()
        self.detections.commit()
        if self.window is None:
            shots = self.segmenter.shot_rows(self.video_id, self.frames_read, self._pts)
        else:
            first, end = self.owned_range()
            read_end = (self._pts_offset or 0) + len(self._pts)
            end = read_end if end is None else end
            shots = (
                self.segmenter.shot_rows(
                    self.video_id, end, self._pts, first, self._pts_offset or 0, clip=end == read_end
                )
                if end > first
                else []
            )
            offset = self._pts_offset or 0
            self.frames_read = end - first
            self.first_pts = self._pts[first - offset] if end > first else None
            self.last_pts = self._pts[end - 1 - offset] if end > first else None
            video_row = {**video_row, "frames_read": end - first}
            self.part = {
                "first": first,
                "end": end,
                "end_of_video": end_of_video and end == read_end,
                "end_pts": self._pts[end - offset] if end - offset < len(self._pts) else None,
                "frames_read_total": read_end,
            }
        self.n_shots = len(shots)
        write_table(
            self.store.table_path("shots", self.shard),
            pa.Table.from_pylist(shots, schema=SHOTS),
            SHOTS,
            "shots",
            self.cfg_hash,
        )
        # No face is detected in a dissolve's blended frames (they never reach the face detector), so
        # ingest removes none; the table is written so that "none" is explicit.
        write_table(
            self.store.table_path("removals", self.shard),
            REMOVALS.empty_table(),
            REMOVALS,
            "removals",
            self.cfg_hash,
        )
        row = {
            "video_id": self.video_id,
            "source": self.source,
            "width": self.width or None,
            "height": self.height or None,
            "frames_read": self.frames_read,
            "frames_detected": self.frames_detected,
            "n_faces": self.n_faces,
            "n_shots": self.n_shots,
            "start_pts": self.first_pts,
            **video_row,
        }
        if self.window is None:
            write_video_row(self.store, row, self.cfg_hash, write_empty_faces=False)
        return row

    def abort(self) -> None:
        """Drop what was built (nothing of the shard is marked done)."""
        self.detections.abort()


def write_video_row(
    store: ShardStore, row: dict[str, Any], cfg_hash: str, write_empty_faces: bool = True
) -> None:
    """Write a shard's videos row (plus empty shots/detections/removals when asked) and mark the shard done."""
    full = {f.name: row.get(f.name) for f in VIDEOS}
    vid = full["video_id"]
    if write_empty_faces:
        write_table(
            store.table_path("detections", vid), DETECTIONS.empty_table(), DETECTIONS, "detections", cfg_hash
        )
        write_table(store.table_path("shots", vid), SHOTS.empty_table(), SHOTS, "shots", cfg_hash)
        write_table(store.table_path("removals", vid), REMOVALS.empty_table(), REMOVALS, "removals", cfg_hash)
    write_table(
        store.table_path("videos", vid),
        pa.Table.from_pylist([full], schema=VIDEOS),
        VIDEOS,
        "videos",
        cfg_hash,
    )
    store.mark_done(vid, cfg_hash, status=full["status"], source=full["source"], error=full["error"])


_END = object()


class ScanAhead:
    """Decode and scan frames in a thread, ``depth`` frames ahead of the detector.

    FFmpeg decoding, the thumbnails and the RGB conversions release the GIL, so they run on one core
    while the detector works on another. Iterating yields ``(frames scanned, detection item or None)``;
    an error in decoding is raised there, after the frames before it. The thread uses the container, so
    it is stopped and joined however the reading ends, even when Ctrl-C lands while it is starting;
    :attr:`stopped` says whether the container may be closed.
    """

    def __init__(
        self, container: Any, builder: ShardBuilder, depth: int, frames: Iterable[Frame] | None = None
    ) -> None:
        self.container = container
        self.frames = frames
        self.builder = builder
        self.ended_early = False
        self.out: queue.Queue = queue.Queue(maxsize=depth)
        self.stop = threading.Event()
        self.thread = threading.Thread(target=self._produce, name="ingest-decode", daemon=True)
        self.launched = False

    def _put(self, value: Any) -> bool:
        while not self.stop.is_set():
            try:
                self.out.put(value, timeout=0.1)
                return True
            except queue.Full:
                continue
        return False

    def _produce(self) -> None:
        try:
            for frame in iter_frames(self.container) if self.frames is None else self.frames:
                if not self._put((1, self.builder.scan(frame, frame.index))):
                    return
                if self.builder.complete:  # a part of a video read far enough
                    self.ended_early = True
                    break
        except BaseException as exc:  # handed to the consumer, raised there
            self._put(exc)
            return
        self._put(_END)

    @property
    def stopped(self) -> bool:
        """True when the decoding thread never ran or has ended."""
        return not self.launched or not self.thread.is_alive()

    def __enter__(self) -> Iterator[tuple[int, Any]]:
        self.launched = True
        try:
            self.thread.start()
        except RuntimeError:
            self.launched = False  # no thread could be made
            raise
        except BaseException:
            self.close()  # Ctrl-C while the thread was starting: it runs, so stop it
            raise
        return self._items()

    def __exit__(self, *exc: object) -> None:
        self.close()

    def _items(self) -> Iterator[tuple[int, Any]]:
        while True:
            value = self.out.get()
            if value is _END:
                return
            if isinstance(value, BaseException):
                raise value
            yield value

    def close(self) -> None:
        """Stop the decoding thread and wait for it (a start cut short by Ctrl-C still completes)."""
        self.stop.set()
        deadline = time.monotonic() + 30.0
        while time.monotonic() < deadline:
            try:
                self.thread.join(timeout=1.0)
            except RuntimeError:  # started by the OS but not yet marked started
                time.sleep(0.01)
                continue
            if not self.thread.is_alive():
                return


class ShardRead:
    """One read of an open container into a :class:`ShardBuilder`, as a ``with`` block: set ``builder``
    and ``scan`` as they are made. Leaving by an exception (Ctrl-C included) drops what the builder made;
    the container is closed once the decoding thread is done with it (if a second Ctrl-C cut the wait
    short, it is left to the exiting process rather than freed under the thread)."""

    def __init__(self, container: Any) -> None:
        self.container = container
        self.builder: ShardBuilder | None = None
        self.scan: ScanAhead | None = None

    def __enter__(self) -> ShardRead:
        return self

    def __exit__(self, exc_type: Any, exc: Any, tb: Any) -> None:
        try:
            if exc_type is not None and self.builder is not None:
                self.builder.abort()
        finally:
            if self.scan is None or self.scan.stopped:
                self.container.close()
