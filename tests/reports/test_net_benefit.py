"""The renderers quote net benefit at the operating threshold itself, never at the nearest decision-curve point."""

from __future__ import annotations

import copy
import json

import numpy as np
import pytest

from careloop.evaluation import evaluate
from careloop.reports import Facts, hti1_source_attributes, model_card
from careloop.reports._format import NB_NOT_RECORDED, est, net_benefit_at
from careloop.reports._html import _summary


def _data() -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(0)
    p = rng.uniform(0.02, 0.95, 3000)
    return (rng.random(3000) < p), p


def _report(t: float, n_boot: int = 50) -> dict:
    y, p = _data()
    ev = evaluate(y, p, threshold=t, n_boot=n_boot)
    return {"title": "readmission", "primary": "m", "scores": {"m": ev.to_dict()}, "model": {"name": "readmission"}}


def _hand(t: float) -> float:
    y, p = _data()
    f = p >= t
    return float(((f & y).sum() - (f & ~y).sum() * t / (1 - t)) / y.size)


def _card_net_benefit(report: dict) -> list[dict]:
    res = model_card(report, Facts())["KeyMetrics"]["UsefulnessUsabilityEfficacy"]["Results"]
    return [json.loads(r["ValueJson"]) for r in res if r["Label"].startswith("Net benefit")]


def _validity(report: dict) -> str:
    attrs = hti1_source_attributes(report, Facts())
    attrs = attrs.get("attributes", attrs)
    return next(str(a["value"]) for a in attrs.values() if "Intervals: bootstrap" in str(a["value"]))


@pytest.mark.parametrize("t", [0.255, 0.7])  # between two grid points; beyond the grid's 0.50
def test_every_renderer_quotes_the_net_benefit_at_the_threshold(t: float) -> None:
    report = _report(t)
    row = report["scores"]["m"]["operating_point"]
    assert row["net_benefit"]["estimate"] == pytest.approx(_hand(t), abs=1e-12)
    [card] = _card_net_benefit(report)
    assert card["estimate"] == round(_hand(t), 4) and card["kind"] == "estimate_ci"
    text = est(row["net_benefit"])
    assert f"net benefit {text}" in _validity(report)
    assert _summary(report)["op"]["net_benefit"] == text
    prev = report["scores"]["m"]["prevalence"]
    assert net_benefit_at(report["scores"]["m"], row)["treat_all"] == pytest.approx(prev - (1 - prev) * t / (1 - t))


def _old(report: dict) -> dict:
    """The report as written before the row carried its net benefit."""
    old = copy.deepcopy(report)
    del old["scores"]["m"]["operating_point"]["net_benefit"]
    return old


def test_an_older_report_uses_the_curve_only_exactly_at_the_threshold() -> None:
    on = _old(_report(0.2))
    grid = next(d for d in on["scores"]["m"]["decision_curve"] if d["threshold"] == 0.2)
    assert grid["net_benefit"]["estimate"] == pytest.approx(_hand(0.2), abs=1e-12)
    assert _card_net_benefit(on)[0]["estimate"] == round(_hand(0.2), 4)
    off = _old(_report(0.7))
    assert _card_net_benefit(off) == []
    card = model_card(off, Facts())["KeyMetrics"]["UsefulnessUsabilityEfficacy"]["Interpretation"]
    assert f"Net benefit at this threshold: {NB_NOT_RECORDED}" in card
    assert f"net benefit {NB_NOT_RECORDED}" in _validity(off)
    assert _summary(off)["op"]["net_benefit"] == NB_NOT_RECORDED
