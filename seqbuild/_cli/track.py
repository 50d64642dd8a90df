"""`seqbuild track`."""

from __future__ import annotations

import click

from .common import config_options, flags_layer, handle_errors, load_config, log_level_option, not_built


@click.command()
@click.argument("run", type=click.Path(file_okay=False))
@click.option("--tracker", default=None, help="kalman | greedy_iou.")
@click.option("--min-faces", type=int, default=None, help="Shorter sequences are removed as too_short.")
@click.option(
    "--max-age", type=int, default=None, help="Detector passes without a match before a track ends."
)
@click.option("--workers", type=int, default=None, help="Videos processed in parallel.")
@config_options
@log_level_option
@handle_errors
def track(run, config_path, sets, log_level, **flags) -> None:
    """Link the detections of RUN into single-person sequences (Kalman filter + Hungarian assignment)."""
    load_config(config_path, sets, flags_layer("track", **flags))
    not_built("track", "Kalman tracking")
