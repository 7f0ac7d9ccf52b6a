"""Every metric as a weighted statistic, computed for many bootstrap replicates at once.

Rows are collapsed once into *cells* of equal (score, label), sorted by descending score; equal scores form a
*tie group* (at most one positive and one negative cell). A replicate is a row of cell weights W (C x m), so:

- AUROC is the weighted Mann-Whitney statistic: each negative counts the positive weight ranked above it, plus half
  the positive weight tied with it (this is what the trapezoidal ROC area gives with ties);
- average precision is sum over tie groups of (positive weight of the group / all positive weight) x the precision
  among everything scored at or above the group, as in scikit-learn's `average_precision_score`;
- confusion counts at a threshold t (flag when score >= t) are cumulative sums up to the last group scoring >= t;
- Brier, observed/expected, mean predicted and observed rate are matrix-vector products.

The calibration slope and intercept are logistic regressions. scikit-learn fits one weighted problem per call, and
1,000 calls cost far more than the data, so they are fitted here by Newton-Raphson for all replicates at once
(one or two parameters: the Hessian is solved in closed form), starting from the point estimate, which converges
in three iterations, the first of which is shared by all replicates (matrix-vector products only). A replicate
that does not converge (separation, a constant score) is undefined (NaN).
"""

from __future__ import annotations

from dataclasses import dataclass
from functools import cached_property

import numpy as np

CLIP = 1e-6  # probabilities are clipped to [CLIP, 1 - CLIP] before the logit
MAX_ITER = 60
# Newton stops once a step is below TOL x (1 + |parameter|). Its error squares at each step (measured: 1e-3, 3e-6,
# 7e-12), so after a step below 1e-5 what remains is of order 1e-10, far below any interval's width, and the
# iteration that would only confirm it is saved. Point estimates (one replicate, cheap) use POINT_TOL.
TOL = 1e-5
POINT_TOL = 1e-10
MAX_STEP = 5.0  # a Newton step larger than this (on the logit scale) is shortened: guards the first iterations


def logit(p: np.ndarray) -> np.ndarray:
    """logit of p clipped to [1e-6, 1 - 1e-6], so that p = 0 or 1 stay finite."""
    q = np.clip(p, CLIP, 1 - CLIP)
    return np.log(q) - np.log1p(-q)


