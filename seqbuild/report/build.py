"""Build the report of a run: counts per stage and removal reason, distributions, contact sheets.

Everything is read from the run directory's tables, one video at a time and with only the columns
needed (crops are read only for the faces drawn on a contact sheet), so the report of a large run does
not hold its images in memory. The page embeds its images as base64 PNG, so ``index.html`` can be
moved or mailed on its own; the same PNGs are written beside it.
"""

from __future__ import annotations

import base64
import datetime as dt
import html
import io
import logging
import random
from collections import defaultdict
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

from ..errors import CorruptTableError, InputError
from ..imaging import decode_jpeg
from ..layout import STAGES, RunDir
from ..storage import UnsafeNameError, data_file, ensure_folder, read_table, write_bytes_atomic

log = logging.getLogger(__name__)

SEQUENCE_STAGES = ("track", "clean", "dedup_overlap")
"""Stages that write assignments, sequences and removals."""

CROP = 88
"""Side of a crop on the contact sheets, in pixels."""


def _num_rows(path: Path) -> int:
    try:
        return pq.read_metadata(path).num_rows
    except (pa.ArrowInvalid, OSError) as exc:
        raise CorruptTableError(f"{path}: corrupt or truncated Parquet file ({exc})") from exc


def _rows(paths: list[Path]) -> int:
    return sum(_num_rows(p) for p in paths)


def collect_counts(run: RunDir) -> list[dict[str, Any]]:
    """One row per stage present in ``run``: videos done and the rows of each of its tables."""
    rows: list[dict[str, Any]] = []
    for stage in STAGES:
        store = run.stage(stage)
        done = store.done_shards()
        if not done and not store.root.exists():
            continue
        row: dict[str, Any] = {"stage": stage, "videos": len(done)}
        if stage == "ingest":
            failed = 0
            frames = 0
            for p in store.paths("videos", done):
                t = read_table(p, columns=["status", "frames_read"])
                failed += sum(1 for s in t.column("status").to_pylist() if s == "failed")
                frames += sum(v or 0 for v in t.column("frames_read").to_pylist())
            row.update(failed=failed, frames=frames, detections=_rows(store.paths("detections", done)))
        elif stage == "embed":
            row.update(embeddings=_rows(store.paths("embeddings", done)))
        else:
            row.update(
                sequences=_rows(store.paths("sequences", done)),
                faces=_rows(store.paths("assignments", done)),
                removals=_rows(store.paths("removals", done)),
            )
        rows.append(row)
    faces = sorted((run.dataset / "faces").glob("*.parquet"))
    if faces:
        rows.append(
            {
                "stage": "dataset",
                "videos": len(faces),
                "faces": _rows(faces),
                "sequences": _rows(sorted((run.dataset / "sequences").glob("*.parquet"))),
            }
        )
    return rows


def read_removals(run: RunDir) -> pa.Table:
    """Every removal row of every stage (only the columns the report uses)."""
    cols = [
        "stage", "scope", "video_id", "seq_id", "face_id", "reason", "value", "threshold", "detail",
        "gallery", "identity",
    ]  # fmt: skip
    tables = [read_table(p, columns=cols) for s in STAGES for p in run.stage(s).paths("removals")]
    return pa.concat_tables(tables) if tables else pa.table({c: pa.array([], pa.string()) for c in cols})


def removal_counts(removals: pa.Table) -> list[dict[str, Any]]:
    """Removals grouped by stage, scope and reason, with the median figure that triggered them."""
    groups: dict[tuple[str, str, str], list[float]] = defaultdict(list)
    sequences: dict[tuple[str, str, str], set] = defaultdict(set)
    for stage, scope, reason, value, seq_id in zip(
        removals.column("stage").to_pylist(),
        removals.column("scope").to_pylist(),
        removals.column("reason").to_pylist(),
        removals.column("value").to_pylist(),
        removals.column("seq_id").to_pylist(),
        strict=True,
    ):
        groups[(stage, scope, reason)].append(np.nan if value is None else float(value))
        if scope == "sequence":
            sequences[(stage, scope, reason)].add(seq_id)
    order = {s: i for i, s in enumerate(STAGES)}
    out = []
    for (stage, scope, reason), values in sorted(
        groups.items(), key=lambda kv: (order.get(kv[0][0], 99), kv[0])
    ):
        finite = [v for v in values if np.isfinite(v)]
        out.append(
            {
                "stage": stage,
                "scope": scope,
                "reason": reason,
                "faces": len(values),
                "sequences": len(sequences[(stage, scope, reason)]) if scope == "sequence" else None,
                "median value": float(np.median(finite)) if finite else None,
            }
        )
    return out


