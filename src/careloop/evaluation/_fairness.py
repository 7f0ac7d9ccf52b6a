"""Subgroup performance and its gaps to the overall figure, with paired cluster-bootstrap intervals.

Point values per group come from Fairlearn's `MetricFrame` (the reference implementation of disaggregated
metrics); intervals come from this package's vectorised bootstrap, where one resample gives both the group's and
the overall value, so the interval of their gap is paired. A gap is flagged only when it is beyond its tolerance
and its interval excludes no difference (see docs/validation-report.md for why only the accuracy measures carry
a default tolerance).
"""

from __future__ import annotations

import math
import warnings
from collections.abc import Mapping
from dataclasses import dataclass
from functools import partial
from typing import Any

import numpy as np
import pandas as pd
from fairlearn.metrics import MetricFrame
from scipy.optimize import brentq
from scipy.special import expit
from sklearn.metrics import roc_auc_score

from careloop.evaluation._bootstrap import map_replicates, percentile_interval
from careloop.evaluation._metrics import (
    POINT_TOL,
    TOL,
    Cells,
    Ranked,
    auroc,
    calibration_intercept,
    confusion,
    linear_sums,
    logit,
    observed_expected,
)
from careloop.evaluation._result import Estimate
from careloop.evaluation._validate import (
    EvaluationError,
    as_labels,
    as_scores,
    check_options,
    check_probability,
    cluster_codes,
    is_number,
    require_both_classes,
)

FAIRNESS_METRICS = ("auroc", "observed_expected", "calibration_intercept", "tpr", "fpr", "ppv", "flag_rate")
# Within-group AUROC is lower than the overall AUROC whenever the grouping itself predicts risk (age bands, sites), so
# its tolerance is wide; observed/expected (log ratio) is the measure that under-recording in a group breaks.
DEFAULT_TOLERANCES: dict[str, float] = {"auroc": 0.10, "observed_expected": 0.15}
MIN_CLASS = 10  # a group needs at least this many positives and negatives to be reported
UNKNOWN = "unknown"
_NAMES = {"auroc": "AUROC", "observed_expected": "observed/expected", "calibration_intercept": "calibration intercept",
          "tpr": "sensitivity", "fpr": "false-positive rate", "ppv": "PPV", "flag_rate": "flag rate"}
_CLAUSES = {  # (gap below zero, gap above zero)
    "auroc": ("the model ranks risk less accurately for this group.",
              "the model ranks risk more accurately for this group."),
    "observed_expected": ("the model over-predicts risk for this group.",
                          "the model under-predicts risk for this group."),
    "calibration_intercept": ("the model over-predicts risk for this group.",
                              "the model under-predicts risk for this group."),
    "tpr": ("fewer of this group's positives are flagged.", "more of this group's positives are flagged."),
    "fpr": ("fewer of this group's negatives are flagged.", "more of this group's negatives are flagged."),
    "ppv": ("this group's alerts are less often true positives.", "this group's alerts are more often true positives."),
    "flag_rate": ("this group is flagged less often.", "this group is flagged more often."),
}


# --- the metric callables given to MetricFrame: (y_true, score) -> float, NaN where undefined -----------------------

def metric_auroc(y_true: Any, y_score: Any) -> float:
    y = np.asarray(y_true)
    return float(roc_auc_score(y, y_score)) if 0 < y.sum() < y.size else float("nan")


def metric_observed_expected(y_true: Any, y_score: Any) -> float:
    expected = float(np.sum(y_score))
    return float(np.sum(y_true)) / expected if expected > 0 else float("nan")


def metric_calibration_intercept(y_true: Any, y_score: Any) -> float:
    """Root of sum(y - expit(a + logit(p))) = 0, by bracketing (the score equation falls monotonically in a)."""
    y, x = np.asarray(y_true, dtype=float), logit(np.asarray(y_score, dtype=float))
    if y.sum() == 0 or y.sum() == y.size:
        return float("nan")
    return float(brentq(lambda a: float(np.sum(y - expit(a + x))), -60.0, 60.0, xtol=1e-14, rtol=1e-15))


