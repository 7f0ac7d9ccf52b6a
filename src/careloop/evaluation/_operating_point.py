"""Choosing the alert threshold by a stated policy, on the calibration split (never on test).

A row is flagged when its score is >= the threshold, everywhere in this package. Thresholds are always one of the
observed scores (or the fixed value), so the achieved figures are exact on the data the threshold was chosen on.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Literal

import numpy as np

from careloop.evaluation._validate import EvaluationError, as_labels, as_scores, is_number, require_both_classes

POLICIES = ("budget", "ppv", "sensitivity", "threshold")
Policy = Literal["budget", "ppv", "sensitivity", "threshold"]
_SLACK = 1e-12  # targets such as 0.1 x 1000 rows are met despite floating-point rounding


@dataclass(frozen=True)
class OperatingPoint:
    """A threshold, the policy that chose it, what it achieved where it was chosen, and why, in one sentence."""

    policy: Policy
    target: float
    threshold: float
    achieved: dict[str, float | None] = field(default_factory=dict)  # flag_rate, sensitivity, specificity, ppv
    rationale: str = ""

    def to_dict(self) -> dict[str, Any]:
        return {"policy": self.policy, "target": self.target, "threshold": self.threshold,
                "chosen_on": "calibration", "achieved_on_calibration": dict(self.achieved),
                "rationale": self.rationale}

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> OperatingPoint:
        return cls(d["policy"], d["target"], d["threshold"], dict(d["achieved_on_calibration"]), d["rationale"])


def _descending(y: np.ndarray, p: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Distinct scores descending, with the positives and rows flagged when the threshold is each of them."""
    scores, inverse = np.unique(p, return_inverse=True)
    rows = np.bincount(inverse, minlength=scores.size)[::-1].cumsum()
    tp = np.bincount(inverse, weights=y.astype(float), minlength=scores.size)[::-1].cumsum()
    return scores[::-1], tp, rows


def budget_threshold(p: np.ndarray, fraction: float) -> float | None:
    """The lowest observed score whose flags (score >= it) stay within `fraction` of the rows.

    Tied scores are flagged together, so the flagged fraction may fall below the budget but never exceeds it;
    None when the tie at the top score alone exceeds it.

    >>> budget_threshold(np.array([0.1, 0.2, 0.3, 0.3, 0.4]), 0.4)
    0.4
    >>> budget_threshold(np.array([0.1, 0.2, 0.3, 0.3, 0.4]), 0.6)
    0.3
    """
    scores, counts = np.unique(p, return_counts=True)
    flagged = counts[::-1].cumsum()
    ok = np.flatnonzero(flagged <= fraction * p.size * (1 + _SLACK))
    return None if ok.size == 0 else float(scores[::-1][ok[-1]])


def achieved(y: np.ndarray, p: np.ndarray, threshold: float) -> dict[str, float | None]:
    """flag_rate, sensitivity, specificity and PPV (None when nobody is flagged) at `threshold`."""
    flag = p >= threshold
    tp = int((flag & y).sum())
    fp = int((flag & ~y).sum())
    pos = int(y.sum())
    neg = y.size - pos
    return {"flag_rate": float(flag.mean()), "sensitivity": tp / pos if pos else None,
            "specificity": (neg - fp) / neg if neg else None, "ppv": tp / (tp + fp) if tp + fp else None}


def _pct(v: float) -> str:
    return f"{100 * v:.3g}%"


def choose_operating_point(y: Any, p: Any, *, policy: Policy, target: float) -> OperatingPoint:
    """Choose the alert threshold on the calibration split by one of four policies.

    - ``budget``: flag the top ``target`` fraction of discharges (0.10: at most 10 alerts per 100);
    - ``ppv``: the lowest (most sensitive) threshold whose PPV is at least ``target``; an error if none is;
    - ``sensitivity``: the highest threshold whose sensitivity is at least ``target``;
    - ``threshold``: the fixed value ``target``.

    >>> y = np.array([0, 0, 1, 0, 1, 1, 0, 1, 0, 0])
    >>> p = np.array([.1, .2, .3, .35, .4, .5, .6, .7, .8, .05])
    >>> op = choose_operating_point(y, p, policy="budget", target=0.2)
    >>> op.threshold, op.achieved["flag_rate"]
    (0.7, 0.2)
    >>> choose_operating_point(y, p, policy="sensitivity", target=0.75).threshold
    0.4
    """
    if policy not in POLICIES:
        raise EvaluationError(f"policy must be one of {', '.join(POLICIES)}; got {policy!r}")
    if not is_number(target):
        raise EvaluationError(f"target must be a number, got {target!r}")
    fixed = policy == "threshold"
    if not ((target >= 0 if fixed else target > 0) and target <= 1):
        bound = "[0, 1]" if fixed else "(0, 1]"
        raise EvaluationError(f"the {policy} policy needs a target in {bound}, got {target!r}")
    yb = as_labels(y)
    pa = as_scores(p, yb.size)
    require_both_classes(yb)
    target = float(target)

    if policy == "threshold":
        threshold = target
    elif policy == "budget":
        found = budget_threshold(pa, target)
        if found is None:
            top = int((pa == pa.max()).sum())
            raise EvaluationError(f"no threshold flags at most {_pct(target)} of rows: the {top} highest scores are "
                                  f"tied ({_pct(top / pa.size)} of rows)")
        threshold = found
    else:
        scores, tp, rows = _descending(yb, pa)
        if policy == "ppv":
            ok = np.flatnonzero(tp / rows >= target - _SLACK)
            if ok.size == 0:
                best = int(np.argmax(tp / rows))
                raise EvaluationError(f"no threshold reaches a PPV of {target:g} on these data (the highest is "
                                      f"{tp[best] / rows[best]:.3g} at threshold {scores[best]:.3g})")
            threshold = float(scores[ok[-1]])
        else:
            threshold = float(scores[np.flatnonzero(tp / tp[-1] >= target - _SLACK)[0]])

    got = achieved(yb, pa, threshold)
    return OperatingPoint(policy=policy, target=target, threshold=threshold, achieved=got,
                          rationale=_rationale(policy, target, threshold, got))


def _rationale(policy: str, target: float, threshold: float, got: dict[str, float | None]) -> str:
    rate, sens, ppv = got["flag_rate"] or 0.0, got["sensitivity"] or 0.0, got["ppv"]
    ppv_text = "no alerts" if ppv is None else f"PPV {_pct(ppv)}"
    if policy == "budget":
        ties = f", which flagged {_pct(rate)} because of tied scores" if rate < target - 5e-4 else ""
        return (f"Flags the {_pct(target)} of discharges at highest risk (threshold {threshold:.3g} on the "
                f"calibration split{ties}), to keep alerts within a budget of {100 * target:.3g} per 100 discharges.")
    if policy == "ppv":
        return (f"Uses the most sensitive threshold ({threshold:.3g} on the calibration split) at which at least "
                f"{_pct(target)} of alerts are true positives ({ppv_text}, sensitivity {_pct(sens)}, flagging "
                f"{_pct(rate)} of discharges).")
    if policy == "sensitivity":
        return (f"Uses the highest threshold ({threshold:.3g} on the calibration split) that still flags at least "
                f"{_pct(target)} of the discharges with the outcome (sensitivity {_pct(sens)}, {ppv_text}, flagging "
                f"{_pct(rate)} of discharges).")
    return (f"Uses the fixed threshold {threshold:.3g}, which flagged {_pct(rate)} of discharges on the calibration "
            f"split (sensitivity {_pct(sens)}, {ppv_text}).")
