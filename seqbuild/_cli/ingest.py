"""`seqbuild ingest`."""

from __future__ import annotations

import click

from .common import device_option, handle_errors, run_stage_command, stage_options


@click.command()
@click.argument("inputs", nargs=-1)
@click.option("--out", "run", required=True, type=click.Path(file_okay=False), help="Run directory.")
@device_option
@click.option("--detect-every", type=int, default=None, help="Detect on every k-th frame.")
@click.option("--min-face", type=int, default=None, help="Smallest face side in pixels.")
@click.option("--threshold", type=float, default=None, help="Face probability threshold.")
@click.option("--max-side", type=int, default=None, help="Downscale larger frames before detection.")
@click.option("--batch-size", type=int, default=None, help="Frames per detector batch.")
@click.option("--retry-failed", is_flag=True, default=None, help="Run again the sources that failed before.")
@click.option(
    "--duration",
    type=float,
    default=None,
    help="Live streams: seconds to read (0 = until the stream ends; a file served over HTTP ends at its end).",
)
@click.option("--segment-seconds", type=float, default=None, help="Live streams: segment length.")
@stage_options
@handle_errors
def ingest(inputs, run, config_path, sets, log_level, no_progress, wait, **flags) -> None:
    """Decode videos/streams, find shots, detect faces (MTCNN) and align them to 144x144 crops.

    INPUTS are video files, folders of videos, .txt lists of paths/URLs, or stream URLs. Without INPUTS,
    the inputs the run folder remembers (RUN/config.toml) are used.
    """
    if inputs:
        flags["inputs"] = list(inputs)
    run_stage_command("ingest", run, config_path, sets, log_level, no_progress, wait, flags)
