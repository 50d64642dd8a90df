"""`seqbuild train`, `seqbuild eval` and `seqbuild import-identities`."""

from __future__ import annotations

import click

from .common import config_options, handle_errors, log_level_option, not_built


@click.command()
@click.option("--identities", default=None, help="Identity dataset (from import-identities).")
@click.option("--sequences", multiple=True, help="Final dataset folder(s) of seqbuild runs.")
@click.option("--out", default=None, help="Checkpoint folder.")
@config_options
@log_level_option
@handle_errors
def train(config_path, sets, log_level, **flags) -> None:
    """Train a face model with SeqFace (LSR + DSA) on identity data plus produced sequences."""
    not_built("train", "the SeqFace trainer")


@click.command("eval")
@click.argument("model")
@click.option("--pairs", default=None, help="LFW-style pairs file.")
@click.option("--images", default=None, help="Image folder the pairs refer to.")
@click.option("--bin", "bin_path", default=None, help="insightface verification .bin file.")
@handle_errors
def eval_cmd(model, pairs, images, bin_path) -> None:
    """Verification accuracy of MODEL (10-fold, best threshold, TAR at FAR 1e-3)."""
    not_built("eval", "evaluation")


@click.command("import-identities")
@click.argument("src")
@click.option("--out", required=True, help="Identity dataset folder to write.")
@handle_errors
def import_identities(src, out) -> None:
    """Import a labelled identity set (image folder or train.rec/.idx) as aligned 144x144 crops."""
    not_built("import-identities", "identity data import")
