"""`seqbuild dedup-overlap` and `seqbuild gallery`."""

from __future__ import annotations

import sys
from pathlib import Path

import click

from ..overlap.search import INDEX_KINDS
from .common import (
    config_options,
    flags_layer,
    handle_errors,
    load_config,
    log_level_option,
    run_stage_command,
    stage_options,
    start_logging,
)


@click.command("dedup-overlap")
@click.argument("run", type=click.Path(file_okay=False))
@click.option(
    "--gallery",
    "galleries",
    multiple=True,
    help="Gallery (built, an image folder, train.rec, features); NAME=PATH names it; repeatable.",
)
@click.option(
    "--threshold",
    "thresholds",
    type=float,
    multiple=True,
    help="Fixed threshold per gallery on the --score scale, in order (default: calibrated for --fpir).",
)
@click.option(
    "--score", type=click.Choice(["csls", "cosine", "vote", "snorm"]), default=None, help="Identity score."
)
@click.option("--fpir", type=float, default=None, help="Target false-positive identification rate.")
@click.option(
    "--review",
    type=click.Choice(["remove", "keep"]),
    default=None,
    help="What happens to review sequences nobody decided on.",
)
@click.option(
    "--decisions",
    type=click.Path(dir_okay=False),
    default=None,
    help="CSV of a person's decisions: seq_id,decision (keep|remove)[,decided_by].",
)
@click.option("--decided-by", default=None, help="Who made the decisions (when the file does not say).")
@click.option("--index", type=click.Choice(INDEX_KINDS), default=None, help="FAISS index kind.")
@click.option(
    "--per-face", is_flag=True, default=None, help="Also search every face, not only sequence centres."
)
@click.option(
    "--input-stage",
    type=click.Choice(["clean", "track"]),
    default=None,
    help="Stage whose output is searched.",
)
@stage_options
@handle_errors
def dedup_overlap(run, config_path, sets, log_level, no_progress, wait, **flags) -> None:
    """Remove sequences of RUN whose identity is in a reference gallery, and write the final dataset."""
    flags["galleries"] = list(flags["galleries"]) or None
    flags["thresholds"] = list(flags["thresholds"]) or None
    summary = run_stage_command("dedup_overlap", run, config_path, sets, log_level, no_progress, wait, flags)
    for name, g in summary.get("galleries", {}).items():
        fpir = "" if g.get("fpir") is None else f", estimated FPIR {g['fpir']:.2g}"
        click.echo(
            f"  gallery {name} ({g['identities']} identities, {g['score']} score, keep below"
            f" {g['threshold']:.3f}{fpir}, review below {g['confident_threshold']:.3f}, {g['calibration']}):"
            f" removed {g['sequences']} sequences, {g['faces']} faces; review {g['review']}"
            f" ({g['review_kept']} kept), decided by a person {g['by_person']}"
        )
    for line in summary.get("warnings", []):
        click.echo(f"warning: {line}", err=True)


@click.group()
def gallery() -> None:
    """Reference galleries (MS-Celeb-1M, LFW, YTF, opt-out lists)."""


@gallery.command("build")
@click.argument("src", type=click.Path(exists=True))
@click.option("--out", required=True, type=click.Path(file_okay=False), help="Gallery folder to write.")
@click.option("--name", default=None, help="Gallery name (default: the folder name of --out).")
@click.option(
    "--identities", default=None, help="Identity list for an .npy features source (default: SRC with .txt)."
)
@click.option("--model", default=None, help="Embedder (must be the one the runs were embedded with).")
@click.option("--weights", default=None, help="Embedder weights file.")
@click.option("--device", default=None, help="auto | cpu | cuda | cuda:N.")
@click.option("--detector", default=None, help="Face detector for the photos.")
@click.option("--index", type=click.Choice(INDEX_KINDS), default=None, help="FAISS index kind.")
@click.option(
    "--dominant-ratio",
    type=float,
    default=None,
    help="Largest/next face side ratio to use a multi-face photo.",
)
@click.option(
    "--prealigned", is_flag=True, default=None, help="Photos are already aligned crops (skip detection)."
)
@click.option("--no-progress", is_flag=True, default=False, help="Hide the progress bar.")
@config_options
@log_level_option
@handle_errors
def gallery_build(src, out, name, identities, config_path, sets, log_level, no_progress, **flags) -> None:
    """Build a gallery from an image folder, a RecordIO train.rec/.idx pair, or precomputed features."""
    from ..overlap.gallery import build_gallery

    start_logging(log_level, None)
    pipeline = load_config(config_path, sets, flags_layer("dedup_overlap", **flags))
    manifest = build_gallery(
        src, out, pipeline["dedup_overlap"], name=name, identities=identities, progress=not no_progress
    )
    counts = ", ".join(f"{k} {v}" for k, v in sorted(manifest["status_counts"].items()))
    click.echo(
        f"gallery {manifest['name']}: {manifest['n_identities']} identities from {manifest['n_images']} images ({counts});"
        f" embedder {manifest['embedder']} ({manifest['dim']}-d), default threshold {manifest['threshold']:.3f} -> {out}"
    )
    if manifest["identities_without_images"]:
        click.echo(
            f"  {len(manifest['identities_without_images'])} identities have no usable image", err=True
        )
    damaged = manifest["status_counts"].get("unreadable", 0) if manifest["source_kind"] == "rec" else 0
    if damaged:
        # One RecordIO file holds every image: an unreadable record means the file is damaged.
        from ..overlap.gallery import read_gallery_images

        images = read_gallery_images(out).select(["status", "error"]).to_pylist()
        first = next((r["error"] for r in images if r["status"] == "unreadable"), src)
        click.echo(
            f"error: {first} ({damaged} damaged record(s) in all, listed in {Path(out) / 'images'}; "
            "the gallery holds the others)",
            err=True,
        )
        sys.exit(1)