@dataclass
class FaceStats:
    """Per-face figures gathered across the run for the distributions."""

    all_size: list[float] = field(default_factory=list)
    all_blur: list[float] = field(default_factory=list)
    kept_size: list[float] = field(default_factory=list)
    kept_blur: list[float] = field(default_factory=list)
    track_seq_len: list[int] = field(default_factory=list)
    final_seq_len: list[int] = field(default_factory=list)
    sim_kept: list[float] = field(default_factory=list)
    sim_removed: list[float] = field(default_factory=list)


def final_stage(run: RunDir) -> str | None:
    """The last stage with sequences (the dataset's, when the chain ran to the end)."""
    for stage in reversed(SEQUENCE_STAGES):
        if run.stage(stage).done_shards():
            return stage
    return None


def _embedding_matrix(table: pa.Table) -> np.ndarray:
    col = table.column("embedding").combine_chunks()
    if len(col) == 0:
        return np.zeros((0, 0), np.float32)
    dim = col.type.list_size
    return np.asarray(col.flatten().to_numpy(zero_copy_only=False), np.float32).reshape(-1, dim)


def collect_face_stats(run: RunDir, stage: str | None) -> FaceStats:
    """Face size, blur, sequence lengths and similarity to the sequence centre, video by video."""
    stats = FaceStats()
    for shard in run.ingest.done_shards():
        det_path = run.ingest.table_path("detections", shard)
        if not det_path.exists():
            continue
        det = read_table(det_path, columns=["face_id", "face_size", "blur"])
        size = dict(zip(det.column("face_id").to_pylist(), det.column("face_size").to_pylist(), strict=True))
        blur = dict(zip(det.column("face_id").to_pylist(), det.column("blur").to_pylist(), strict=True))
        stats.all_size += [v for v in size.values() if v is not None]
        stats.all_blur += [v for v in blur.values() if v is not None]
        kept: list[str] = []
        if stage is not None and run.stage(stage).is_done(shard):
            kept = (
                read_table(run.stage(stage).table_path("assignments", shard), columns=["face_id"])
                .column("face_id")
                .to_pylist()
            )
            stats.kept_size += [size[f] for f in kept if size.get(f) is not None]
            stats.kept_blur += [blur[f] for f in kept if blur.get(f) is not None]
            seqs = read_table(run.stage(stage).table_path("sequences", shard), columns=["n_faces"])
            stats.final_seq_len += seqs.column("n_faces").to_pylist()
        if run.track.is_done(shard):
            t = read_table(run.track.table_path("sequences", shard), columns=["n_faces"])
            stats.track_seq_len += t.column("n_faces").to_pylist()
            emb_path = run.embed.table_path("embeddings", shard)
            if run.embed.is_done(shard) and emb_path.exists():
                _similarities(run, shard, emb_path, set(kept), stats)
    return stats


def _similarities(run: RunDir, shard: str, emb_path: Path, kept: set[str], stats: FaceStats) -> None:
    """Cosine of each embedded face to its track sequence's centre, split into kept and removed faces."""
    emb = read_table(emb_path, columns=["face_id", "embedding"])
    vectors = _embedding_matrix(emb)
    if not len(vectors):
        return
    index = {f: i for i, f in enumerate(emb.column("face_id").to_pylist())}
    assign = read_table(run.track.table_path("assignments", shard), columns=["face_id", "seq_id"])
    members: dict[str, list[int]] = defaultdict(list)
    for face_id, seq_id in zip(
        assign.column("face_id").to_pylist(), assign.column("seq_id").to_pylist(), strict=True
    ):
        if face_id in index:
            members[seq_id].append(index[face_id])
    ids = emb.column("face_id").to_pylist()
    for rows in members.values():
        v = vectors[rows]
        centre = v.mean(axis=0)
        norm = np.linalg.norm(centre)
        if norm == 0:
            continue
        sims = v @ (centre / norm)
        for r, s in zip(rows, sims, strict=True):
            (stats.sim_kept if ids[r] in kept else stats.sim_removed).append(float(s))


