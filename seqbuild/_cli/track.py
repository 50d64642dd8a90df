"""`seqbuild track`."""

from __future__ import annotations

import click

from .common import handle_errors, run_stage_command, stage_options


@click.command()
@click.argument("run", type=click.Path(file_okay=False))
@click.option("--tracker", default=None, help="kalman | greedy_iou.")
@click.option("--min-faces", type=int, default=None, help="Shorter sequences are removed as too_short.")
@click.option(
    "--max-age", type=int, default=None, help="Detector passes without a match before a track ends."
)
@stage_options
@handle_errors
def track(run, config_path, sets, log_level, no_progress, wait, **flags) -> None:
    """Link the detections of RUN into single-person sequences (Kalman filter + Hungarian assignment)."""
    run_stage_command("track", run, config_path, sets, log_level, no_progress, wait, flags)
