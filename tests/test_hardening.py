"""What a hostile or careless run may try: crafted names, damaged markers and outputs, concurrent commands,
non-finite options, unusable folders and files, damaged RecordIO, named pipes, untrusted weights."""

from __future__ import annotations

import errno
import json
import math
import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pyarrow as pa
import pytest
from click.testing import CliRunner
from test_crash import VIDEOS, faces_after, ingested, track_pipeline

from seqbuild._cli.main import cli
from seqbuild.config import build
from seqbuild.errors import ConfigError, DiskFullError, InputError
from seqbuild.layout import RunDir
from seqbuild.pipeline.loading import load_pipeline
from seqbuild.pipeline.run import run_pipeline
from seqbuild.schema import DETECTIONS, IDENTITY_IMAGES, REMOVALS
from seqbuild.storage import read_table, read_tables, safe_name, write_table

REPO = Path(__file__).resolve().parents[1]
runner = CliRunner()


def files_outside(root: Path, *inside: Path) -> set[Path]:
    """Every file under ``root`` that is not under one of ``inside``."""
    keep = [p.resolve() for p in inside]
    return {
        p for p in root.rglob("*") if p.is_file() and not any(p.resolve().is_relative_to(k) for k in keep)
    }


def _rewritten(name: str) -> str:
    """How a shard id used to be rewritten into a file name (so a crafted run can plant its files)."""
    out = "".join(c if (c.isalnum() or c in "-_.") else "_" for c in name)
    return "_" + out if not out or out.startswith(".") else out


def plant_crafted_shard(run: RunDir, stages: list[str], real: str, crafted: str) -> None:
    """Give ``crafted`` a copy of ``real``'s files in each stage and a completion marker naming it."""
    for stage in stages:
        store = run.stage(stage)
        for table_dir in store.root.iterdir():
            if table_dir.is_dir() and not table_dir.name.startswith("_"):
                src = table_dir / f"{real}.parquet"
                if src.exists():
                    shutil.copy(src, table_dir / f"{_rewritten(crafted)}.parquet")
        marker = {"shard": crafted, "config_hash": store.marker(real).get("config_hash", "x")}
        (store.root / "_done" / "crafted.json").write_text(json.dumps(marker))


# --------------------------------------------------------------------------- names from data


@pytest.mark.parametrize(
    "bad",
    [
        "",
        ".",
        "..",
        "../x",
        "..evil",
        "/etc/passwd",
        "a/b",
        "a\\b",
        "x\ny",
        "nul\0",
        "rtl\u202eexe",
        "x" * 201,
    ],
)
def test_safe_name_refuses_names_that_would_leave_their_folder(bad):
    from seqbuild.storage import UnsafeNameError

    with pytest.raises(UnsafeNameError):
        safe_name(bad)


def test_safe_name_keeps_ordinary_ids_unchanged():
    for good in ("0123456789ab", "0123456789ab-p0003", "too_short", "Zoë Saldaña", "a b", "x" * 200):
        assert safe_name(good) == good


@pytest.mark.parametrize("crafted", ["../../../x", "ABSOLUTE"])
def test_export_never_writes_outside_its_folder(tmp_path, crafted):
    crafted = str(tmp_path / "escape-x") if crafted == "ABSOLUTE" else crafted
    run = ingested(tmp_path / "run")
    run_pipeline(run.root, load_pipeline(track_pipeline(tmp_path / "p.toml")), progress=False)
    plant_crafted_shard(run, ["ingest", "track"], VIDEOS[0], crafted)
    out = tmp_path / "a" / "b" / "out"
    before = files_outside(tmp_path, run.root)
    result = runner.invoke(cli, ["export", str(run.root), "--after", "track", "--out", str(out)])
    assert result.exit_code == 0, result.output
    assert files_outside(tmp_path, run.root, out) == before
    assert sorted(p.stem for p in (out / "faces").iterdir()) == VIDEOS  # the real videos, nothing else


def test_export_refuses_an_unsafe_shard_id_itself(tmp_path, monkeypatch):
    from seqbuild.dataset import export_stage
    from seqbuild.storage import ShardStore, UnsafeNameError

    run = ingested(tmp_path / "run")
    run_pipeline(run.root, load_pipeline(track_pipeline(tmp_path / "p.toml")), progress=False)
    monkeypatch.setattr(ShardStore, "done_shards", lambda self: ["../../../x"])
    with pytest.raises(UnsafeNameError, match=r"\.\./\.\./\.\./x"):
        export_stage(run, "track", tmp_path / "out")
    assert not (tmp_path / "x.parquet").exists()


