"""Numbers to text, one way for every renderer: estimates with their intervals (at the report's `ci_level`, 95%
unless it says otherwise), rates as percentages.

All readers of `report.json` go through these helpers and the small accessors below, so that the HTML page, the
model card and the HTI-1 attributes always quote a number the same way.
"""

from __future__ import annotations

import math
from typing import Any

# measures that are proportions of stays: shown as percentages (their gaps in percentage points)
RATES = frozenset({"sensitivity", "specificity", "ppv", "npv", "tpr", "fpr", "flag_rate", "prevalence"})

METRIC_NAMES = {
    "auroc": "AUROC", "auprc": "AUPRC", "brier": "Brier score", "calibration_intercept": "calibration intercept",
    "calibration_slope": "calibration slope", "observed_expected": "observed/expected ratio",
    "sensitivity": "sensitivity", "specificity": "specificity", "ppv": "PPV", "npv": "NPV",
    "nne": "number needed to evaluate", "tpr": "sensitivity (TPR)", "fpr": "false-positive rate",
    "flag_rate": "flag rate", "net_benefit": "net benefit", "prevalence": "prevalence",
}


def number(x: Any) -> float | None:
    """A finite float, or None for null, NaN, infinity and non-numbers.

    >>> number(0.5), number(float("nan")), number(None), number(True)
    (0.5, None, None, None)
    """
    if isinstance(x, bool) or not isinstance(x, int | float) or not math.isfinite(x):
        return None
    return float(x)


def fnum(x: Any, digits: int = 3, *, sign: bool = False) -> str:
    """A number with `digits` decimals, "n/a" when not computable.

    >>> fnum(0.74123), fnum(-0.0123, sign=True), fnum(None)
    ('0.741', '-0.012', 'n/a')
    """
    v = number(x)
    if v is None:
        return "n/a"
    text = f"{v:+.{digits}f}" if sign else f"{v:.{digits}f}"
    return text[1:] if text.startswith("-") and float(text) == 0 and not sign else text


def fpct(x: Any, digits: int = 1, *, sign: bool = False) -> str:
    """A proportion as a percentage.

    >>> fpct(0.1234), fpct(None)
    ('12.3%', 'n/a')
    """
    v = number(x)
    return "n/a" if v is None else f"{v * 100:{'+' if sign else ''}.{digits}f}%"


def level_text(level: float) -> str:
    """A confidence level as a percentage without trailing zeros.

    >>> level_text(0.95), level_text(0.9), level_text(0.975)
    ('95%', '90%', '97.5%')
    """
    return f"{level * 100:.6g}%"


def est(e: Any, digits: int = 3, *, rate: bool = False, sign: bool = False, level: float = 0.95) -> str:
    """An estimate {"estimate", "ci"} as "0.741 (95% CI 0.712 to 0.770)"; rates in percent; `level` is the
    interval's confidence level (the report's `ci_level`).

    >>> est({"estimate": 0.7412, "ci": [0.7121, 0.7703]})
    '0.741 (95% CI 0.712 to 0.770)'
    >>> est({"estimate": 0.25, "ci": [0.2, 0.3]}, rate=True)
    '25.0% (95% CI 20.0% to 30.0%)'
    >>> est({"estimate": None, "ci": None})
    'not computable'
    >>> est({"estimate": 0.7412, "ci": [0.7121, 0.7703]}, level=0.9)
    '0.741 (90% CI 0.712 to 0.770)'
    """
    point, ci = estimate(e), interval(e)
    if point is None:
        return "not computable"

    def one(v: float | None, s: bool) -> str:
        return fpct(v, 1, sign=s) if rate else fnum(v, digits, sign=s)

    text = one(point, sign)
    if ci is not None:
        text += f" ({level_text(level)} CI {one(ci[0], False)} to {one(ci[1], False)})"
    return text


def metric(name: str, e: Any, *, level: float = 0.95) -> str:
    """An estimate formatted the way its measure is read (rates in percent, the rest to three decimals)."""
    if name == "nne":
        return est(e, 1, level=level)
    return est(e, rate=name in RATES, level=level)


def gap(name: str, e: Any) -> str:
    """A subgroup gap: rates in percentage points, observed/expected as a log ratio, others signed decimals."""
    point, ci = estimate(e), interval(e)
    if point is None:
        return "not computable"
    if name in RATES:
        text = f"{point * 100:+.1f} pp"
        return text + (f" (95% CI {ci[0] * 100:+.1f} to {ci[1] * 100:+.1f})" if ci else "")
    text = fnum(point, 3, sign=True) + (" log ratio" if name == "observed_expected" else "")
    return text + (f" (95% CI {fnum(ci[0], 3, sign=True)} to {fnum(ci[1], 3, sign=True)})" if ci else "")


def estimate(e: Any) -> float | None:
    """The point value of an estimate dict (or of a bare number)."""
    return number(e.get("estimate")) if isinstance(e, dict) else number(e)


def interval(e: Any) -> tuple[float, float] | None:
    """The (lo, hi) of an estimate dict, or None."""
    ci = e.get("ci") if isinstance(e, dict) else None
    if not isinstance(ci, list | tuple) or len(ci) != 2:
        return None
    lo, hi = number(ci[0]), number(ci[1])
    return None if lo is None or hi is None else (lo, hi)


