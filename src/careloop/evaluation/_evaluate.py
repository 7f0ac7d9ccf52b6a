"""`evaluate` (one score, every measure with a cluster-bootstrap interval) and `compare` (paired AUROC differences)."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np

from careloop.evaluation._bootstrap import map_replicates, percentile_interval
from careloop.evaluation._curves import (
    DECISION_THRESHOLDS,
    TABLE_BUDGETS,
    TABLE_THRESHOLDS,
    calibration_bins,
    roc_and_pr,
)
from careloop.evaluation._metrics import (
    POINT_TOL,
    Cells,
    Ranked,
    auroc,
    average_precision,
    brier,
    calibration_intercept,
    calibration_line,
    confusion,
    linear_sums,
    means,
    observed_expected,
    ratio,
)
from careloop.evaluation._operating_point import budget_threshold
from careloop.evaluation._result import DecisionPoint, Estimate, Evaluation, ThresholdRow
from careloop.evaluation._validate import (
    EvaluationError,
    as_labels,
    as_scores,
    check_options,
    check_probability,
    check_thresholds,
    cluster_codes,
    require_both_classes,
)

_SCALARS = ("auroc", "auprc", "brier", "calibration_intercept", "calibration_slope", "observed_expected")
_RATES = ("sensitivity", "specificity", "ppv", "npv")


def _net_benefit(tp: np.ndarray, fp: np.ndarray, total: np.ndarray, t: np.ndarray) -> np.ndarray:
    """TP/n - FP/n * t/(1-t) per replicate and threshold; undefined (NaN) at t = 1, where the weight is infinite."""
    odds = np.divide(t, 1 - t, out=np.full(t.shape, np.nan), where=t < 1)
    return tp / total - fp / total * odds


def _statistics(cells: Cells, w: np.ndarray, flagged: np.ndarray, all_t: np.ndarray, dc_flagged: np.ndarray,
                dc_t: np.ndarray, start: dict[str, float] | None) -> dict[str, np.ndarray]:
    """Every statistic of `evaluate` for the replicates in w (C x m): scalars (C,), per-threshold (C, T)."""
    r = Ranked.of(cells, w)
    sums = linear_sums(cells, w)
    out: dict[str, np.ndarray] = {"auroc": auroc(r), "auprc": average_precision(r), "brier": brier(cells, w, sums),
                                  "observed_expected": observed_expected(cells, w, sums)}
    if start is None:  # the point estimate
        out["calibration_intercept"] = calibration_intercept(cells, w, 0.0, tol=POINT_TOL, sums=sums)
        a, b = calibration_line(cells, w, (0.0, 1.0), tol=POINT_TOL, sums=sums)
    else:
        out["calibration_intercept"] = calibration_intercept(cells, w, start["a0"], sums=sums)
        a, b = calibration_line(cells, w, (start["a"], start["b"]), sums=sums)
    out["calibration_slope"], out["_line_intercept"] = b, a
    out["mean_predicted"], out["observed_rate"] = means(cells, w, sums)
    tp, fp, fn, tn = confusion(r, flagged)
    out.update(tp=tp, fp=fp, fn=fn, tn=tn, sensitivity=ratio(tp, tp + fn), specificity=ratio(tn, tn + fp),
               ppv=ratio(tp, tp + fp), npv=ratio(tn, tn + fn))
    total = w.sum(axis=1)[:, None]
    out["row_net_benefit"] = _net_benefit(tp, fp, total, all_t)
    dtp, dfp, _, _ = confusion(r, dc_flagged)
    out["net_benefit"] = _net_benefit(dtp, dfp, total, dc_t)
    return out


def _start(point: dict[str, np.ndarray]) -> dict[str, float]:
    """Newton starts for the replicates: the point fits, or the neutral start where they are undefined."""
    def pick(v: np.ndarray, default: float) -> float:
        return default if np.isnan(v[0]) else float(v[0])
    return {"a0": pick(point["calibration_intercept"], 0.0), "a": pick(point["_line_intercept"], 0.0),
            "b": pick(point["calibration_slope"], 1.0)}


def _default_thresholds(p: np.ndarray) -> np.ndarray:
    budget = [t for f in TABLE_BUDGETS if (t := budget_threshold(p, f)) is not None]
    return np.unique(np.concatenate([TABLE_THRESHOLDS, budget]))


def _nne(ppv: Estimate) -> Estimate:
    """NNE = 1 / PPV; its interval is the PPV interval inverted (1/x is monotone), none if PPV's reaches 0."""
    if ppv.estimate is None or ppv.estimate == 0:
        return Estimate(None)
    if ppv.ci is None or ppv.ci[0] <= 0:
        return Estimate(1 / ppv.estimate)
    return Estimate(1 / ppv.estimate, 1 / ppv.ci[1], 1 / ppv.ci[0])


