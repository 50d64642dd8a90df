"""Logging set-up shared by the CLI and the executors: console plus a run log file."""

from __future__ import annotations

import logging
from pathlib import Path

FORMAT = "%(asctime)s %(levelname)s %(name)s: %(message)s"


class RunLogHandler(logging.FileHandler):
    """The run log file. When it cannot be written (a full disk), that is said once on the console and
    the file is left alone; logging's default would print a traceback for every later message."""

    def handleError(self, record: logging.LogRecord) -> None:  # noqa: N802 (logging's name)
        """Say once that the run log cannot be written, then stop writing it."""
        if getattr(self, "_broken", False):
            return
        self._broken = True
        import sys

        error = sys.exc_info()[1]
        reason = getattr(error, "strerror", None) or error or "write failed"
        sys.stderr.write(f"warning: {self.baseFilename}: cannot write the run log ({reason}); console only\n")

    def emit(self, record: logging.LogRecord) -> None:
        """Write ``record`` unless the file has failed before."""
        if not getattr(self, "_broken", False):
            super().emit(record)


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
        fh = RunLogHandler(log_file)
        fh.setFormatter(logging.Formatter(FORMAT))
        fh._seqbuild = True  # type: ignore[attr-defined]
        root.addHandler(fh)