def _png(fig) -> bytes:
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=90, bbox_inches="tight")
    return buf.getvalue()


def plot_distributions(stats: FaceStats) -> dict[str, bytes]:
    """Histogram PNGs: sequence length, face size, blur and similarity to the sequence centre."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    panels = [
        (
            "sequence_length",
            "faces per sequence",
            stats.track_seq_len,
            "after track",
            stats.final_seq_len,
            "kept",
        ),
        (
            "face_size",
            "face size (px, sqrt of box area)",
            stats.all_size,
            "detected",
            stats.kept_size,
            "kept",
        ),
        ("blur", "sharpness (variance of Laplacian)", stats.all_blur, "detected", stats.kept_blur, "kept"),
        (
            "similarity",
            "cosine similarity to the sequence centre",
            stats.sim_removed,
            "removed after track",
            stats.sim_kept,
            "kept",
        ),
    ]
    out: dict[str, bytes] = {}
    for name, xlabel, a, a_label, b, b_label in panels:
        if not a and not b:
            continue
        fig, ax = plt.subplots(figsize=(5.2, 3.0))
        data = [np.asarray(x, float) for x in (a, b) if len(x)]
        lo = min(float(d.min()) for d in data)
        hi = max(float(d.max()) for d in data)
        bins = np.linspace(lo, hi if hi > lo else lo + 1, 40)
        if len(a):
            ax.hist(a, bins=bins, alpha=0.55, label=f"{a_label} ({len(a)})", color="#999999")
        if len(b):
            ax.hist(b, bins=bins, alpha=0.75, label=f"{b_label} ({len(b)})", color="#1f77b4")
        ax.set_xlabel(xlabel)
        ax.set_ylabel("count")
        ax.legend(fontsize=8)
        fig.tight_layout()
        out[name] = _png(fig)
        plt.close(fig)
    return out


@dataclass
class SheetRow:
    """One row of a contact sheet: a label, the faces to show (video_id, face_id) and, after a gap,
    other pictures (a gallery identity's photos beside a sequence to review)."""

    label: str
    faces: list[tuple[str, str]]
    extra: list[np.ndarray] = field(default_factory=list)


def _spread(items: list, k: int) -> list:
    if len(items) <= k:
        return list(items)
    idx = np.linspace(0, len(items) - 1, k).round().astype(int)
    return [items[i] for i in idx]


def fetch_crops(run: RunDir, faces: list[tuple[str, str]]) -> dict[str, np.ndarray]:
    """The aligned crops of the given faces, read from the detections of their videos only."""
    by_video: dict[str, set[str]] = defaultdict(set)
    for video_id, face_id in faces:
        by_video[video_id].add(face_id)
    crops: dict[str, np.ndarray] = {}
    for video_id, ids in by_video.items():
        path = run.ingest.table_path("detections", video_id)
        if not path.exists():
            continue
        try:
            t = pq.read_table(path, columns=["face_id", "image"], filters=[("face_id", "in", sorted(ids))])
        except (pa.ArrowInvalid, OSError) as exc:
            raise CorruptTableError(f"{path}: corrupt or truncated Parquet file ({exc})") from exc
        for face_id, image in zip(
            t.column("face_id").to_pylist(), t.column("image").to_pylist(), strict=True
        ):
            try:
                crops[face_id] = decode_jpeg(image)
            except ValueError:
                log.warning("%s: face %s has an undecodable crop", path, face_id)
    return crops


def render_sheet(rows: list[SheetRow], crops: dict[str, np.ndarray], per_row: int) -> bytes:
    """A contact sheet PNG: one row of crops per entry, with its label on the left (and its extra
    pictures after a gap)."""
    import cv2

    label_w, pad = 300, 4
    n_extra = max((len(r.extra) for r in rows), default=0)
    gap = 3 * pad * 4 if n_extra else 0
    height = len(rows) * (CROP + pad) + pad
    width = label_w + (per_row + n_extra) * (CROP + pad) + pad + gap
    sheet = np.full((height, width, 3), 250, np.uint8)
    for r, row in enumerate(rows):
        y = pad + r * (CROP + pad)
        for i, line in enumerate(_wrap(row.label, 38)[:4]):
            cv2.putText(
                sheet,
                line,
                (6, y + 18 + 18 * i),
                cv2.FONT_HERSHEY_SIMPLEX,
                0.42,
                (30, 30, 30),
                1,
                cv2.LINE_AA,
            )
        for c, (_, face_id) in enumerate(row.faces[:per_row]):
            crop = crops.get(face_id)
            x = label_w + pad + c * (CROP + pad)
            if crop is None:
                sheet[y : y + CROP, x : x + CROP] = 200
                continue
            sheet[y : y + CROP, x : x + CROP] = cv2.resize(crop, (CROP, CROP), interpolation=cv2.INTER_AREA)
        for c, picture in enumerate(row.extra):
            x = label_w + pad + (per_row + c) * (CROP + pad) + gap
            sheet[y : y + CROP, x : x + CROP] = cv2.resize(
                picture, (CROP, CROP), interpolation=cv2.INTER_AREA
            )
    ok, buf = cv2.imencode(".png", cv2.cvtColor(sheet, cv2.COLOR_RGB2BGR))
    if not ok:
        raise ValueError("PNG encoding failed")
    return buf.tobytes()


def _wrap(text: str, width: int) -> list[str]:
    words, lines, line = text.split(), [], ""
    for w in words:
        if line and len(line) + 1 + len(w) > width:
            lines.append(line)
            line = w
        else:
            line = f"{line} {w}".strip()
    return [*lines, line] if line else lines


def sequence_members(run: RunDir, wanted: set[str]) -> dict[str, list[tuple[str, str, int]]]:
    """seq_id -> its faces (video_id, face_id, frame) for the ``wanted`` sequences, from every stage."""
    import pyarrow.compute as pc

    members: dict[str, dict[str, tuple[str, str, int]]] = defaultdict(dict)
    if not wanted:
        return {}
    value_set = pa.array(sorted(wanted), pa.string())
    for stage in SEQUENCE_STAGES:
        for path in run.stage(stage).paths("assignments"):
            t = read_table(path, columns=["face_id", "video_id", "seq_id"])
            t = t.filter(pc.is_in(t.column("seq_id"), value_set=value_set))
            for face_id, video_id, seq_id in zip(
                t.column("face_id").to_pylist(),
                t.column("video_id").to_pylist(),
                t.column("seq_id").to_pylist(),
                strict=True,
            ):
                members[seq_id][face_id] = (video_id, face_id, _frame_of(face_id))
    return {s: sorted(m.values(), key=lambda x: x[2]) for s, m in members.items()}


def _frame_of(face_id: str) -> int:
    try:
        return int(face_id.rsplit("-f", 1)[1].split("-")[0])
    except (IndexError, ValueError):
        return 0


def contact_sheets(
    run: RunDir, removals: pa.Table, stage: str | None, seed: int, per_row: int = 10
) -> dict[str, tuple[str, bytes]]:
    """Contact sheets: random kept sequences, removed sequences/faces per reason, gallery matches."""
    rng = random.Random(seed)
    sheets: dict[str, list[SheetRow]] = {}
    titles: dict[str, str] = {}
    chosen: list[str] = []
    if stage is not None:
        kept = sorted(
            {
                s
                for p in run.stage(stage).paths("sequences")
                for s in read_table(p, columns=["seq_id"]).column("seq_id").to_pylist()
            }
        )
        chosen = sorted(rng.sample(kept, min(12, len(kept))))
    groups: dict[tuple[str, str], list[dict]] = defaultdict(list)
    for r in removals.to_pylist():
        groups[(r["stage"], r["reason"])].append(r)
    sampled: dict[tuple[str, str], list[dict]] = {}
    for key, rows in sorted(groups.items()):
        one_per_seq = {r["seq_id"]: r for r in rows if r["scope"] == "sequence"}
        seq_rows = [one_per_seq[k] for k in sorted(one_per_seq)]
        sampled[key] = rng.sample(seq_rows, min(4, len(seq_rows)))
    members = sequence_members(run, {*chosen, *(r["seq_id"] for v in sampled.values() for r in v)})
    if stage is not None:
        sheets["kept"] = [
            SheetRow(
                f"{s}  ({len(members.get(s, []))} faces)",
                [(v, f) for v, f, _ in _spread(members.get(s, []), per_row)],
            )
            for s in chosen
        ]
        titles["kept"] = f"Random kept sequences (after {stage}; crops evenly spaced in time)"
    for (rstage, reason), rows in sorted(groups.items()):
        face_rows = [r for r in rows if r["scope"] == "face"]
        entries: list[SheetRow] = []
        for r in sampled[(rstage, reason)]:
            faces = [(v, f) for v, f, _ in _spread(members.get(r["seq_id"], []), per_row)]
            entries.append(SheetRow(_removal_label(r, len(members.get(r["seq_id"], []))), faces))
        by_seq: dict[str, list[dict]] = defaultdict(list)
        for r in face_rows:
            by_seq[r["seq_id"] or ""].append(r)
        for seq_id in rng.sample(sorted(by_seq), min(4, len(by_seq))):
            picked = sorted(by_seq[seq_id], key=lambda r: _frame_of(r["face_id"]))
            label = f"{len(picked)} face(s) of {seq_id}; e.g. value {_fmt(picked[0]['value'])} vs {_fmt(picked[0]['threshold'])}"
            entries.append(SheetRow(label, [(r["video_id"], r["face_id"]) for r in _spread(picked, per_row)]))
        if entries:
            key = f"removed_{rstage}_{reason}"
            sheets[key] = entries
            title = "Gallery matches" if reason == "gallery_match" else "Removed"
            titles[key] = f"{title}: {rstage} / {reason} ({len(rows)} faces)"
    wanted = [face for rows in sheets.values() for row in rows for face in row.faces]
    crops = fetch_crops(run, wanted)
    return {key: (titles[key], render_sheet(rows, crops, per_row)) for key, rows in sheets.items() if rows}


REPORT_SIZES = (6, 100, 5749, 85742)
"""Gallery sizes at which the report gives each calibration's modelled FPIR (an opt-out list, a
hundred, LFW, MS1M-v2)."""


def identity_decisions(run: RunDir) -> tuple[list[str], list[dict[str, Any]], list[dict[str, Any]]]:
    """The calibrations of dedup-overlap: (warnings, a row per gallery, modelled FPIR at other sizes)."""
    from ..overlap.calibrate import read_calibrations
    from ..overlap.decide import Calibration, fpir_table

    warnings, rows, sizes = [], [], []
    for data in read_calibrations(run):
        data = {k: v for k, v in data.items() if k not in ("key", "gallery_path")}
        try:
            cal = Calibration.from_dict(data)
        except TypeError:
            continue
        if cal.warning:
            warnings.append(cal.warning)
        rows.append(
            {
                "gallery": cal.gallery,
                "identities": cal.gallery_size,
                "score": cal.score,
                "calibration": cal.source,
                "sequences": cal.n_sequences,
                "kept below": cal.threshold,
                "review below": cal.confident_threshold,
                "target FPIR": cal.target_fpir,
                "estimated FPIR": cal.fpir_at_threshold,
                "genuine kept": cal.genuine.get("kept"),
                "model": cal.model,
            }
        )
        for r in fpir_table(cal, REPORT_SIZES):
            sizes.append({"gallery": cal.gallery, **r})
    return warnings, rows, sizes


def _gallery_photos(path: str, identity: str, k: int = 3) -> list[np.ndarray]:
    """Up to ``k`` photos of a gallery identity, squared around their centre (none for features sources)."""
    from ..overlap.gallery import read_gallery_images

    try:
        table = read_gallery_images(path).to_pydict()
    except Exception:  # a moved or damaged gallery: the sheet shows the sequence alone
        return []
    out = []
    for name, source, status in zip(table["identity"], table["source"], table["status"], strict=True):
        if name != identity or status != "ok" or len(out) >= k:
            continue
        try:
            img = decode_jpeg(Path(source).read_bytes())
        except (OSError, ValueError):
            continue
        h, w = img.shape[:2]
        side = min(h, w)
        out.append(img[(h - side) // 2 : (h + side) // 2, (w - side) // 2 : (w + side) // 2])
    return out


def review_sheet(run: RunDir, per_row: int = 8, limit: int = 40) -> bytes | None:
    """Each ``review`` sequence (or one a person decided on) beside the gallery identity's photos."""
    import pyarrow.compute as pc

    from ..overlap.calibrate import read_calibrations

    paths = {c.get("gallery"): c.get("gallery_path", "") for c in read_calibrations(run)}
    wanted = []
    for path in run.dedup_overlap.paths("matches"):
        t = read_table(path)
        t = t.filter(
            pc.or_(pc.equal(t.column("outcome"), "review"), pc.not_equal(t.column("decided_by"), "auto"))
        )
        wanted += [r for r in t.to_pylist() if r["face_id"] is None]
    if not wanted:
        return None
    wanted = sorted(wanted, key=lambda r: -(r["score"] or 0))[:limit]
    members = sequence_members(run, {r["seq_id"] for r in wanted})
    rows = []
    for r in wanted:
        who = "" if r["decided_by"] == "auto" else f" by {r['decided_by']}"
        label = (
            f"{r['seq_id']}: {r['outcome']}, {r['action']}{who}; {r['score_name']} {_fmt(r['score'])}"
            f" (keep < {_fmt(r['threshold'])}, confident >= {_fmt(r['confident_threshold'])}) vs"
            f" {r['gallery']}/{r['identity']} (right)"
        )
        faces = [(v, f) for v, f, _ in _spread(members.get(r["seq_id"], []), per_row)]
        rows.append(SheetRow(label, faces, _gallery_photos(paths.get(r["gallery"], ""), r["identity"])))
    crops = fetch_crops(run, [f for row in rows for f in row.faces])
    return render_sheet(rows, crops, per_row)


def _fmt(value: Any) -> str:
    return "-" if value is None else f"{value:.3g}"


def _removal_label(r: dict, n: int) -> str:
    detail = f" {r['detail']}" if r.get("detail") else ""
    if r.get("gallery"):
        detail += f" gallery {r['gallery']}, identity {r['identity']}"
    return f"{r['seq_id']} ({n} faces): value {_fmt(r['value'])} vs {_fmt(r['threshold'])}{detail}"


def _table_html(rows: list[dict[str, Any]]) -> str:
    if not rows:
        return "<p>none</p>"
    cols: list[str] = []
    for r in rows:
        cols += [c for c in r if c not in cols]
    head = "".join(f"<th>{html.escape(c)}</th>" for c in cols)
    body = ""
    for r in rows:
        cells = ""
        for c in cols:
            v = r.get(c, "")
            v = f"{v:.3g}" if isinstance(v, float) else ("" if v is None else v)
            cells += f"<td>{html.escape(str(v))}</td>"
        body += f"<tr>{cells}</tr>"
    return f"<table><tr>{head}</tr>{body}</table>"


def _img(data: bytes, alt: str) -> str:
    return f'<img alt="{html.escape(alt)}" src="data:image/png;base64,{base64.b64encode(data).decode()}">'


STYLE = """
body{font-family:sans-serif;margin:24px;color:#222;background:#fff;max-width:1400px}
table{border-collapse:collapse;margin:8px 0 20px}td,th{border:1px solid #ccc;padding:4px 10px;text-align:right}
th{background:#eef}td:first-child,th:first-child{text-align:left}h1{margin-top:0}
.plots img{margin:4px;border:1px solid #ddd}.sheet img{border:1px solid #ddd;max-width:100%}
pre{background:#f6f6f6;padding:8px;font-size:12px}
.warning{background:#fff3cd;border:1px solid #e0b000;padding:8px 12px}
"""


def write_report(run: str | Path, out: str | Path | None = None, seed: int = 0) -> Path:
    """Write ``RUN/report/index.html`` (or ``out``) and its PNGs; returns the page's path."""
    rd = RunDir(run)
    if not rd.root.is_dir():
        raise InputError(f"{run}: run directory not found")
    if not rd.ingest.done_shards():
        raise InputError(f"{run}: no completed ingest output to report on")
    page = Path(out) if out else rd.root / "report" / "index.html"
    folder = ensure_folder(page.parent, "report folder")
    counts = collect_counts(rd)
    removals = read_removals(rd)
    stage = final_stage(rd)
    stats = collect_face_stats(rd, stage)
    plots = plot_distributions(stats)
    sheets = contact_sheets(rd, removals, stage, seed)
    for name, data in plots.items():
        write_bytes_atomic(folder / f"{name}.png", data)
    for key, (_, data) in sheets.items():
        try:
            sheet_path = data_file(folder, f"sheet_{key}", ".png", "contact sheet of removal reason")
        except UnsafeNameError as exc:
            # A reason read from the run's tables: the sheet stays in the page, no file is made from it.
            log.warning("%s; the sheet is only shown in the page", exc)
            continue
        write_bytes_atomic(sheet_path, data)

    warnings, decision_rows, size_rows = identity_decisions(rd)
    review = review_sheet(rd)
    if review is not None:
        write_bytes_atomic(folder / "sheet_review.png", review)
    parts = [
        "<!doctype html><html><head><meta charset='utf-8'>",
        f"<title>seqbuild report: {html.escape(str(rd.root))}</title><style>{STYLE}</style></head><body>",
        f"<h1>seqbuild report</h1><p>Run <code>{html.escape(str(rd.root.resolve()))}</code>, "
        f"written {dt.datetime.now(dt.UTC).strftime('%Y-%m-%d %H:%M UTC')}.</p>",
        *(f"<p class='warning'><b>Warning:</b> {html.escape(w)}</p>" for w in warnings),
    ]
    if decision_rows:
        parts += [
            "<h2>Identity decisions (dedup-overlap)</h2>",
            "<p>Per gallery: the identity score, the thresholds calibrated on this run for the target"
            " false-positive identification rate (FPIR: the share of people absent from the gallery who"
            " would be removed) at the gallery's size, and the share of the gallery's own genuine scores"
            " kept. Below the first threshold a sequence is kept; above the second it is a confident"
            " gallery match; between, it is for review.</p>",
            _table_html(decision_rows),
            "<p>Modelled FPIR of the same threshold, and the threshold the target would need, at other"
            " gallery sizes:</p>",
            _table_html(size_rows),
        ]
    if review is not None:
        parts += [
            "<h2>Sequences to review</h2><p>Each review sequence (and each a person decided on), its"
            " faces, then the gallery identity's photos. Decide with"
            " <code>seqbuild dedup-overlap RUN --decisions FILE.csv</code> (seq_id,decision).</p>",
            "<div class='sheet'>",
            _img(review, "review"),
            "</div>",
        ]
    parts += [
        "<h2>Counts per stage</h2>",
        _table_html(counts),
        "<h2>Removals per stage and reason</h2>",
        "<p>Rows of the removals tables: a <i>sequence</i> row removes a whole sequence, a <i>face</i> row "
        "one face; the value is the figure compared with the stage's threshold.</p>",
        _table_html(removal_counts(removals)),
        "<h2>Distributions</h2><div class='plots'>",
        *(_img(data, name) for name, data in plots.items()),
        "</div>" + ("" if "similarity" in plots else "<p>No embeddings: similarity not shown.</p>"),
    ]
    for key, (title, data) in sheets.items():
        parts += [f"<h2>{html.escape(title)}</h2><div class='sheet'>", _img(data, key), "</div>"]
    if rd.config_path.exists():
        parts.append(f"<h2>Config</h2><pre>{html.escape(rd.config_path.read_text())}</pre>")
    parts.append("</body></html>")
    write_bytes_atomic(page, "\n".join(parts).encode())
    return page
