"""`seqbuild dedup-overlap` and `seqbuild gallery`."""

from __future__ import annotations

import click

from .common import config_options, handle_errors, log_level_option, not_built


@click.command("dedup-overlap")
@click.argument("run", type=click.Path(file_okay=False))
@click.option("--gallery", "galleries", multiple=True, help="Gallery (built or an image folder); repeatable.")
@click.option(
    "--threshold", "thresholds", type=float, multiple=True, help="Cosine threshold per gallery, in order."
)
@click.option("--index", type=click.Choice(["flat", "ivf"]), default=None, help="FAISS index kind.")
@config_options
@log_level_option
@handle_errors
def dedup_overlap(run, galleries, thresholds, config_path, sets, log_level, **flags) -> None:
    """Remove sequences of RUN whose identity is in a reference gallery, and write the final dataset."""
    not_built("dedup-overlap", "gallery search")


@click.group()
def gallery() -> None:
    """Reference galleries (MS-Celeb-1M, LFW, YTF, opt-out lists)."""


@gallery.command("build")
@click.argument("src")
@click.option("--out", required=True, type=click.Path(file_okay=False), help="Gallery folder to write.")
@handle_errors
def gallery_build(src, out) -> None:
    """Build a gallery from an image folder, a RecordIO train.rec/.idx pair, or precomputed features."""
    not_built("gallery build", "reference galleries")
