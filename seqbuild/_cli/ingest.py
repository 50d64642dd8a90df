"""`seqbuild ingest`."""

from __future__ import annotations

import json
import sys

import click

from .common import (
    device_option,
    flags_layer,
    handle_errors,
    load_config,
    save_run_config,
    stage_options,
    start_logging,
)


@click.command()
@click.argument("inputs", nargs=-1)
@click.option("--out", "run", required=True, type=click.Path(file_okay=False), help="Run directory.")
@device_option
@click.option("--detect-every", type=int, default=None, help="Detect on every k-th frame.")
@click.option("--min-face", type=int, default=None, help="Smallest face side in pixels.")
@click.option("--threshold", type=float, default=None, help="Face probability threshold.")
@click.option("--max-side", type=int, default=None, help="Downscale larger frames before detection.")
@click.option("--batch-size", type=int, default=None, help="Frames per detector batch.")
@click.option("--retry-failed", is_flag=True, default=None, help="Re-run only failed sources.")
@click.option("--duration", type=float, default=None, help="Live streams: seconds to read.")
@click.option("--segment-seconds", type=float, default=None, help="Live streams: segment length.")
@stage_options
@handle_errors
def ingest(inputs, run, config_path, sets, log_level, no_progress, **flags) -> None:
    """Decode videos/streams, find shots, detect faces (MTCNN) and align them to 144x144 crops.

    INPUTS are video files, folders of videos, .txt lists of paths/URLs, or stream URLs.
    """
    from ..ingest.stage import run_ingest

    if inputs:
        flags["inputs"] = list(inputs)
    pipeline = load_config(config_path, sets, flags_layer("ingest", **flags))
    start_logging(log_level, run)
    summary = run_ingest(run, pipeline["ingest"], progress=not no_progress)
    save_run_config(pipeline, run)
    click.echo(json.dumps(summary, indent=1))
    if summary["failed"]:
        click.echo(
            f"error: {summary['failed']} of {summary['sources']} input(s) failed (see above)", err=True
        )
        sys.exit(1)
