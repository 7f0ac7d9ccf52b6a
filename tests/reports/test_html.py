"""The HTML page, read as HTML: figures hold drawn SVG, numbers appear, text is escaped, nothing is fetched."""

from __future__ import annotations

import re
from html.parser import HTMLParser

import pytest

from careloop.reports import Facts, render_html
from tests.reports.conftest import PRIMARY, build_report

PLOTS = ("roc", "calibration", "decision-curve", "forest", "importance")
EVIL = "<script>alert('x')</script>"


class Page(HTMLParser):
    """Collects every tag's attributes, the SVG content of each [data-plot] container, the text, and a few
    sections' tables."""

    def __init__(self) -> None:
        super().__init__(convert_charrefs=True)
        self.attrs: list[tuple[str, dict]] = []
        self.plots: dict[str, dict[str, int]] = {}
        self.ids: list[str] = []
        self.text: list[str] = []
        self._open: list[tuple[str, str | None]] = []  # (tag, plot name) for open <figure> and <section>

    def handle_starttag(self, tag: str, attrs: list) -> None:
        a = dict(attrs)
        self.attrs.append((tag, a))
        if "id" in a:
            self.ids.append(a["id"])
        if tag in ("figure", "section"):
            self._open.append((tag, a.get("data-plot")))
            if a.get("data-plot"):
                self.plots[a["data-plot"]] = {}
        for _, plot in self._open:
            if plot:
                self.plots[plot][tag] = self.plots[plot].get(tag, 0) + 1

    def handle_startendtag(self, tag: str, attrs: list) -> None:
        self.attrs.append((tag, dict(attrs)))
        if "id" in dict(attrs):
            self.ids.append(dict(attrs)["id"])
        for _, plot in self._open:
            if plot:
                self.plots[plot][tag] = self.plots[plot].get(tag, 0) + 1

    def handle_endtag(self, tag: str) -> None:
        if tag in ("figure", "section") and self._open and self._open[-1][0] == tag:
            self._open.pop()

    def handle_data(self, data: str) -> None:
        self.text.append(data)


def parse(html: str) -> Page:
    page = Page()
    page.feed(html)
    page.close()
    return page


@pytest.fixture(scope="module")
def shipped_html() -> tuple[str, Page]:
    from careloop.reports import load_facts
    from tests.reports.conftest import DOC

    html = render_html(build_report(), load_facts(DOC))
    return html, parse(html)


def text_of(page: Page) -> str:
    return re.sub(r"\s+", " ", "".join(page.text))


def test_every_plot_container_holds_a_drawn_svg(shipped_html: tuple[str, Page]) -> None:
    _, page = shipped_html
    assert set(page.plots) == set(PLOTS)
    for name, tags in page.plots.items():
        assert tags.get("svg") == 1, name
        assert tags.get("path", 0) >= 5, (name, tags)


def test_numbers_appear(shipped_html: tuple[str, Page]) -> None:
    _, page = shipped_html
    text = text_of(page)
    report = build_report()
    op = report["scores"][PRIMARY]["operating_point"]
    assert "0.742 (95% CI 0.713 to 0.771)" in text  # test AUROC with CI, in the summary
    assert "0.970 (95% CI 0.890 to 1.050)" in text  # calibration slope
    assert "risk ≥ 25.0%" in text
    assert f"{op['alerts_per_100']:.1f} alerts per 100 discharges" in text
    assert "the transitional-care team can call 15 patients per 100 discharges." in text  # rationale
    assert "0.681" in text and "0.668" in text  # every score's AUROC
    assert "+0.061" in text  # the paired comparison
    assert "6,100" in text and "2019-01-04" in text and "died_in_stay" in text  # splits, dates, exclusions
    assert "albumin_last" in text and "48.0%" in text  # missingness
    assert "3 inpatient admissions in the past 6 months" in text  # example reasons
    assert "model alone" in text and "clinician alone" in text  # the team section, rendered generically


def test_fairness_box_and_suppressed_groups(shipped_html: tuple[str, Page]) -> None:
    html, page = shipped_html
    assert re.search(r'<div class="box red" role="alert" id="fairness-flags"><h3>Fairness: 2 disparities', html)
    text = text_of(page)
    assert "AUROC for Black or African American patients is 0.081 lower than overall" in text
    assert "2028-9 (n=60; fewer than 10 positives)" in text and "1002-5 (n=40; fewer than 100 stays)" in text
    assert html.count('class="flag"') == 2  # the two flagged cells