@pytest.fixture
def overlap_run(tmp_path):
    from test_overlap_fakes import RED, colour_vector
    from test_overlap_stage import VIDEO, features_gallery, make_run

    run = make_run(tmp_path / "runs" / "run")
    gallery = features_gallery(tmp_path / "g", ["alice"], [colour_vector(RED)])
    plant_crafted_shard(run, ["ingest", "track", "embed", "clean"], VIDEO, "../../../x")
    return run, gallery


def test_dedup_overlap_never_writes_the_dataset_outside_the_run(tmp_path, overlap_run):
    run, gallery = overlap_run
    before = files_outside(tmp_path, run.root)
    result = runner.invoke(
        cli,
        ["dedup-overlap", str(run.root), "--gallery", str(gallery), "--threshold", "0.5", "--no-progress"],
    )
    assert result.exit_code == 0, result.output
    assert files_outside(tmp_path, run.root) == before
    assert [p.name for p in (run.dataset / "faces").iterdir()] == ["0123456789ab.parquet"]


def test_run_never_writes_the_dataset_outside_the_run(tmp_path, overlap_run):
    run, gallery = overlap_run
    toml = tmp_path / "p.toml"
    toml.write_text(f'[run]\nstages = ["dedup_overlap"]\n[dedup_overlap]\ngalleries = ["{gallery}"]\n')
    before = files_outside(tmp_path, run.root)
    result = runner.invoke(cli, ["run", str(toml), "--out", str(run.root), "--no-progress"])
    assert result.exit_code == 0, result.output
    assert files_outside(tmp_path, run.root) == before


def test_the_dataset_writer_refuses_an_unsafe_shard_id(overlap_run):
    from seqbuild.overlap.stage import write_dataset_shard
    from seqbuild.storage import UnsafeNameError

    run, _ = overlap_run
    with pytest.raises(UnsafeNameError):
        write_dataset_shard(run, "../../../x")


def test_report_never_writes_a_sheet_outside_its_folder(tmp_path, caplog):
    from test_report import synthetic_run

    from seqbuild.report import write_report

    run = synthetic_run(tmp_path / "runs" / "run", n_videos=1)
    video = run.dedup_overlap.done_shards()[0]
    path = run.dedup_overlap.table_path("removals", video)
    rem = read_table(path, REMOVALS)
    evil = "X/../../../y"  # from RUN/report: the folder holding the run
    rem = rem.set_column(rem.schema.get_field_index("reason"), "reason", pa.array([evil] * rem.num_rows))
    write_table(path, rem, REMOVALS, "removals")
    run.dedup_overlap.mark_done(video, "d")
    before = files_outside(tmp_path, run.root)
    page = write_report(run.root)
    assert files_outside(tmp_path, run.root) == before
    assert not (tmp_path / "y.png").exists() and not list(tmp_path.rglob("y.png"))
    assert evil in page.read_text()  # the sheet is still shown in the page
    assert any("not usable as a file name" in r.getMessage() for r in caplog.records)


# --------------------------------------------------------------------------- completion markers


def test_a_truncated_output_is_redone_and_the_run_includes_it(tmp_path, caplog):
    toml = track_pipeline(tmp_path / "p.toml")
    run = ingested(tmp_path / "run")
    run_pipeline(run.root, load_pipeline(toml), progress=False)
    expected = faces_after(run, "track", tmp_path / "expected")
    path = run.track.table_path("assignments", VIDEOS[1])
    path.write_bytes(path.read_bytes()[:200])
    results = run_pipeline(run.root, load_pipeline(toml), progress=False)
    assert results[0].status == "ran" and results[0].summary["done"] == 1
    assert any(VIDEOS[1] in r.getMessage() and "truncated" in r.getMessage() for r in caplog.records)
    assert run.track.done_shards() == VIDEOS
    got = faces_after(run, "track", tmp_path / "got")
    assert sorted(got.column("face_id").to_pylist()) == sorted(expected.column("face_id").to_pylist())


