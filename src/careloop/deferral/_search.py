"""The search shared by the learners: checked inputs, the (theta, lam) grid, the validation of every candidate
configuration, the selection rule and the construction of the policy.

Selection happens on the validation set only. A configuration qualifies when its validation sensitivity is at
least the clinician's minus `margin` and its validation specificity is strictly higher than the clinician's; the
chosen one has the highest specificity, where differences within `tolerance` of the best (by default one standard
error of the best specificity, sqrt(sp (1 - sp) / negatives): differences the validation set cannot resolve) count
as ties, which go to the lowest deferral rate (the clinician's workload), then the highest specificity, then the
highest sensitivity, then the search order (learners in the order given; within a learner its grid order).
`tolerance=0` is the strict rule (best specificity, then sensitivity, then deferral rate). The tolerance matters
with many configurations: the best of a thousand validation specificities is partly luck, and without it a
clinician whose opinion adds nothing to the score can get a sliver of cases near the AI's threshold, which only
randomises the AI's decision there. One more configuration
competes: the AI alone at its validation threshold (the largest whose validation sensitivity is at least the
clinician's), deferring nothing, so that a deferral region is kept only when it beats the AI alone as well as the
clinician on the validation set (the policy's learner is then "ai_alone"). When nothing qualifies, the policy
defers every case to the clinician (learner "clinician_alone") and says so.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, replace
from typing import Any

import numpy as np
from threadpoolctl import threadpool_limits

from careloop.deferral._intervals import Bins, bin_index, bins_mask
from careloop.deferral._policy import ClinicianRule, DeferralDecision, DeferralPolicy, ScoreTransform
from careloop.deferral._team import validation_figures
from careloop.deferral._validate import DeferralError, check_case_set, check_option, check_transform

THETA_LEVELS = tuple(round(0.05 * i, 2) for i in range(1, 20))
SENSITIVITY_WEIGHTS = (0.125, 0.25, 0.5, 1.0, 2.0, 4.0, 8.0)
AI_ALONE = "ai_alone"
AI_ALONE_METHOD = ("the AI alone at its validation threshold (nothing deferred): no deferral configuration had a "
                   "better validation specificity at non-inferior sensitivity")
SELECTION_RULE = ("qualify: validation sensitivity >= clinician's - margin and validation specificity > clinician's; "
                  "choose: highest specificity, specificities within the tolerance of the best counting as ties, "
                  "which go to the lowest deferral rate, then specificity, sensitivity, search order")


def as_grid(value: Any, name: str, *, low: float, high: float, integer: bool = False, open_low: bool = False
            ) -> tuple:
    """A single value or a non-empty sequence of values -> a tuple of checked values (duplicates dropped)."""
    values = list(value) if isinstance(value, Sequence | np.ndarray) and not isinstance(value, str) else [value]
    if not values:
        raise DeferralError(f"{name} must have at least one value")
    checked = [check_option(v, name, low=low, high=high, integer=integer, open_low=open_low) for v in values]
    return tuple(dict.fromkeys(checked))


def matched_sensitivity_threshold(s: np.ndarray, y: np.ndarray, target_tp: int) -> float:
    """The largest threshold at which s >= threshold finds at least target_tp (>= 1) of the positives."""
    pos = np.sort(s[y])[::-1]
    k = min(max(int(target_tp), 1), pos.size)
    return float(pos[k - 1])


def matched_specificity_threshold(s: np.ndarray, y: np.ndarray, target_tn: int) -> float:
    """The smallest threshold at which s < threshold clears at least target_tn of the negatives (flags the rest)."""
    neg = np.sort(s[~y])
    k = min(max(int(target_tn), 0), neg.size)
    if k == 0:
        return float(neg[0])
    return float(np.nextafter(neg[k - 1], np.inf)) if neg[k - 1] < 1.0 else 1.0


def check_tolerance(value: Any) -> float | str:
    if value == "se":
        return "se"
    if isinstance(value, str):
        raise DeferralError(f"tolerance must be 'se' (one standard error) or a number in [0, 1], got {value!r}")
    return check_option(value, "tolerance", low=0, high=1)


@dataclass
class Prepared:
    """Checked tuning and validation sets on the score axis, the clinician read as 0/1, and the shared grids."""

    tune_s: np.ndarray
    tune_c: np.ndarray
    tune_y: np.ndarray
    val_s: np.ndarray
    val_c: np.ndarray
    val_y: np.ndarray
    transform: ScoreTransform
    clinician: ClinicianRule
    thetas: np.ndarray
    lams: np.ndarray
    weights: list[float | None]  # the sensitivity weight behind each lam (None when lam was given)
    ai_threshold: float
    margin: float
    tolerance: float | str
    max_intervals: int
    n_boot: int
    seed: int


@dataclass
class Batch:
    """Candidate configurations sharing one binning of the score axis: per candidate its hyperparameters, theta,
    gain per bin and deferral bins; `mass` is the share of tuning cases per bin."""

    learner: str
    hyper: list[dict[str, Any]]
    theta: np.ndarray
    edges: np.ndarray
    gain: np.ndarray
    mass: np.ndarray
    found: list[Bins]


class Learner:
    """Shared options and the scikit-learn style surface of the deferral learners."""

    name = "learner"
    method = ""

    def __init__(self, *, theta: float | Sequence[float] | None = None, lam: float | Sequence[float] | None = None,
                 max_intervals: int = 2, margin: float = 0.0, tolerance: float | str = "se",
                 clinician_threshold: float | str = 0.5, score_transform: str | None = None, n_boot: int = 200,
                 seed: int = 0):
        self.theta = None if theta is None else as_grid(theta, "theta", low=0, high=1)
        self.lam = None if lam is None else as_grid(lam, "lam", low=0, high=1e9, open_low=True)
        self.max_intervals = int(check_option(max_intervals, "max_intervals", low=1, high=20, integer=True))
        self.margin = check_option(margin, "margin", low=0, high=1)
        self.tolerance = check_tolerance(tolerance)
        self.clinician_threshold = clinician_threshold
        self.score_transform = check_transform(score_transform)
        self.n_boot = int(check_option(n_boot, "n_boot", low=0, high=1e6, integer=True))
        self.seed = int(check_option(seed, "seed", low=0, high=2**63 - 1, integer=True))

    def options(self) -> dict[str, Any]:
        return {"theta": self.theta, "lam": self.lam, "max_intervals": self.max_intervals, "margin": self.margin,
                "tolerance": self.tolerance, "clinician_threshold": self.clinician_threshold,
                "score_transform": self.score_transform, "n_boot": self.n_boot, "seed": self.seed}

    def candidates(self, prep: Prepared) -> list[Batch]:  # pragma: no cover - each learner defines it
        raise NotImplementedError

    def fit(self, tune_score: Any, tune_clinician: Any, tune_y: Any, val_score: Any, val_clinician: Any,
            val_y: Any) -> Learner:
        prep = prepare((tune_score, tune_clinician, tune_y), (val_score, val_clinician, val_y), **self.options())
        self.policy_ = search(prep, [self])
        return self

    def predict(self, score: Any, clinician: Any = None) -> DeferralDecision:
        if not hasattr(self, "policy_"):
            raise DeferralError(f"this {type(self).__name__} is not fitted yet: call fit(...) first")
        return self.policy_.predict(score, clinician)


def prepare(tune: tuple[Any, Any, Any], val: tuple[Any, Any, Any], *, theta: Any = None, lam: Any = None,
            max_intervals: int = 2, margin: float = 0.0, tolerance: float | str = "se",
            clinician_threshold: float | str = 0.5, score_transform: str | None = None, n_boot: int = 200,
            seed: int = 0) -> Prepared:
    transform_name = check_transform(score_transform)
    ts, tc, ty = check_case_set(*tune, "tuning", transform_name)
    vs, vc, vy = check_case_set(*val, "validation", transform_name)
    transform = ScoreTransform.fit(transform_name, ts)
    ts, vs = transform(ts), transform(vs)
    rule = ClinicianRule.fit(clinician_threshold, tc, vc, ty)
    tcb, vcb = rule(tc), rule(vc)
    if theta is None:
        tp_clin = int((tcb & ty).sum())
        tn_clin = int((~tcb & ~ty).sum())
        grid = np.concatenate([np.quantile(ts, THETA_LEVELS), [matched_sensitivity_threshold(ts, ty, tp_clin),
                                                               matched_specificity_threshold(ts, ty, tn_clin)]])
        thetas = np.unique(grid)
    else:
        thetas = np.unique(np.asarray(as_grid(theta, "theta", low=0, high=1), dtype=float))
    if lam is None:
        ratio = (ty.size - ty.sum()) / ty.sum()
        lams = np.array([w * ratio for w in SENSITIVITY_WEIGHTS])
        weights: list[float | None] = list(SENSITIVITY_WEIGHTS)
    else:
        lams = np.asarray(as_grid(lam, "lam", low=0, high=1e9, open_low=True), dtype=float)
        weights = [None] * lams.size
    ai_threshold = matched_sensitivity_threshold(vs, vy, int((vcb & vy).sum()))
    return Prepared(ts, tcb, ty, vs, vcb, vy, transform, rule, thetas, lams, weights, ai_threshold,
                    check_option(margin, "margin", low=0, high=1), check_tolerance(tolerance),
                    int(check_option(max_intervals, "max_intervals", low=1, high=20, integer=True)),
                    int(check_option(n_boot, "n_boot", low=0, high=1e6, integer=True)),
                    int(check_option(seed, "seed", low=0, high=2**63 - 1, integer=True)))


def _validate_batch(prep: Prepared, batch: Batch) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Validation (true positives, true negatives, deferred cases) of every candidate of a batch."""
    idx = bin_index(prep.val_s, batch.edges)
    masks = np.stack([bins_mask(f, batch.edges.size - 1) for f in batch.found])  # (P, bins)
    tp, tn, deferred = (np.empty(len(batch.found), dtype=np.int64) for _ in range(3))
    y, c = prep.val_y, prep.val_c
    step = max(1, 2_000_000 // max(prep.val_s.size, 1))
    for start in range(0, masks.shape[0], step):
        sl = slice(start, start + step)
        defer = masks[sl][:, idx]  # (p, n)
        team = np.where(defer, c[None, :], prep.val_s[None, :] >= batch.theta[sl, None])
        tp[sl] = (team & y).sum(axis=1)
        tn[sl] = (~team & ~y).sum(axis=1)
        deferred[sl] = defer.sum(axis=1)
    return tp, tn, deferred


def _intervals(edges: np.ndarray, found: Bins) -> tuple[tuple[float, float], ...]:
    return tuple((float(edges[a]), float(edges[b])) for a, b in found)


def search(prep: Prepared, learners: Sequence[Learner]) -> DeferralPolicy:
    """Every learner's candidates, validated; the selection rule; the policy."""
    # One BLAS thread: the products here are small, and it keeps the fit bit-for-bit reproducible across machines.
    with threadpool_limits(limits=1, user_api="blas"):
        batches = [b for learner in learners for b in learner.candidates(prep)]
    # The AI alone at its validation threshold (nothing deferred) competes too: deferring has to beat it.
    batches.append(Batch(AI_ALONE, [{}], np.array([prep.ai_threshold]), np.array([0.0, 1.0]), np.zeros((1, 1)),
                         np.ones(1), [()]))
    y, c = prep.val_y, prep.val_c
    n_pos, n_neg = int(y.sum()), int((~y).sum())
    clin_tp, clin_tn = int((c & y).sum()), int((~c & ~y).sum())
    rows = []  # (batch, index) in search order
    stats = []
    for bi, batch in enumerate(batches):
        tp, tn, deferred = _validate_batch(prep, batch)
        stats.append(np.column_stack([tp, tn, deferred]))
        rows.extend((bi, j) for j in range(len(batch.found)))
    table = np.concatenate(stats)
    tp, tn, deferred = table[:, 0], table[:, 1], table[:, 2]
    qualified = (tp >= clin_tp - prep.margin * n_pos - 1e-9) & (tn > clin_tn)
    names = [*(learner.name for learner in learners), AI_ALONE]
    per_learner: dict[str, dict[str, Any]] = {}
    learner_of = np.array([names.index(batches[bi].learner) for bi, _ in rows])

    def describe(i: int) -> dict[str, Any]:
        bi, j = rows[i]
        b = batches[bi]
        return {"hyperparameters": b.hyper[j], "theta": float(b.theta[j]),
                "intervals": [list(iv) for iv in _intervals(b.edges, b.found[j])],
                "sensitivity": float(tp[i] / n_pos), "specificity": float(tn[i] / n_neg),
                "deferral_rate": float(deferred[i] / y.size)}

    def best(mask: np.ndarray) -> int | None:
        idx = np.flatnonzero(mask)
        if idx.size == 0:
            return None
        top = int(tn[idx].max())
        if prep.tolerance == "se":
            sp = top / n_neg
            slack = np.sqrt(sp * (1 - sp) / n_neg) * n_neg
        else:
            slack = float(prep.tolerance) * n_neg
        near = idx[tn[idx] >= top - slack - 1e-9]
        if slack > 0:
            order = np.lexsort((near, -tp[near], -tn[near], deferred[near]))  # last key first: workload
        else:
            order = np.lexsort((near, deferred[near], -tp[near], -tn[near]))
        return int(near[order[0]])

    for k, name in enumerate(names):
        mine = learner_of == k
        chosen = best(qualified & mine)
        per_learner[name] = {"candidates": int(mine.sum()), "qualified": int((qualified & mine).sum()),
                             "best": None if chosen is None else describe(chosen)}
    chosen = best(qualified)
    clin = {"sensitivity": clin_tp / n_pos, "specificity": clin_tn / n_neg}
    selection: dict[str, Any] = {"chosen_on": "validation", "rule": SELECTION_RULE, "margin": prep.margin,
                                 "tolerance": prep.tolerance,
                                 "candidates": int(table.shape[0]), "qualified": int(qualified.sum()),
                                 "clinician_on_validation": clin, "learners": per_learner}
    common = {"ai_threshold": prep.ai_threshold, "score": prep.transform, "clinician": prep.clinician,
              "margin": prep.margin, "max_intervals": prep.max_intervals, "seed": prep.seed,
              "tuning": {"n": int(prep.tune_y.size), "positives": int(prep.tune_y.sum()),
                         "prevalence": float(prep.tune_y.mean()), "thetas": [float(t) for t in prep.thetas],
                         "lambdas": [float(v) for v in prep.lams]}}
    if chosen is None:
        selection.update(fallback=True, reason=(
            f"none of the {table.shape[0]} configurations had validation sensitivity at least the clinician's "
            f"({clin['sensitivity']:.3f}) minus {prep.margin} and specificity above the clinician's "
            f"({clin['specificity']:.3f}): every case is deferred to the clinician (the clinician alone)"))
        theta, intervals = prep.ai_threshold, ((0.0, 1.0),)
        policy = DeferralPolicy(learner="clinician_alone", theta=theta, intervals=intervals,
                                method="defer every case to the clinician (no configuration qualified)",
                                hyperparameters={}, advantage=None, selection=selection, validation={}, **common)
    else:
        bi, j = rows[chosen]
        b = batches[bi]
        method = AI_ALONE_METHOD if b.learner == AI_ALONE else learners[names.index(b.learner)].method
        what = ("no deferral region beat the AI alone at its validation threshold" if b.learner == AI_ALONE else
                f"{b.learner} was chosen")
        selection.update(fallback=False, reason=(
            f"{what}: validation specificity {tn[chosen] / n_neg:.3f} (clinician {clin['specificity']:.3f}, best "
            f"qualified {int(tn[qualified].max()) / n_neg:.3f}, tolerance {prep.tolerance}) and sensitivity "
            f"{tp[chosen] / n_pos:.3f} (clinician {clin['sensitivity']:.3f}, margin {prep.margin}), deferring "
            f"{deferred[chosen] / y.size:.1%} of cases"))
        advantage = {"edges": [float(e) for e in b.edges], "gain": [float(g) for g in b.gain[j]],
                     "mass": [float(m) for m in b.mass]}
        policy = DeferralPolicy(learner=b.learner, theta=float(b.theta[j]), intervals=_intervals(b.edges, b.found[j]),
                                method=method, hyperparameters=b.hyper[j], advantage=advantage,
                                selection=selection, validation={}, **common)
    return replace(policy, validation=validation_figures(policy, prep.val_s, prep.val_c, prep.val_y, n_boot=prep.n_boot,
                                                         seed=prep.seed))
