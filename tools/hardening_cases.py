"""Try, with the real commands, what a hostile or careless user could do to a run; print the table.

    python -m tools.hardening_cases [--work DIR] [--media ../shared/media] [--out docs/hardening.md]

Every case runs `seqbuild` as a subprocess, as a user would, on small synthetic clips (and one real clip
when the shared media is there) and records: the command, its exit code, the last line it printed, whether
the outputs that existed before are intact, and whether running again once the cause is gone gives the
same faces as a run that was never disturbed. Cases that need a small or read-only file system mount a
tmpfs, which needs root; without it they are reported as not run.
"""

from __future__ import annotations

import argparse
import contextlib
import hashlib
import json
import math
import os
import pickle
import shutil
import signal
import subprocess
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
ENV = {**os.environ, "PYTHONPATH": str(REPO)}


@dataclass
class Row:
    case: str
    command: str
    rc: int | str
    message: str
    intact: str
    identical: str
    ok: bool


def seqbuild(*args: str, timeout: float = 900) -> subprocess.CompletedProcess:
    """Run ``seqbuild ARGS`` in a new process; stdout and stderr captured."""
    return subprocess.run(
        [sys.executable, "-m", "seqbuild", *args],
        cwd=REPO,
        env=ENV,
        capture_output=True,
        text=True,
        timeout=timeout,
    )


def last_line(text: str) -> str:
    """The last line a person would read (progress bars and blank lines left out)."""
    lines = [ln.strip() for ln in text.replace("\r", "\n").splitlines()]
    lines = [ln for ln in lines if ln and "it/s]" not in ln and "video/s]" not in ln and "s/video]" not in ln]
    return lines[-1] if lines else ""


def one_line(proc: subprocess.CompletedProcess) -> str:
    text = proc.stderr if proc.returncode else (proc.stderr + proc.stdout)
    if "Traceback" in proc.stderr:
        return "TRACEBACK: " + last_line(proc.stderr)
    return last_line(text)


def digest(root: Path, pattern: str = "**/*.parquet") -> dict[str, str]:
    """SHA-256 of every file matching ``pattern`` under ``root``."""
    return {
        str(p.relative_to(root)): hashlib.sha256(p.read_bytes()).hexdigest()
        for p in sorted(root.glob(pattern))
        if p.is_file()
    }


def all_files(root: Path) -> set[str]:
    return {str(p) for p in root.rglob("*") if p.is_file() or p.is_symlink()}


def faces(folder: Path) -> list[tuple]:
    """The faces of a dataset or export folder, face for face (id, sequence, frame, box)."""
    from seqbuild.schema import FACES
    from seqbuild.storage import read_tables

    table = read_tables(sorted((folder / "faces").glob("*.parquet")), FACES)
    cols = [table.column(c).to_pylist() for c in ("face_id", "seq_id", "frame_idx", "x1", "y1", "x2", "y2")]
    return sorted(zip(*cols, strict=True))


def yes(flag: bool) -> str:
    return "yes" if flag else "no"


@contextlib.contextmanager
def tmpfs(path: Path, size: str, readonly: bool = False):
    """A small tmpfs at ``path`` for the block (PermissionError without the right to mount)."""
    path.mkdir(parents=True, exist_ok=True)
    opts = f"size={size}" + (",ro" if readonly else "")
    done = subprocess.run(["mount", "-t", "tmpfs", "-o", opts, "tmpfs", str(path)], capture_output=True)
    if done.returncode:
        raise PermissionError(done.stderr.decode().strip() or "mount failed")
    try:
        yield path
    finally:
        subprocess.run(["umount", "-l", str(path)], capture_output=True)


def remount(path: Path, opts: str) -> None:
    subprocess.run(["mount", "-o", f"remount,{opts}", str(path)], check=True, capture_output=True)


