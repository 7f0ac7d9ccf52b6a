"""Team evaluation: the team (policy), the clinician alone and the AI alone on the same cases, with paired
cluster-bootstrap intervals, and the curve of specificity against the clinician's workload.

All measures of one call come from the same bootstrap replicates (`careloop.evaluation`'s cluster bootstrap:
patients resampled, as weights), so the differences team - clinician and team - AI are paired.
"""

from __future__ import annotations

from typing import Any

import numpy as np

from careloop.deferral._intervals import best_intervals, in_intervals
from careloop.deferral._policy import DeferralPolicy
from careloop.deferral._validate import (
    DeferralError,
    as_clinician,
    as_labels,
    as_scores,
    check_option,
    require_both_classes,
    same_length,
)
from careloop.evaluation import Estimate, EvaluationError
from careloop.evaluation._bootstrap import map_replicates, percentile_interval
from careloop.evaluation._validate import cluster_codes

RATES = ("sensitivity", "specificity", "ppv", "deferral_rate")
COUNTS = ("false_positives", "false_negatives")
CURVE_PRICES = 21  # prices swept for the workload curve (quantiles of the per-bin gain per unit of mass)


def _cluster_sums(y: np.ndarray, decide: np.ndarray, defer: np.ndarray, codes: np.ndarray, k: int) -> np.ndarray:
    """Per cluster (K, 2 + 3P): positives, negatives, then per decision column true positives, flagged, deferred.

    Every statistic is a count, so a bootstrap replicate (how often each cluster is drawn) gives its counts as one
    product with these sums, whatever the number of rows per cluster."""
    yf = y.astype(float)
    cols = np.column_stack([yf, 1.0 - yf, decide * yf[:, None], decide, defer])
    return np.column_stack([np.bincount(codes, weights=cols[:, j], minlength=k) for j in range(cols.shape[1])])


def _stats(counts: np.ndarray, p: int) -> dict[str, np.ndarray]:
    """Confusion counts and rates for each of the p decision columns from weighted counts (C, 2 + 3p)."""
    pos, neg = counts[:, :1], counts[:, 1:2]
    tp, flagged, deferred = counts[:, 2 : 2 + p], counts[:, 2 + p : 2 + 2 * p], counts[:, 2 + 2 * p :]
    fp = flagged - tp
    fn = pos - tp
    tn = neg - fp
    with np.errstate(divide="ignore", invalid="ignore"):
        return {"sensitivity": tp / pos, "specificity": tn / neg, "ppv": tp / flagged,
                "deferral_rate": deferred / (pos + neg), "false_positives": fp, "false_negatives": fn,
                "tp": tp, "fp": fp, "fn": fn, "tn": tn}


def _paired(y: np.ndarray, decide: np.ndarray, defer: np.ndarray, clusters: Any, n_boot: int, seed: int,
            ci: float) -> tuple[dict[str, np.ndarray], dict, int, dict]:
    """Point statistics (P,), intervals of each statistic (P,) and of the differences column 0 - column j."""
    n, p = y.size, decide.shape[1]
    try:
        codes, n_clusters = cluster_codes(clusters, n)
    except EvaluationError as e:
        raise DeferralError(str(e)) from None
    sums = _cluster_sums(y, decide.astype(float), defer.astype(float), codes, n_clusters)
    point = {k: v[0] for k, v in _stats(sums.sum(axis=0, keepdims=True), p).items()}
    keys = (*RATES, *COUNTS)

    def replicate(counts: np.ndarray) -> np.ndarray:
        s = _stats(counts @ sums, p)
        return np.stack([s[k] for k in keys], axis=1)  # (C, stats, P)

    reps = map_replicates(replicate, n_clusters, n_boot, seed, width=n_clusters + sums.shape[1])
    if reps:
        arr = np.concatenate(reps, axis=0)
        lo, hi = percentile_interval(arr, ci)
        diff = arr[:, :, :1] - arr[:, :, 1:]
        dlo, dhi = percentile_interval(diff, ci)
    else:
        lo = hi = np.full((len(keys), p), np.nan)
        dlo = dhi = np.full((len(keys), p - 1), np.nan)
    intervals = {k: (lo[i], hi[i]) for i, k in enumerate(keys)}
    diffs = {k: (dlo[i], dhi[i]) for i, k in enumerate(keys)}
    return point, intervals, n_clusters, diffs


