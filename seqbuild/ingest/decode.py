"""Video decoding with PyAV: frames in order with presentation timestamps in seconds, one at a time.

Frames stay as PyAV frames until asked for: the shot detector takes a small thumbnail of every frame,
and only the frames that go to the face detector are converted to full-size RGB, which keeps decoding
cheap and memory bounded whatever the length of the video.

A video stored sideways with a display matrix (phones record this way: the pixels as the sensor saw
them, plus "rotate by 90 degrees to show") is turned upright here, so that every later step (cut
detection, face detection, boxes, landmarks, crops, the frame size in the videos table) sees the
picture the way a player shows it, and a rotated copy of a video gives the same faces as the original.
"""

from __future__ import annotations

import logging
import math
import os
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from ..errors import InputError

log = logging.getLogger("seqbuild.ingest")

STREAM_SCHEMES = ("udp", "rtp", "rtsp", "rtsps", "rtmp", "rtmps", "srt", "tcp", "http", "https", "hls")
"""URL schemes read as (possibly live) streams."""


def is_url(source: str) -> bool:
    """True for ``scheme://...`` sources that FFmpeg opens over the network."""
    return "://" in source and source.split("://", 1)[0].lower() in STREAM_SCHEMES


@dataclass
class VideoInfo:
    """What the container says about its first video stream (fields are None when unknown)."""

    fps: float | None
    width: int
    height: int
    duration: float | None
    frames: int | None


@dataclass(frozen=True)
class Orientation:
    """How to turn a decoded picture upright: quarter turns counterclockwise, then a left-right mirror."""

    quarter_turns: int = 0
    mirror: bool = False

    @property
    def swaps_sides(self) -> bool:
        """True when the upright picture's width is the stored picture's height."""
        return self.quarter_turns % 2 == 1

    def apply(self, image: np.ndarray) -> np.ndarray:
        """``image`` (H, W, ...) as it is displayed (a contiguous copy when anything changes)."""
        if self.quarter_turns % 4:
            image = np.rot90(image, self.quarter_turns % 4)
        if self.mirror:
            image = image[:, ::-1]
        return np.ascontiguousarray(image) if (self.quarter_turns % 4 or self.mirror) else image


UPRIGHT = Orientation()


def orientation_from_matrix(matrix: Any) -> Orientation:
    """The orientation a display matrix (FFmpeg's 3x3, 16.16 fixed point, row major) asks for.

    Rotations by multiples of 90 degrees, mirrored or not, are applied; any other angle is rounded to
    the nearest quarter turn (with a warning), since phone videos only use quarter turns.
    """
    m = [float(v) for v in matrix]
    a, b, c, d = m[0], m[1], m[3], m[4]
    mirror = a * d - b * c < 0
    if mirror:  # undo the mirror (a negated first column), which is applied after the rotation
        a, c = -a, -c
    angle = math.degrees(math.atan2(-b, a))
    turns = round(angle / 90.0)
    if abs(angle - 90.0 * turns) > 1.0:
        log.warning("display rotation of %.1f degrees rounded to %d", angle, 90 * turns)
    return Orientation(turns % 4, mirror)


def frame_orientation(frame: Any) -> Orientation:
    """The orientation of a PyAV frame from its display-matrix side data (upright when it has none)."""
    side_data = getattr(frame, "side_data", None)
    if not side_data:
        return UPRIGHT
    for item in side_data:
        if getattr(getattr(item, "type", None), "name", "") == "DISPLAYMATRIX":
            raw = bytes(item)
            if len(raw) >= 36:
                return orientation_from_matrix(np.frombuffer(raw[:36], dtype="<i4"))
    return UPRIGHT


@dataclass
class Frame:
    """One decoded frame: its index in decode order, its pts in seconds, the PyAV frame, and how to turn
    it upright (every accessor below returns the upright picture)."""

    index: int
    pts: float
    frame: Any
    orientation: Orientation = UPRIGHT

    @property
    def width(self) -> int:
        """Width of the upright picture."""
        return int(self.frame.height if self.orientation.swaps_sides else self.frame.width)

    @property
    def height(self) -> int:
        """Height of the upright picture."""
        return int(self.frame.width if self.orientation.swaps_sides else self.frame.height)

    def rgb(self) -> np.ndarray:
        """The full-size upright frame as RGB uint8 (H, W, 3)."""
        return self.orientation.apply(self.frame.to_ndarray(format="rgb24"))

    def thumbnail(self, width: int, height: int) -> np.ndarray:
        """A small upright RGB copy of the frame (scaled by FFmpeg, cheaper than a full conversion)."""
        if self.orientation.swaps_sides:
            width, height = height, width
        small = self.frame.to_ndarray(width=width, height=height, format="rgb24", interpolation="BILINEAR")
        return self.orientation.apply(small)


def open_container(source: str, timeout: float = 10.0, options: dict[str, str] | None = None) -> Any:
    """Open a file or URL with PyAV; InputError naming the source when it cannot be opened as video."""
    import av

    if not is_url(source):
        path = Path(source)
        if not path.exists():
            raise InputError(f"{source}: file not found")
        if path.is_dir():
            raise InputError(f"{source}: is a folder, not a video")
        if not os.access(path, os.R_OK):
            raise InputError(f"{source}: not readable (permission denied)")
    try:
        container = av.open(source, mode="r", timeout=timeout, options=options or {})
    except av.error.FFmpegError as exc:
        raise InputError(f"{source}: cannot open as video ({_ffmpeg_message(exc)})") from None
    except (OSError, ValueError) as exc:
        raise InputError(f"{source}: cannot open as video ({exc})") from None
    if not container.streams.video:
        container.close()
        raise InputError(f"{source}: no video stream (not a video file)")
    return container


def _ffmpeg_message(exc: BaseException) -> str:
    strerror = getattr(exc, "strerror", None)
    return str(strerror or exc).strip().rstrip(".")


def video_info(container: Any) -> VideoInfo:
    """Frame rate, size, duration and frame count of the container's first video stream."""
    stream = container.streams.video[0]
    rate = stream.average_rate or stream.guessed_rate or stream.base_rate
    fps = float(rate) if rate else None
    duration = None
    if stream.duration is not None and stream.time_base is not None:
        duration = float(stream.duration * stream.time_base)
    elif container.duration is not None:
        duration = container.duration / 1_000_000.0
    frames = int(stream.frames) if stream.frames else None
    return VideoInfo(
        fps=fps,
        width=int(stream.width or 0),
        height=int(stream.height or 0),
        duration=duration,
        frames=frames,
    )


def iter_frames(container: Any, first_index: int = 0) -> Iterator[Frame]:
    """Decode the first video stream frame by frame; pts in seconds (from the stream's time base).

    A frame without a timestamp gets the previous one plus one frame period, so timestamps always rise.
    Each frame carries the orientation its display matrix asks for. Decoding errors propagate (the
    caller decides whether the part read so far is kept).
    """
    stream = container.streams.video[0]
    stream.thread_type = "AUTO"
    rate = stream.average_rate or stream.guessed_rate
    period = 1.0 / float(rate) if rate else 0.04
    index = first_index
    last_pts: float | None = None
    for frame in container.decode(stream):
        pts = float(frame.time) if frame.time is not None else None
        if pts is None or (last_pts is not None and pts <= last_pts - 1e-6 and frame.pts is None):
            pts = 0.0 if last_pts is None else last_pts + period
        last_pts = pts
        yield Frame(index=index, pts=pts, frame=frame, orientation=frame_orientation(frame))
        index += 1