@dataclass(frozen=True)
class Cells:
    """Rows collapsed to cells of equal (score, label), in descending score order (negatives first in a tie)."""

    score: np.ndarray  # (m,) score of each cell
    label: np.ndarray  # (m,) bool
    tie: np.ndarray  # (m,) tie group of each cell; groups are numbered in descending score
    tie_score: np.ndarray  # (G,) the distinct scores, descending
    counts: np.ndarray  # (m,) rows in each cell
    row_codes: np.ndarray  # (n,) cluster code of each row, rows in cell order
    starts: np.ndarray | None  # (m,) first row of each cell; None when every cell is one row

    @classmethod
    def build(cls, y: np.ndarray, p: np.ndarray, codes: np.ndarray) -> Cells:
        n = y.size
        order = np.lexsort((y, -p))
        ps, ys = p[order], y[order]
        new = np.ones(n, dtype=bool)
        new[1:] = (ps[1:] != ps[:-1]) | (ys[1:] != ys[:-1])
        starts = np.flatnonzero(new)
        score, label = ps[starts], ys[starts].astype(bool)
        counts = np.diff(np.append(starts, n)).astype(float)
        new_tie = np.ones(score.size, dtype=bool)
        new_tie[1:] = score[1:] != score[:-1]
        return cls(score=score, label=label, tie=np.cumsum(new_tie) - 1, tie_score=score[new_tie], counts=counts,
                   row_codes=codes[order], starts=None if starts.size == n else starts)

    def weights(self, cluster_counts: np.ndarray) -> np.ndarray:
        """(C, K) cluster multiplicities -> (C, m) cell weights: each row weighs what its cluster does."""
        w = cluster_counts[:, self.row_codes]
        return w if self.starts is None else np.add.reduceat(w, self.starts, axis=1)

    def unit_weights(self) -> np.ndarray:
        """The observed data as one replicate (every row once)."""
        return self.counts[None, :]

    def flagged_groups(self, thresholds: np.ndarray) -> np.ndarray:
        """How many tie groups score >= each threshold (the flagged rows are a prefix in cell order)."""
        return np.searchsorted(-self.tie_score, -np.asarray(thresholds, dtype=float), side="right")

    # Per-cell vectors, computed once per Cells: recomputing them per chunk would cost O(m) each time, as much as
    # the work of a whole chunk when few replicates fit in one (large n).

    @cached_property
    def x(self) -> np.ndarray:
        return logit(self.score)

    @cached_property
    def exp_neg_x(self) -> np.ndarray:
        return np.exp(-self.x)

    @cached_property
    def columns(self) -> np.ndarray:
        """(m, 5): 1, y, p, (p - y)^2, y logit(p); their weighted sums (one matrix product) give every linear
        statistic: see `linear_sums`."""
        y = self.label.astype(float)
        return np.column_stack([np.ones_like(y), y, self.score, (self.score - y) ** 2, y * self.x])

    @cached_property
    def powers_x(self) -> np.ndarray:
        """(m, 3): 1, x, x^2 for the logistic fits' gradient and Hessian."""
        return np.column_stack([np.ones_like(self.x), self.x, self.x * self.x])

    @cached_property
    def _first_steps(self) -> dict[tuple[float, ...], np.ndarray]:
        return {}

    def first_step(self, a: float, b: float | None) -> np.ndarray:
        """The (m, k) columns whose weighted sums are the gradient and Hessian of the first Newton iteration from
        (a, b), shared by every replicate starting there; b None is the offset model (slope fixed at 1)."""
        key = (a,) if b is None else (a, b)
        if key not in self._first_steps:
            with np.errstate(over="ignore"):
                if b is None:
                    mu = 1 / (1 + np.exp(-a) * self.exp_neg_x)
                    cols = np.column_stack([mu, mu * (1 - mu)])
                else:
                    mu = 1 / (1 + np.exp(-(a + b * self.x)))
                    cols = np.column_stack([self.powers_x[:, :2] * mu[:, None],
                                            self.powers_x * (mu * (1 - mu))[:, None]])
            self._first_steps[key] = cols
        return self._first_steps[key]


class Ranked:
    """Per tie group positive and negative weight (C x G), and their running sums from the top score down, computed
    only when a statistic needs them (a cumulative sum is one of the costlier passes)."""

    def __init__(self, pos: np.ndarray, neg: np.ndarray) -> None:
        self.pos, self.neg = pos, neg

    @classmethod
    def of(cls, cells: Cells, w: np.ndarray) -> Ranked:
        groups = cells.tie_score.size
        if groups == cells.score.size:  # no score shared by a positive and a negative: one cell per group
            pos = w * cells.label
            return cls(pos, w - pos)
        pos = np.zeros((w.shape[0], groups))
        neg = np.zeros((w.shape[0], groups))
        pos[:, cells.tie[cells.label]] = w[:, cells.label]
        neg[:, cells.tie[~cells.label]] = w[:, ~cells.label]
        return cls(pos, neg)

    @cached_property
    def cum_pos(self) -> np.ndarray:
        return np.cumsum(self.pos, axis=1)

    @cached_property
    def cum_neg(self) -> np.ndarray:
        return np.cumsum(self.neg, axis=1)

    @cached_property
    def positives(self) -> np.ndarray:
        return self.cum_pos[:, -1] if "cum_pos" in self.__dict__ else self.pos.sum(axis=1)

    @cached_property
    def negatives(self) -> np.ndarray:
        return self.cum_neg[:, -1] if "cum_neg" in self.__dict__ else self.neg.sum(axis=1)

    def flagged(self, groups: int) -> tuple[np.ndarray, np.ndarray]:
        """(positive, negative) weight in the first `groups` tie groups."""
        if groups == 0:
            return np.zeros(self.pos.shape[0]), np.zeros(self.pos.shape[0])
        tp = self.cum_pos[:, groups - 1] if "cum_pos" in self.__dict__ else self.pos[:, :groups].sum(axis=1)
        fp = self.cum_neg[:, groups - 1] if "cum_neg" in self.__dict__ else self.neg[:, :groups].sum(axis=1)
        return tp, fp