def _block(point: dict[str, np.ndarray], intervals: dict, j: int, *, exact_rate: float | None = None
           ) -> dict[str, Any]:
    out: dict[str, Any] = {}
    for k in (*RATES, *COUNTS):
        if k == "deferral_rate" and exact_rate is not None:
            out[k] = Estimate(exact_rate, exact_rate, exact_rate).to_dict()
        else:
            out[k] = Estimate.of(point[k][j], intervals[k][0][j], intervals[k][1][j]).to_dict()
    for k in ("tp", "fp", "fn", "tn"):
        out[k] = round(float(point[k][j]))
    return out


def _difference(point: dict[str, np.ndarray], diffs: dict, j: int) -> dict[str, Any]:
    return {k: Estimate.of(point[k][0] - point[k][j], diffs[k][0][j - 1], diffs[k][1][j - 1]).to_dict()
            for k in (*RATES, *COUNTS)}


def validation_figures(policy: DeferralPolicy, s: np.ndarray, c: np.ndarray, y: np.ndarray, *, n_boot: int,
                       seed: int) -> dict[str, Any]:
    """The policy's figures on the validation set (scores on the axis, opinions as 0/1): team, clinician alone,
    AI alone at the policy's `ai_threshold`, and the paired differences, rows resampled as independent cases."""
    defer = in_intervals(s, policy.intervals)
    decide = np.column_stack([np.where(defer, c, s >= policy.theta), c, s >= policy.ai_threshold])
    flags = np.column_stack([defer, np.ones(s.size, bool), np.zeros(s.size, bool)])
    point, intervals, _, diffs = _paired(y, decide, flags, None, n_boot, seed, 0.95)

    def rates(j: int) -> dict[str, Any]:
        return {k: Estimate.of(point[k][j], intervals[k][0][j], intervals[k][1][j]).to_dict() for k in RATES}

    def diff(j: int) -> dict[str, Any]:
        return {k: Estimate.of(point[k][0] - point[k][j], diffs[k][0][j - 1], diffs[k][1][j - 1]).to_dict()
                for k in ("sensitivity", "specificity", "ppv", "deferral_rate")}

    return {"n": int(y.size), "positives": int(y.sum()), "n_boot": int(n_boot), "ci_level": 0.95,
            "team": rates(0), "clinician_alone": rates(1), "ai_alone": rates(2),
            "team_minus_clinician": diff(1), "team_minus_ai": diff(2)}


def curve_regions(policy: DeferralPolicy) -> list[tuple[float, tuple[tuple[float, float], ...]]]:
    """(price, intervals) for the workload curve, from the policy's stored advantage: the best union of at most
    `max_intervals` intervals for the gain minus `price` times the mass of each bin, over a sweep of prices.

    The price is what one deferred case costs (in the units of the objective: false positives avoided); price 0 is
    the policy itself, a very negative price defers every bin with cases, a very large one none. Distinct regions
    only (each at the first price of the sweep that gives it, the policy's at 0), by increasing price.
    """
    adv = policy.advantage
    if not adv:
        return [(0.0, policy.intervals)]
    edges, gain, mass = (np.asarray(adv[k], dtype=float) for k in ("edges", "gain", "mass"))
    has = mass > 0
    ratios = gain[has] / mass[has]
    if ratios.size == 0:
        return [(0.0, policy.intervals)]
    span = float(np.abs(ratios).max()) + 1.0
    prices = np.unique(np.concatenate([np.quantile(ratios, np.linspace(0, 1, CURVE_PRICES)), [0.0, -span, span]]))
    found = best_intervals(gain[None, :] - prices[:, None] * mass[None, :], policy.max_intervals)
    first: dict[tuple[tuple[float, float], ...], float] = {}
    for price, bins in zip(prices, found, strict=True):
        region = policy.intervals if price == 0.0 else tuple((float(edges[a]), float(edges[b])) for a, b in bins)
        first.setdefault(region, float(price))
    first[policy.intervals] = 0.0  # the policy's own region is listed at price 0
    return sorted(((price, region) for region, price in first.items()), key=lambda pr: pr[0])