def test_no_flags_report_says_no_disparity_and_has_no_team(report_no_flags: dict, facts: Facts) -> None:
    html = render_html(report_no_flags, facts)
    assert '<div class="box green" id="fairness-flags"><h3>Fairness: no disparity beyond tolerance</h3>' in html
    assert 'id="team"' not in html and 'class="flag"' not in html


def test_hti1_table_and_blank_facts(report: dict, facts: Facts) -> None:
    partial = facts.model_copy(update={"funding_source": None, "security": ""})
    page = parse(render_html(report, partial))
    rows = [a for tag, a in page.attrs if tag == "span" and "badge" in a.get("class", "")]
    assert len(rows) == 31
    assert sum("blank" in a["class"] for a in rows) == 1  # security is not an HTI-1 attribute
    text = text_of(page)
    assert "Still to be supplied: 2 fields of the documentation file." in text
    assert "funding_source: who paid for the development" in text and "security: security and privacy" in text
    assert "Not yet supplied: fill funding_source in the documentation file" in text


def test_text_is_escaped(report: dict, facts: Facts) -> None:
    report["fairness"]["attributes"]["race"]["groups"][0]["label"] = "<b>White</b> & more"
    report["data"]["source"] = EVIL
    evil = facts.model_copy(update={"intended_use": EVIL, "developer_name": EVIL, "bibliography": EVIL})
    html = render_html(report, evil)
    assert "<script" not in html.lower()
    assert "&lt;script&gt;alert(&#39;x&#39;)&lt;/script&gt;" in html
    assert "<b>White</b>" not in html and "&lt;b&gt;White&lt;/b&gt; &amp; more" in html


def test_no_external_resources(shipped_html: tuple[str, Page]) -> None:
    html, page = shipped_html
    ids = set(page.ids)
    for tag, a in page.attrs:
        for key in ("src", "href", "xlink:href", "action", "srcset", "poster", "data"):
            if key not in a:
                continue
            value = a[key]
            if tag == "link" and a.get("rel") == "icon":
                assert value == "data:,"  # stops the browser asking for /favicon.ico
            else:
                assert value.startswith("#") and value[1:] in ids, (tag, key, value)
    assert not re.search(r"url\((?!#)|@import|<script|<iframe|<img|<object|<embed|<link (?!rel=\"icon\")", html, re.I)
    assert len(ids) == len(page.ids)  # ids are unique across the inline figures
    assert "default-src 'none'" in html  # the page's own policy forbids fetching anything


def test_scores_only_report_renders(report_scores: dict) -> None:
    html = render_html(report_scores, Facts())
    page = parse(html)
    assert page.plots["roc"].get("svg") == 1 and page.plots["calibration"].get("svg") == 1
    assert "svg" not in page.plots["importance"]  # nothing to draw: said in words
    assert "Nothing to draw" in text_of(page) and 'id="model"' not in html
    assert "points score" in text_of(page)



def test_not_computable_values_render(report: dict, facts: Facts) -> None:
    ev = report["scores"][PRIMARY]
    ev["metrics"]["auroc"] = {"estimate": None, "ci": None}
    ev["metrics"]["calibration_slope"] = {"estimate": float("nan"), "ci": None}
    ev["calibration_curve"][3]["observed"] = None
    ev["decision_curve"][0]["net_benefit"] = {"estimate": None, "ci": None}
    ev["threshold_table"][-1]["ppv"] = ev["threshold_table"][-1]["nne"] = {"estimate": None, "ci": None}
    report["fairness"]["attributes"]["sex"]["groups"][0]["gaps"]["auroc"] = {"estimate": None, "ci": None}
    report["data"]["splits"]["test"]["first_index"] = None
    html = render_html(report, facts)
    page = parse(html)
    assert 'Discrimination (test AUROC)</div><div class="v">not computable</div>' in html
    assert "n/a" in text_of(page)
    assert all(page.plots[name].get("svg") == 1 for name in PLOTS)


def test_primary_first_after_a_json_round_trip(report: dict, facts: Facts) -> None:
    import json

    def score_rows(r: dict) -> list[str]:
        html = render_html(r, facts)
        table = html[html.index('id="discrimination"'):html.index('id="plots"')]
        return [name.strip() for name in re.findall(r"<tr[^>]*><td>([^<]+)", table)[:3]]

    sorted_report = json.loads(json.dumps(report, sort_keys=True))  # as write_reports stores it
    assert list(sorted_report["scores"])[-1] == PRIMARY
    sorted_report["order"] = [PRIMARY, "lace", "hospital_score"]
    assert score_rows(sorted_report) == [f"{PRIMARY} (primary)", "lace", "hospital_score"]