def count(n: Any) -> str:
    """An integer with thousands separators.

    >>> count(12345), count(None)
    ('12,345', 'n/a')
    """
    return "n/a" if number(n) is None else f"{round(n):,}"


def day(ts: Any) -> str:
    """The date part of an ISO timestamp, "unknown" when absent."""
    return str(ts)[:10] if ts else "unknown"


def metric_name(name: str) -> str:
    return METRIC_NAMES.get(name, name.replace("_", " "))


# ---- accessors over report.json (tolerant of absent optional parts) ----

def primary(report: dict) -> dict:
    """The primary score's Evaluation dict."""
    return (report.get("scores") or {}).get(report.get("primary"), {}) or {}


def scores(report: dict) -> list[tuple[str, dict]]:
    """Every score's Evaluation, the primary first, then `report["order"]` or the mapping's order (report.json
    is written with sorted keys, so the mapping's own order may not survive a round trip).

    >>> [n for n, _ in scores({"primary": "m", "scores": {"a": {}, "m": {}, "b": {}}})]
    ['m', 'a', 'b']
    >>> [n for n, _ in scores({"primary": "m", "order": ["m", "b", "a"], "scores": {"a": {}, "m": {}, "b": {}}})]
    ['m', 'b', 'a']
    """
    evs = report.get("scores") or {}
    order = [n for n in report.get("order") or [] if n in evs]
    names = list(dict.fromkeys([report.get("primary"), *order, *evs]))
    return [(n, evs[n] or {}) for n in names if n in evs]


def ci_level(report: dict) -> float:
    """The confidence level of the primary score's intervals (`ci_level`), 0.95 when the report does not say.

    >>> ci_level({"primary": "m", "scores": {"m": {"ci_level": 0.9}}}), ci_level({})
    (0.9, 0.95)
    """
    level = number(primary(report).get("ci_level"))
    return level if level is not None and 0 < level < 1 else 0.95


def model_block(report: dict) -> dict:
    return report.get("model") or {}


def test_split(report: dict) -> dict:
    return ((report.get("data") or {}).get("splits") or {}).get("test") or {}


def operating_row(report: dict) -> dict | None:
    """The primary score's threshold-table row at the chosen operating point, on the test split."""
    row = primary(report).get("operating_point")
    return row if isinstance(row, dict) else None


def index_unit(report: dict) -> str:
    """What one prediction is about, for "alerts per 100 ...": discharges for a discharge-time task, else stays."""
    data = report.get("data") or {}
    text = " ".join(str(x) for x in (report.get("title"), model_block(report).get("task"), data.get("label"),
                                     data.get("source"))).lower()
    return "discharges" if "discharge" in text or "readmission" in text else "stays"


def target_text(op: dict, unit: str) -> str:
    """The operating-point policy's target in words."""
    policy, target = op.get("policy"), op.get("target")
    if policy == "budget":  # the fraction of index stays flagged
        share = number(target)
        return f"a budget of {'n/a' if share is None else f'{share * 100:.3g}'} alerts per 100 {unit}"
    if policy in ("ppv", "sensitivity"):
        return f"{metric_name(policy)} of at least {fpct(target)}"
    if policy == "threshold":
        return f"a fixed risk threshold of {fpct(target)}"
    return f"{policy} {target}"


NB_NOT_RECORDED = ("not available (this report predates net benefit at the operating threshold, and its decision "
                   "curve has no point there)")


def treat_all(ev: dict, threshold: Any) -> float | None:
    """Net benefit of treating everyone at `threshold`: prevalence - (1 - prevalence) * t/(1-t).

    >>> treat_all({"prevalence": 0.2}, 0.5), treat_all({"prevalence": 0.2}, 1.0)
    (-0.6000000000000001, None)
    """
    prev, t = number(ev.get("prevalence")), number(threshold)
    if prev is None or t is None or not 0 <= t < 1:
        return None
    return prev - (1 - prev) * t / (1 - t)


def net_benefit_at(ev: dict, row: dict | None) -> dict | None:
    """Net benefit at the operating-point row's own threshold: {"threshold", "net_benefit", "treat_all"}.

    `evaluate` records it in the row; a report.json written before that has only the decision curve (0.01..0.50),
    whose point is used only when it lies exactly on the threshold (a nearer grid point is another threshold's net
    benefit). None when neither gives it.

    >>> ev = {"prevalence": 0.2, "decision_curve": [{"threshold": 0.5, "net_benefit": {"estimate": 0.1}}]}
    >>> net_benefit_at(ev, {"threshold": 0.5})["net_benefit"], net_benefit_at(ev, {"threshold": 0.7})
    ({'estimate': 0.1}, None)
    """
    t = number((row or {}).get("threshold"))
    if t is None:
        return None
    nb = (row or {}).get("net_benefit")
    if not isinstance(nb, dict):
        on_grid = [r for r in ev.get("decision_curve") or [] if number(r.get("threshold")) is not None
                   and abs(r["threshold"] - t) < 1e-12]
        if not on_grid:
            return None
        nb = on_grid[0].get("net_benefit")
    return {"threshold": t, "net_benefit": nb, "treat_all": treat_all(ev, t)}
