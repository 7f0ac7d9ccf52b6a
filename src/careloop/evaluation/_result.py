"""Result objects: frozen, attribute access, and `to_dict()` in the shape of docs/validation-report.md.

`to_dict()` gives JSON-ready values only (floats, ints, lists, None): a number that is not computable is None,
never NaN, so that `report.json` stays valid JSON.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Any

METRICS = ("auroc", "auprc", "brier", "calibration_intercept", "calibration_slope", "observed_expected")


def clean(value: Any) -> float | None:
    """A float, or None when missing or not finite."""
    if value is None:
        return None
    value = float(value)
    return value if math.isfinite(value) else None


@dataclass(frozen=True)
class Estimate:
    """A point value and its bootstrap percentile interval; None where not computable.

    >>> Estimate(0.71, 0.68, 0.74).to_dict()
    {'estimate': 0.71, 'ci': [0.68, 0.74]}
    >>> Estimate(None).to_dict()
    {'estimate': None, 'ci': None}
    """

    estimate: float | None
    lo: float | None = None
    hi: float | None = None

    @classmethod
    def of(cls, estimate: Any, lo: Any = None, hi: Any = None) -> Estimate:
        """From possibly NaN numbers: NaN becomes None, and an interval needs both bounds."""
        est, lo_, hi_ = clean(estimate), clean(lo), clean(hi)
        if est is None or lo_ is None or hi_ is None:
            lo_ = hi_ = None
        return cls(est, lo_, hi_)

    @property
    def ci(self) -> tuple[float, float] | None:
        return None if self.lo is None or self.hi is None else (self.lo, self.hi)

    def excludes(self, value: float) -> bool:
        """True when the interval exists and lies entirely above or below `value`."""
        return self.ci is not None and (self.ci[0] > value or self.ci[1] < value)

    def to_dict(self) -> dict[str, Any]:
        return {"estimate": self.estimate, "ci": None if self.ci is None else [self.ci[0], self.ci[1]]}

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> Estimate:
        ci = d.get("ci")
        return cls(d.get("estimate"), *(ci if ci else (None, None)))


@dataclass(frozen=True)
class ThresholdRow:
    """The confusion matrix and its rates at one threshold (a row is flagged when its score >= threshold)."""

    threshold: float
    flagged: int
    alerts_per_100: float
    sensitivity: Estimate
    specificity: Estimate
    ppv: Estimate
    npv: Estimate
    nne: Estimate  # number needed to evaluate = 1 / PPV
    tp: int
    fp: int
    fn: int
    tn: int
    # TP/n - FP/n * t/(1-t) at exactly this threshold (the decision curve only has a grid); None when read from a
    # report.json written before it was recorded
    net_benefit: Estimate | None = None

    def to_dict(self) -> dict[str, Any]:
        return {"threshold": self.threshold, "flagged": self.flagged, "alerts_per_100": self.alerts_per_100,
                "sensitivity": self.sensitivity.to_dict(), "specificity": self.specificity.to_dict(),
                "ppv": self.ppv.to_dict(), "npv": self.npv.to_dict(), "nne": self.nne.to_dict(),
                "net_benefit": None if self.net_benefit is None else self.net_benefit.to_dict(),
                "tp": self.tp, "fp": self.fp, "fn": self.fn, "tn": self.tn}

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> ThresholdRow:
        est = {k: Estimate.from_dict(d[k]) for k in ("sensitivity", "specificity", "ppv", "npv", "nne")}
        nb = d.get("net_benefit")
        return cls(threshold=d["threshold"], flagged=d["flagged"], alerts_per_100=d["alerts_per_100"], **est,
                   tp=d["tp"], fp=d["fp"], fn=d["fn"], tn=d["tn"],
                   net_benefit=Estimate.from_dict(nb) if isinstance(nb, dict) else None)


@dataclass(frozen=True)
class DecisionPoint:
    """Net benefit of acting on the model at one threshold, beside treating everyone and no one."""

    threshold: float
    net_benefit: Estimate
    treat_all: float
    treat_none: float = 0.0

    def to_dict(self) -> dict[str, Any]:
        return {"threshold": self.threshold, "net_benefit": self.net_benefit.to_dict(), "treat_all": self.treat_all,
                "treat_none": self.treat_none}

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> DecisionPoint:
        return cls(d["threshold"], Estimate.from_dict(d["net_benefit"]), d["treat_all"], d["treat_none"])


@dataclass(frozen=True)
class CalibrationBin:
    """One quantile bin of predicted risk: mean prediction, observed rate and its Wilson interval."""

    bin: int
    n: int
    mean_predicted: float
    observed: float
    ci: tuple[float, float]

    def to_dict(self) -> dict[str, Any]:
        return {"bin": self.bin, "n": self.n, "mean_predicted": self.mean_predicted, "observed": self.observed,
                "ci": [self.ci[0], self.ci[1]]}

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> CalibrationBin:
        return cls(d["bin"], d["n"], d["mean_predicted"], d["observed"], (d["ci"][0], d["ci"][1]))


@dataclass(frozen=True)
class Evaluation:
    """Everything `evaluate` measured for one score on one data set; `to_dict()` is `report.json`'s `scores[name]`.

    `metrics` maps the six names in `METRICS` to an `Estimate`, and `mean_predicted` / `observed_rate` to floats.
    """

    n: int
    positives: int
    prevalence: float
    clusters: int
    n_boot: int
    ci_level: float
    probabilistic: bool
    metrics: dict[str, Any]
    roc_curve: dict[str, list[float]]
    pr_curve: dict[str, list[float]]
    calibration_curve: tuple[CalibrationBin, ...]
    decision_curve: tuple[DecisionPoint, ...]
    threshold_table: tuple[ThresholdRow, ...]
    operating_point: ThresholdRow | None = field(default=None)

    def to_dict(self) -> dict[str, Any]:
        metrics: dict[str, Any] = {k: self.metrics[k].to_dict() for k in METRICS}
        metrics["mean_predicted"] = self.metrics["mean_predicted"]
        metrics["observed_rate"] = self.metrics["observed_rate"]
        return {
            "n": self.n, "positives": self.positives, "prevalence": self.prevalence, "clusters": self.clusters,
            "n_boot": self.n_boot, "ci_level": self.ci_level, "probabilistic": self.probabilistic,
            "metrics": metrics,
            "roc_curve": {k: list(self.roc_curve[k]) for k in ("fpr", "tpr", "threshold")},
            "pr_curve": {k: list(self.pr_curve[k]) for k in ("recall", "precision")},
            "calibration_curve": [b.to_dict() for b in self.calibration_curve],
            "decision_curve": [d.to_dict() for d in self.decision_curve],
            "threshold_table": [r.to_dict() for r in self.threshold_table],
            "operating_point": None if self.operating_point is None else self.operating_point.to_dict(),
        }

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> Evaluation:
        """The inverse of `to_dict()`, e.g. to read an evaluation back from a stored `report.json`."""
        metrics: dict[str, Any] = {k: Estimate.from_dict(d["metrics"][k]) for k in METRICS}
        metrics["mean_predicted"] = d["metrics"]["mean_predicted"]
        metrics["observed_rate"] = d["metrics"]["observed_rate"]
        op = d.get("operating_point")
        return cls(
            n=d["n"], positives=d["positives"], prevalence=d["prevalence"], clusters=d["clusters"],
            n_boot=d["n_boot"], ci_level=d["ci_level"], probabilistic=d["probabilistic"], metrics=metrics,
            roc_curve={k: list(v) for k, v in d["roc_curve"].items()},
            pr_curve={k: list(v) for k, v in d["pr_curve"].items()},
            calibration_curve=tuple(CalibrationBin.from_dict(b) for b in d["calibration_curve"]),
            decision_curve=tuple(DecisionPoint.from_dict(x) for x in d["decision_curve"]),
            threshold_table=tuple(ThresholdRow.from_dict(r) for r in d["threshold_table"]),
            operating_point=None if op is None else ThresholdRow.from_dict(op),
        )