class Cases:
    """The material every case starts from: clips, a gallery, a pipeline and an undisturbed run."""

    def __init__(self, work: Path, media: Path | None) -> None:
        self.work = work
        self.media = media
        self.rows: list[Row] = []
        self.clips, self.gallery = self._clips(work / "media")
        self.chain = self._toml(
            work / "chain.toml", self.clips, ["ingest", "track", "embed", "clean", "dedup_overlap"]
        )
        self.ref = work / "reference"
        if not (self.ref / "dataset" / "faces").is_dir():
            proc = seqbuild("run", str(self.chain), "--out", str(self.ref), "--no-progress")
            if proc.returncode:
                raise SystemExit(f"the reference run failed: {proc.stderr[-2000:]}")
        self.ref_faces = faces(self.ref / "dataset")
        self.videos = sorted(p.stem for p in (self.ref / "ingest" / "_done").glob("*.json"))
        export = work / "reference_clean_export"
        if not export.is_dir():
            seqbuild("export", str(self.ref), "--after", "clean", "--out", str(export))
        self.ref_clean = faces(export)

    def _clips(self, folder: Path) -> tuple[list[str], Path]:
        from seqbuild.demo import DemoSpec, Move, Shot, make_demo_broadcast

        a, h = "astronaut", "grace_hopper"
        specs = [
            [
                Shot(20, [Move(a, (224, 130), (224, 118), 480, 420)]),
                Shot(20, [Move(h, (230, 230), (260, 230), 480, 480)]),
            ],
            [Shot(20, [Move(h, (260, 232), (262, 240), 440, 500)]), Shot(10, [])],
            [
                Shot(
                    25, [Move(a, (226, 120), (218, 124), 260, 240), Move(h, (262, 232), (268, 226), 330, 310)]
                )
            ],
        ]
        out = []
        for i, shots in enumerate(specs):
            made = make_demo_broadcast(
                folder,
                name=f"clip{i}",
                spec=DemoSpec(shots=shots, seed=i),
                gallery_identities=("grace_hopper",),
            )
            out.append(str(made.video))
        return out, folder / "gallery"

    def _toml(self, path: Path, clips: list[str], stages: list[str]) -> Path:
        names = ", ".join(f'"{s}"' for s in stages)
        inputs = ", ".join(f'"{c}"' for c in clips)
        path.write_text(
            f"[run]\nstages = [{names}]\n[ingest]\ninputs = [{inputs}]\ndetect_every = 5\n"
            '[track]\nmin_faces = 2\n[embed]\ndevice = "cpu"\n[clean]\nmin_faces = 2\n'
            f'[dedup_overlap]\ngalleries = ["{self.gallery}"]\n'
        )
        return path

    def copy_ref(self, name: str) -> Path:
        dst = self.work / "cases" / name
        shutil.rmtree(dst, ignore_errors=True)
        shutil.copytree(self.ref, dst, symlinks=True)
        return dst

    def fresh(self, name: str) -> Path:
        dst = self.work / "cases" / name
        shutil.rmtree(dst, ignore_errors=True)
        dst.mkdir(parents=True)
        return dst

    def add(self, case: str, command: str, rc, message: str, intact: str, identical: str, ok: bool) -> None:
        command = command.replace(str(self.work) + "/", "").replace(str(REPO) + "/", "")
        message = message.replace(str(self.work) + "/", "").replace(str(REPO) + "/", "")
        self.rows.append(Row(case, command, rc, message[:220], intact, identical, ok))
        print(f"{'ok ' if ok else 'BAD'} {case}: rc={rc} {message[:160]}", flush=True)

    def rerun_identical(self, run: Path) -> bool:
        proc = seqbuild("run", str(self.chain), "--out", str(run), "--no-progress")
        return proc.returncode == 0 and faces(run / "dataset") == self.ref_faces


# --------------------------------------------------------------------------- the cases


def _rewritten(name: str) -> str:
    out = "".join(c if (c.isalnum() or c in "-_.") else "_" for c in name)
    return "_" + out if not out or out.startswith(".") else out


def plant(run: Path, stages: list[str], real: str, crafted: str) -> None:
    """A crafted shard: copies of ``real``'s files under the name an id used to be rewritten to, and a
    completion marker whose ``shard`` is ``crafted``."""
    for stage in stages:
        for table_dir in (run / stage).iterdir():
            if (
                table_dir.is_dir()
                and not table_dir.name.startswith("_")
                and (table_dir / f"{real}.parquet").exists()
            ):
                shutil.copy(table_dir / f"{real}.parquet", table_dir / f"{_rewritten(crafted)}.parquet")
        marker = json.loads((run / stage / "_done" / f"{real}.json").read_text())
        marker.pop("outputs", None)
        marker["shard"] = crafted
        (run / stage / "_done" / "crafted.json").write_text(json.dumps(marker))


def traversal(c: Cases) -> None:
    work = c.work
    run = c.copy_ref("shard_export")
    plant(run, ["ingest", "clean"], c.videos[0], "../../../x")
    out = work / "cases" / "a" / "b" / "out"
    shutil.rmtree(work / "cases" / "a", ignore_errors=True)
    before = all_files(work)
    proc = seqbuild("export", str(run), "--after", "clean", "--out", str(out))
    new = all_files(work) - before
    escaped = [p for p in new if not p.startswith(str(out))]
    c.add(
        'shard id "../../../x" in a marker',
        f"seqbuild export RUN --after clean --out {out}",
        proc.returncode,
        last_line(proc.stderr) if "ignored" in proc.stderr else one_line(proc),
        yes(not escaped),
        yes(faces(out) == c.ref_clean),
        proc.returncode == 0 and not escaped,
    )

    run = c.copy_ref("shard_dedup")
    shutil.rmtree(run / "dedup_overlap", ignore_errors=True)
    shutil.rmtree(run / "dataset", ignore_errors=True)
    (run / "_pipeline" / "dedup_overlap.json").unlink(missing_ok=True)
    plant(run, ["ingest", "track", "embed", "clean"], c.videos[0], "../../../x")
    before = all_files(work)
    proc = seqbuild("dedup-overlap", str(run), "--gallery", str(c.gallery), "--no-progress")
    escaped = [p for p in all_files(work) - before if not p.startswith(str(run))]
    c.add(
        'shard id "../../../x" in a marker',
        f"seqbuild dedup-overlap RUN --gallery {c.gallery}",
        proc.returncode,
        next((ln for ln in proc.stderr.splitlines() if "ignored" in ln), one_line(proc)),
        yes(not escaped),
        yes(faces(run / "dataset") == c.ref_faces),
        proc.returncode == 0 and not escaped,
    )

    run = c.copy_ref("shard_run")
    shutil.rmtree(run / "dedup_overlap", ignore_errors=True)
    shutil.rmtree(run / "dataset", ignore_errors=True)
    target = work / "cases" / "escape-abs"
    plant(run, ["ingest", "track", "embed", "clean"], c.videos[0], str(target))
    before = all_files(work)
    proc = seqbuild("run", str(c.chain), "--out", str(run), "--no-progress")
    escaped = [p for p in all_files(work) - before if not p.startswith(str(run))]
    c.add(
        f'shard id "{target}" (absolute) in a marker',
        "seqbuild run chain.toml --out RUN",
        proc.returncode,
        next((ln for ln in proc.stderr.splitlines() if "ignored" in ln), one_line(proc)),
        yes(not escaped),
        yes(faces(run / "dataset") == c.ref_faces),
        proc.returncode == 0 and not escaped,
    )


