"""Every point value of `evaluate`, recomputed independently (scikit-learn, scipy, or by hand)."""

from __future__ import annotations

from collections.abc import Callable

import numpy as np
import pytest
from scipy.optimize import brentq
from scipy.special import expit
from scipy.stats import norm
from sklearn.linear_model import LogisticRegression
from sklearn.metrics import (
    average_precision_score,
    brier_score_loss,
    precision_recall_curve,
    roc_auc_score,
    roc_curve,
)

from careloop.evaluation import evaluate

Data = tuple[np.ndarray, np.ndarray, np.ndarray]


def logit(p: np.ndarray) -> np.ndarray:
    q = np.clip(p, 1e-6, 1 - 1e-6)
    return np.log(q / (1 - q))


def offset_intercept(y: np.ndarray, p: np.ndarray) -> float:
    x = logit(p)
    return brentq(lambda a: np.sum(y - expit(a + x)), -30, 30, xtol=1e-14)


def sklearn_slope(y: np.ndarray, p: np.ndarray) -> float:
    lr = LogisticRegression(C=np.inf, solver="newton-cholesky", tol=1e-12, max_iter=200)
    return float(lr.fit(logit(p)[:, None], y).coef_[0, 0])


@pytest.fixture
def data(make_data: Callable[..., Data]) -> Data:
    return make_data(n=800, seed=1, miscalibration=0.3)


def test_scalar_metrics_match_references(data: Data) -> None:
    y, p, _ = data
    m = evaluate(y, p, n_boot=0).metrics
    assert m["auroc"].estimate == pytest.approx(roc_auc_score(y, p), abs=1e-12)
    assert m["auprc"].estimate == pytest.approx(average_precision_score(y, p), abs=1e-12)
    assert m["brier"].estimate == pytest.approx(brier_score_loss(y, p), abs=1e-12)
    assert m["calibration_slope"].estimate == pytest.approx(sklearn_slope(y, p), abs=1e-8)
    assert m["calibration_intercept"].estimate == pytest.approx(offset_intercept(y, p), abs=1e-9)
    assert m["observed_expected"].estimate == pytest.approx(y.sum() / p.sum(), rel=1e-12)
    assert m["mean_predicted"] == pytest.approx(p.mean())
    assert m["observed_rate"] == pytest.approx(y.mean())
    assert m["auroc"].ci is None  # no bootstrap, no interval


def test_extreme_probabilities_are_clipped_before_the_logit() -> None:
    y = np.array([0, 0, 1, 1, 0, 1, 0, 1])
    p = np.array([0.0, 0.2, 0.4, 1.0, 0.5, 0.7, 0.3, 0.6])
    m = evaluate(y, p, n_boot=0).metrics
    assert m["calibration_intercept"].estimate == pytest.approx(offset_intercept(y, p), abs=1e-9)
    assert m["calibration_slope"].estimate == pytest.approx(sklearn_slope(y, p), abs=1e-7)


def test_threshold_table_counts_and_rates_by_hand(data: Data) -> None:
    y, p, _ = data
    ev = evaluate(y, p, thresholds=[0.1, 0.25, 0.4], threshold=0.25, n_boot=0)
    assert [r.threshold for r in ev.threshold_table] == [0.1, 0.25, 0.4]
    for row in ev.threshold_table:
        f = p >= row.threshold
        tp, fp = int((f & y).sum()), int((f & ~y).sum())
        fn, tn = int((~f & y).sum()), int((~f & ~y).sum())
        assert (row.tp, row.fp, row.fn, row.tn) == (tp, fp, fn, tn)
        assert row.flagged == tp + fp
        assert row.alerts_per_100 == pytest.approx(100 * (tp + fp) / y.size)
        assert row.sensitivity.estimate == pytest.approx(tp / (tp + fn))
        assert row.specificity.estimate == pytest.approx(tn / (tn + fp))
        assert row.ppv.estimate == pytest.approx(tp / (tp + fp))
        assert row.npv.estimate == pytest.approx(tn / (tn + fn))
        assert row.nne.estimate == pytest.approx((tp + fp) / tp)
    assert ev.operating_point == ev.threshold_table[1]


def test_a_row_at_the_threshold_is_flagged() -> None:
    y, p = np.array([0, 1, 0, 1]), np.array([0.1, 0.3, 0.3, 0.5])
    row = evaluate(y, p, thresholds=[0.3], n_boot=0).threshold_table[0]
    assert (row.tp, row.fp, row.fn, row.tn) == (2, 1, 0, 1)