def evaluate(y: Any, p: Any, *, clusters: Any = None, threshold: float | None = None,
             thresholds: Sequence[float] | None = None, decision_thresholds: Sequence[float] | None = None,
             n_boot: int = 1000, seed: int = 0, ci: float = 0.95, probabilistic: bool = True) -> Evaluation:
    """Discrimination, calibration, decision curve and alert burden of probabilities p for binary labels y.

    Intervals come from a cluster bootstrap: `clusters` (e.g. patient ids) are resampled with replacement so the
    stays of one patient move together; by default each row is its own cluster. `threshold` is the operating
    point chosen elsewhere (on the calibration split); `thresholds` set the threshold table (default
    0.05..0.50 and the thresholds flagging the top 5/10/20% of rows); `decision_thresholds` the decision curve
    (default 0.01..0.50). `probabilistic=False` records that p is a logistic recalibration of a raw score.
    A row is flagged when p >= threshold. The same seed gives the same result.

    >>> rng = np.random.default_rng(0)
    >>> p = rng.uniform(0.02, 0.6, 500); y = rng.random(500) < p
    >>> ev = evaluate(y, p, threshold=0.3, n_boot=50)
    >>> 0.6 < ev.metrics["auroc"].estimate < 0.9, ev.operating_point.threshold
    (True, 0.3)
    """
    yb = as_labels(y)
    n = yb.size
    pa = as_scores(p, n)
    require_both_classes(yb)
    check_options(n_boot=n_boot, ci=ci, seed=seed)
    codes, n_clusters = cluster_codes(clusters, n)
    if threshold is not None:
        threshold = check_probability(threshold, "threshold")
    table_t = _default_thresholds(pa) if thresholds is None else check_thresholds(thresholds, "thresholds")
    dc_t = DECISION_THRESHOLDS if decision_thresholds is None else check_thresholds(decision_thresholds,
                                                                                      "decision_thresholds")
    if (dc_t <= 0).any() or (dc_t >= 1).any():
        raise EvaluationError("decision_thresholds must lie strictly between 0 and 1 (net benefit weighs t/(1-t))")
    all_t = table_t if threshold is None else np.append(table_t, threshold)

    cells = Cells.build(yb, pa, codes)
    flagged, dc_flagged = cells.flagged_groups(all_t), cells.flagged_groups(dc_t)
    point = _statistics(cells, cells.unit_weights(), flagged, all_t, dc_flagged, dc_t, None)
    start = _start(point)

    def replicate(m: np.ndarray) -> dict[str, np.ndarray]:
        stats = _statistics(cells, cells.weights(m), flagged, all_t, dc_flagged, dc_t, start)
        return {k: stats[k] for k in (*_SCALARS, *_RATES, "net_benefit", "row_net_benefit")}

    reps = map_replicates(replicate, n_clusters, n_boot, seed, max(n, n_clusters))

    def estimates(key: str) -> list[Estimate]:
        values = point[key][0] if point[key].ndim > 1 else point[key]
        if reps:
            lo, hi = percentile_interval(np.concatenate([r[key] for r in reps]), ci)
        else:
            lo = hi = np.full(np.shape(values), np.nan)
        return [Estimate.of(v, a, b) for v, a, b in zip(np.atleast_1d(values), np.atleast_1d(lo),
                                                         np.atleast_1d(hi), strict=True)]

    metrics: dict[str, Any] = {k: estimates(k)[0] for k in _SCALARS}
    metrics["mean_predicted"] = float(point["mean_predicted"][0])
    metrics["observed_rate"] = float(point["observed_rate"][0])

    rates = {k: estimates(k) for k in _RATES}
    row_nb = estimates("row_net_benefit")
    rows = []
    for j, t in enumerate(all_t):
        counts = {k: round(float(point[k][0, j])) for k in ("tp", "fp", "fn", "tn")}
        flagged_rows = counts["tp"] + counts["fp"]
        rows.append(ThresholdRow(threshold=float(t), flagged=flagged_rows, alerts_per_100=100 * flagged_rows / n,
                                 **{k: rates[k][j] for k in _RATES}, nne=_nne(rates["ppv"][j]), **counts,
                                 net_benefit=row_nb[j]))
    prevalence = float(yb.mean())
    nb = estimates("net_benefit")
    decision = tuple(DecisionPoint(threshold=float(t), net_benefit=nb[j],
                                   treat_all=prevalence - (1 - prevalence) * float(t) / (1 - float(t)))
                     for j, t in enumerate(dc_t))
    roc, pr = roc_and_pr(cells, Ranked.of(cells, cells.unit_weights()))
    return Evaluation(
        n=n, positives=int(yb.sum()), prevalence=prevalence, clusters=n_clusters, n_boot=int(n_boot),
        ci_level=float(ci), probabilistic=bool(probabilistic), metrics=metrics, roc_curve=roc, pr_curve=pr,
        calibration_curve=calibration_bins(yb, pa, ci), decision_curve=decision,
        threshold_table=tuple(rows[: table_t.size]), operating_point=None if threshold is None else rows[-1])