def reason_traversal(c: Cases) -> None:
    import pyarrow as pa

    from seqbuild.layout import RunDir
    from seqbuild.schema import REMOVALS
    from seqbuild.storage import read_table, write_table

    run = c.copy_ref("reason_report")
    rd = RunDir(run)
    evil = "X/../../../y"
    for video in rd.clean.done_shards():
        path = rd.clean.table_path("removals", video)
        rem = read_table(path, REMOVALS)
        if rem.num_rows:
            rem = rem.set_column(
                rem.schema.get_field_index("reason"), "reason", pa.array([evil] * rem.num_rows)
            )
            write_table(path, rem, REMOVALS, "removals")
            rd.clean.mark_done(video, rd.clean.marker(video)["config_hash"])
    before = all_files(c.work)
    proc = seqbuild("report", str(run))
    escaped = [p for p in all_files(c.work) - before if not p.startswith(str(run / "report"))]
    c.add(
        f'removal reason "{evil}"',
        "seqbuild report RUN",
        proc.returncode,
        next((ln for ln in proc.stderr.splitlines() if "file name" in ln), one_line(proc)),
        yes(not escaped),
        "n/a (a report, not faces)",
        proc.returncode == 0 and not escaped,
    )


def rotation(c: Cases) -> None:
    import numpy as np
    import pandas as pd

    from seqbuild.ingest.stage import source_id

    if c.media is None or not shutil.which("ffmpeg"):
        c.add(
            "video stored sideways, display rotation 90",
            "-",
            "not run",
            "needs the shared media and ffmpeg",
            "-",
            "-",
            True,
        )
        return
    folder = c.fresh("rotation")
    src = c.media / "clips" / "talk_d9.mp4"
    up, rot = folder / "upright.mp4", folder / "rotated.mp4"
    base = ["ffmpeg", "-v", "error", "-y", "-i", str(src), "-t", "2", "-an"]
    codec = ["-c:v", "libx264", "-qp", "0", "-pix_fmt", "yuv420p"]
    subprocess.run([*base, *codec, str(up)], check=True)
    sideways = folder / "sideways.mp4"  # the pixels turned; then the matrix that turns them back
    subprocess.run([*base, "-vf", "transpose=clock", *codec, str(sideways)], check=True)
    tag = ["ffmpeg", "-v", "error", "-y", "-i", str(sideways), "-c", "copy", "-metadata:s:v", "rotate=90"]
    subprocess.run([*tag, str(rot)], check=True)
    run = folder / "run"
    proc = seqbuild("ingest", str(up), str(rot), "--out", str(run), "--device", "cpu", "--no-progress")
    det = {
        k: pd.read_parquet(run / "ingest" / "detections" / f"{source_id(str(p))}.parquet").sort_values(
            "frame_idx"
        )
        for k, p in (("up", up), ("rot", rot))
    }
    same_frames = det["up"].frame_idx.tolist() == det["rot"].frame_idx.tolist()
    size = ((det["up"].x2 - det["up"].x1).to_numpy() + (det["up"].y2 - det["up"].y1).to_numpy()) / 2
    lm = (
        np.abs(np.stack(det["up"].landmarks) - np.stack(det["rot"].landmarks)).max(1) / size
        if same_frames
        else [1]
    )
    same = same_frames and float(np.max(lm)) < 0.05
    msg = (
        f"{len(det['rot'])} faces from the rotated copy, {len(det['up'])} from the upright one; "
        f"max roll {det['rot'].roll.abs().max():.1f} deg; landmarks within {100 * float(np.max(lm)):.1f}% of the face size"
    )
    c.add(
        "video stored sideways, display rotation 90 (talk_d9, 2 s)",
        "seqbuild ingest upright.mp4 rotated.mp4 --out RUN",
        proc.returncode,
        msg,
        "n/a",
        yes(same),
        proc.returncode == 0 and same,
    )


