"""`seqbuild run`, `seqbuild demo`, `seqbuild report` and `seqbuild export`."""

from __future__ import annotations

import click

from .common import handle_errors, log_level_option, not_built


@click.command()
@click.argument("pipeline", type=click.Path(dir_okay=False))
@click.option("--out", "run", default=None, help="Run directory (default: runs/<pipeline name>).")
@click.option("--set", "sets", multiple=True, metavar="SECTION.KEY=VALUE", help="Override one config value.")
@click.option("--executor", type=click.Choice(["local", "ray"]), default=None, help="Where stages run.")
@click.option("--ray-address", default=None, help="Ray cluster to join ('auto' for a running one).")
@log_level_option
@handle_errors
def run(pipeline, run, sets, executor, ray_address, log_level) -> None:
    """Run every stage of PIPELINE in order, skipping stages already complete for the same config."""
    not_built("run", "the end-to-end runner")


@click.command()
@click.option("--out", "run", default="runs/demo", show_default=True, help="Run directory.")
@log_level_option
@handle_errors
def demo(run, log_level) -> None:
    """Make a synthetic broadcast from photos shipped in installed packages and run the chain on it."""
    not_built("demo", "the demo")


@click.command()
@click.argument("run", type=click.Path(file_okay=False))
@click.option("--out", default=None, help="HTML file (default: RUN/report/index.html).")
@handle_errors
def report(run, out) -> None:
    """Write a self-contained HTML report of RUN: counts, distributions, contact sheets."""
    not_built("report", "the dataset report")


@click.command()
@click.argument("run", type=click.Path(file_okay=False))
@click.option(
    "--after", default="dedup_overlap", show_default=True, help="Stage whose surviving faces to export."
)
@click.option("--out", required=True, help="Folder for faces/ and sequences/ Parquet.")
@handle_errors
def export(run, after, out) -> None:
    """Write the faces that survive up to a stage as dataset tables (e.g. to score tracking alone)."""
    not_built("export", "dataset export")
