"""`Evaluation.to_dict()` has exactly the shape of docs/validation-report.md, is valid JSON, and round-trips."""

from __future__ import annotations

import dataclasses
import json
from collections.abc import Callable

import numpy as np
import pytest

from careloop.evaluation import Estimate, Evaluation, evaluate

Data = tuple[np.ndarray, np.ndarray, np.ndarray]
ESTIMATE = {"estimate", "ci"}


@pytest.fixture(scope="module")
def report() -> tuple[Evaluation, dict]:
    rng = np.random.default_rng(0)
    pid = np.arange(1000) % 300
    p = rng.beta(2, 6, 1000)
    y = rng.random(1000) < p
    ev = evaluate(y, p, clusters=pid, threshold=0.2, n_boot=100)
    return ev, json.loads(json.dumps(ev.to_dict(), allow_nan=False))


def test_top_level_keys(report: tuple[Evaluation, dict]) -> None:
    _, d = report
    assert list(d) == ["n", "positives", "prevalence", "clusters", "n_boot", "ci_level", "probabilistic", "metrics",
                       "roc_curve", "pr_curve", "calibration_curve", "decision_curve", "threshold_table",
                       "operating_point"]
    assert (d["n"], d["clusters"], d["n_boot"], d["ci_level"], d["probabilistic"]) == (1000, 300, 100, 0.95, True)
    assert d["prevalence"] == d["positives"] / d["n"]


def test_metrics(report: tuple[Evaluation, dict]) -> None:
    _, d = report
    m = d["metrics"]
    assert list(m) == ["auroc", "auprc", "brier", "calibration_intercept", "calibration_slope", "observed_expected",
                       "mean_predicted", "observed_rate"]
    for k in list(m)[:6]:
        assert set(m[k]) == ESTIMATE and m[k]["ci"][0] <= m[k]["estimate"] <= m[k]["ci"][1], k
    assert isinstance(m["mean_predicted"], float) and isinstance(m["observed_rate"], float)


def test_curves_and_tables(report: tuple[Evaluation, dict]) -> None:
    _, d = report
    assert list(d["roc_curve"]) == ["fpr", "tpr", "threshold"] and list(d["pr_curve"]) == ["recall", "precision"]
    assert all(list(b) == ["bin", "n", "mean_predicted", "observed", "ci"] for b in d["calibration_curve"])
    assert len(d["calibration_curve"]) == 10 and sum(b["n"] for b in d["calibration_curve"]) == 1000
    assert all(list(x) == ["threshold", "net_benefit", "treat_all", "treat_none"] for x in d["decision_curve"])
    assert all(set(x["net_benefit"]) == ESTIMATE for x in d["decision_curve"])
    row_keys = ["threshold", "flagged", "alerts_per_100", "sensitivity", "specificity", "ppv", "npv", "nne",
                "net_benefit", "tp", "fp", "fn", "tn"]
    for row in [*d["threshold_table"], d["operating_point"]]:
        assert list(row) == row_keys
        assert all(set(row[k]) == ESTIMATE for k in ("sensitivity", "specificity", "ppv", "npv", "nne", "net_benefit"))
        assert row["tp"] + row["fp"] + row["fn"] + row["tn"] == 1000
    assert d["operating_point"]["threshold"] == 0.2


def test_round_trip_and_frozen(report: tuple[Evaluation, dict]) -> None:
    ev, d = report
    assert Evaluation.from_dict(d) == ev
    assert Evaluation.from_dict(d).to_dict() == d
    with pytest.raises(dataclasses.FrozenInstanceError):
        ev.n = 3  # type: ignore[misc]
    assert ev.metrics["auroc"].estimate == d["metrics"]["auroc"]["estimate"]


def test_estimate() -> None:
    assert Estimate.of(float("nan"), 0.1, 0.2).to_dict() == {"estimate": None, "ci": None}
    assert Estimate.of(0.5, float("nan"), 0.7).to_dict() == {"estimate": 0.5, "ci": None}
    assert Estimate(0.5, 0.4, 0.6).excludes(0.3) and not Estimate(0.5, 0.4, 0.6).excludes(0.45)
    assert Estimate.from_dict({"estimate": 1.0, "ci": [0.5, 1.5]}) == Estimate(1.0, 0.5, 1.5)


def test_no_operating_point_and_probabilistic_flag(make_data: Callable[..., Data]) -> None:
    y, p, _ = make_data(n=300)
    d = evaluate(y, p, n_boot=0, probabilistic=False).to_dict()
    assert d["operating_point"] is None and d["probabilistic"] is False
