"""Where this seqbuild comes from: its version, and the git commit when run from a checkout."""

from __future__ import annotations

import subprocess
from pathlib import Path

from . import __version__


def git_commit(folder: str | Path) -> str | None:
    """``<short hash>[-dirty]`` of the git checkout holding ``folder`` (None outside one or without git)."""
    try:
        out = subprocess.run(
            ["git", "-C", str(folder), "describe", "--always", "--dirty", "--abbrev=12"],
            capture_output=True,
            text=True,
            timeout=5,
        )
    except (OSError, subprocess.SubprocessError):
        return None
    return out.stdout.strip() or None if out.returncode == 0 else None


def describe_version() -> str:
    """``seqbuild 0.1.0 (commit abc123, /path/to/seqbuild)``."""
    package = Path(__file__).resolve().parent
    commit = git_commit(package)
    origin = f"commit {commit}, {package}" if commit else str(package)
    return f"seqbuild {__version__} ({origin})"
