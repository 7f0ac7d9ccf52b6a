"""Opening a page of ours in a real browser (Debian's Chromium, headless, driven by Playwright) and watching it.

Locally a missing browser skips; under CI (the variable set, as .ci/run does) it is a failure: the page must be
looked at.
"""

from __future__ import annotations

import os
import shutil
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import Any

import pytest

CHROMIUM = "/usr/bin/chromium"

needs_chromium = pytest.mark.skipif(shutil.which(CHROMIUM) is None and not os.environ.get("CI"),
                                    reason=f"no system Chromium at {CHROMIUM} to look at the page")


@dataclass
class Watched:
    page: Any  # playwright.sync_api.Page
    errors: list[str] = field(default_factory=list)  # console errors and warnings, page errors, failed requests
    requests: list[str] = field(default_factory=list)  # every URL the page asked for


@contextmanager
def watched_page(url: str, *, width: int = 1280, height: int = 900) -> Iterator[Watched]:
    """`url` loaded in a fresh headless Chromium, with what goes wrong and what is fetched recorded."""
    sync_api = pytest.importorskip("playwright.sync_api", reason="playwright is not installed")
    with sync_api.sync_playwright() as p:
        browser = p.chromium.launch(executable_path=CHROMIUM, headless=True)
        try:
            page = browser.new_page(viewport={"width": width, "height": height})
            w = Watched(page)
            page.on("console", lambda m: w.errors.append(f"console {m.type}: {m.text}") if m.type in (
                "error", "warning") else None)
            page.on("pageerror", lambda exc: w.errors.append(f"page error: {exc}"))
            page.on("requestfailed", lambda r: w.errors.append(f"failed request: {r.url}"))
            page.on("request", lambda r: w.requests.append(r.url))
            page.goto(url, wait_until="load")
            yield w
        finally:
            browser.close()


def assert_shown(locator, name: str, *, min_width: float, min_height: float) -> dict:
    """The one element `locator` matches, scrolled into view, larger than the given size; its bounding box."""
    assert locator.count() == 1, name
    locator.scroll_into_view_if_needed()
    box = locator.bounding_box()
    assert box is not None and box["width"] > min_width and box["height"] > min_height, (name, box)
    return box
