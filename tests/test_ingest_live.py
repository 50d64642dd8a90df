"""Live streams on loopback: an HTTP MPEG-TS feed that drops mid-way; reconnection, segments, survival."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import av
import numpy as np
import pandas as pd
import pytest

from seqbuild.config import build
from seqbuild.ingest.config import IngestConfig
from seqbuild.ingest.stage import run_ingest, source_id

REPO = Path(__file__).resolve().parents[1]
FPS = 25


def make_ts(path: Path, seconds: float = 4.0) -> bytes:
    """An MPEG-TS clip (320x240, 25 fps, a keyframe every second) of a face on a moving background."""
    import cv2
    from skimage import data

    face = cv2.resize(data.astronaut()[20:220, 125:325], (150, 150), interpolation=cv2.INTER_AREA)
    with av.open(str(path), "w", format="mpegts") as out:
        stream = out.add_stream("libx264", rate=FPS)
        stream.width, stream.height, stream.pix_fmt = 320, 240, "yuv420p"
        stream.codec_context.gop_size = FPS
        for i in range(int(seconds * FPS)):
            img = np.full((240, 320, 3), (200, 190, 60), np.uint8)
            x = 20 + (i % 40)
            img[40:190, x : x + 150] = face
            for packet in stream.encode(av.VideoFrame.from_ndarray(img, format="rgb24")):
                out.mux(packet)
        for packet in stream.encode():
            out.mux(packet)
    return path.read_bytes()


class DroppingFeed:
    """An HTTP server on 127.0.0.1 that sends the stream in parts, dropping the connection after each
    part; the request after the last part gets 503 (the feed is over), or hangs when ``hang_after``."""

    def __init__(self, data: bytes, parts: int = 2, hang_after: bool = False) -> None:
        n = len(data) // 188
        bounds = [round(n * i / parts) * 188 for i in range(parts + 1)]
        self.chunks = [data[a:b] for a, b in zip(bounds, bounds[1:], strict=False)]
        self.requests = 0
        self.hang_after = hang_after
        self.release = threading.Event()
        feed = self

        class Handler(BaseHTTPRequestHandler):
            def do_GET(self) -> None:
                k = feed.requests
                feed.requests += 1
                if k >= len(feed.chunks):
                    if feed.hang_after:
                        feed.release.wait(60)
                    self.send_error(503, "feed over")
                    return
                self.send_response(200)
                self.send_header("Content-Type", "video/mp2t")
                self.send_header("Connection", "close")
                self.end_headers()
                self.wfile.write(feed.chunks[k])
                self.wfile.flush()
                self.close_connection = True

            def log_message(self, *args) -> None:
                pass

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.server.daemon_threads = True
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}/live.ts"
        self.thread = threading.Thread(target=self.server.serve_forever, daemon=True)

    def __enter__(self) -> DroppingFeed:
        self.thread.start()
        return self

    def __exit__(self, *exc) -> None:
        self.release.set()
        self.server.shutdown()
        self.server.server_close()


def stream_cfg(url: str, **kw) -> IngestConfig:
    base = {
        "inputs": [url],
        "device": "cpu",
        "detect_every": 5,
        "min_face": 40,
        "segment_seconds": 1.0,
        "reconnect_attempts": 2,
        "timeout": 5.0,
    }
    base.update(kw)
    return build(IngestConfig, base)


def videos(run: Path) -> pd.DataFrame:
    return pd.concat([pd.read_parquet(f) for f in sorted((run / "ingest" / "videos").glob("*.parquet"))])


@pytest.mark.timeout(120)
def test_stream_reconnects_and_commits_segments(tmp_path, caplog):
    data = make_ts(tmp_path / "clip.ts")
    run = tmp_path / "run"
    with DroppingFeed(data, parts=2) as feed:
        summary = run_ingest(run, stream_cfg(feed.url), progress=False)
        requests = feed.requests
    assert requests >= 3  # the first part, the reconnection, and the attempt that found the feed over
    assert summary["ok"] == 1 and summary["failed"] == 0
    assert any("reconnected" in r.getMessage() for r in caplog.records)
    sid = source_id(feed.url)
    rows = videos(run)
    stream = rows[rows.kind == "stream"].iloc[0]
    segments = rows[rows.kind == "segment"].sort_values("video_id")
    assert stream.video_id == sid and stream.status == "ok"
    assert list(segments.video_id) == [f"{sid}-p{i:04d}" for i in range(len(segments))]
    assert (segments.parent_id == sid).all() and (segments.status == "ok").all()
    assert len(segments) >= 3  # 4 s at 1 s a segment, less what the drop cost
    # Most frames arrive (a drop loses at most the partly sent packets), in rising pts across segments.
    assert segments.frames_read.sum() >= 0.75 * 4 * FPS
    assert np.all(np.diff(segments.start_pts.to_numpy()) > 0.5)
    det = pd.concat(
        pd.read_parquet(run / "ingest" / "detections" / f"{v}.parquet") for v in segments.video_id
    )
    assert len(det) > 0 and det.face_id.is_unique
    assert set(det.video_id) <= set(segments.video_id)


@pytest.mark.slow
@pytest.mark.timeout(240)
def test_committed_segments_survive_a_kill_and_numbering_continues(tmp_path):
    data = make_ts(tmp_path / "clip.ts")
    run = tmp_path / "run"
    done = run / "ingest" / "_done"
    with DroppingFeed(data, parts=1, hang_after=True) as feed:
        # The clip is sent once, then the feed hangs: the process is killed while it waits to reconnect.
        cmd = [sys.executable, "-m", "seqbuild", "ingest", feed.url, "--out", str(run), "--device", "cpu"]
        cmd += ["--min-face", "40", "--segment-seconds", "1", "--no-progress", "--set", "ingest.timeout=60"]
        proc = subprocess.Popen(cmd, cwd=REPO, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        deadline = time.monotonic() + 150
        while time.monotonic() < deadline and proc.poll() is None:
            if done.exists() and len(list(done.glob("*-p*.json"))) >= 3:
                break
            time.sleep(0.1)
        assert proc.poll() is None, "ingest ended before it could be killed"
        os.kill(proc.pid, signal.SIGKILL)
        proc.wait()
        sid = source_id(feed.url)
        survived = sorted(p.stem for p in done.glob("*.json"))
        assert len(survived) >= 3 and sid not in survived  # segments committed, the stream row not yet
        kept = {v: (run / "ingest" / "detections" / f"{v}.parquet").read_bytes() for v in survived}
        assert all(
            pd.read_parquet(run / "ingest" / "videos" / f"{v}.parquet").status.iloc[0] == "ok"
            for v in survived
        )
        # The same feed read again: the committed segments stay as they were, new ones are numbered after.
        feed.hang_after = False
        feed.release.set()
        feed.requests = 0
        summary = run_ingest(run, stream_cfg(feed.url), progress=False)
    assert summary["ok"] == 1
    for v, blob in kept.items():
        assert (run / "ingest" / "detections" / f"{v}.parquet").read_bytes() == blob
    segments = sorted(p.stem for p in done.glob(f"{sid}-p*.json"))
    last_old = max(int(v.rsplit("-p", 1)[1]) for v in survived)
    new = [v for v in segments if v not in survived]
    assert new and min(int(v.rsplit("-p", 1)[1]) for v in new) == last_old + 1


@pytest.mark.timeout(120)
def test_stream_stops_after_duration(tmp_path):
    data = make_ts(tmp_path / "clip.ts")
    run = tmp_path / "run"
    with DroppingFeed(data, parts=1) as feed:
        summary = run_ingest(run, stream_cfg(feed.url, duration=1.5, reconnect_attempts=0), progress=False)
    assert summary["ok"] == 1
    rows = videos(run)
    segments = rows[rows.kind == "segment"]
    assert len(segments) == 2  # one whole second, then the half second read before the limit
    assert abs(int(segments.frames_read.sum()) - 1.5 * FPS) <= 2
    assert rows[rows.kind == "stream"].duration.iloc[0] == pytest.approx(1.5, abs=0.05)


@pytest.mark.timeout(120)
def test_a_finite_file_over_http_is_read_once(tmp_path):
    """A URL whose container has a known length is over at its end: no reconnection reads it again."""
    import functools
    from http.server import SimpleHTTPRequestHandler

    mp4 = tmp_path / "clip.mp4"
    with av.open(str(mp4), "w", options={"movflags": "faststart"}) as out:
        stream = out.add_stream("libx264", rate=FPS)
        stream.width, stream.height, stream.pix_fmt = 160, 120, "yuv420p"
        for i in range(50):
            img = np.full((120, 160, 3), (i * 5) % 255, np.uint8)
            for packet in stream.encode(av.VideoFrame.from_ndarray(img, format="rgb24")):
                out.mux(packet)
        for packet in stream.encode():
            out.mux(packet)

    class Quiet(SimpleHTTPRequestHandler):
        def log_message(self, *args) -> None:
            pass

    server = ThreadingHTTPServer(("127.0.0.1", 0), functools.partial(Quiet, directory=str(tmp_path)))
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        url = f"http://127.0.0.1:{server.server_address[1]}/clip.mp4"
        summary = run_ingest(tmp_path / "run", stream_cfg(url, reconnect_attempts=3), progress=False)
    finally:
        server.shutdown()
        server.server_close()
    assert summary["ok"] == 1 and summary["frames"] == 50


@pytest.mark.timeout(120)
def test_a_ts_file_over_http_is_read_once_to_its_end(tmp_path):
    """MPEG-TS carries no duration: the HTTP Content-Length tells a file from a live feed."""
    import functools
    from http.server import SimpleHTTPRequestHandler

    make_ts(tmp_path / "clip.ts", seconds=3.0)
    gets = []

    class Counting(SimpleHTTPRequestHandler):
        def do_GET(self) -> None:
            gets.append(self.path)
            super().do_GET()

        def log_message(self, *args) -> None:
            pass

    server = ThreadingHTTPServer(("127.0.0.1", 0), functools.partial(Counting, directory=str(tmp_path)))
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        url = f"http://127.0.0.1:{server.server_address[1]}/clip.ts"
        cfg = stream_cfg(url, reconnect_attempts=3, duration=0.0)
        summary = run_ingest(tmp_path / "run", cfg, progress=False)
    finally:
        server.shutdown()
        server.server_close()
    assert summary["ok"] == 1 and summary["frames"] == 75
    assert gets == ["/clip.ts"]  # read once: no reconnection re-read the file


def test_duration_help_says_zero_reads_to_the_end():
    from click.testing import CliRunner

    from seqbuild._cli.main import cli

    out = CliRunner().invoke(cli, ["ingest", "--help"]).output
    assert "0 = until the stream ends" in " ".join(out.split())
