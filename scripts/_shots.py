"""What the Studio screenshot scripts share: `tuneforge serve` on a fresh home that has
SmolLM2-135M-Instruct, and a headless Chromium page started as the browser tests start it."""

from __future__ import annotations

import contextlib
import sys
import tempfile
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from playwright.sync_api import sync_playwright

from tuneforge.models import resolve_model

sys.path.insert(0, "tests")
from test_studio_browser import CHROMIUM, Server, snapshot, wait  # noqa: E402

__all__ = ["MODEL", "snapshot", "studio", "wait"]

MODEL = "smollm2-135m-instruct"


@contextlib.contextmanager
def studio(prefix: str) -> Iterator[tuple[Server, Any]]:
    """(the running server, a 1280 px wide page); both closed at the end."""
    home = Path(tempfile.mkdtemp(prefix=f"{prefix}-home-"))
    (home / "models").symlink_to(Path(resolve_model(MODEL)).parent, target_is_directory=True)
    server = Server(home).start()
    try:
        with sync_playwright() as p:
            browser = p.chromium.launch(
                executable_path=CHROMIUM,
                headless=True,
                args=["--disable-background-networking", "--disable-gpu", "--no-first-run"],
            )
            yield server, browser.new_context(viewport={"width": 1280, "height": 900}).new_page()
            browser.close()
    finally:
        server.stop()
