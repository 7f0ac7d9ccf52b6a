"""Ties, constant scores and tiny data: the cases where rank statistics and logistic fits usually go wrong."""

from __future__ import annotations

import json

import numpy as np
import pytest
from sklearn.metrics import average_precision_score, roc_auc_score

from careloop.evaluation import choose_operating_point, evaluate


def test_heavily_tied_scores_match_sklearn() -> None:
    rng = np.random.default_rng(0)
    p = rng.choice([0.1, 0.2, 0.3, 0.5], 400)  # four distinct scores, like a points-based score
    y = rng.random(400) < p
    ev = evaluate(y, p, n_boot=50, thresholds=[0.2])
    assert ev.metrics["auroc"].estimate == pytest.approx(roc_auc_score(y, p), abs=1e-12)
    assert ev.metrics["auprc"].estimate == pytest.approx(average_precision_score(y, p), abs=1e-12)
    assert len(ev.roc_curve["fpr"]) == 5  # (0, 0) and one point per distinct score
    row = ev.threshold_table[0]
    assert row.flagged == int((p >= 0.2).sum())


def test_all_equal_scores() -> None:
    """No ranking: AUROC 1/2, AP = prevalence, no slope (logit(p) is constant), an intercept that matches O/E."""
    y = np.array([1, 0, 0, 1, 0, 0, 0, 0, 1, 0])
    p = np.full(10, 0.25)
    ev = evaluate(y, p, n_boot=100)
    m = ev.metrics
    assert m["auroc"].estimate == 0.5 and m["auroc"].ci == (0.5, 0.5)
    assert m["auprc"].estimate == pytest.approx(0.3)
    assert m["calibration_slope"].estimate is None and m["calibration_slope"].ci is None
    assert m["calibration_intercept"].estimate == pytest.approx(np.log(0.3 / 0.7) - np.log(0.25 / 0.75))
    assert ev.calibration_curve[0].n == 10 and len(ev.calibration_curve) == 1
    json.dumps(ev.to_dict(), allow_nan=False)  # None, never NaN


def test_tiny_data_with_perfect_separation() -> None:
    """Two rows: AUROC is defined; the slope is not (the fit diverges) and is reported as not computable."""
    ev = evaluate([0, 1], [0.2, 0.7], n_boot=50)
    assert ev.metrics["auroc"].estimate == 1.0
    assert ev.metrics["calibration_slope"].estimate is None
    assert ev.metrics["calibration_intercept"].estimate is not None  # the offset fit still has a root
    json.dumps(ev.to_dict(), allow_nan=False)


def test_probabilities_of_exactly_zero_and_one() -> None:
    y = np.array([0, 0, 1, 1, 1, 0])
    p = np.array([0.0, 0.0, 1.0, 1.0, 0.6, 0.4])
    ev = evaluate(y, p, n_boot=20)
    assert ev.metrics["auroc"].estimate == 1.0
    assert ev.roc_curve["threshold"][0] > 1.0  # flags nobody, even the rows at p = 1
    assert ev.metrics["brier"].estimate == pytest.approx((0.4**2 * 2) / 6)


def test_budget_with_ties_never_exceeds_the_budget() -> None:
    p = np.array([0.9, 0.8, 0.8, 0.8, 0.5, 0.4, 0.3, 0.2, 0.1, 0.05])
    y = np.array([1, 1, 0, 0, 1, 0, 0, 0, 0, 1])
    op = choose_operating_point(y, p, policy="budget", target=0.3)  # 0.8 would flag 40%
    assert op.threshold == 0.9 and op.achieved["flag_rate"] == 0.1
    assert "because of tied scores" in op.rationale