def _rate(num: int, den: int) -> float:
    return num / den if den else float("nan")


def metric_tpr(y_true: Any, y_score: Any, *, threshold: float) -> float:
    y, f = np.asarray(y_true, dtype=bool), np.asarray(y_score) >= threshold
    return _rate(int((f & y).sum()), int(y.sum()))


def metric_fpr(y_true: Any, y_score: Any, *, threshold: float) -> float:
    y, f = np.asarray(y_true, dtype=bool), np.asarray(y_score) >= threshold
    return _rate(int((f & ~y).sum()), int((~y).sum()))


def metric_ppv(y_true: Any, y_score: Any, *, threshold: float) -> float:
    y, f = np.asarray(y_true, dtype=bool), np.asarray(y_score) >= threshold
    return _rate(int((f & y).sum()), int(f.sum()))


def metric_flag_rate(y_true: Any, y_score: Any, *, threshold: float) -> float:
    return _rate(int((np.asarray(y_score) >= threshold).sum()), len(y_score))


def metric_callables(threshold: float) -> dict[str, Any]:
    return {"auroc": metric_auroc, "observed_expected": metric_observed_expected,
            "calibration_intercept": metric_calibration_intercept,
            "tpr": partial(metric_tpr, threshold=threshold), "fpr": partial(metric_fpr, threshold=threshold),
            "ppv": partial(metric_ppv, threshold=threshold),
            "flag_rate": partial(metric_flag_rate, threshold=threshold)}


# --- the same metrics for many bootstrap replicates at once -----------------------------------------------------------

def replicate_metrics(cells: Cells, w: np.ndarray, threshold: float, start: float = 0.0,
                      tol: float = POINT_TOL) -> np.ndarray:
    """(C, 7) values of FAIRNESS_METRICS for the replicates w (C x m) of one group's cells."""
    r = Ranked.of(cells, w)
    tp, fp, fn, tn = (v[:, 0] for v in confusion(r, cells.flagged_groups([threshold])))
    total = tp + fp + fn + tn
    with np.errstate(divide="ignore", invalid="ignore"):
        rates = [tp / (tp + fn), fp / (fp + tn), tp / (tp + fp), (tp + fp) / total]
    sums = linear_sums(cells, w)
    return np.column_stack([auroc(r), observed_expected(cells, w, sums),
                            calibration_intercept(cells, w, start, tol, sums), *rates])


# --- the result ------------------------------------------------------------------------------------------------------

@dataclass(frozen=True)
class GroupResult:
    group: str
    label: str
    n: int
    positives: int
    metrics: dict[str, Estimate]
    gaps: dict[str, Estimate]  # group minus overall; for observed_expected the log of their ratio
    flags: tuple[str, ...] = ()

    def to_dict(self) -> dict[str, Any]:
        return {"group": self.group, "label": self.label, "n": self.n, "positives": self.positives,
                "metrics": {k: self.metrics[k].to_dict() for k in FAIRNESS_METRICS},
                "gaps": {k: self.gaps[k].to_dict() for k in FAIRNESS_METRICS}, "flags": list(self.flags)}

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> GroupResult:
        return cls(d["group"], d["label"], d["n"], d["positives"],
                   {k: Estimate.from_dict(v) for k, v in d["metrics"].items()},
                   {k: Estimate.from_dict(v) for k, v in d["gaps"].items()}, tuple(d["flags"]))


@dataclass(frozen=True)
class SuppressedGroup:
    """A group too small to report; listed (with its display label) so that its absence is visible."""

    group: str
    n: int
    reason: str
    label: str = ""

    def to_dict(self) -> dict[str, Any]:
        return {"group": self.group, "label": self.label or self.group, "n": self.n, "reason": self.reason}


@dataclass(frozen=True)
class AttributeResult:
    """Reported groups (largest first) and suppressed ones, for one attribute such as race or sex."""

    groups: tuple[GroupResult, ...]
    suppressed: tuple[SuppressedGroup, ...]

    def to_dict(self) -> dict[str, Any]:
        return {"groups": [g.to_dict() for g in self.groups], "suppressed": [s.to_dict() for s in self.suppressed]}


