"""The card and the HTI-1 text name the report's own confidence level, not a fixed 95%."""

from __future__ import annotations

import json

import numpy as np
import pytest

from careloop.evaluation import evaluate
from careloop.reports import Facts, hti1_source_attributes, model_card, model_card_markdown


@pytest.fixture(scope="module")
def report90() -> dict:
    rng = np.random.default_rng(0)
    p = rng.uniform(0.02, 0.95, 1500)
    y = rng.random(1500) < p
    ev = evaluate(y, p, threshold=0.3, n_boot=100, ci=0.90)
    return {"title": "readmission", "primary": "m", "scores": {"m": ev.to_dict()}, "model": {"name": "readmission"}}


def _sections(card: dict) -> list[dict]:
    km = card["KeyMetrics"]
    return [km["UsefulnessUsabilityEfficacy"], km["SafetyReliability"]]


def test_card_values_and_text_carry_the_reports_level(report90: dict) -> None:
    card = model_card(report90, Facts())
    values = [json.loads(r["ValueJson"]) for s in _sections(card) for r in s["Results"]]
    with_ci = [v for v in values if v["kind"] == "estimate_ci"]
    assert len(with_ci) >= 8 and all(v["level"] == 90 for v in with_ci)
    auroc = report90["scores"]["m"]["metrics"]["auroc"]
    assert (with_ci[0]["lower"], with_ci[0]["upper"]) == (round(auroc["ci"][0], 4), round(auroc["ci"][1], 4))
    for s in _sections(card):
        text = s["Interpretation"] + s["ValidationProcessAndJustification"]
        assert "90% CI" in s["Interpretation"] and "95%" not in text
    assert "90% intervals are percentile bootstrap" in _sections(card)[0]["ValidationProcessAndJustification"]
    md = model_card_markdown(card)
    assert "(90% CI" in md


def test_hti1_validity_text_carries_the_reports_level(report90: dict) -> None:
    attrs = hti1_source_attributes(report90, Facts())
    attrs = attrs.get("attributes", attrs)
    text = next(str(a["value"]) for a in attrs.values() if "Intervals: bootstrap" in str(a["value"]))
    assert "Intervals: bootstrap 90% (100 resamples" in text and "AUROC" in text and "(90% CI" in text
    assert "95%" not in text


def test_a_report_without_a_level_reads_as_95(report90: dict) -> None:
    old = json.loads(json.dumps(report90))
    del old["scores"]["m"]["ci_level"]
    values = [json.loads(r["ValueJson"]) for s in _sections(model_card(old, Facts())) for r in s["Results"]]
    assert {v["level"] for v in values if v["kind"] == "estimate_ci"} == {95}
