"""Where the time of one `seqbuild run` goes: per stage and per part of ingest, in CPU and wall seconds.

The leaf functions of the chain (decoding a frame, the thumbnail, the transition detector, the RGB
conversion, MTCNN, alignment, JPEG, Parquet writes, FaceNet, ...) are wrapped with timers that add the
calling thread's CPU time (``time.thread_time``) and the wall time to a label; each stage's wall and
process CPU time are recorded around its entry point. Functions that call each other are only counted
once (an outer timer pauses while an inner one runs), so the parts add up to the stage.

Run: ``python -m benchmarks.profile_chain RUN PIPELINE.toml VIDEO [GALLERY]`` (prints one JSON object);
benchmarks/bench_e2e.py runs it on the dev broadcast for docs/benchmarks.md.
"""

from __future__ import annotations

import functools
import importlib
import json
import resource
import sys
import threading
import time
from collections import defaultdict
from typing import Any

PARTS: dict[str, list[str]] = {
    # label -> "module:Class.method" or "module:function" (missing ones are skipped: code moves on)
    "thumbnail (scale + RGB)": [
        "seqbuild.ingest.decode:Frame.thumbnail",
        "seqbuild.ingest.decode:Frame.small",
    ],
    "transition detector": [
        "seqbuild.ingest.shots:TransitionDetector.update",
        "seqbuild.ingest.shots:TransitionDetector.finish",
    ],
    "full-size RGB of detected frames": ["seqbuild.ingest.decode:Frame.rgb"],
    "MTCNN": ["seqbuild.ingest.detect:MTCNNDetector.detect"],
    "alignment + quality": ["seqbuild.ingest.builder:align_face", "seqbuild.ingest.builder:face_quality"],
    "JPEG encode": ["seqbuild.ingest.builder:encode_jpeg"],
    "Parquet write": [
        "seqbuild.storage:write_table",
        "seqbuild.storage:AppendingTableWriter.write",
        "seqbuild.storage:AppendingTableWriter.commit",
    ],
    "Parquet read": ["seqbuild.storage:read_table", "seqbuild.storage:read_tables"],
    "JPEG decode (embed)": ["seqbuild.embed.stage:decode_jpeg"],
    "FaceNet forward": ["seqbuild.embed.models:TorchEmbedder.embed"],
    "model loading": [
        "seqbuild.ingest.builder:cached_detector",
        "seqbuild.embed.stage:get_embedder",
    ],
}


class Timers:
    """CPU and wall seconds per label, with nested timers paused (each second counted once)."""

    def __init__(self) -> None:
        self.cpu: dict[str, float] = defaultdict(float)
        self.wall: dict[str, float] = defaultdict(float)
        self.calls: dict[str, int] = defaultdict(int)
        self.local = threading.local()
        self.lock = threading.Lock()

    def wrap(self, label: str, fn: Any) -> Any:
        """``fn`` timed under ``label``."""

        @functools.wraps(fn)
        def timed(*args: Any, **kwargs: Any) -> Any:
            stack = getattr(self.local, "stack", None)
            if stack is None:
                stack = self.local.stack = []
            now_c, now_w = time.thread_time(), time.perf_counter()
            if stack:  # pause the outer timer
                outer = stack[-1]
                self._add(outer[0], now_c - outer[1], now_w - outer[2])
            stack.append([label, now_c, now_w])
            try:
                return fn(*args, **kwargs)
            finally:
                end_c, end_w = time.thread_time(), time.perf_counter()
                lab, c0, w0 = stack.pop()
                self._add(lab, end_c - c0, end_w - w0, call=True)
                if stack:
                    stack[-1][1], stack[-1][2] = end_c, end_w

        return timed

    def _add(self, label: str, cpu: float, wall: float, call: bool = False) -> None:
        with self.lock:
            self.cpu[label] += cpu
            self.wall[label] += wall
            self.calls[label] += int(call)


DECODE = "decode (FFmpeg)"


def _timed_iter(timers: Timers, fn: Any) -> Any:
    """A generator function whose every step (decoding the next frame) is timed under DECODE."""

    @functools.wraps(fn)
    def wrapper(*args: Any, **kwargs: Any) -> Any:
        it = fn(*args, **kwargs)
        step = timers.wrap(DECODE, lambda: next(it, _DONE))
        while (item := step()) is not _DONE:
            yield item

    return wrapper


_DONE = object()


def install(timers: Timers) -> list[str]:
    """Wrap every function of PARTS that exists (and ingest's frame iterator); the refs that were found."""
    import seqbuild.ingest.builder as ingest_stage

    ingest_stage.iter_frames = _timed_iter(timers, ingest_stage.iter_frames)
    found = ["seqbuild.ingest.builder:iter_frames"]
    for label, refs in PARTS.items():
        for ref in refs:
            module_name, attr = ref.split(":")
            try:
                module = importlib.import_module(module_name)
            except ImportError:
                continue
            owner: Any = module
            *path, name = attr.split(".")
            try:
                for part in path:
                    owner = getattr(owner, part)
                fn = getattr(owner, name)
            except AttributeError:
                continue
            setattr(owner, name, timers.wrap(label, fn))
            found.append(ref)
    return found


def profile_run(run: str, toml: str, video: str, gallery: str = "", sets: list[str] | None = None) -> dict:
    """Run the chain in this process with the timers installed; stages and parts as plain data."""
    import seqbuild.pipeline.run as runner
    from seqbuild.logs import setup_logging
    from seqbuild.pipeline.loading import load_pipeline
    from seqbuild.pipeline.run import run_pipeline

    timers = Timers()
    found = install(timers)
    stages: dict[str, dict[str, float]] = {}
    original = runner.stage_entry

    def measured(name: str) -> Any:
        fn = original(name)

        def wrapped(*a: Any, **k: Any) -> Any:
            c0, w0 = time.process_time(), time.perf_counter()
            before = {label: timers.cpu[label] for label in list(timers.cpu)}
            out = fn(*a, **k)
            stages[name] = {
                "wall": time.perf_counter() - w0,
                "cpu": time.process_time() - c0,
                "peak_rss_mb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024,
                "parts_cpu": {
                    label: round(timers.cpu[label] - before.get(label, 0.0), 3)
                    for label in list(timers.cpu)
                    if timers.cpu[label] - before.get(label, 0.0) > 1e-4
                },
            }
            return out

        return wrapped

    runner.stage_entry = measured
    setup_logging("WARNING", f"{run}/logs/seqbuild.log")
    all_sets = [f'ingest.inputs=["{video}"]', *(sets or [])]
    if gallery:
        all_sets.append(f'dedup_overlap.galleries=["{gallery}"]')
    c0, w0 = time.process_time(), time.perf_counter()
    run_pipeline(run, load_pipeline(toml, all_sets), progress=False)
    return {
        "wall": time.perf_counter() - w0,
        "cpu": time.process_time() - c0,
        "stages": stages,
        "parts_cpu": {k: round(v, 3) for k, v in timers.cpu.items()},
        "parts_wall": {k: round(v, 3) for k, v in timers.wall.items()},
        "calls": dict(timers.calls),
        "wrapped": found,
    }


if __name__ == "__main__":
    run_dir, pipeline, source = sys.argv[1:4]
    extra = sys.argv[4] if len(sys.argv) > 4 else ""
    print(json.dumps(profile_run(run_dir, pipeline, source, extra, sys.argv[5:])))
