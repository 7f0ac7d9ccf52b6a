"""Curves for the report: ROC and precision-recall (downsampled), calibration bins, decision-curve thresholds."""

from __future__ import annotations

import numpy as np
from scipy.stats import norm

from careloop.evaluation._metrics import Cells, Ranked
from careloop.evaluation._result import CalibrationBin

MAX_POINTS = 200  # a curve in report.json keeps at most this many points: enough to draw, small to store
DECISION_THRESHOLDS = np.round(np.arange(1, 51) / 100, 2)  # 0.01 .. 0.50
TABLE_THRESHOLDS = np.round(np.arange(1, 11) / 20, 2)  # 0.05 .. 0.50
TABLE_BUDGETS = (0.05, 0.10, 0.20)  # the table also shows the thresholds flagging the top 5 / 10 / 20 %


def downsample(length: int, limit: int = MAX_POINTS) -> np.ndarray:
    """Indices of at most `limit` points spread evenly along a curve, always keeping both ends.

    >>> downsample(5).tolist()
    [0, 1, 2, 3, 4]
    >>> idx = downsample(10_000); int(idx.size), int(idx[0]), int(idx[-1])
    (200, 0, 9999)
    """
    if length <= limit:
        return np.arange(length)
    return np.unique(np.round(np.linspace(0, length - 1, limit)).astype(int))


def roc_and_pr(cells: Cells, r: Ranked) -> tuple[dict[str, list[float]], dict[str, list[float]]]:
    """The ROC curve from (0, 0) and the precision-recall curve by increasing recall, one point per distinct score.

    The ROC threshold at (0, 0) is one that flags nobody: 1.0, or just above the top score if that is 1.
    """
    pos, neg = r.cum_pos[0], r.cum_neg[0]
    top = float(cells.tie_score[0])
    origin = 1.0 if top < 1.0 else float(np.nextafter(top, np.inf))
    fpr = np.concatenate([[0.0], neg / neg[-1]])
    tpr = np.concatenate([[0.0], pos / pos[-1]])
    thr = np.concatenate([[origin], cells.tie_score])
    keep = downsample(fpr.size)
    recall = pos / pos[-1]
    precision = pos / (pos + neg)
    keep_pr = downsample(recall.size)
    return ({"fpr": fpr[keep].tolist(), "tpr": tpr[keep].tolist(), "threshold": thr[keep].tolist()},
            {"recall": recall[keep_pr].tolist(), "precision": precision[keep_pr].tolist()})


def wilson(successes: float, n: float, ci: float) -> tuple[float, float]:
    """Wilson score interval for a proportion: stays inside [0, 1] and behaves at 0 and n successes.

    >>> [round(v, 4) for v in wilson(0, 10, 0.95)]
    [0.0, 0.2775]
    """
    z = float(norm.ppf(0.5 + ci / 2))
    phat = successes / n
    den = 1 + z * z / n
    center = (phat + z * z / (2 * n)) / den
    half = z / den * np.sqrt(phat * (1 - phat) / n + z * z / (4 * n * n))
    return max(0.0, float(center - half)), min(1.0, float(center + half))


def calibration_bins(y: np.ndarray, p: np.ndarray, ci: float, bins: int = 10) -> tuple[CalibrationBin, ...]:
    """Quantile bins of p (edges at the 10th..90th percentiles; a row equal to an edge goes to the upper bin, so
    tied scores share a bin); empty bins are left out. Bins are numbered 1..10 from the lowest predicted risk."""
    edges = np.quantile(p, np.arange(1, bins) / bins)
    which = np.searchsorted(edges, p, side="right")
    out = []
    for k in range(bins):
        mask = which == k
        n = int(mask.sum())
        if n == 0:
            continue
        pos = int(y[mask].sum())
        out.append(CalibrationBin(bin=k + 1, n=n, mean_predicted=float(p[mask].mean()), observed=pos / n,
                                  ci=wilson(pos, n, ci)))
    return tuple(out)