@dataclass(frozen=True)
class FairnessFlag:
    attribute: str
    group: str
    metric: str
    gap: Estimate
    tolerance: float
    message: str
    p_adjusted: float | None = None

    def to_dict(self) -> dict[str, Any]:
        return {"attribute": self.attribute, "group": self.group, "metric": self.metric, "gap": self.gap.to_dict(),
                "tolerance": self.tolerance, "p_adjusted": self.p_adjusted, "message": self.message}


@dataclass(frozen=True)
class FairnessReport:
    """Per attribute, each group's metrics and gaps to the overall figure; `flags` lists the disparities found."""

    threshold: float
    min_group_size: int
    tolerances: dict[str, float]
    attributes: dict[str, AttributeResult]
    flags: tuple[FairnessFlag, ...]
    comparisons: int = 0  # group x metric tests with a tolerance: the Bonferroni factor

    def to_dict(self) -> dict[str, Any]:
        return {"threshold": self.threshold, "min_group_size": self.min_group_size,
                "tolerances": dict(self.tolerances),
                "multiplicity": {"method": "bonferroni", "comparisons": self.comparisons,
                                 "rule": "flag when the gap is beyond its tolerance and its Bonferroni-adjusted "
                                         "p-value (bootstrap standard error, normal approximation) is below "
                                         "1 - ci"},
                "attributes": {k: v.to_dict() for k, v in self.attributes.items()},
                "flags": [f.to_dict() for f in self.flags]}

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> FairnessReport:
        attributes = {
            name: AttributeResult(tuple(GroupResult.from_dict(g) for g in a["groups"]),
                                  tuple(SuppressedGroup(s["group"], s["n"], s["reason"], s.get("label", s["group"]))
                                        for s in a["suppressed"]))
            for name, a in d["attributes"].items()}
        flags = tuple(FairnessFlag(f["attribute"], f["group"], f["metric"], Estimate.from_dict(f["gap"]),
                                   f["tolerance"], f["message"], f.get("p_adjusted")) for f in d["flags"])
        return cls(d["threshold"], d["min_group_size"], dict(d["tolerances"]), attributes, flags,
                   (d.get("multiplicity") or {}).get("comparisons", 0))


# --- fairness() ------------------------------------------------------------------------------------------------------

def group_values(values: Any, n: int, attribute: str) -> np.ndarray:
    """Group codes as strings; missing values (None, NaN, empty) become "unknown"."""
    s = pd.Series(np.asarray(values, dtype=object) if not isinstance(values, pd.Series) else values.to_numpy(object))
    if s.size != n:
        raise EvaluationError(f"y has {n} values but groups[{attribute!r}] has {s.size}: give one group per row")
    missing = s.isna().to_numpy()
    out = s.astype(str).to_numpy(dtype=object)
    out[missing | (np.char.strip(out.astype(str)) == "")] = UNKNOWN
    return out


def _tolerances(given: Mapping[str, float | None] | None) -> dict[str, float]:
    out: dict[str, float | None] = dict(DEFAULT_TOLERANCES)
    for k, v in (given or {}).items():
        if k not in FAIRNESS_METRICS:
            raise EvaluationError(f"tolerances has unknown metric {k!r}; known: {', '.join(FAIRNESS_METRICS)}")
        if v is not None and (not is_number(v) or v < 0):
            raise EvaluationError(f"the tolerance for {k} must be a non-negative number (or None for none), "
                                  f"got {v!r}")
        out[k] = v
    return {k: float(v) for k in FAIRNESS_METRICS if (v := out.get(k)) is not None}


def _gap(metric: str, group: float, overall: float) -> float:
    if metric == "observed_expected":
        return float(np.log(group / overall)) if group > 0 and overall > 0 else float("nan")
    return group - overall


