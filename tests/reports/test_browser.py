"""A real browser looks at the written report.html: system Chromium, headless, through Playwright."""

from __future__ import annotations

from pathlib import Path

from careloop.reports import Facts, write_reports
from tests.browser import assert_shown, needs_chromium, watched_page

PLOTS = ("roc", "calibration", "decision-curve", "forest", "importance")
# drawn shapes of the data series (matplotlib gid "<plot>-series-<i>") with a visible length
# (how many, and the share of the figure's width and height they span together)
DRAWN = """(svg, name) => {
  const shapes = [...svg.querySelectorAll(`[id^="${name}-series-"] :is(path, use)`)]
    .filter(el => (el.tagName !== "path" || el.getTotalLength() > 0))
    .map(el => el.getBoundingClientRect()).filter(r => r.width + r.height > 2);
  const box = svg.getBoundingClientRect();
  const span = (lo, hi, size) => shapes.length ? (Math.max(...shapes.map(hi)) - Math.min(...shapes.map(lo))) / size : 0;
  return [shapes.length, span(r => r.left, r => r.right, box.width), span(r => r.top, r => r.bottom, box.height)];
}"""
# in the fixture: 3 ROC curves; the calibration line and its 10 error bars; 3 curves, the band and treat-all;
# 8 subgroups x 3 measures x (interval + point); 10 bars
MIN_SERIES = {"roc": 3, "calibration": 2, "decision-curve": 5, "forest": 48, "importance": 10}

pytestmark = needs_chromium


def test_a_browser_sees_every_figure_and_nothing_fails(report: dict, facts: Facts, tmp_path: Path) -> None:
    from PIL import Image  # matplotlib's own dependency

    html = write_reports(report, facts, tmp_path / "out")["html"]
    with watched_page(html.as_uri()) as w:
        page = w.page
        for name in PLOTS:
            plot = page.locator(f'[data-plot="{name}"]')
            assert_shown(plot, name, min_width=300, min_height=200)
            assert plot.is_visible(), name
            svg = plot.locator("svg")
            svg_box = svg.bounding_box()
            assert svg_box is not None and svg_box["width"] > 250 and svg_box["height"] > 150, (name, svg_box)
            shapes, width, height = svg.evaluate(DRAWN, name)
            assert shapes >= MIN_SERIES[name], (name, shapes)  # the data, not just axes and ticks
            assert width > 0.25 and height > 0.2, (name, width, height)

        assert page.locator("#hti1 tbody tr").count() == 31
        assert page.locator("#fairness-flags").is_visible()
        shot = tmp_path / "report.png"
        page.locator("#plots").screenshot(path=str(shot))
        page.emulate_media(media="print")
        assert page.locator("nav.toc").is_hidden()  # the print stylesheet applies
        pdf = page.pdf(format="A4")

    assert w.errors == []
    assert all(u.startswith(("file://", "data:")) for u in w.requests), w.requests
    assert [u for u in w.requests if u.startswith("file://")] == [html.as_uri()]
    assert pdf.startswith(b"%PDF") and len(pdf) > 50_000
    with Image.open(shot) as img:
        assert img.width > 800 and img.height > 600
        rgb = img.convert("RGB")
        colours = rgb.getcolors(maxcolors=1 << 20) or []
        assert len(colours) > 200  # curves, bands, text: not a blank page
        white = max(colours)[0] / (img.width * img.height)
        assert white < 0.97, f"{white:.1%} of the screenshot is one colour"
