"""`seqbuild track`."""

from __future__ import annotations

import sys

import click

from .common import (
    config_options,
    flags_layer,
    handle_errors,
    load_config,
    log_level_option,
    save_run_config,
    start_logging,
)


@click.command()
@click.argument("run", type=click.Path(file_okay=False))
@click.option("--tracker", default=None, help="kalman | greedy_iou.")
@click.option("--min-faces", type=int, default=None, help="Shorter sequences are removed as too_short.")
@click.option(
    "--max-age", type=int, default=None, help="Detector passes without a match before a track ends."
)
@click.option("--workers", type=int, default=None, help="Videos processed in parallel.")
@click.option("--no-progress", is_flag=True, default=False, help="Hide the progress bar.")
@config_options
@log_level_option
@handle_errors
def track(run, config_path, sets, log_level, no_progress, **flags) -> None:
    """Link the detections of RUN into single-person sequences (Kalman filter + Hungarian assignment)."""
    from ..layout import RunDir
    from ..track.stage import run_track

    pipeline = load_config(config_path, sets, flags_layer("track", **flags))
    RunDir(run).require("ingest", "track")  # before logging creates anything under RUN
    start_logging(log_level, run)
    summary = run_track(run, pipeline["track"], progress=not no_progress)
    save_run_config(pipeline, run)
    errors = summary.pop("errors")
    click.echo(" ".join(f"{k}={v}" for k, v in summary.items()))
    for line in errors:
        click.echo(f"failed: {line}", err=True)
    if summary["failed"]:
        sys.exit(1)
