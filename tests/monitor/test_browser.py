"""A real browser opens monitor.html: system Chromium, headless, through Playwright; nothing fails, nothing is
fetched, every figure is drawn, and the drift alert is marked on the heatmap and listed in the table."""

from __future__ import annotations

import os
import shutil
from pathlib import Path

import pytest

CHROMIUM = "/usr/bin/chromium"
FIGURES = ("psi-heatmap", "output")

pytestmark = pytest.mark.skipif(shutil.which(CHROMIUM) is None and not os.environ.get("CI"),
                                reason=f"no system Chromium at {CHROMIUM} to look at the HTML report")


def test_a_browser_sees_the_monitoring_report(quarterly: tuple[dict, dict, Path], tmp_path: Path) -> None:
    sync_api = pytest.importorskip("playwright.sync_api", reason="playwright is not installed")
    _, report, out = quarterly
    html = out / "monitor.html"
    errors: list[str] = []
    requests: list[str] = []
    with sync_api.sync_playwright() as p:
        browser = p.chromium.launch(executable_path=CHROMIUM, headless=True)
        try:
            page = browser.new_page(viewport={"width": 1280, "height": 900})
            page.on("console", lambda m: errors.append(f"console {m.type}: {m.text}") if m.type in (
                "error", "warning") else None)
            page.on("pageerror", lambda exc: errors.append(f"page error: {exc}"))
            page.on("request", lambda r: requests.append(r.url))
            page.goto(html.as_uri(), wait_until="load")
            for name in FIGURES:
                svg = page.locator(f'svg[data-figure="{name}"]')
                assert svg.count() == 1, name
                svg.scroll_into_view_if_needed()
                box = svg.bounding_box()
                assert box is not None and box["width"] > 300 and box["height"] > 150, (name, box)
            n_alerts = sum(len(p["alerts"]) for p in report["periods"])
            assert page.locator("#alert-table tbody tr").count() == n_alerts > 0
            assert page.locator('#alert-table tr[data-kind="input_drift"]').first.inner_text().count("creatinine_")
            cells = page.locator('svg[data-figure="psi-heatmap"] [id^="psi-heatmap-alert-cell"]')
            assert cells.count() == sum(1 for p in report["periods"] for a in p["alerts"]
                                        if a["kind"] == "input_drift")
            assert page.locator("#period-table tbody tr").count() == len(report["periods"])
            page.screenshot(path=str(tmp_path / "monitor.png"), full_page=True)
        finally:
            browser.close()
    assert errors == []
    assert requests == [html.as_uri()]
    assert (tmp_path / "monitor.png").stat().st_size > 20_000
