"""`seqbuild embed` and `seqbuild clean`."""

from __future__ import annotations

import click

from .common import (
    device_option,
    flags_layer,
    handle_errors,
    load_config,
    run_stage_command,
    stage_options,
)


@click.command()
@click.argument("run", type=click.Path(file_okay=False))
@click.option(
    "--model", default=None, help="Embedder: facenet | seqface | onnx:PATH (insightface convention)."
)
@click.option("--weights", default=None, help="Weights file (default: the model's offline default).")
@device_option
@click.option("--batch-size", type=int, default=None, help="Crops per forward pass.")
@stage_options
@handle_errors
def embed(run, config_path, sets, log_level, no_progress, wait, **flags) -> None:
    """Compute one L2-normalised embedding per tracked face of RUN."""
    run_stage_command("embed", run, config_path, sets, log_level, no_progress, wait, flags)


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
@device_option
@click.option(
    "--dry-run", is_flag=True, default=None, help="Show similarity histograms and what would be removed."
)
@stage_options
@handle_errors
def clean(run, config_path, sets, log_level, no_progress, wait, **flags) -> None:
    """Remove noisy, near-duplicate, low-quality and rerun faces/sequences of RUN, with reasons."""
    if flags.get("dry_run"):  # writes nothing: no log file, no saved config, no lock
        from ..clean.stage import run_clean
        from ..layout import RunDir

        pipeline = load_config(config_path, sets, flags_layer("clean", **flags), run=run)
        RunDir(run).require("embed", "clean")
        summary = run_clean(run, pipeline["clean"], progress=False)
        click.echo(summary.line())
        return
    run_stage_command("clean", run, config_path, sets, log_level, no_progress, wait, flags)
