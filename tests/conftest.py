"""Shared fixtures: real media location, error-log guard, small helpers."""

from __future__ import annotations

import logging
import os
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]


def media_dir() -> Path | None:
    """SEQBUILD_MEDIA, or ../shared/media beside the checkout, when it exists."""
    env = os.environ.get("SEQBUILD_MEDIA")
    path = Path(env) if env else REPO.parent / "shared" / "media"
    return path if path.is_dir() else None


@pytest.fixture
def media() -> Path:
    """The real-media folder; the test is skipped, with the reason shown, when it is absent."""
    path = media_dir()
    if path is None:
        pytest.skip("real media not found: set SEQBUILD_MEDIA or place ../shared/media beside the checkout")
    return path


@pytest.fixture(autouse=True)
def no_logs_gte_error(caplog):
    """Fail any test that logs an error it did not expect (mark expected ones with `allow_error_logs`).

    Read after the test, in teardown, where ``caplog.records`` is already the teardown phase's (empty)
    list: the records of the setup and call phases are kept by phase, so those are the ones checked.
    """
    yield
    if getattr(caplog, "_seqbuild_allow_errors", False):
        return
    errors = [
        r for phase in ("setup", "call") for r in caplog.get_records(phase) if r.levelno >= logging.ERROR
    ]
    assert not errors, f"unexpected error logs: {[r.getMessage() for r in errors]}"


@pytest.fixture
def allow_error_logs(caplog):
    """Use in tests whose subject is a logged error (bad inputs)."""
    caplog._seqbuild_allow_errors = True
    return caplog


def pytest_collection_modifyitems(config, items):
    """Skip `gpu` tests without CUDA, with the reason shown."""
    try:
        import torch

        has_cuda = torch.cuda.is_available()
    except ImportError:
        has_cuda = False
    if not has_cuda:
        skip = pytest.mark.skip(reason="needs a CUDA device")
        for item in items:
            if "gpu" in item.keywords:
                item.add_marker(skip)
