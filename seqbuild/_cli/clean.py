"""`seqbuild embed` and `seqbuild clean`."""

from __future__ import annotations

import click

from .common import config_options, handle_errors, log_level_option, not_built


@click.command()
@click.argument("run", type=click.Path(file_okay=False))
@click.option("--model", default=None, help="Embedder: facenet | seqface.")
@click.option("--weights", default=None, help="Weights file (default: the model's offline default).")
@click.option("--device", default=None, help="auto | cpu | cuda | cuda:N.")
@click.option("--batch-size", type=int, default=None, help="Crops per forward pass.")
@config_options
@log_level_option
@handle_errors
def embed(run, config_path, sets, log_level, **flags) -> None:
    """Compute one L2-normalised embedding per tracked face of RUN."""
    not_built("embed", "face embeddings")


@click.command()
@click.argument("run", type=click.Path(file_okay=False))
@click.option(
    "--noise-threshold",
    type=float,
    default=None,
    help="Similarity to the sequence centre below which a face is noise.",
)
@click.option(
    "--near-dup-threshold",
    type=float,
    default=None,
    help="Similarity above which a face is a near duplicate.",
)
@click.option(
    "--split-policy",
    type=click.Choice(["drop", "split"]),
    default=None,
    help="Two clear groups in a sequence.",
)
@click.option("--min-faces", type=int, default=None, help="Sequences left with fewer faces are removed.")
@click.option(
    "--dry-run", is_flag=True, default=None, help="Show similarity histograms and what would be removed."
)
@config_options
@log_level_option
@handle_errors
def clean(run, config_path, sets, log_level, **flags) -> None:
    """Remove noisy, near-duplicate, low-quality and rerun faces/sequences of RUN, with reasons."""
    not_built("clean", "embedding-based cleaning")