def _message(attribute: str, label: str, metric: str, value: Estimate, overall: float, gap: float,
             ci: float) -> str:
    interval = "" if value.ci is None else f" ({100 * ci:g}% CI {value.ci[0]:.2f}–{value.ci[1]:.2f})"
    clause = _CLAUSES[metric][int(gap > 0)]
    return (f"{attribute} = {label}: {_NAMES[metric]} {value.estimate:.2f}{interval} against {overall:.2f} overall: "
            f"{clause}")


def fairness(y: Any, p: Any, groups: Mapping[str, Any], *, threshold: float, clusters: Any = None,
             min_group_size: int = 50, tolerances: Mapping[str, float | None] | None = None,
             labels: Mapping[tuple[str, str], str] | None = None, n_boot: int = 1000, seed: int = 0,
             ci: float = 0.95) -> FairnessReport:
    """How the model performs in each group of each attribute, against its overall performance.

    `groups` maps an attribute (e.g. "race") to one value per row; missing values form the group "unknown".
    Groups under `min_group_size` rows or with fewer than 10 positives or negatives are suppressed and listed.
    `tolerances` adds to or overrides the defaults (auroc 0.10, observed_expected 0.15 on the log scale; None
    removes one). A gap is flagged beyond its tolerance and after a Bonferroni correction over every group and
    measure tested. `labels` maps (attribute, group code) to a display label.
    Error rates (tpr, fpr, ppv, flag_rate) are at `threshold` (flagged when p >= threshold).

    >>> rng = np.random.default_rng(0)
    >>> p = rng.uniform(0.05, 0.5, 2000); g = np.where(rng.random(2000) < 0.8, "a", "b")
    >>> true_risk = np.where(g == "b", 1 / (1 + (1 - p) / (2 * p)), p)   # odds doubled: b is under-predicted
    >>> rep = fairness(rng.random(2000) < true_risk, p, {"group": g}, threshold=0.3, n_boot=100)
    >>> [(f.group, f.metric) for f in rep.flags]
    [('b', 'observed_expected')]
    """
    yb = as_labels(y)
    n = yb.size
    pa = as_scores(p, n)
    require_both_classes(yb)
    check_options(n_boot=n_boot, ci=ci, seed=seed)
    threshold = check_probability(threshold, "threshold")
    if isinstance(min_group_size, bool) or not isinstance(min_group_size, int) or min_group_size < 1:
        raise EvaluationError(f"min_group_size must be a positive integer, got {min_group_size!r}")
    tol = _tolerances(tolerances)
    labels = {(str(a), str(v)): str(text) for (a, v), text in (labels or {}).items()}  # codes are compared as text
    codes, n_clusters = cluster_codes(clusters, n)
    fns = metric_callables(threshold)
    y_int = yb.astype(int)

    # Point values (MetricFrame) and which groups are reported.
    reported: list[tuple[str, str, np.ndarray]] = []  # (attribute, group, row mask)
    points: dict[tuple[str, str], dict[str, float]] = {}
    suppressed: dict[str, list[SuppressedGroup]] = {}
    overall: dict[str, float] = {}
    for attribute, values in groups.items():
        g = group_values(values, n, attribute)
        frame = MetricFrame(metrics=fns, y_true=y_int, y_pred=pa, sensitive_features=pd.Series(g, name=attribute))
        overall = {k: float(v) for k, v in frame.overall.items()}
        names, sizes = np.unique(g, return_counts=True)
        suppressed[attribute] = []
        for i in np.lexsort((names, -sizes)):  # largest group first
            name, mask = str(names[i]), g == names[i]
            size, pos = int(sizes[i]), int(yb[mask].sum())
            reasons = [f"fewer than {min_group_size} stays" if size < min_group_size else "",
                       f"fewer than {MIN_CLASS} positives" if pos < MIN_CLASS else "",
                       f"fewer than {MIN_CLASS} negatives" if size - pos < MIN_CLASS else ""]
            if any(reasons):
                suppressed[attribute].append(SuppressedGroup(name, size, "; ".join(r for r in reasons if r),
                                                             labels.get((attribute, name), name)))
                continue
            reported.append((attribute, name, mask))
            points[attribute, name] = {k: float(v) for k, v in frame.by_group.loc[name].items()}

    # Paired bootstrap: overall and every reported group from the same cluster counts.
    targets = [Cells.build(yb, pa, codes)] + [Cells.build(yb[m], pa[m], codes[m]) for _, _, m in reported]
    starts = [float(np.nan_to_num(calibration_intercept(c, c.unit_weights(), tol=POINT_TOL)[0])) for c in targets]

    def replicate(m: np.ndarray) -> np.ndarray:
        return np.stack([replicate_metrics(c, c.weights(m), threshold, s, TOL)
                         for c, s in zip(targets, starts, strict=True)])

    chunks = map_replicates(replicate, n_clusters, n_boot if reported else 0, seed, max(n, n_clusters))
    boot = np.concatenate(chunks, axis=1) if chunks else np.empty((len(targets), 0, len(FAIRNESS_METRICS)))
    with np.errstate(divide="ignore", invalid="ignore"):
        gaps = boot[1:] - boot[:1]
        oe = FAIRNESS_METRICS.index("observed_expected")
        gaps[..., oe] = np.log(boot[1:, :, oe] / boot[:1, :, oe])
    group_lo, group_hi = percentile_interval(np.moveaxis(boot[1:], 1, 0), ci)  # (groups, metrics)
    gap_lo, gap_hi = percentile_interval(np.moveaxis(gaps, 1, 0), ci)

    # Many groups x metrics are tested at once: a gap must survive a Bonferroni correction over all of them, or
    # chance alone would flag a group in almost every report.
    tested = [k for k, metric in enumerate(FAIRNESS_METRICS) if metric in tol]
    comparisons = len(reported) * len(tested)
    gap_sd = np.full((len(reported), len(FAIRNESS_METRICS)), np.nan)
    if gaps.shape[1] > 1:
        with np.errstate(invalid="ignore", divide="ignore"), warnings.catch_warnings():
            warnings.simplefilter("ignore", RuntimeWarning)  # all-NaN columns: no spread, no flag
            gap_sd = np.nanstd(np.where(np.isfinite(gaps), gaps, np.nan), axis=1, ddof=1)
    attributes: dict[str, list[GroupResult]] = {a: [] for a in groups}
    flags: list[FairnessFlag] = []
    for j, (attribute, name, mask) in enumerate(reported):
        label = labels.get((attribute, name), name)
        point = points[attribute, name]
        metrics, gap_est, flagged = {}, {}, []
        for k, metric in enumerate(FAIRNESS_METRICS):
            metrics[metric] = Estimate.of(point[metric], group_lo[j, k], group_hi[j, k])
            gap = _gap(metric, point[metric], overall[metric])
            gap_est[metric] = Estimate.of(gap, gap_lo[j, k], gap_hi[j, k])
            if metric in tol and gap_est[metric].estimate is not None and abs(gap) > tol[metric]:
                p_adj = _adjusted_p(gap, gap_sd[j, k], comparisons)
                if p_adj is not None and p_adj < 1 - ci:
                    flagged.append(metric)
                    flags.append(FairnessFlag(attribute, name, metric, gap_est[metric], tol[metric],
                                              _message(attribute, label, metric, metrics[metric], overall[metric],
                                                       gap, ci), p_adj))
        attributes[attribute].append(GroupResult(name, label, int(mask.sum()), int(yb[mask].sum()), metrics, gap_est,
                                                 tuple(flagged)))
    return FairnessReport(
        threshold=float(threshold), min_group_size=min_group_size, tolerances=tol,
        attributes={a: AttributeResult(tuple(attributes[a]), tuple(suppressed[a])) for a in groups},
        flags=tuple(flags), comparisons=comparisons)


def _adjusted_p(gap: float, sd: float, comparisons: int) -> float | None:
    """Two-sided p-value of a gap from its bootstrap standard error (normal approximation), times the number of
    comparisons (Bonferroni), capped at 1. None when the bootstrap gave no spread to judge by."""
    if not np.isfinite(sd) or sd <= 0 or comparisons < 1:
        return None
    z = abs(gap) / sd
    return float(min(1.0, comparisons * math.erfc(z / math.sqrt(2))))
