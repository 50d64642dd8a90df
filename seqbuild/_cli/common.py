"""Shared pieces of the commands: config loading from flags, error reporting, logging."""

from __future__ import annotations

import functools
import logging
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

import click

from ..driver import StageSummary
from ..errors import SeqbuildError
from ..logs import setup_logging
from ..pipeline.loading import Pipeline, load_pipeline
from ..storage import disk_full_error, ensure_folder, is_disk_full

log = logging.getLogger("seqbuild")


def config_options(fn: Callable) -> Callable:
    """Add --config PIPELINE.toml and repeatable --set SECTION.KEY=VALUE to a command."""
    fn = click.option(
        "--set",
        "sets",
        multiple=True,
        metavar="SECTION.KEY=VALUE",
        help="Override one config value (repeatable: --set a.x=1 --set b.y=2).",
    )(fn)
    fn = click.option(
        "--config",
        "config_path",
        type=click.Path(dir_okay=False),
        default=None,
        help="Pipeline TOML whose sections set the defaults.",
    )(fn)
    return fn


def flags_layer(section: str, **values: Any) -> dict[str, dict[str, Any]]:
    """Turn command-line flags into a config layer (flags left unset, None or empty, are not applied)."""
    return {section: {k: v for k, v in values.items() if v is not None and v != ()}}


def load_config(
    config_path: str | None,
    sets: tuple[str, ...],
    flags: dict[str, dict[str, Any]],
    run: str | Path | None = None,
) -> Pipeline:
    """Merge defaults < the run's memory (RUN/config.toml) < TOML < --set < flags."""
    return load_pipeline(config_path, sets, flags, run=run)


def handle_errors(fn: Callable) -> Callable:
    """Print a SeqbuildError as one line on stderr and exit with its code (no traceback); Ctrl-C exits 130.

    An operating-system error that reaches the command (a folder that cannot be written, a file that
    vanished) is one line naming the file too, with the exit code 1; a full disk is a DiskFullError.
    """

    @functools.wraps(fn)
    def wrapper(*args: Any, **kwargs: Any) -> Any:
        try:
            return fn(*args, **kwargs)
        except SeqbuildError as exc:
            click.echo(f"error: {exc}", err=True)
            sys.exit(exc.exit_code)
        except KeyboardInterrupt:
            click.echo("interrupted: finished videos are kept; run the command again to resume", err=True)
            sys.exit(130)
        except OSError as exc:
            log.debug("operating-system error", exc_info=True)
            if is_disk_full(exc):
                exc = disk_full_error(exc.filename or "output", exc)
                click.echo(f"error: {exc}", err=True)
                sys.exit(exc.exit_code)
            click.echo(f"error: {os_error_line(exc)}", err=True)
            sys.exit(1)

    return wrapper


def os_error_line(exc: OSError) -> str:
    """``FILE: reason`` for an operating-system error (the files it names, then its message)."""
    names = [str(n) for n in (exc.filename, exc.filename2) if n is not None]
    reason = exc.strerror or str(exc) or type(exc).__name__
    return f"{' -> '.join(names)}: {reason}" if names else reason


def start_logging(level: str, run: str | Path | None) -> None:
    """Log to the console and, with a run directory, to RUN/logs/seqbuild.log."""
    if run:
        ensure_folder(Path(run) / "logs", "run folder")
    setup_logging(level, Path(run) / "logs" / "seqbuild.log" if run else None)


log_level_option = click.option(
    "--log-level",
    default="info",
    show_default=True,
    type=click.Choice(["debug", "info", "warning", "error"], case_sensitive=False),
    help="Console and log-file level.",
)


device_option = click.option("--device", default=None, help="auto | cpu | cuda | cuda:N.")


def stage_options(fn: Callable) -> Callable:
    """The options every stage command shares: --workers, --wait, --no-progress, --config, --set, --log-level."""
    fn = click.option("--no-progress", is_flag=True, default=False, help="Hide the progress bars.")(fn)
    fn = click.option(
        "--wait", is_flag=True, default=False, help="Wait for another command running this stage of RUN."
    )(fn)
    fn = click.option(
        "--workers",
        type=int,
        default=None,
        help="Videos (or parts of long ones) processed in parallel; 0 = automatic (the stage's default).",
    )(fn)
    return log_level_option(config_options(fn))


def run_stage_command(
    name: str,
    run: str,
    config_path: str | None,
    sets: tuple[str, ...],
    log_level: str,
    no_progress: bool,
    wait: bool,
    flags: dict[str, Any],
) -> StageSummary | dict[str, Any]:
    """The body of every stage command: config with the run's memory, logging, the stage, its failures."""
    from ..pipeline.run import run_stage
    from ..stages import previous_stage, stage_spec

    spec = stage_spec(name)
    pipeline = load_config(config_path, sets, flags_layer(spec.name, **flags), run=run)
    before = previous_stage(spec.name)
    if before is not None and spec.per_video:
        from ..layout import RunDir

        RunDir(run).require(
            before if spec.name != "dedup_overlap" else pipeline[spec.name].input_stage, spec.name
        )
    start_logging(log_level, run)
    result = run_stage(run, spec.name, pipeline, progress=not no_progress, wait=wait)
    summary = result.summary
    failures = summary.get("failures", [])
    click.echo(_summary_text(summary))
    for f in failures:
        click.echo(f"failed: {f['video']}: {f['error']}", err=True)
    if failures:
        click.echo(
            f"error: {len(failures)} of {summary.get('videos', len(failures))} video(s) failed; the others were written",
            err=True,
        )
        sys.exit(1)
    return summary


def _summary_text(summary: dict[str, Any]) -> str:
    skip = {"stage", "failures"}
    parts = []
    for key, value in summary.items():
        if key in skip:
            continue
        if isinstance(value, dict):
            value = ", ".join(f"{k}: {v}" for k, v in value.items()) or "none"
            parts.append(f"{key}=[{value}]")
        else:
            parts.append(f"{key}={value}")
    return f"{summary.get('stage', '')}: " + " ".join(parts)
