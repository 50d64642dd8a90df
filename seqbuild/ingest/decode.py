"""Video decoding with PyAV: frames in order with presentation timestamps in seconds, one at a time.

Frames stay as PyAV frames until asked for: the shot detector takes a small thumbnail of every frame,
and only the frames that go to the face detector are converted to full-size RGB, which keeps decoding
cheap and memory bounded whatever the length of the video.
"""

from __future__ import annotations

import logging
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


@dataclass
class Frame:
    """One decoded frame: its index in decode order, its pts in seconds, and the PyAV frame."""

    index: int
    pts: float
    frame: Any

    def rgb(self) -> np.ndarray:
        """The full-size frame as RGB uint8 (H, W, 3)."""
        return self.frame.to_ndarray(format="rgb24")

    def thumbnail(self, width: int, height: int) -> np.ndarray:
        """A small RGB copy of the frame (scaled by FFmpeg, cheaper than a full conversion)."""
        return self.frame.to_ndarray(width=width, height=height, format="rgb24", interpolation="BILINEAR")


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
    Decoding errors propagate (the caller decides whether the part read so far is kept).
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
        yield Frame(index=index, pts=pts, frame=frame)
        index += 1