def _wait_lock(run: Path, stage: str, proc: subprocess.Popen, timeout: float = 300) -> None:
    lock = run / "_locks" / f"{stage}.lock"
    end = time.monotonic() + timeout
    while time.monotonic() < end and proc.poll() is None:
        if lock.exists() and lock.read_text().strip() == str(proc.pid):
            return
        time.sleep(0.05)


def _popen(*args: str) -> subprocess.Popen:
    return subprocess.Popen(
        [sys.executable, "-m", "seqbuild", *args],
        cwd=REPO,
        env=ENV,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        start_new_session=True,
        preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_DFL),  # as in a terminal
    )


def lock(c: Cases) -> None:
    run = c.fresh("lock") / "run"
    common = ["--out", str(run), "--device", "cpu", "--no-progress", "--detect-every", "5"]
    first = _popen("ingest", *c.clips, *common)
    _wait_lock(run, "ingest", first)
    second = seqbuild("ingest", *c.clips, *common)
    waiting = _popen("ingest", *c.clips, *common, "--wait")
    first.communicate(timeout=900)
    _, werr = waiting.communicate(timeout=900)
    same = digest(run / "ingest", "detections/*.parquet") == digest(c.ref / "ingest", "detections/*.parquet")
    c.add(
        "two `seqbuild ingest` on one RUN at once",
        "seqbuild ingest CLIPS --out RUN (twice)",
        second.returncode,
        one_line(second),
        yes(first.returncode == 0 and not list(run.rglob("*.tmp"))),
        yes(same),
        second.returncode == 4 and first.returncode == 0 and same,
    )
    c.add(
        "... the second with --wait",
        "seqbuild ingest CLIPS --out RUN --wait",
        waiting.returncode,
        last_line(werr) if waiting.returncode else "waited, then skipped 3 complete videos",
        "yes",
        yes(same),
        waiting.returncode == 0,
    )


def nan(c: Cases) -> None:
    run = c.copy_ref("nan")

    def state() -> dict[str, str]:  # every file but the log
        return {k: v for k, v in digest(run, "**/*").items() if not k.startswith("logs/")}

    before = state()
    proc = seqbuild("run", str(c.chain), "--out", str(run), "--set", "clean.near_dup_threshold=nan")
    intact = state() == before
    c.add(
        "NaN option",
        "seqbuild run chain.toml --out RUN --set clean.near_dup_threshold=nan",
        proc.returncode,
        one_line(proc),
        yes(intact),
        yes(c.rerun_identical(run)),
        proc.returncode == 2 and intact,
    )
    before = state()
    proc = seqbuild("clean", str(run), "--set", "clean.noise_threshold=-inf")
    c.add(
        "-inf option",
        "seqbuild clean RUN --set clean.noise_threshold=-inf",
        proc.returncode,
        one_line(proc),
        yes(state() == before),
        yes(faces(run / "dataset") == c.ref_faces),
        proc.returncode == 2,
    )


def full_disk_ingest(c: Cases) -> None:
    ingest_bytes = sum(p.stat().st_size for p in (c.ref / "ingest").rglob("*") if p.is_file())
    mnt = c.fresh("full_ingest") / "mnt"
    try:
        with tmpfs(mnt, str(int(ingest_bytes * 0.5))):
            run = mnt / "run"
            ingest_args = ["ingest", *c.clips, "--out", str(run), "--device", "cpu", "--no-progress"]
            ingest_args += ["--detect-every", "5"]
            proc = seqbuild(*ingest_args)
            from seqbuild.layout import RunDir
            from seqbuild.storage import read_table

            rd = RunDir(run)
            done = rd.ingest.done_shards()
            intact = all(read_table(p) is not None for s in done for p in rd.ingest.output_files(s).values())
            intact = intact and not list(run.rglob("*.tmp"))
            remount(mnt, "size=256m")
            again = seqbuild(*ingest_args)
            same = again.returncode == 0 and digest(run / "ingest", "detections/*.parquet") == digest(
                c.ref / "ingest", "detections/*.parquet"
            )
            c.add(
                f"full disk while ingest streams detections ({len(done)} of 3 videos fit)",
                "seqbuild ingest CLIPS --out RUN (tmpfs of half the output)",
                proc.returncode,
                one_line(proc),
                yes(intact),
                yes(same),
                proc.returncode == 1 and intact and "no space left" in proc.stderr,
            )
    except PermissionError as exc:
        c.add(
            "full disk while ingest streams detections",
            "-",
            "not run",
            f"cannot mount a tmpfs: {exc}",
            "-",
            "-",
            True,
        )