def compare(y: Any, scores: Mapping[str, Any], primary: str, *, clusters: Any = None, n_boot: int = 1000,
            seed: int = 0, ci: float = 0.95) -> list[dict[str, Any]]:
    """AUROC of `primary` minus that of every other score, with a paired cluster-bootstrap interval.

    Every score is ranked on the same resamples, so the interval of the difference accounts for the scores being
    measured on the same patients. `intervals_overlap` says whether the two AUROCs' own intervals overlap (None
    without intervals). Scores need not be probabilities (AUROC is rank-based), e.g. LACE points. Results follow
    the order of `scores`.

    >>> rng = np.random.default_rng(1)
    >>> risk = rng.uniform(0, 1, 400); y = rng.random(400) < risk
    >>> out = compare(y, {"model": risk, "noise": rng.random(400)}, "model", n_boot=50)
    >>> out[0]["reference"], out[0]["difference"]["ci"][0] > 0, out[0]["intervals_overlap"]
    ('noise', True, False)
    """
    if primary not in scores:
        raise EvaluationError(f"primary {primary!r} is not among the scores ({', '.join(map(str, scores))})")
    yb = as_labels(y)
    n = yb.size
    require_both_classes(yb)
    check_options(n_boot=n_boot, ci=ci, seed=seed)
    codes, n_clusters = cluster_codes(clusters, n)
    cells = {name: Cells.build(yb, as_scores(s, n, name=f"scores[{name!r}]", probabilities=False), codes)
             for name, s in scores.items()}
    point = {name: float(auroc(Ranked.of(c, c.unit_weights()))[0]) for name, c in cells.items()}

    def replicate(m: np.ndarray) -> dict[str, np.ndarray]:
        return {name: auroc(Ranked.of(c, c.weights(m))) for name, c in cells.items()}

    reps = map_replicates(replicate, n_clusters, n_boot, seed, max(n, n_clusters))
    boot = {name: np.concatenate([r[name] for r in reps]) if reps else np.empty(0) for name in cells}
    own = {name: Estimate.of(point[name], *percentile_interval(v, ci)) for name, v in boot.items()}

    out = []
    for name in cells:
        if name == primary:
            continue
        diff = Estimate.of(point[primary] - point[name], *percentile_interval(boot[primary] - boot[name], ci))
        a, b = own[primary].ci, own[name].ci
        overlap = None if a is None or b is None else bool(a[0] <= b[1] and b[0] <= a[1])
        out.append({"reference": name, "metric": "auroc", "difference": diff.to_dict(), "intervals_overlap": overlap})
    return out
