"""`seqbuild`: the top-level command group; each sub-command lives in its own module."""

from __future__ import annotations

import click

from .. import __version__
from . import clean, ingest, overlap, pipeline, track, train, weights


@click.group(context_settings={"help_option_names": ["-h", "--help"], "max_content_width": 110})
@click.version_option(__version__, prog_name="seqbuild")
def cli() -> None:
    """seqbuild: turn TV and video into face-sequence training data, and train SeqFace on it.

    \b
    Stages:  ingest -> track -> embed -> clean -> dedup-overlap  (-> train)
    Whole chain:  seqbuild run pipelines/NAME.toml
    """


for command in (
    ingest.ingest,
    track.track,
    clean.embed,
    clean.clean,
    overlap.dedup_overlap,
    overlap.gallery,
    train.train,
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
