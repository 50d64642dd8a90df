"""Checkpoints: plain tensors and Python values only, so that torch.load(weights_only=True) reads them."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import torch
from torch import nn

from ..errors import InputError
from ..storage import atomic_path, load_torch_weights
from .backbones import create_backbone

FORMAT = "seqbuild-seqface-1"


def save_checkpoint(path: str | Path, state: dict[str, Any]) -> Path:
    """Write ``state`` to ``path`` atomically (a crash leaves the previous checkpoint intact)."""
    path = Path(path)
    with atomic_path(path) as tmp:
        torch.save({"format": FORMAT, **state}, tmp)
    return path


def load_checkpoint(path: str | Path, map_location: str = "cpu") -> dict[str, Any]:
    """Read a checkpoint with ``weights_only=True``; InputError naming the file when it is unusable."""
    path = Path(path)
    state = load_torch_weights(path, map_location, what="checkpoint")
    if not isinstance(state, dict) or state.get("format") != FORMAT:
        raise InputError(f"{path}: not a seqbuild SeqFace checkpoint")
    return state


def clean_state_dict(state: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """Strip the prefixes that DDP (``module.``) and torch.compile (``_orig_mod.``) add to parameter names."""
    out = {}
    for k, v in state.items():
        for prefix in ("module.", "_orig_mod."):
            while k.startswith(prefix):
                k = k[len(prefix) :]
        out[k] = v
    return out


def backbone_from_checkpoint(state: dict[str, Any]) -> nn.Module:
    """Rebuild the backbone of a loaded checkpoint with its weights."""
    model = create_backbone(state["backbone"], **state.get("backbone_kwargs", {}))
    model.load_state_dict(clean_state_dict(state["model"]))
    return model


def load_backbone_for_inference(path: str | Path, device: str = "cpu") -> nn.Module:
    """The trained backbone of a checkpoint in eval mode on ``device``: maps (N, 3, S, S) normalised crops
    ((x - 127.5) / 128, centre crop S of the 144 crop, S = 128 by default) to (N, dim) features."""
    state = load_checkpoint(path)
    model = backbone_from_checkpoint(state)
    model.crop_size = int(state.get("crop_size", 128))  # type: ignore[assignment]
    model.image_size = int(state.get("image_size", 144))  # type: ignore[assignment]
    return model.to(device).eval()