def full_disk_track(c: Cases) -> None:
    mnt = c.fresh("full_track") / "mnt"
    toml = c._toml(c.work / "track.toml", c.clips, ["ingest", "track"])
    need = sum(p.stat().st_size for p in (c.ref / "ingest").rglob("*") if p.is_file())
    track_bytes = sum(p.stat().st_size for p in (c.ref / "track").rglob("*") if p.is_file())
    try:
        with tmpfs(mnt, str(need + 64 * 1024 + track_bytes // 3)):
            run = mnt / "run"
            shutil.copytree(c.ref / "ingest", run / "ingest")
            shutil.copytree(c.ref / "_pipeline", run / "_pipeline")
            (run / "_pipeline" / "track.json").unlink()
            before = digest(run / "ingest")
            proc = seqbuild("run", str(toml), "--out", str(run), "--no-progress")
            intact = digest(run / "ingest") == before and not list(run.rglob("*.tmp"))
            remount(mnt, "size=256m")
            again = seqbuild("run", str(toml), "--out", str(run), "--no-progress")
            same = again.returncode == 0 and digest(run / "track") == digest(c.ref / "track")
            c.add(
                "full disk while track writes",
                "seqbuild run track.toml --out RUN (tmpfs)",
                proc.returncode,
                one_line(proc),
                yes(intact),
                yes(same),
                proc.returncode == 1 and intact,
            )
    except PermissionError as exc:
        c.add("full disk while track writes", "-", "not run", f"cannot mount a tmpfs: {exc}", "-", "-", True)


def blocked_out(c: Cases) -> None:
    folder = c.fresh("blocked")
    blocker = folder / "a-file"
    blocker.write_text("x")
    for args in (
        ["run", str(c.chain), "--out", str(blocker / "run")],
        ["export", str(c.ref), "--after", "clean", "--out", str(blocker / "out")],
        ["import-identities", str(c.gallery), "--out", str(blocker / "ids"), "--aligned"],
    ):
        proc = seqbuild(*args)
        c.add(
            "--out under a regular file",
            "seqbuild " + " ".join(args),
            proc.returncode,
            one_line(proc),
            yes(blocker.read_text() == "x"),
            "n/a",
            proc.returncode != 0 and "Traceback" not in proc.stderr,
        )
    mnt = folder / "ro"
    try:
        with tmpfs(mnt, "8m", readonly=True):
            proc = seqbuild("run", str(c.chain), "--out", str(mnt / "run"))
            c.add(
                "read-only --out (read-only mount)",
                "seqbuild run chain.toml --out RO/run",
                proc.returncode,
                one_line(proc),
                "yes",
                "n/a",
                proc.returncode == 1 and "Traceback" not in proc.stderr,
            )
        with tmpfs(mnt, "256m"):
            run = mnt / "run"
            shutil.copytree(c.ref, run)
            before = digest(run, "**/*")
            remount(mnt, "ro")
            proc = seqbuild("run", str(c.chain), "--out", str(run))
            intact = digest(run, "**/*") == before
            remount(mnt, "rw")
            c.add(
                "finished run on a file system remounted read-only",
                "seqbuild run chain.toml --out RUN",
                proc.returncode,
                one_line(proc),
                yes(intact),
                yes(c.rerun_identical(run)),
                proc.returncode == 1 and intact and "Traceback" not in proc.stderr,
            )
    except PermissionError as exc:
        c.add("read-only --out", "-", "not run", f"cannot mount a tmpfs: {exc}", "-", "-", True)


def toml_not_utf8(c: Cases) -> None:
    toml = c.fresh("latin1") / "latin1.toml"
    toml.write_bytes(c.chain.read_text().replace("[run]", "# réglages\n[run]").encode("latin-1"))
    proc = seqbuild("run", str(toml), "--out", str(toml.parent / "run"))
    c.add(
        "pipeline TOML in Latin-1",
        "seqbuild run latin1.toml --out RUN",
        proc.returncode,
        one_line(proc),
        "yes",
        "n/a",
        proc.returncode == 2 and "Traceback" not in proc.stderr,
    )


def markers(c: Cases) -> None:
    for name, content in (("empty", ""), ("truncated", '{"shard": "00')):
        run = c.copy_ref(f"marker_{name}")
        (run / "track" / "_done" / f"{c.videos[1]}.json").write_text(content)
        before = digest(run / "ingest")
        proc = seqbuild("run", str(c.chain), "--out", str(run), "--no-progress")
        warn = next((ln for ln in proc.stderr.splitlines() if "marker" in ln), one_line(proc))
        c.add(
            f"{name} completion marker (track)",
            "seqbuild run chain.toml --out RUN",
            proc.returncode,
            warn,
            yes(digest(run / "ingest") == before),
            yes(proc.returncode == 0 and faces(run / "dataset") == c.ref_faces),
            proc.returncode == 0,
        )


def rerun_heals(c: Cases, run: Path, case: str, word: str) -> None:
    """Run the chain again on a damaged run: the line that names the damage (with ``word``), and whether
    the dataset is the reference one again."""
    proc = seqbuild("run", str(c.chain), "--out", str(run), "--no-progress")
    warn = next((ln for ln in proc.stderr.splitlines() if word in ln), one_line(proc))
    same = proc.returncode == 0 and faces(run / "dataset") == c.ref_faces
    c.add(case, "seqbuild run chain.toml --out RUN", proc.returncode, warn, "yes", yes(same), same)


def damaged_outputs(c: Cases) -> None:
    run = c.copy_ref("truncated_output")
    path = run / "track" / "assignments" / f"{c.videos[1]}.parquet"
    path.write_bytes(path.read_bytes()[:200])
    rerun_heals(c, run, "truncated track/assignments under a trusted marker", "truncated")

    run = c.copy_ref("damaged_in_place")
    path = run / "embed" / "embeddings" / f"{c.videos[0]}.parquet"
    data = bytearray(path.read_bytes())
    data[len(data) // 2] ^= 0xFF
    path.write_bytes(bytes(data))
    rerun_heals(c, run, "embeddings damaged in place (same size)", "checksum")

    run = c.copy_ref("corrupt_parquet")
    path = run / "clean" / "assignments" / f"{c.videos[0]}.parquet"
    data = path.read_bytes()
    path.write_bytes(data[:100] + bytes(len(data) - 100))
    proc = seqbuild("export", str(run), "--after", "clean", "--out", str(run.parent / "corrupt_export"))
    healed = seqbuild("run", str(c.chain), "--out", str(run), "--no-progress")
    same = healed.returncode == 0 and faces(run / "dataset") == c.ref_faces
    c.add(
        "corrupt Parquet (clean/assignments, same size)",
        "seqbuild export RUN --after clean --out OUT",
        proc.returncode,
        one_line(proc),
        "yes",
        yes(same),
        proc.returncode == 1 and "corrupt" in proc.stderr,
    )


def failed_sources(c: Cases) -> None:
    folder = c.fresh("failed_sources")
    later = folder / "later.mp4"
    args = [
        "ingest",
        c.clips[0],
        str(later),
        "--out",
        str(folder / "run"),
        "--device",
        "cpu",
        "--no-progress",
    ]
    first = seqbuild(*args)
    again = seqbuild(*args)
    shutil.copy(c.clips[1], later)
    fixed = seqbuild(*args)
    c.add(
        "re-run over a source that failed before",
        "seqbuild ingest CLIP MISSING --out RUN (again)",
        again.returncode,
        next((ln for ln in again.stderr.splitlines() if "earlier run" in ln), one_line(again)),
        "yes",
        yes(fixed.returncode == 0 and "done=1" in fixed.stdout),
        first.returncode == 1 and again.returncode == 1 and "earlier run" in again.stderr,
    )

    clip = folder / "replaced.mp4"
    shutil.copy(c.clips[0], clip)
    run = folder / "run2"
    seqbuild("ingest", str(clip), "--out", str(run), "--device", "cpu", "--no-progress")
    time.sleep(0.01)
    shutil.copy(c.clips[2], clip)
    proc = seqbuild("ingest", str(clip), "--out", str(run), "--device", "cpu", "--no-progress")
    c.add(
        "a video replaced at the same path",
        "seqbuild ingest CLIP --out RUN (after replacing CLIP)",
        proc.returncode,
        next((ln for ln in proc.stderr.splitlines() if "changed" in ln), one_line(proc)),
        "yes",
        yes("done=1" in proc.stdout),
        proc.returncode == 0 and "done=1" in proc.stdout,
    )


def _jpeg(seed: int) -> bytes:
    import numpy as np

    from seqbuild.imaging import encode_jpeg

    return encode_jpeg(np.random.default_rng(seed).integers(0, 255, (112, 112, 3), dtype=np.uint8))


def recordio(c: Cases) -> None:
    from seqbuild.recordio import RecordIOWriter, pack_record

    folder = c.fresh("recordio")

    def rec(name: str, records: list[tuple[int, bytes]]) -> Path:
        (folder / name).mkdir()
        with RecordIOWriter(folder / name / "train.rec") as w:
            for k, p in records:
                w.write(k, p)
        return folder / name

    head = (0, pack_record((4.0, 4.0), b""))
    good = [(1, pack_record(0.0, _jpeg(1))), (3, pack_record(1.0, _jpeg(3)))]
    sources = {
        "NaN label": rec("nan", [head, good[0], (2, pack_record(math.nan, _jpeg(2))), good[1]]),
        "inf label": rec("inf", [head, good[0], (2, pack_record(math.inf, _jpeg(2))), good[1]]),
        "negative label": rec("neg", [head, good[0], (2, pack_record(-3.0, _jpeg(2))), good[1]]),
        "empty image record": rec("empty", [head, good[0], (2, pack_record(1.0, b"")), good[1]]),
        "header claiming 10^12 images": rec("huge", [(0, pack_record((1e12, 1e12 + 2), b"")), *good]),
    }
    for what, src in sources.items():
        out = folder / f"ids_{src.name}"
        proc = seqbuild("import-identities", str(src), "--out", str(out), "--no-progress")
        c.add(
            f"RecordIO: {what}",
            f"seqbuild import-identities {src.name}/ --out OUT",
            proc.returncode,
            one_line(proc),
            "yes",
            "n/a",
            proc.returncode == 1 and "Traceback" not in proc.stderr,
        )
    for what, src in sources.items():
        out = folder / f"g_{src.name}"
        proc = seqbuild("gallery", "build", str(src), "--out", str(out), "--prealigned")
        c.add(
            f"RecordIO: {what}",
            f"seqbuild gallery build {src.name}/ --out G --prealigned",
            proc.returncode,
            one_line(proc),
            "yes",
            "n/a",
            proc.returncode == 1 and "Traceback" not in proc.stderr,
        )


class _ClaimsHugeArray:
    def __reduce__(self):
        import numpy as np
        from numpy._core.multiarray import _reconstruct

        return (_reconstruct, (np.ndarray, (0,), b"b"), (1, (10**12,), np.dtype(bool), False, b""))


class _Payload:
    def __init__(self, marker: str) -> None:
        self.marker = marker

    def __reduce__(self):
        return (os.system, (f"touch {self.marker}",))


def eval_bins_and_weights(c: Cases) -> None:
    import numpy as np
    import torch

    from seqbuild.train.backbones import create_backbone
    from seqbuild.train.checkpoint import save_checkpoint

    folder = c.fresh("eval")
    model = folder / "tiny.pt"
    net = create_backbone("tiny")
    save_checkpoint(model, {"backbone": "tiny", "backbone_kwargs": {}, "model": net.state_dict()})
    bins = [_jpeg(i) for i in range(20)]
    same = np.array([True, False] * 5)
    cases = {}
    empty = list(bins)
    empty[3] = b""
    cases["empty image in a .bin"] = (empty, same)
    cases["array header claiming 10^12 pairs in a .bin"] = (bins, _ClaimsHugeArray())
    marker = folder / "pwned-by-bin"
    cases["pickle that runs a command in a .bin"] = (bins, _Payload(str(marker)))
    for what, obj in cases.items():
        path = folder / f"{len(os.listdir(folder))}.bin"
        path.write_bytes(pickle.dumps(obj, protocol=2))
        proc = seqbuild("eval", str(model), "--bin", str(path), "--device", "cpu")
        c.add(
            what,
            f"seqbuild eval tiny.pt --bin {path.name}",
            proc.returncode,
            one_line(proc),
            yes(not marker.exists()),
            "n/a",
            proc.returncode == 1 and "Traceback" not in proc.stderr,
        )
    evil = folder / "evil.pt"
    pt_marker = folder / "pwned-by-pt"
    torch.save({"format": "seqbuild-seqface-1", "model": _Payload(str(pt_marker))}, evil)
    good = folder / "ok.bin"
    good.write_bytes(pickle.dumps((bins, same), protocol=2))
    proc = seqbuild("eval", str(evil), "--bin", str(good), "--device", "cpu")
    c.add(
        "pickle that runs a command in a .pt",
        "seqbuild eval evil.pt --bin ok.bin",
        proc.returncode,
        one_line(proc),
        yes(not pt_marker.exists()),
        "n/a",
        proc.returncode == 1 and "weights_only" not in proc.stderr and not pt_marker.exists(),
    )


def identities_and_fifo(c: Cases) -> None:
    import numpy as np

    from seqbuild.imaging import encode_jpeg

    folder = c.fresh("identities")
    src = folder / "src"
    for ident in ("alice", "bob", "..evil"):
        (src / ident).mkdir(parents=True)
        (src / ident / "1.jpg").write_bytes(encode_jpeg(np.full((144, 144, 3), 90, np.uint8)))
    proc = seqbuild("import-identities", str(src), "--out", str(folder / "ids"), "--aligned", "--no-progress")
    (src / "..evil").rename(src / "evil")
    again = seqbuild(
        "import-identities", str(src), "--out", str(folder / "ids"), "--aligned", "--no-progress"
    )
    c.add(
        'identity folder "..evil"',
        "seqbuild import-identities SRC --out OUT --aligned",
        proc.returncode,
        one_line(proc),
        "yes",
        yes(again.returncode == 0 and '"identities": 3' in again.stdout),
        proc.returncode == 1,
    )
    os.mkfifo(src / "alice" / "pipe.jpg")
    try:
        proc = seqbuild(
            "import-identities",
            str(src),
            "--out",
            str(folder / "ids2"),
            "--aligned",
            "--no-progress",
            timeout=120,
        )
        c.add(
            "named pipe called pipe.jpg",
            "seqbuild import-identities SRC --out OUT --aligned",
            proc.returncode,
            one_line(proc) + " (pipe listed as not_a_file)",
            "yes",
            "n/a",
            proc.returncode == 0,
        )
    except subprocess.TimeoutExpired:
        c.add(
            "named pipe called pipe.jpg",
            "seqbuild import-identities SRC --out OUT --aligned",
            "hang",
            "blocked on the pipe",
            "-",
            "-",
            False,
        )
    try:
        proc = seqbuild("gallery", "build", str(src), "--out", str(folder / "g"), "--prealigned", timeout=300)
        c.add(
            "named pipe called pipe.jpg",
            "seqbuild gallery build SRC --out G --prealigned",
            proc.returncode,
            one_line(proc),
            "yes",
            "n/a",
            proc.returncode == 0,
        )
    except subprocess.TimeoutExpired:
        c.add(
            "named pipe called pipe.jpg",
            "seqbuild gallery build SRC --out G",
            "hang",
            "blocked on the pipe",
            "-",
            "-",
            False,
        )


def faiss_index(c: Cases) -> None:
    folder = c.fresh("faiss")
    built = folder / "gallery"
    seqbuild("gallery", "build", str(c.gallery), "--out", str(built))
    (built / "index.faiss").write_bytes(b"\x00garbage" * 64)
    run = c.copy_ref("faiss_run")
    before = digest(run)
    proc = seqbuild("dedup-overlap", str(run), "--gallery", str(built), "--no-progress")
    lines = [ln for ln in proc.stderr.splitlines() if "index.faiss" in ln]
    c.add(
        "corrupt FAISS index in a gallery",
        "seqbuild dedup-overlap RUN --gallery G",
        proc.returncode,
        f"{one_line(proc)} ({len(lines)} line(s) name it)",
        yes(digest(run) == before),
        "n/a",
        proc.returncode == 1 and len(lines) == 1,
    )


def interrupted(c: Cases) -> None:
    for stage, sig in [
        (s, signal.SIGKILL) for s in ("ingest", "track", "embed", "clean", "dedup_overlap")
    ] + [(s, signal.SIGINT) for s in ("ingest", "embed", "clean")]:
        name = f"{'kill -9' if sig == signal.SIGKILL else 'Ctrl-C'} in {stage}"
        run = c.fresh(f"signal_{stage}_{sig}") / "run"
        proc = _popen("run", str(c.chain), "--out", str(run), "--no-progress")
        folder = run / stage
        end = time.monotonic() + 600
        while time.monotonic() < end and proc.poll() is None:
            if folder.exists() and any(p.is_file() for p in folder.rglob("*")):
                break
            time.sleep(0.005)
        os.killpg(proc.pid, sig)
        _, err = proc.communicate(timeout=300)
        rc = proc.returncode
        message = "killed" if rc == -9 else last_line(err)
        from seqbuild.layout import RunDir

        rd = RunDir(run)
        stores = [rd.stage(s) for s in ("ingest", "track", "embed", "clean", "dedup_overlap")]
        intact = all(
            st.is_done(s, st.marker(s).get("config_hash")) for st in stores for s in st.done_shards()
        )
        c.add(
            name,
            "seqbuild run chain.toml --out RUN",
            rc,
            message,
            yes(intact),
            yes(c.rerun_identical(run)),
            intact and rc in (-9, 130),
        )


CASES: list[Callable[[Cases], None]] = [
    traversal,
    reason_traversal,
    rotation,
    lock,
    nan,
    full_disk_ingest,
    full_disk_track,
    blocked_out,
    toml_not_utf8,
    markers,
    damaged_outputs,
    failed_sources,
    recordio,
    eval_bins_and_weights,
    identities_and_fifo,
    faiss_index,
    interrupted,
]


def esc(text: object) -> str:
    return str(text).replace("|", "\\|")


def table(rows: list[Row]) -> str:
    head = (
        "| case | command | exit | message | outputs intact | re-run identical |\n|---|---|---|---|---|---|\n"
    )
    return head + "".join(
        f"| {esc(r.case)} | `{esc(r.command)}` | {r.rc} | {esc(r.message)} | {r.intact} | {r.identical} |\n"
        for r in rows
    )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument(
        "--work", default="runs/hardening", help="Scratch folder (reused for the reference run)."
    )
    parser.add_argument("--media", default=str(REPO.parent / "shared" / "media"))
    parser.add_argument("--only", default="", help="Comma-separated case functions to run.")
    parser.add_argument("--json", default="", help="Also write the rows as JSON here.")
    args = parser.parse_args()
    work = Path(args.work).resolve()
    work.mkdir(parents=True, exist_ok=True)
    media = Path(args.media) if Path(args.media).is_dir() else None
    load = os.getloadavg()
    start = time.perf_counter()
    cases = Cases(work, media)
    wanted = set(filter(None, args.only.split(",")))
    for fn in CASES:
        if not wanted or fn.__name__ in wanted:
            try:
                fn(cases)
            except Exception as exc:  # a broken case is a row, not the end of the table
                cases.add(fn.__name__, "-", "harness error", f"{type(exc).__name__}: {exc}", "-", "-", False)
    rows = cases.rows
    bad = [r for r in rows if not r.ok]
    print()
    print(table(rows))
    print(
        f"{len(rows)} bad inputs tried, {len(bad)} not handled; {time.perf_counter() - start:.0f} s; "
        f"load {load[0]:.1f} before, {os.getloadavg()[0]:.1f} after"
    )
    if args.json:
        Path(args.json).write_text(json.dumps([r.__dict__ for r in rows], indent=1))


if __name__ == "__main__":
    main()
