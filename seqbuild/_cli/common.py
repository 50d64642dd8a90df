"""Shared pieces of the commands: config loading from flags, error reporting, logging."""

from __future__ import annotations

import functools
import logging
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

import click

from ..errors import SeqbuildError
from ..logs import setup_logging
from ..pipeline.loading import Pipeline, load_pipeline, save_config

log = logging.getLogger("seqbuild")


def config_options(fn: Callable) -> Callable:
    """Add --config PIPELINE.toml and repeatable --set SECTION.KEY=VALUE to a command."""
    fn = click.option(
        "--set",
        "sets",
        multiple=True,
        metavar="SECTION.KEY=VALUE",
        help="Override one config value (repeatable).",
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


def load_config(config_path: str | None, sets: tuple[str, ...], flags: dict[str, dict[str, Any]]) -> Pipeline:
    """Merge defaults < TOML < --set < flags."""
    return load_pipeline(config_path, sets, flags)


def save_run_config(pipeline: Pipeline, run: str | Path) -> None:
    """Save the merged config as RUN/config.toml."""
    save_config(pipeline, Path(run) / "config.toml")


def handle_errors(fn: Callable) -> Callable:
    """Print a SeqbuildError as one line on stderr and exit with its code (no traceback)."""

    @functools.wraps(fn)
    def wrapper(*args: Any, **kwargs: Any) -> Any:
        try:
            return fn(*args, **kwargs)
        except SeqbuildError as exc:
            click.echo(f"error: {exc}", err=True)
            sys.exit(exc.exit_code)

    return wrapper


def start_logging(level: str, run: str | Path | None) -> None:
    """Log to the console and, with a run directory, to RUN/logs/seqbuild.log."""
    setup_logging(level, Path(run) / "logs" / "seqbuild.log" if run else None)


def not_built(command: str, issue: str) -> None:
    """Fail clearly for a command whose implementation has not landed yet."""
    from ..errors import NotImplementedYetError

    raise NotImplementedYetError(f"`seqbuild {command}` is not implemented yet ({issue})")


log_level_option = click.option(
    "--log-level",
    default="INFO",
    show_default=True,
    type=click.Choice(["DEBUG", "INFO", "WARNING", "ERROR"], case_sensitive=False),
    help="Console and log-file level.",
)


device_option = click.option("--device", default=None, help="auto | cpu | cuda | cuda:N.")


def stage_options(fn: Callable) -> Callable:
    """The options every stage command shares: --workers, --no-progress, --config, --set, --log-level."""
    fn = click.option("--no-progress", is_flag=True, default=False, help="Hide the progress bars.")(fn)
    fn = click.option("--workers", type=int, default=None, help="Videos processed in parallel.")(fn)
    return log_level_option(config_options(fn))


def report_failures(errors: list[str] | dict[str, str], failed: int) -> None:
    """Print each failed video on stderr and exit 1 when any failed (the other videos are written)."""
    items = errors.items() if isinstance(errors, dict) else ((None, e) for e in errors)
    for shard, err in items:
        click.echo(f"failed: {shard + ': ' if shard else ''}{err}", err=True)
    if failed:
        sys.exit(1)
