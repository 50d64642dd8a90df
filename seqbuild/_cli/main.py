"""`seqbuild`: the top-level command group. Stage commands come from the stage declarations
(:mod:`seqbuild.stages`); the other commands are listed here."""

from __future__ import annotations

import click

from ..stages import SPECS, stage_names
from . import overlap, pipeline, train, weights


def _print_version(ctx: click.Context, _param: click.Parameter, value: bool) -> None:
    if not value or ctx.resilient_parsing:
        return
    from ..version import describe_version

    click.echo(describe_version())
    ctx.exit()


@click.group(context_settings={"help_option_names": ["-h", "--help"], "max_content_width": 110})
@click.option(
    "--version",
    is_flag=True,
    expose_value=False,
    is_eager=True,
    callback=_print_version,
    help="Show the version and where this seqbuild comes from.",
)
def cli() -> None:
    """seqbuild: turn TV and video into face-sequence training data, and train SeqFace on it."""


cli.help = (
    "seqbuild: turn TV and video into face-sequence training data, and train SeqFace on it.\n\n\b\n"
    f"Stages:  {' -> '.join(n.replace('_', '-') for n in stage_names(per_video=True))}"
    f"  (-> {', '.join(stage_names(per_video=False))})\n"
    "Whole chain:  seqbuild run pipelines/NAME.toml"
)

for spec in SPECS:
    cli.add_command(spec.cli_command(), spec.command)

for command in (
    overlap.gallery,
    train.eval_cmd,
    train.import_identities,
    pipeline.run,
    pipeline.demo,
    pipeline.report,
    pipeline.export,
    weights.weights,
):
    cli.add_command(command)


if __name__ == "__main__":
    cli()
