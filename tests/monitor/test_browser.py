"""A real browser opens monitor.html: system Chromium, headless, through Playwright; nothing fails, nothing is
fetched, every figure is drawn, and the drift alert is marked on the heatmap and listed in the table."""

from __future__ import annotations

from pathlib import Path

from tests.browser import assert_shown, needs_chromium, watched_page

FIGURES = ("psi-heatmap", "output")

pytestmark = needs_chromium


def test_a_browser_sees_the_monitoring_report(quarterly: tuple[dict, dict, Path], tmp_path: Path) -> None:
    _, report, out = quarterly
    html = out / "monitor.html"
    with watched_page(html.as_uri()) as w:
        page = w.page
        for name in FIGURES:
            assert_shown(page.locator(f'svg[data-figure="{name}"]'), name, min_width=300, min_height=150)
        n_alerts = sum(len(p["alerts"]) for p in report["periods"])
        assert page.locator("#alert-table tbody tr").count() == n_alerts > 0
        assert page.locator('#alert-table tr[data-kind="input_drift"]').first.inner_text().count("creatinine_")
        cells = page.locator('svg[data-figure="psi-heatmap"] [id^="psi-heatmap-alert-cell"]')
        assert cells.count() == sum(1 for p in report["periods"] for a in p["alerts"]
                                    if a["kind"] == "input_drift")
        assert page.locator("#period-table tbody tr").count() == len(report["periods"])
        page.screenshot(path=str(tmp_path / "monitor.png"), full_page=True)
    assert w.errors == []
    assert w.requests == [html.as_uri()]
    assert (tmp_path / "monitor.png").stat().st_size > 20_000
