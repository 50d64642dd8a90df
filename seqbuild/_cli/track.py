"""`seqbuild track`."""

from __future__ import annotations

import click

from .common import (
    flags_layer,
    handle_errors,
    load_config,
    report_failures,
    save_run_config,
    stage_options,
    start_logging,
)


@click.command()
@click.argument("run", type=click.Path(file_okay=False))
@click.option("--tracker", default=None, help="kalman | greedy_iou.")
@click.option("--min-faces", type=int, default=None, help="Shorter sequences are removed as too_short.")
@click.option(
    "--max-age", type=int, default=None, help="Detector passes without a match before a track ends."
)
@stage_options
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
    report_failures(errors, summary["failed"])
