"""Export a SeqFace checkpoint to ONNX in insightface's convention, so any tool that runs insightface's
recognition models (and `--model onnx:PATH` here) runs it unchanged.

The exported graph takes (N, 3, 112, 112) RGB faces aligned to the ArcFace 112 template, scaled as
(x - 127.5) / 127.5, with a dynamic batch, and returns the (N, dim) feature (not normalised). Inside, it
maps that input onto what the backbone was trained on: the centre ``crop_size`` square of the stored
144 crop resized to ``image_size``, scaled as (x - 127.5) / 128. The ArcFace 112 crop is exactly the
144 crop's centre 128 square scaled by 112/128 (:mod:`seqbuild.embed.onnx_embedder`), so the mapping is
a centre crop (or pad) and a bilinear resize.
"""

from __future__ import annotations

import warnings
from pathlib import Path

import torch
from torch import Tensor, nn

from ..storage import atomic_path
from .checkpoint import backbone_from_checkpoint, load_checkpoint

INPUT_SIZE = 112
CANVAS = 144
CENTRE = 128
"""Side of the 144 canvas's centre square that the ArcFace 112 crop covers."""


class ArcFaceInput(nn.Module):
    """A backbone behind insightface's input convention (112 ArcFace crop, (x - 127.5) / 127.5)."""

    def __init__(self, backbone: nn.Module, image_size: int = CANVAS, crop_size: int = CENTRE) -> None:
        super().__init__()
        self.backbone = backbone
        self.crop_size = int(crop_size)
        # The backbone's square in 144-canvas pixels, then in pixels of the 112 input.
        side = CANVAS * crop_size / image_size * INPUT_SIZE / CENTRE
        self.side = int(round(side))

    def forward(self, x: Tensor) -> Tensor:
        """The backbone's feature of ArcFace-aligned, (x - 127.5) / 127.5 scaled faces."""
        x = x * (127.5 / 128.0)
        if self.side < INPUT_SIZE:
            start = (INPUT_SIZE - self.side) // 2
            x = x[:, :, start : start + self.side, start : start + self.side]
        elif self.side > INPUT_SIZE:
            pad = (self.side - INPUT_SIZE) // 2
            x = nn.functional.pad(x, (pad, pad, pad, pad), mode="replicate")
        x = nn.functional.interpolate(
            x, size=(self.crop_size, self.crop_size), mode="bilinear", align_corners=False
        )
        return self.backbone(x)


def export_onnx(checkpoint: str | Path, out: str | Path, opset: int = 17) -> Path:
    """Write ``checkpoint``'s backbone as an insightface-style ONNX model to ``out`` (atomically)."""
    state = load_checkpoint(checkpoint)
    backbone = backbone_from_checkpoint(state).eval()
    model = ArcFaceInput(
        backbone, int(state.get("image_size", CANVAS)), int(state.get("crop_size", CENTRE))
    ).eval()
    out = Path(out)
    dummy = torch.zeros(2, 3, INPUT_SIZE, INPUT_SIZE)
    with atomic_path(out) as tmp, warnings.catch_warnings():
        warnings.simplefilter("ignore")  # the TorchScript exporter's deprecation notice
        torch.onnx.export(
            model,
            dummy,
            str(tmp),
            input_names=["input.1"],
            output_names=["embedding"],
            dynamic_axes={"input.1": {0: "batch"}, "embedding": {0: "batch"}},
            opset_version=opset,
            dynamo=False,
        )
    return out