def ratio(num: np.ndarray, den: np.ndarray) -> np.ndarray:
    """num / den, NaN where den is 0 (the statistic is undefined for that replicate)."""
    num, den = np.broadcast_arrays(np.asarray(num, dtype=float), np.asarray(den, dtype=float))
    out = np.full(num.shape, np.nan)
    with np.errstate(over="ignore"):
        np.divide(num, den, out=out, where=den != 0)
    return out


def auroc(r: Ranked) -> np.ndarray:
    """Weighted AUROC per replicate: P(score of a positive > score of a negative) + 1/2 P(tie)."""
    above = np.einsum("ij,ij->i", r.neg, r.cum_pos) - 0.5 * np.einsum("ij,ij->i", r.neg, r.pos)
    return ratio(above, r.positives * r.negatives)


def average_precision(r: Ranked) -> np.ndarray:
    """Weighted average precision per replicate (scikit-learn's definition, no interpolation)."""
    flagged = r.cum_pos + r.cum_neg
    precision = np.zeros_like(flagged)
    np.divide(r.cum_pos, flagged, out=precision, where=flagged > 0)
    return ratio(np.einsum("ij,ij->i", r.pos, precision), r.positives)


def confusion(r: Ranked, flagged_groups: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """(tp, fp, fn, tn), each (C, T), when the first `flagged_groups[t]` tie groups are flagged."""
    k = np.atleast_1d(np.asarray(flagged_groups))
    if k.size == 1:  # one threshold (fairness): a prefix sum, without the running sums
        tp, fp = (v[:, None] for v in r.flagged(int(k[0])))
    else:
        idx = np.maximum(k - 1, 0)
        some = k > 0
        tp = np.where(some, r.cum_pos[:, idx], 0.0)
        fp = np.where(some, r.cum_neg[:, idx], 0.0)
    return tp, fp, r.positives[:, None] - tp, r.negatives[:, None] - fp


TOTAL, POS, SCORE, SQERR, POS_X = range(5)  # the columns of `linear_sums`


def linear_sums(cells: Cells, w: np.ndarray) -> np.ndarray:
    """(C, 5) weighted sums of `Cells.columns`: total weight, positives, sum of p, squared error, sum of y logit(p)."""
    return w @ cells.columns


def brier(cells: Cells, w: np.ndarray, sums: np.ndarray | None = None) -> np.ndarray:
    s = linear_sums(cells, w) if sums is None else sums
    return ratio(s[:, SQERR], s[:, TOTAL])


def observed_expected(cells: Cells, w: np.ndarray, sums: np.ndarray | None = None) -> np.ndarray:
    s = linear_sums(cells, w) if sums is None else sums
    return ratio(s[:, POS], s[:, SCORE])


def means(cells: Cells, w: np.ndarray, sums: np.ndarray | None = None) -> tuple[np.ndarray, np.ndarray]:
    """(mean predicted, observed rate) per replicate."""
    s = linear_sums(cells, w) if sums is None else sums
    return ratio(s[:, SCORE], s[:, TOTAL]), ratio(s[:, POS], s[:, TOTAL])


def _both_classes(s: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    pos = s[:, POS]
    return pos, (pos > 0) & (pos < s[:, TOTAL])


def _converged(step: np.ndarray, value: np.ndarray, tol: float) -> np.ndarray:
    return np.abs(step) <= tol * (1 + np.abs(value))


def _shared(start: float | np.ndarray) -> bool:
    """True when every replicate starts from the same value: the first iteration then needs no per-replicate
    probabilities, only matrix-vector products (one full pass over the C x m weights saved)."""
    return np.ndim(start) == 0


def calibration_intercept(cells: Cells, w: np.ndarray, start: float | np.ndarray = 0.0, tol: float = TOL,
                          sums: np.ndarray | None = None) -> np.ndarray:
    """Calibration-in-the-large per replicate: a in logit P(y) = a + logit(p), i.e. logit(p) as an offset.

    Newton-Raphson on the score equation sum w (y - expit(a + x)) = 0, all replicates at once. With the slope
    fixed, expit(a + x) = 1 / (1 + e^-a e^-x), so an iteration needs no exponential per row.
    """
    c, v = w.shape[0], cells.exp_neg_x
    pos, ok = _both_classes(linear_sums(cells, w) if sums is None else sums)
    a = np.where(ok, np.broadcast_to(np.asarray(start, dtype=float), (c,)), np.nan)
    active = np.flatnonzero(ok)
    for it in range(MAX_ITER):
        if active.size == 0:
            break
        wa = w if active.size == c else w[active]
        if it == 0 and _shared(start):
            first = wa @ cells.first_step(float(start), None)
            grad, hess = pos[active] - first[:, 0], first[:, 1]
        else:
            with np.errstate(over="ignore"):
                mu = np.multiply.outer(np.exp(-a[active]), v)
            mu += 1
            np.reciprocal(mu, out=mu)
            grad = pos[active] - np.einsum("ij,ij->i", wa, mu)
            mu *= mu - 1  # -mu (1 - mu)
            hess = -np.einsum("ij,ij->i", wa, mu)
        step = np.clip(ratio(grad, hess), -MAX_STEP, MAX_STEP)
        a[active] += step
        active = active[~_converged(step, a[active], tol)]
    a[active] = np.nan  # did not converge
    return a


def calibration_line(cells: Cells, w: np.ndarray, start: tuple[float | np.ndarray, float | np.ndarray] = (0.0, 1.0),
                     tol: float = TOL, sums: np.ndarray | None = None) -> tuple[np.ndarray, np.ndarray]:
    """(intercept, slope) per replicate of the logistic regression of y on logit(p); the slope is the one reported.

    Newton-Raphson with the 2 x 2 Hessian inverted in closed form, all replicates at once. A replicate whose
    scores are all equal has no slope (singular Hessian): NaN.
    """
    x, c, powers = cells.x, w.shape[0], cells.powers_x
    s = linear_sums(cells, w) if sums is None else sums
    pos, ok = _both_classes(s)
    pos_x = s[:, POS_X]
    a = np.where(ok, np.broadcast_to(np.asarray(start[0], dtype=float), (c,)), np.nan)
    b = np.where(ok, np.broadcast_to(np.asarray(start[1], dtype=float), (c,)), np.nan)
    active = np.flatnonzero(ok)
    for it in range(MAX_ITER):
        if active.size == 0:
            break
        wa = w if active.size == c else w[active]
        if it == 0 and _shared(start[0]) and _shared(start[1]):
            both = wa @ cells.first_step(float(start[0]), float(start[1]))
            first, second = both[:, :2], both[:, 2:]
        else:
            mu = np.multiply.outer(-b[active], x)
            mu -= a[active, None]
            with np.errstate(over="ignore"):  # exp(large) = inf gives expit = 0, as it should
                np.exp(mu, out=mu)
            mu += 1
            np.reciprocal(mu, out=mu)  # expit(a + b x)
            wm = wa * mu
            first = wm @ powers[:, :2]
            mu -= 1
            wm *= mu  # -w mu (1 - mu)
            second = -(wm @ powers)
        g0, g1 = pos[active] - first[:, 0], pos_x[active] - first[:, 1]
        h00, h01, h11 = second[:, 0], second[:, 1], second[:, 2]
        det = h00 * h11 - h01 * h01
        singular = ~(det > 1e-12 * h00 * h11)
        det = np.where(singular, 1.0, det)
        da = (h11 * g0 - h01 * g1) / det
        db = (h00 * g1 - h01 * g0) / det
        big = np.maximum(np.maximum(np.abs(da), np.abs(db)) / MAX_STEP, 1.0)
        a[active] += da / big
        b[active] += db / big
        a[active[singular]] = np.nan
        b[active[singular]] = np.nan
        done = (_converged(da, a[active], tol) & _converged(db, b[active], tol)) | singular
        active = active[~done]
    a[active] = np.nan
    b[active] = np.nan
    return a, b
