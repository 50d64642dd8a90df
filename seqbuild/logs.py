"""Logging set-up shared by the CLI and the executors: console plus a run log file."""

from __future__ import annotations

import logging
from pathlib import Path

FORMAT = "%(asctime)s %(levelname)s %(name)s: %(message)s"


def setup_logging(level: str = "INFO", log_file: str | Path | None = None) -> None:
    """Log to stderr at ``level`` and, when given, append to ``log_file`` as well."""
    root = logging.getLogger("seqbuild")
    root.setLevel(level.upper())
    for handler in list(root.handlers):
        if getattr(handler, "_seqbuild", False):
            root.removeHandler(handler)
            handler.close()
    console = logging.StreamHandler()
    console.setFormatter(logging.Formatter("%(levelname)s %(message)s"))
    console._seqbuild = True  # type: ignore[attr-defined]
    root.addHandler(console)
    if log_file is not None:
        Path(log_file).parent.mkdir(parents=True, exist_ok=True)
        fh = logging.FileHandler(log_file)
        fh.setFormatter(logging.Formatter(FORMAT))
        fh._seqbuild = True  # type: ignore[attr-defined]
        root.addHandler(fh)
