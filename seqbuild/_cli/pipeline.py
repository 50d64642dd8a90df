"""`seqbuild run`, `seqbuild demo`, `seqbuild report` and `seqbuild export`."""

from __future__ import annotations

import sys
from pathlib import Path

import click

from .common import flags_layer, handle_errors, load_config, log_level_option, start_logging


def _print_results(results) -> None:
    for r in results:
        if r.status == "ran":
            fails = f", {r.failures} failed" if r.failures else ""
            click.echo(f"  {r.stage:<14} ran in {r.seconds:.1f} s{fails}")
            for f in r.summary.get("failures", []):
                click.echo(f"failed: {r.stage} {f['video']}: {f['error']}", err=True)
        elif r.status == "skipped":
            click.echo(f"  {r.stage:<14} skipped: complete for these options")
        else:
            click.echo(f"  {r.stage:<14} {r.status.replace('_', ' ')}: {r.reason}")


SET_HELP = "Override one config value, e.g. --set ingest.detect_every=4 (repeatable)."


@click.command()
@click.argument("pipeline", type=click.Path(dir_okay=False))
@click.option("--out", "run", default=None, help="Run directory (default: runs/<pipeline name>).")
@click.option("--set", "sets", multiple=True, metavar="SECTION.KEY=VALUE", help=SET_HELP)
@click.option("--executor", type=click.Choice(["local", "ray"]), default=None, help="Where stages run.")
@click.option("--ray-address", default=None, help="Ray cluster to join ('auto' for a running one).")
@click.option("--wait", is_flag=True, default=False, help="Wait for another command running a stage of RUN.")
@click.option("--progress/--no-progress", default=True, show_default=True, help="Progress bars.")
@log_level_option
@handle_errors
def run(pipeline, run, sets, executor, ray_address, wait, progress, log_level) -> None:
    """Run every stage of PIPELINE in order on RUN, skipping stages already complete for the same options.

    An existing RUN remembers its inputs and settings (RUN/config.toml): PIPELINE, --set and the flags
    change only what they name.
    """
    from ..pipeline.run import run_pipeline

    run = run or str(Path("runs") / Path(pipeline).stem)
    start_logging(log_level, run)
    flags = flags_layer("run", executor=executor, ray_address=ray_address, log_level=log_level.upper())
    cfg = load_config(pipeline, sets, flags, run=run)
    results = run_pipeline(run, cfg, executor=executor, ray_address=ray_address, progress=progress, wait=wait)
    click.echo(f"{run}:")
    _print_results(results)
    if any(r.failures for r in results):
        sys.exit(1)
    if any(r.status == "not_run" for r in results):
        sys.exit(3)


@click.command()
@click.option("--out", "run", default="runs/demo", show_default=True, help="Run directory.")
@click.option("--set", "sets", multiple=True, metavar="SECTION.KEY=VALUE", help=SET_HELP)
@click.option("--executor", type=click.Choice(["local", "ray"]), default=None, help="Where stages run.")
@click.option("--progress/--no-progress", default=True, show_default=True, help="Progress bars.")
@log_level_option
@handle_errors
def demo(run, sets, executor, progress, log_level) -> None:
    """Make a synthetic broadcast from photos shipped in installed packages and run the chain on it."""
    from ..demo import run_demo

    start_logging(log_level, run)
    made, results = run_demo(run, sets, executor=executor, progress=progress)
    click.echo(f"demo broadcast: {made.video} ({made.frames} frames), ground truth {made.ground_truth}")
    if made.note:
        click.echo(f"note: {made.note}")
    click.echo(f"{run}:")
    _print_results(results)
    if any(r.failures for r in results):
        sys.exit(1)
    if any(r.status == "ran" or r.status == "skipped" for r in results if r.stage == "ingest"):
        from ..report import write_report

        click.echo(f"report: {write_report(run)}")
    if (Path(run) / "dataset" / "faces").is_dir():
        click.echo(
            f"score: python ../shared/tools/score_sequences.py {made.ground_truth} {Path(run) / 'dataset'}"
            " --gallery grace_hopper"
        )


@click.command()
@click.argument("run", type=click.Path(file_okay=False))
@click.option("--out", default=None, help="HTML file (default: RUN/report/index.html).")
@click.option("--seed", type=int, default=0, show_default=True, help="Seed of the random contact sheets.")
@handle_errors
def report(run, out, seed) -> None:
    """Write a self-contained HTML report of RUN: counts, distributions, contact sheets."""
    from ..report import write_report

    page = write_report(run, out, seed=seed)
    click.echo(str(page))


@click.command()
@click.argument("run", type=click.Path(file_okay=False))
@click.option(
    "--after",
    type=click.Choice(["track", "clean", "dedup-overlap", "dedup_overlap"]),
    default="dedup-overlap",
    show_default=True,
    help="Stage whose surviving faces to export.",
)
@click.option("--out", required=True, help="Folder for faces/, sequences/ and removals/ Parquet.")
@handle_errors
def export(run, after, out) -> None:
    """Write the faces that survive up to a stage as dataset tables (e.g. to score tracking alone)."""
    from ..dataset import export_stage
    from ..layout import RunDir

    after = after.replace("-", "_")
    rd = RunDir(run)
    rd.require(after, "export")
    counts = export_stage(rd, after, out)
    click.echo(f"{out}: {counts['videos']} videos, {counts['sequences']} sequences, {counts['faces']} faces")