def test_an_output_damaged_in_place_is_redone_by_its_stage(tmp_path, caplog):
    from seqbuild.track.config import TrackConfig
    from seqbuild.track.stage import run_track

    run = ingested(tmp_path / "run")
    run_track(run.root, TrackConfig(), progress=False)
    path = run.track.table_path("sequences", VIDEOS[2])
    data = bytearray(path.read_bytes())
    data[len(data) // 2] ^= 0xFF  # same size: only the checksum tells
    path.write_bytes(bytes(data))
    again = run_track(run.root, TrackConfig(), progress=False)
    assert again["done"] == 1 and again["skipped"] == len(VIDEOS) - 1
    assert any("checksum" in r.getMessage() and VIDEOS[2] in r.getMessage() for r in caplog.records)
    read_table(path)  # whole again


def test_run_redoes_an_output_damaged_in_place_instead_of_skipping_the_stage(tmp_path, caplog):
    toml = track_pipeline(tmp_path / "p.toml")
    run = ingested(tmp_path / "run")
    run_pipeline(run.root, load_pipeline(toml), progress=False)
    path = run.track.table_path("assignments", VIDEOS[0])
    data = bytearray(path.read_bytes())
    data[len(data) // 2] ^= 0xFF
    path.write_bytes(bytes(data))
    results = run_pipeline(run.root, load_pipeline(toml), progress=False)
    assert results[0].status == "ran" and results[0].summary["done"] == 1
    read_table(path)
    assert run_pipeline(run.root, load_pipeline(toml), progress=False)[0].status == "skipped"


def test_a_run_log_that_cannot_be_written_is_said_once(tmp_path, capsys):
    import logging

    from seqbuild.logs import RunLogHandler

    class FullDisk:
        def write(self, text):
            raise OSError(errno.ENOSPC, "No space left on device")

        def flush(self):
            pass

    handler = RunLogHandler(tmp_path / "seqbuild.log")
    handler.setStream(FullDisk())
    logger = logging.getLogger("seqbuild.test-full-log")
    logger.addHandler(handler)
    try:
        for i in range(3):
            logger.warning("message %d", i)
    finally:
        logger.removeHandler(handler)
    err = capsys.readouterr().err
    assert err.count("cannot write the run log (No space left on device)") == 1 and "Traceback" not in err


@pytest.mark.parametrize("content", ["", '{"shard": "0000000', "[1, 2]", '{"shard": "other"}'])
def test_an_empty_or_truncated_marker_means_not_done(tmp_path, content, caplog):
    run = ingested(tmp_path / "run")
    marker = run.track.marker_path(VIDEOS[0])
    track = track_pipeline(tmp_path / "p.toml")
    run_pipeline(run.root, load_pipeline(track), progress=False)
    marker.write_text(content)
    assert run.track.done_shards() == VIDEOS[1:]
    assert not run.track.is_done(VIDEOS[0])
    result = runner.invoke(cli, ["track", str(run.root), "--no-progress"])
    assert result.exit_code == 0, result.output
    assert "Traceback" not in result.output and "done=1" in result.output
    assert run.track.done_shards() == VIDEOS
    assert any(str(marker) in r.getMessage() for r in caplog.records)


def test_markers_record_sizes_and_checksums_of_every_output(tmp_path):
    run = ingested(tmp_path / "run")
    run_pipeline(run.root, load_pipeline(track_pipeline(tmp_path / "p.toml")), progress=False)
    marker = run.track.marker(VIDEOS[0])
    assert set(marker["outputs"]) == {"assignments", "sequences", "removals"}
    for table, record in marker["outputs"].items():
        path = run.track.table_path(table, VIDEOS[0])
        assert record["size"] == path.stat().st_size and len(record["sha256"]) == 64


# --------------------------------------------------------------------------- concurrent commands


def test_a_live_temporary_file_is_never_deleted_by_another_writer(tmp_path):
    from seqbuild.storage import AppendingTableWriter, remove_stale_temporaries

    path = tmp_path / "detections" / "v.parquet"
    first = AppendingTableWriter(path, DETECTIONS, "detections")
    from seqbuild.ingest.builder import StreamingTable

    second = StreamingTable(path, DETECTIONS, "detections", "")  # cleans what killed runs left
    assert first.tmp.exists(), "the first writer's temporary file was deleted"
    assert remove_stale_temporaries(tmp_path) == 0
    second.abort()
    first.commit()
    assert read_table(path).num_rows == 0


def test_temporary_files_of_dead_writers_are_removed(tmp_path):
    from seqbuild.storage import remove_stale_temporaries

    (tmp_path / "t").mkdir()
    dead = tmp_path / "t" / ".v.parquet.abc.tmp"
    dead.write_bytes(b"half")
    assert remove_stale_temporaries(tmp_path) == 1 and not dead.exists()


# --------------------------------------------------------------------------- non-finite options


def _float_options():
    import dataclasses
    import typing

    from seqbuild.stages import section_class, sections

    for section in sections():
        cls = section_class(section)
        hints = typing.get_type_hints(cls)
        for f in dataclasses.fields(cls):
            tp = hints[f.name]
            if tp is float or float in typing.get_args(tp) or tp == list[float]:
                yield section, f.name, cls


@pytest.mark.parametrize("value", [math.nan, math.inf, -math.inf])
def test_every_float_option_refuses_nan_and_inf(value):
    options = list(_float_options())
    assert len(options) > 10
    for section, name, cls in options:
        given = [value] if "list" in str(cls.__dataclass_fields__[name].type) else value
        with pytest.raises(ConfigError, match=f"{section}.{name}"):
            build(cls, {name: given}, section=section)


@pytest.mark.parametrize("text", ["nan", "inf", "-inf", '"nan"', "+inf"])
def test_nan_on_the_command_line_or_in_a_toml_is_an_error(tmp_path, text):
    run = ingested(tmp_path / "run")
    result = runner.invoke(cli, ["clean", str(run.root), "--set", f"clean.near_dup_threshold={text}"])
    assert result.exit_code == 2 and "clean.near_dup_threshold" in result.output
    assert "finite" in result.output and "Traceback" not in result.output
    toml = tmp_path / "p.toml"
    toml.write_text(f'[run]\nstages = ["track"]\n[track]\nmin_iou = {text}\n')
    result = runner.invoke(cli, ["run", str(toml), "--out", str(run.root)])
    assert result.exit_code == 2 and "track.min_iou" in result.output
    assert not (run.root / "config.toml").exists() or "nan" not in (run.root / "config.toml").read_text()


# --------------------------------------------------------------------------- one line instead of a traceback


def _last_error(result) -> str:
    lines = result.output.strip().splitlines()
    assert lines, "no output"
    assert "Traceback" not in result.output, result.output
    return lines[-1]


def test_out_under_a_regular_file_is_one_line(tmp_path):
    blocker = tmp_path / "file"
    blocker.write_text("x")
    run = ingested(tmp_path / "run")
    run_pipeline(run.root, load_pipeline(track_pipeline(tmp_path / "p.toml")), progress=False)
    toml = track_pipeline(tmp_path / "q.toml")
    cases = [
        ["run", str(toml), "--out", str(blocker / "run")],
        ["track", str(blocker / "run")],
        ["export", str(run.root), "--after", "track", "--out", str(blocker / "out")],
        ["report", str(run.root), "--out", str(blocker / "report" / "index.html")],
        ["import-identities", str(tmp_path), "--out", str(blocker / "ids")],
    ]
    for args in cases:
        result = runner.invoke(cli, args)
        assert result.exit_code != 0, args
        line = _last_error(result)
        assert line.startswith("error: ") and str(blocker) in line, (args, line)
    assert blocker.read_text() == "x"


def test_read_only_out_is_one_line(tmp_path, monkeypatch):
    readonly = tmp_path / "ro"
    readonly.mkdir()
    real_mkdir = Path.mkdir

    def mkdir(self, *args, **kwargs):
        if self.resolve().is_relative_to(readonly.resolve()) and self.resolve() != readonly.resolve():
            raise OSError(errno.EROFS, "Read-only file system", str(self))
        return real_mkdir(self, *args, **kwargs)

    monkeypatch.setattr(Path, "mkdir", mkdir)
    toml = track_pipeline(tmp_path / "p.toml")
    for args in (
        ["run", str(toml), "--out", str(readonly / "run")],
        ["import-identities", str(tmp_path), "--out", str(readonly / "ids")],
    ):
        result = runner.invoke(cli, args)
        assert result.exit_code == 1, (args, result.output)
        line = _last_error(result)
        assert str(readonly) in line and "Read-only file system" in line, line


def test_a_pipeline_toml_that_is_not_utf8_is_one_line(tmp_path):
    toml = tmp_path / "latin1.toml"
    toml.write_bytes('[run]\nstages = ["track"]\n# réglages\n'.encode("latin-1"))
    result = runner.invoke(cli, ["run", str(toml), "--out", str(tmp_path / "run")])
    assert result.exit_code == 2
    line = _last_error(result)
    assert "latin1.toml" in line and "UTF-8" in line


def test_full_disk_in_ingest_detections_writer_is_one_line(tmp_path, monkeypatch, allow_error_logs):
    import pyarrow.parquet as pq
    from test_ingest_stage import make_video

    clips = [make_video(tmp_path / f"c{i}.mp4", frames=30, cut_at=None) for i in range(2)]
    run = tmp_path / "run"
    args = ["ingest", str(clips[0]), "--out", str(run), "--device", "cpu", "--no-progress"]
    args += ["--min-face", "40", "--detect-every", "5"]
    assert runner.invoke(cli, args).exit_code == 0
    first = {p: p.read_bytes() for p in (run / "ingest").rglob("*.parquet")}

    def full(self, *a, **k):
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(pq.ParquetWriter, "write_table", full)
    result = runner.invoke(cli, ["ingest", str(clips[1]), *args[2:]])
    assert result.exit_code == 1
    line = _last_error(result)
    assert line.startswith("error: ") and "no space left on device" in line and "detections" in line
    assert {p: p.read_bytes() for p in (run / "ingest").rglob("*.parquet")} == first
    assert not list((run / "ingest").rglob("*.tmp"))
    monkeypatch.undo()
    again = runner.invoke(cli, ["ingest", str(clips[1]), *args[2:]])
    assert again.exit_code == 0 and "done=1" in again.output


@pytest.mark.parametrize("where", ["detecting", "starting the decoding thread"])
def test_an_interrupted_ingest_stops_its_decoding_thread_before_closing_the_video(
    tmp_path, monkeypatch, where
):
    import threading

    from test_ingest_stage import cfg_for, make_video

    from seqbuild.ingest.builder import ShardBuilder
    from seqbuild.ingest.stage import run_ingest

    clip = make_video(tmp_path / "c.mp4", frames=120, cut_at=None)
    if where == "detecting":

        def interrupted(self, item):
            raise KeyboardInterrupt

        monkeypatch.setattr(ShardBuilder, "add", interrupted)
    else:
        start = threading.Thread.start

        def started_then_interrupted(self):
            start(self)
            if self.name == "ingest-decode":
                raise KeyboardInterrupt  # as when Ctrl-C lands while start() waits for the thread

        monkeypatch.setattr(threading.Thread, "start", started_then_interrupted)
    with pytest.raises(KeyboardInterrupt) as info:
        run_ingest(tmp_path / "run", cfg_for([clip], detect_every=1), progress=False)
    # The traceback is still held here, as it is while the CLI reports the interruption.
    assert info.value is not None
    assert not [t for t in threading.enumerate() if t.name == "ingest-decode"], (
        "decoding thread still running"
    )
    assert not list((tmp_path / "run").rglob("*.tmp"))


def test_the_appending_writer_reports_a_full_disk(tmp_path, monkeypatch):
    import pyarrow.parquet as pq

    from seqbuild.storage import AppendingTableWriter

    schema = pa.schema([pa.field("a", pa.int64())])
    path = tmp_path / "d.parquet"
    write_table(path, pa.table({"a": [7]}), schema, "t")
    writer = AppendingTableWriter(path, schema, "t")

    def full(self, *a, **k):
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(pq.ParquetWriter, "write_table", full)
    with pytest.raises(DiskFullError, match="d.parquet: no space left"):
        writer.write([{"a": 1}])
    writer.abort()
    assert not writer.tmp.exists() and read_table(path).column("a").to_pylist() == [7]


# --------------------------------------------------------------------------- RecordIO, named pipes, weights


def _rec(folder: Path, records: list[tuple[int, bytes]]) -> Path:
    from seqbuild.recordio import RecordIOWriter

    folder.mkdir(parents=True, exist_ok=True)
    with RecordIOWriter(folder / "train.rec") as writer:
        for key, payload in records:
            writer.write(key, payload)
    return folder


def _jpeg(seed: int) -> bytes:
    from seqbuild.imaging import encode_jpeg

    return encode_jpeg(np.random.default_rng(seed).integers(0, 255, (112, 112, 3), dtype=np.uint8))


def damaged_recs(root: Path) -> dict[str, Path]:
    from seqbuild.recordio import pack_record

    head = (0, pack_record((4.0, 4.0), b""))
    good = [(1, pack_record(0.0, _jpeg(1))), (3, pack_record(1.0, _jpeg(3)))]
    return {
        "nan_label": _rec(root / "nan", [head, good[0], (2, pack_record(math.nan, _jpeg(2))), good[1]]),
        "inf_label": _rec(root / "inf", [head, good[0], (2, pack_record(math.inf, _jpeg(2))), good[1]]),
        "negative_label": _rec(root / "neg", [head, good[0], (2, pack_record(-3.0, _jpeg(2))), good[1]]),
        "empty_image": _rec(root / "empty", [head, good[0], (2, pack_record(1.0, b"")), good[1]]),
        "huge_header": _rec(root / "huge", [(0, pack_record((1e12, 1e12 + 2), b"")), *good]),
    }


def test_damaged_recordio_in_import_identities_is_one_line(tmp_path):
    for name, src in damaged_recs(tmp_path / "src").items():
        out = tmp_path / f"out_{name}"
        result = runner.invoke(cli, ["import-identities", str(src), "--out", str(out), "--no-progress"])
        assert result.exit_code == 1, (name, result.output)
        line = _last_error(result)
        assert line.startswith("error: ") and "train.rec" in line, (name, line)
        if name == "huge_header":
            assert "damaged header" in line and not out.joinpath("identity_images").exists()
        else:
            skipped = json.loads((out / "skipped.json").read_text())
            assert [s["source"] for s in skipped] == ["rec:2"], name
            table = read_tables(sorted((out / "identity_images").glob("*.parquet")), IDENTITY_IMAGES)
            assert sorted(table.column("label").to_pylist()) == [0, 1], name


def test_damaged_recordio_in_gallery_build_is_one_line(tmp_path):
    from test_overlap_fakes import NAME

    for name, src in damaged_recs(tmp_path / "src").items():
        out = tmp_path / f"g_{name}"
        args = ["gallery", "build", str(src), "--out", str(out), "--prealigned", "--model", NAME]
        result = runner.invoke(cli, args)
        assert result.exit_code == 1, (name, result.output)
        line = _last_error(result)
        assert line.startswith("error: ") and "train.rec" in line, (name, line)


def test_damaged_images_in_a_verification_bin_are_one_line(tmp_path):
    import pickle

    from seqbuild.train.evaluate import evaluate_bin, load_verification_bin

    bins = [_jpeg(i) for i in range(20)]
    bins[3] = b""
    path = tmp_path / "lfw.bin"
    path.write_bytes(pickle.dumps((bins, np.array([True, False] * 5)), protocol=2))
    with pytest.raises(InputError, match="lfw.bin: image 3 is not decodable"):
        evaluate_bin(lambda x: x, path)
    huge = tmp_path / "huge.bin"
    huge.write_bytes(pickle.dumps((bins, _ClaimsHugeArray()), protocol=2))
    with pytest.raises(InputError, match="huge.bin: not a verification .bin"):
        load_verification_bin(huge)


class _ClaimsHugeArray:
    """Pickles as a boolean numpy array whose header claims 10**12 elements but carries no data."""

    def __reduce__(self):
        from numpy._core.multiarray import _reconstruct

        return (_reconstruct, (np.ndarray, (0,), b"b"), (1, (10**12,), np.dtype(bool), False, b""))


def test_import_identities_refuses_unusable_identity_folders_and_named_pipes(tmp_path):
    from seqbuild.imaging import encode_jpeg

    src = tmp_path / "src"
    for ident in ("alice", "bob", "..evil", "bad\x07bell"):
        (src / ident).mkdir(parents=True)
        (src / ident / "1.jpg").write_bytes(encode_jpeg(np.full((144, 144, 3), 90, np.uint8)))
    os.mkfifo(src / "alice" / "pipe.jpg")
    out = tmp_path / "ids"
    result = runner.invoke(
        cli, ["import-identities", str(src), "--out", str(out), "--aligned", "--no-progress"]
    )
    assert result.exit_code == 1, result.output
    assert "2 damaged record(s) or unusable identity folder(s)" in _last_error(result)
    skipped = {Path(s["source"]).name: s["reason"] for s in json.loads((out / "skipped.json").read_text())}
    assert skipped == {"..evil": "bad_identity", "bad\x07bell": "bad_identity", "pipe.jpg": "not_a_file"}
    table = read_tables(sorted((out / "identity_images").glob("*.parquet")), IDENTITY_IMAGES)
    assert sorted(
        zip(table.column("identity").to_pylist(), table.column("label").to_pylist(), strict=False)
    ) == [
        ("alice", 0),
        ("bob", 1),
    ]


@pytest.mark.timeout(30)
def test_named_pipes_are_refused_without_blocking(tmp_path):
    from seqbuild.config import load_toml
    from seqbuild.imaging import read_image
    from seqbuild.storage import read_regular_file

    fifo = tmp_path / "x.jpg"
    os.mkfifo(fifo)
    with pytest.raises(InputError, match="not a regular file"):
        read_regular_file(fifo)
    with pytest.raises(InputError, match="x.jpg"):
        read_image(str(fifo))
    toml = tmp_path / "p.toml"
    os.mkfifo(toml)
    with pytest.raises(ConfigError, match="not a regular file"):
        load_toml(toml)


def test_untrusted_torch_files_are_refused_with_our_own_line(tmp_path):
    import torch
    from test_crash import _Payload

    from seqbuild.train.checkpoint import load_checkpoint

    evil = tmp_path / "evil.pt"
    torch.save({"state": _Payload(str(tmp_path / "pwned"))}, evil)
    from seqbuild.embed.models import _load_state_file

    for load in (load_checkpoint, _load_state_file):
        with pytest.raises(InputError) as info:
            load(evil)
        message = str(info.value)
        assert "\n" not in message and "evil.pt: refused" in message
        assert "weights_only" not in message and "arbitrary code" not in message
    assert not (tmp_path / "pwned").exists()
    damaged = tmp_path / "damaged.pt"
    damaged.write_bytes(evil.read_bytes()[:100])
    with pytest.raises(InputError, match="damaged.pt: not a readable checkpoint") as info:
        load_checkpoint(damaged)
    assert "\n" not in str(info.value)


# --------------------------------------------------------------------------- re-runs


def test_a_corrupt_faiss_index_is_one_error_not_one_per_video(tmp_path):
    from test_overlap_fakes import RED, colour_vector
    from test_overlap_stage import features_gallery, make_run

    from seqbuild.overlap.config import OverlapConfig
    from seqbuild.overlap.stage import run_dedup_overlap

    run = make_run(tmp_path / "run")
    make_run(tmp_path / "run", video="bbbbbbbbbbbb")
    gallery = features_gallery(tmp_path / "g", ["alice"], [colour_vector(RED)])
    (gallery / "index.faiss").write_bytes(b"not an index at all" * 10)
    with pytest.raises(InputError, match="index.faiss: not a readable FAISS index"):
        run_dedup_overlap(run.root, OverlapConfig(galleries=[str(gallery)], thresholds=[0.5]), progress=False)
    result = runner.invoke(cli, ["dedup-overlap", str(run.root), "--gallery", str(gallery), "--no-progress"])
    assert result.exit_code == 1
    assert [ln for ln in result.output.splitlines() if "index.faiss" in ln] == [_last_error(result)]


def test_a_broken_new_gallery_costs_nothing_already_written(tmp_path):
    from test_overlap_fakes import RED, colour_vector
    from test_overlap_stage import features_gallery, make_run

    run = make_run(tmp_path / "run")
    good = features_gallery(tmp_path / "good", ["alice"], [colour_vector(RED)])
    args = ["dedup-overlap", str(run.root), "--threshold", "0.5", "--no-progress"]
    assert runner.invoke(cli, [*args, "--gallery", str(good)]).exit_code == 0
    before = {p: p.read_bytes() for p in run.root.rglob("*.parquet")}
    assert any("dataset" in str(p) for p in before)
    broken = features_gallery(tmp_path / "broken", ["alice"], [colour_vector(RED)])
    (broken / "index.faiss").write_bytes(b"not an index" * 10)
    result = runner.invoke(cli, [*args, "--gallery", str(broken)])
    assert result.exit_code == 1 and "index.faiss" in _last_error(result)
    assert {p: p.read_bytes() for p in run.root.rglob("*.parquet")} == before
    assert RunDir(run.root).dedup_overlap.done_shards()


def test_rerun_over_sources_that_failed_before_is_not_a_success(tmp_path, allow_error_logs):
    from test_ingest_stage import make_video

    good = make_video(tmp_path / "good.mp4", frames=20, cut_at=None)
    missing = tmp_path / "later.mp4"
    args = ["ingest", str(good), str(missing), "--out", str(tmp_path / "run"), "--device", "cpu"]
    args += ["--no-progress", "--min-face", "40"]
    first = runner.invoke(cli, args)
    assert first.exit_code == 1 and "failed=1" in first.output
    again = runner.invoke(cli, args)
    assert again.exit_code == 1 and "done=0" in again.output and "failed=1" in again.output
    assert "failed in an earlier run" in again.output
    retry = runner.invoke(cli, [*args, "--retry-failed"])
    assert retry.exit_code == 1 and "earlier run" not in retry.output
    make_video(missing, frames=20, cut_at=None)  # the file appears: it is read, no flag needed
    fixed = runner.invoke(cli, args)
    assert fixed.exit_code == 0 and "done=1" in fixed.output and "failed=0" in fixed.output


def test_a_file_replaced_at_the_same_path_is_read_again(tmp_path, caplog):
    from test_ingest_stage import cfg_for, make_video

    from seqbuild.ingest.stage import run_ingest, source_id

    path = make_video(tmp_path / "v.mp4", frames=20, cut_at=None)
    run = tmp_path / "run"
    assert run_ingest(run, cfg_for([path]), progress=False)["done"] == 1
    assert run_ingest(run, cfg_for([path]), progress=False)["skipped"] == 1
    make_video(tmp_path / "other.mp4", frames=35, cut_at=None).replace(path)
    again = run_ingest(run, cfg_for([path]), progress=False)
    assert again["done"] == 1 and again["frames"] == 35
    assert any("changed since it was ingested" in r.getMessage() for r in caplog.records)
    videos = read_table(RunDir(run).ingest.table_path("videos", source_id(str(path))))
    assert videos.column("frames_read").to_pylist() == [35]


# --------------------------------------------------------------------------- real processes (slow)


def _seqbuild(*args: str) -> subprocess.Popen:
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    return subprocess.Popen(
        [sys.executable, "-m", "seqbuild", *args],
        cwd=REPO,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        env=env,
        start_new_session=True,
        preexec_fn=_interruptible,
    )


def _interruptible() -> None:
    # A shell that starts a job in the background ignores SIGINT in it, and children inherit that;
    # the command under test must see Ctrl-C the way it does in a terminal.
    signal.signal(signal.SIGINT, signal.SIG_DFL)


def _wait_for_lock(run: Path, stage: str, pid: int, proc: subprocess.Popen, timeout: float = 120) -> None:
    lock = run / "_locks" / f"{stage}.lock"
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline and proc.poll() is None:
        if lock.exists() and lock.read_text().strip() == str(pid):
            return
        time.sleep(0.05)
    raise AssertionError(f"{stage} never took its lock: {proc.communicate()[1].decode()[-2000:]}")


@pytest.mark.slow
@pytest.mark.timeout(300)
def test_two_ingest_commands_on_one_run_never_touch_each_others_files(tmp_path):
    from test_ingest_stage import make_video

    clip = make_video(tmp_path / "long.mp4", frames=150, cut_at=75)
    other = make_video(tmp_path / "other.mp4", frames=40, cut_at=None)
    run = tmp_path / "run"
    common = [
        "--out",
        str(run),
        "--device",
        "cpu",
        "--no-progress",
        "--min-face",
        "40",
        "--detect-every",
        "1",
    ]
    first = _seqbuild("ingest", str(clip), *common)
    _wait_for_lock(run, "ingest", first.pid, first)
    second = _seqbuild("ingest", str(other), *common)
    out, err = second.communicate(timeout=120)
    assert second.returncode == 4, err.decode()
    assert f"pid {first.pid}" in err.decode() and "--wait" in err.decode()
    assert "Traceback" not in err.decode() and err.decode().strip().splitlines()[-1].startswith("error: ")
    waiting = _seqbuild("ingest", str(other), *common, "--wait")
    assert first.wait(timeout=240) == 0, first.communicate()[1].decode()[-2000:]
    assert waiting.wait(timeout=240) == 0, waiting.communicate()[1].decode()[-2000:]
    assert len(RunDir(run).ingest.done_shards()) == 2
    detections = read_tables(RunDir(run).ingest.paths("detections"), DETECTIONS)
    assert detections.num_rows > 0 and not list(run.rglob("*.tmp"))


@pytest.mark.slow
@pytest.mark.timeout(300)
@pytest.mark.parametrize("command", ["ingest", "run"])
def test_ctrl_c_exits_130_and_keeps_what_was_finished(tmp_path, command):
    from test_ingest_stage import make_video

    clips = [make_video(tmp_path / f"c{i}.mp4", frames=150, cut_at=75) for i in range(2)]
    run = tmp_path / "run"
    if command == "ingest":
        args = ["ingest", *map(str, clips), "--out", str(run), "--device", "cpu", "--detect-every", "1"]
    else:
        toml = tmp_path / "p.toml"
        inputs = ", ".join(f'"{c}"' for c in clips)
        toml.write_text(f'[run]\nstages = ["ingest"]\n[ingest]\ninputs = [{inputs}]\ndetect_every = 1\n')
        args = ["run", str(toml), "--out", str(run)]
    proc = _seqbuild(*args, "--no-progress")
    _wait_for_lock(run, "ingest", proc.pid, proc)
    deadline = time.monotonic() + 120
    while time.monotonic() < deadline and not list((run / "ingest").rglob("*.tmp")):
        time.sleep(0.05)  # interrupted while writing, not before
    os.killpg(proc.pid, signal.SIGINT)
    _, err = proc.communicate(timeout=120)
    assert proc.returncode == 130, err.decode()[-2000:]
    assert "interrupted" in err.decode().strip().splitlines()[-1] and "Traceback" not in err.decode()
    assert not list(run.rglob("*.tmp"))
    for shard in RunDir(run).ingest.done_shards():
        assert RunDir(run).ingest.is_done(shard, RunDir(run).ingest.marker(shard)["config_hash"])
