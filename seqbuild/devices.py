"""Choose the compute device: `auto` means CUDA when present, else CPU."""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager

from .errors import ConfigError


@contextmanager
def torch_threads(n: int) -> Iterator[None]:
    """Run the block with ``n`` torch CPU threads (0: leave torch's setting), then restore it.

    Two or more intra-op threads per process gain little for the small convolutions of face models on
    a CPU and lose several times when other processes want the cores (the threads wait for each other
    at every layer), so the stages default to one.
    """
    import torch

    before = torch.get_num_threads()
    if n:
        torch.set_num_threads(n)
    try:
        yield
    finally:
        torch.set_num_threads(before)


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
