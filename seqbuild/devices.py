"""Choose the compute device: `auto` means CUDA when present, else CPU."""

from __future__ import annotations

from .errors import ConfigError


def resolve_device(name: str = "auto") -> str:
    """Map ``auto | cpu | cuda | cuda:N`` to a torch device string, refusing CUDA when there is none."""
    import torch

    name = (name or "auto").lower()
    if name == "auto":
        return "cuda" if torch.cuda.is_available() else "cpu"
    if name == "cpu":
        return "cpu"
    if name.startswith("cuda"):
        if not torch.cuda.is_available():
            raise ConfigError(f"device {name!r} asked for, but no CUDA device is available")
        return name
    raise ConfigError(f"device {name!r}: expected auto, cpu, cuda or cuda:N")
