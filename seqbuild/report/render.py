"""Render a report page to PNG with a headless Chromium (for servers without a display)."""

from __future__ import annotations

import os
import shutil
import subprocess
from pathlib import Path


def find_chromium() -> str | None:
    """Path of a Chromium binary on PATH, or None."""
    return shutil.which("chromium") or shutil.which("chromium-browser")


def render_screenshot(
    page: Path, png: Path, width: int = 1280, height: int = 2000, timeout: float = 120
) -> bool:
    """Write a ``width`` x ``height`` screenshot of ``page`` to ``png``; False when Chromium is missing or fails."""
    browser = find_chromium()
    if browser is None:
        return False
    png.parent.mkdir(parents=True, exist_ok=True)
    subprocess.run(
        [
            browser,
            "--headless",
            "--no-sandbox",
            "--disable-gpu",
            "--disable-background-networking",
            "--hide-scrollbars",
            f"--window-size={width},{height}",
            f"--screenshot={png}",
            page.resolve().as_uri(),
        ],
        capture_output=True,
        timeout=timeout,
        check=False,
        # Chromium writes its profile under HOME; keep it beside the output, not in the user's home.
        env={**os.environ, "HOME": str(png.parent)},
    )
    return png.exists()