def team_evaluation(policy: DeferralPolicy | dict, score: Any, clinician: Any, y: Any, *, clusters: Any = None,
                    n_boot: int = 1000, seed: int = 0, ai_threshold: float | None = None,
                    ci: float = 0.95) -> dict[str, Any]:
    """The team (clinician and AI under `policy`) against the clinician alone and the AI alone, on held-out cases.

    Returns the report's `team` block (docs/validation-report.md): the team's sensitivity, specificity, PPV,
    false positives, false negatives and deferral rate at the top level, the same for `clinician_alone` and
    `ai_alone`, the paired differences `team_minus_clinician` and `team_minus_ai`, and `workload_curve`. The AI
    alone flags a case when its score >= `ai_threshold`, by default the policy's own, chosen on the validation set
    (never pass a threshold chosen on these cases). `clusters` (e.g. patient ids) are resampled together.
    """
    if isinstance(policy, dict):
        policy = DeferralPolicy.from_dict(policy)
    if not isinstance(policy, DeferralPolicy):
        raise DeferralError(f"policy must be a DeferralPolicy or its dict, got {type(policy).__name__}")
    check_option(n_boot, "n_boot", low=0, high=1e7, integer=True)
    check_option(seed, "seed", low=0, high=2**63 - 1, integer=True)
    check_option(ci, "ci", low=0, high=1, open_low=True)
    s = policy.score(as_scores(score, "score", transform=policy.score.name))
    c = policy.clinician(as_clinician(clinician, "clinician"))
    yb = as_labels(y, "y")
    same_length("evaluation set", score=s, clinician=c, y=yb)
    require_both_classes(yb, "evaluation set")
    t_ai = policy.ai_threshold if ai_threshold is None else check_option(ai_threshold, "ai_threshold", low=0, high=1)

    regions = curve_regions(policy)
    ai_team = s >= policy.theta
    defer_team = in_intervals(s, policy.intervals)
    decide = [np.where(defer_team, c, ai_team), c, s >= t_ai]
    defer = [defer_team, np.ones(s.size, bool), np.zeros(s.size, bool)]
    for _, region in regions:
        d = in_intervals(s, region)
        decide.append(np.where(d, c, ai_team))
        defer.append(d)
    point, intervals, n_clusters, diffs = _paired(yb, np.column_stack(decide), np.column_stack(defer), clusters,
                                                    int(n_boot), int(seed), float(ci))
    team = _block(point, intervals, 0)
    clin = _block(point, intervals, 1, exact_rate=1.0)
    ai = _block(point, intervals, 2, exact_rate=0.0)
    sens_floor = point["sensitivity"][1] - policy.margin
    curve = []
    for j, (price, region) in enumerate(regions, start=3):
        curve.append({
            "price": price, "intervals": [[lo, hi] for lo, hi in region], "policy": region == policy.intervals,
            "deferral_rate": float(point["deferral_rate"][j]), "sensitivity": float(point["sensitivity"][j]),
            "specificity": Estimate.of(point["specificity"][j], intervals["specificity"][0][j],
                                       intervals["specificity"][1][j]).to_dict(),
            "non_inferior": bool(point["sensitivity"][j] >= sens_floor - 1e-12)})
    curve.sort(key=lambda r: (r["deferral_rate"], r["price"]))
    out: dict[str, Any] = {
        "n": int(s.size), "positives": int(yb.sum()), "clusters": int(n_clusters), "n_boot": int(n_boot),
        "ci_level": float(ci),
        "policy": {"learner": policy.learner, "hash": policy.hash, "theta": policy.theta,
                   "intervals": [[lo, hi] for lo, hi in policy.intervals], "margin": policy.margin,
                   "clinician": policy.clinician.to_dict()["how"]},
        **team,
        "clinician_alone": clin,
        "ai_alone": {**ai, "threshold": t_ai,
                     "chosen_on": "validation" if ai_threshold is None else "given by the caller"},
        "team_minus_clinician": _difference(point, diffs, 1),
        "team_minus_ai": _difference(point, diffs, 2),
        "workload_curve": curve,
    }
    out["summary"] = summary(out)
    return out


def _fmt(e: dict[str, Any], pct: bool = True) -> str:
    if e["estimate"] is None:
        return "n/a"
    f = (lambda v: f"{100 * v:.1f}") if pct else (lambda v: f"{100 * v:+.1f}")
    unit = "%" if pct else " points"
    text = f(e["estimate"]) + unit
    return text if e["ci"] is None else f"{text} ({f(e['ci'][0])} to {f(e['ci'][1])})"


def summary(block: dict[str, Any]) -> str:
    """One sentence for people: the team against the clinician, with intervals, and the workload."""
    d = block["team_minus_clinician"]
    return (f"The team deferred {_fmt(block['deferral_rate'])} of cases to the clinician; against the clinician "
            f"alone its sensitivity changed by {_fmt(d['sensitivity'], pct=False)} and its specificity by "
            f"{_fmt(d['specificity'], pct=False)} (95% intervals); the AI alone at its validation threshold had "
            f"sensitivity {_fmt(block['ai_alone']['sensitivity'])} and specificity "
            f"{_fmt(block['ai_alone']['specificity'])}.")