def test_undefined_rates_are_none() -> None:
    y, p = np.array([0, 1, 0, 1]), np.array([0.1, 0.3, 0.2, 0.5])
    none_flagged, all_flagged = evaluate(y, p, thresholds=[0.9, 0.05], n_boot=0).threshold_table[::-1]
    assert none_flagged.flagged == 0 and none_flagged.ppv.estimate is None and none_flagged.nne.estimate is None
    assert all_flagged.flagged == 4 and all_flagged.npv.estimate is None
    assert evaluate(y, p, thresholds=[0.9], n_boot=0).to_dict()["threshold_table"][0]["ppv"] == {
        "estimate": None, "ci": None}


def test_default_thresholds_include_the_budget_thresholds(data: Data) -> None:
    y, p, _ = data
    table = [r.threshold for r in evaluate(y, p, n_boot=0).threshold_table]
    assert table == sorted(table)
    assert {0.05, 0.1, 0.15, 0.2, 0.25, 0.3, 0.35, 0.4, 0.45, 0.5} <= set(table)
    for budget in (0.05, 0.10, 0.20):  # the lowest score flagging at most that fraction
        t = min(s for s in p if (p >= s).mean() <= budget)
        assert t in table


def test_net_benefit_by_hand(data: Data) -> None:
    y, p, _ = data
    ev = evaluate(y, p, n_boot=0)
    assert [d.threshold for d in ev.decision_curve] == [round(0.01 * k, 2) for k in range(1, 51)]
    n, prev = y.size, y.mean()
    for d in ev.decision_curve:
        t = d.threshold
        f = p >= t
        tp, fp = (f & y).sum(), (f & ~y).sum()
        assert d.net_benefit.estimate == pytest.approx(tp / n - fp / n * t / (1 - t), abs=1e-12)
        assert d.treat_all == pytest.approx(prev - (1 - prev) * t / (1 - t))
        assert d.treat_none == 0.0


def test_calibration_bins_by_hand() -> None:
    rng = np.random.default_rng(4)
    p = np.arange(1, 1001) / 1001  # distinct: ten bins of exactly 100 rows
    y = rng.random(1000) < p
    bins = evaluate(y, p, n_boot=0, ci=0.9).calibration_curve
    assert [b.bin for b in bins] == list(range(1, 11))
    z = norm.ppf(0.95)
    for k, b in enumerate(bins):
        rows = slice(100 * k, 100 * (k + 1))
        obs = y[rows].mean()
        assert b.n == 100
        assert b.mean_predicted == pytest.approx(p[rows].mean())
        assert b.observed == pytest.approx(obs)
        centre = (obs + z * z / 200) / (1 + z * z / 100)
        half = z / (1 + z * z / 100) * np.sqrt(obs * (1 - obs) / 100 + z * z / 40000)
        assert b.ci == pytest.approx((centre - half, centre + half))


def test_calibration_bins_keep_tied_scores_together() -> None:
    p = np.repeat([0.1, 0.2, 0.3], [500, 300, 200])
    y = np.arange(1000) % 4 == 0
    bins = evaluate(y, p, n_boot=0).calibration_curve
    assert [b.n for b in bins] == [500, 300, 200]
    assert sum(b.n for b in bins) == 1000


def test_roc_and_pr_curves_match_sklearn() -> None:
    rng = np.random.default_rng(2)
    p = np.round(rng.random(300), 2)  # about 100 distinct scores: no downsampling
    y = rng.random(300) < p
    ev = evaluate(y, p, n_boot=0)
    fpr, tpr, thr = roc_curve(y, p, drop_intermediate=False)
    assert np.allclose(ev.roc_curve["fpr"], fpr) and np.allclose(ev.roc_curve["tpr"], tpr)
    assert np.allclose(ev.roc_curve["threshold"][1:], thr[1:]) and ev.roc_curve["threshold"][0] == 1.0
    precision, recall, _ = precision_recall_curve(y, p)
    assert np.allclose(ev.pr_curve["recall"], recall[::-1][1:])  # sklearn adds (recall 0, precision 1)
    assert np.allclose(ev.pr_curve["precision"], precision[::-1][1:])


def test_curves_are_downsampled_to_200_points(make_data: Callable[..., Data]) -> None:
    y, p, _ = make_data(n=5000, seed=3)
    ev = evaluate(y, p, n_boot=0)
    for curve in (ev.roc_curve, ev.pr_curve):
        lengths = {len(v) for v in curve.values()}
        assert len(lengths) == 1 and lengths.pop() <= 200
    assert (ev.roc_curve["fpr"][0], ev.roc_curve["tpr"][0]) == (0.0, 0.0)
    assert (ev.roc_curve["fpr"][-1], ev.roc_curve["tpr"][-1]) == (1.0, 1.0)
    assert np.all(np.diff(ev.roc_curve["fpr"]) >= 0) and np.all(np.diff(ev.roc_curve["threshold"]) <= 0)
    assert ev.pr_curve["recall"][-1] == 1.0
