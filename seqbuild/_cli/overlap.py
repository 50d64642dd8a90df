"""`seqbuild dedup-overlap` and `seqbuild gallery`."""

from __future__ import annotations

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
    "--threshold", "thresholds", type=float, multiple=True, help="Cosine threshold per gallery, in order."
)
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
        click.echo(
            f"  gallery {name} (threshold {g['threshold']:.3f}): removed {g['sequences']} sequences, {g['faces']} faces"
        )


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
@config_options
@log_level_option
@handle_errors
def gallery_build(src, out, name, identities, config_path, sets, log_level, **flags) -> None:
    """Build a gallery from an image folder, a RecordIO train.rec/.idx pair, or precomputed features."""
    from ..overlap.gallery import build_gallery

    start_logging(log_level, None)
    pipeline = load_config(config_path, sets, flags_layer("dedup_overlap", **flags))
    manifest = build_gallery(src, out, pipeline["dedup_overlap"], name=name, identities=identities)
    counts = ", ".join(f"{k} {v}" for k, v in sorted(manifest["status_counts"].items()))
    click.echo(
        f"gallery {manifest['name']}: {manifest['n_identities']} identities from {manifest['n_images']} images ({counts});"
        f" embedder {manifest['embedder']} ({manifest['dim']}-d), default threshold {manifest['threshold']:.3f} -> {out}"
    )
    if manifest["identities_without_images"]:
        click.echo(
            f"  {len(manifest['identities_without_images'])} identities have no usable image", err=True
        )
