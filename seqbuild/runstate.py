"""What a run folder remembers about itself: the config each stage ran with, and who is running a stage now.

- ``RUN/config.toml``: the run's memory, one section per stage. A stage command merges in its own section;
  ``seqbuild run`` merges in the sections of the stages it runs. Later commands on the same run start from
  it (explicit ``--config``, ``--set`` and flags still win).
- ``RUN/_pipeline/<stage>.json``: per stage, the hash of its output options chained with the stages
  before it, the options it ran with, whether it finished without failures, and its summary.
- ``RUN/_locks/<stage>.lock``: an advisory lock (``fcntl.flock``) held while a stage runs, so that two
  commands never write the same stage of a run at once; the file names the holder's pid.
"""

from __future__ import annotations

import contextlib
import errno
import fcntl
import json
import os
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from .errors import SeqbuildError
from .storage import write_json_atomic


class RunLockedError(SeqbuildError):
    """Another process is running the same stage of the same run."""

    exit_code = 4


def state_path(run: str | Path, stage: str) -> Path:
    """Where the record of ``stage`` of ``run`` is kept."""
    return Path(run) / "_pipeline" / f"{stage}.json"


def read_state(run: str | Path, stage: str) -> dict[str, Any] | None:
    """The record of ``stage`` (None when absent or unreadable)."""
    try:
        state = json.loads(state_path(run, stage).read_text())
    except (OSError, ValueError):
        return None
    return state if isinstance(state, dict) else None


def write_state(run: str | Path, stage: str, record: dict[str, Any]) -> None:
    """Write the record of ``stage`` (atomically)."""
    write_json_atomic(state_path(run, stage), record)


def recorded_config(run: Any, stage: str) -> dict[str, Any]:
    """The options ``stage`` last ran with in ``run`` (a RunDir or a path); {} when it has not run."""
    root = getattr(run, "root", run)
    state = read_state(root, stage) or {}
    return dict(state.get("options") or state.get("config") or {})


@contextlib.contextmanager
def stage_lock(run: str | Path, stage: str, wait: bool = False, poll: float = 0.5) -> Iterator[None]:
    """Hold the advisory lock of ``stage`` of ``run``; RunLockedError naming the holder's pid if taken
    (or wait for it with ``wait``)."""
    folder = Path(run) / "_locks"
    folder.mkdir(parents=True, exist_ok=True)
    path = folder / f"{stage}.lock"
    fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o666)
    try:
        while True:
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
                break
            except OSError as exc:
                if exc.errno not in (errno.EWOULDBLOCK, errno.EAGAIN, errno.EACCES):
                    raise
                if not wait:
                    holder = _read_holder(path)
                    raise RunLockedError(
                        f"{run}: stage {stage} is already running in this run folder (pid {holder}); "
                        "wait for it to finish, or pass --wait"
                    ) from None
                time.sleep(poll)
        os.ftruncate(fd, 0)
        os.write(fd, f"{os.getpid()}\n".encode())
        os.fsync(fd)
        yield
    finally:
        with contextlib.suppress(OSError):
            fcntl.flock(fd, fcntl.LOCK_UN)
        os.close(fd)


def _read_holder(path: Path) -> str:
    try:
        return path.read_text().strip() or "unknown"
    except OSError:
        return "unknown"
