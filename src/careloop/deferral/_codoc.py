"""CoDoC (Dvijotham et al., Nature Medicine 29:1814, 2023): complementarity-driven deferral to clinicians, in NumPy.

Per case: the AI's score s on [0, 1], the clinician's opinion c (0/1) and the truth y. With the AI flagging a case
when s >= theta, the team decides by the clinician where the policy defers and by the AI elsewhere, so deferring a
set A of scores changes

    sensitivity by  dSens(A) = P(s in A, c = 1 | y = 1) - P(s in A, s >= theta | y = 1)
    specificity by  dSpec(A) = P(s in A, c = 0 | y = 0) - P(s in A, s <  theta | y = 0)

and the objective the policy maximises, lam * P(y = 1) * sensitivity + P(y = 0) * specificity (equivalently it
minimises lam * FN + FP: a missed positive costs lam false alarms), by the advantage

    Delta(A) = lam * P(y = 1) * dSens(A) + P(y = 0) * dSpec(A).

On the tuning set the densities p(s | y, c) are Gaussian kernel density estimates (bandwidth h; reflected at 0 and
1 so that no mass leaks off the score axis) and P(c | y), P(y) are frequencies; the score axis is cut into `bins`
equal bins and Delta is integrated over each bin (theta may fall inside a bin: the AI's share of that bin is the
mass on the side of theta). The deferral region is the union of at most `max_intervals` intervals of bins with the
largest total advantage, found exactly by dynamic programming (with one interval: from the minimum of the
cumulative advantage to its later maximum); it is empty when no bin has a positive advantage. theta, lam, the
number of bins and the bandwidth are searched on the tuning set and selected on the validation set (`_fit.py`).
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np
from scipy.special import ndtr

from careloop.deferral._intervals import Bins, best_intervals, uniform_edges
from careloop.deferral._search import Batch, Learner, Prepared, as_grid
from careloop.deferral._validate import DeferralError, as_clinician, as_labels, as_scores, same_length

DEFAULT_BINS = (10, 20, 40)
DEFAULT_BANDWIDTHS = (0.02, 0.05, 0.1)
_CHUNK = 4096  # scores per block in the kernel sums (bounds memory at points x 4096 floats)


def reflected_cdf(s: np.ndarray, x: np.ndarray, h: float) -> np.ndarray:
    """Sum over the scores s of the Gaussian kernel mass (bandwidth h) on [0, x], the kernel reflected at 0 and 1.

    The reflected kernel of a score s has density phi_h(t - s) + phi_h(t + s) + phi_h(t - 2 + s) on [0, 1].
    """
    x = np.asarray(x, dtype=float)[:, None]
    out = np.zeros(x.shape[0])
    for start in range(0, s.size, _CHUNK):
        b = s[start : start + _CHUNK][None, :]
        m = (ndtr((x - b) / h) - ndtr(-b / h) + ndtr((x + b) / h) - ndtr(b / h)
             + ndtr((x - 2 + b) / h) - ndtr((b - 2) / h))
        out += m.sum(axis=1)
    return out


class Densities:
    """The tuning set's joint distribution of (s, c) given y as cumulative masses at a set of points of [0, 1].

    `cdf[y][c]` at the points is P(s <= x, c | y): the reflected KDE of the scores of the cases with (y, c),
    normalised to one on [0, 1], times the frequency of c among the cases with y.
    """

    def __init__(self, s: np.ndarray, c: np.ndarray, y: np.ndarray, bandwidth: float, points: np.ndarray):
        self.points = np.asarray(points, dtype=float)
        self.p1 = float(y.mean())
        self.cdf = np.zeros((2, 2, self.points.size))
        for yv in (0, 1):
            in_y = y == bool(yv)
            for cv in (0, 1):
                sel = in_y & (c == bool(cv))
                if sel.any():
                    raw = reflected_cdf(s[sel], self.points, bandwidth)
                    total = reflected_cdf(s[sel], np.array([1.0]), bandwidth)[0]
                    self.cdf[yv, cv] = raw / total * (sel.sum() / in_y.sum())

    def at(self, values: np.ndarray) -> np.ndarray:
        idx = np.searchsorted(self.points, values)
        if not np.array_equal(self.points[np.minimum(idx, self.points.size - 1)], values):
            raise AssertionError("density asked at a point it was not computed at")
        return idx

    def advantage(self, edges: np.ndarray, thetas: np.ndarray, lams: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """Gain of deferring per bin, (len(thetas), len(lams), bins), and the mass of each bin, (bins,)."""
        e = self.at(edges)
        t = self.at(thetas)
        cdf = self.cdf
        m = np.diff(cdf[:, :, e], axis=2)  # (y, c, bins): P(s in bin, c | y)
        fy = cdf.sum(axis=1)  # (y, points): P(s <= x | y)
        lo, hi = fy[:, e[:-1]], fy[:, e[1:]]  # (y, bins)
        above = hi[:, None, :] - np.clip(fy[:, t][:, :, None], lo[:, None, :], hi[:, None, :])  # (y, thetas, bins)
        d_sens = m[1, 1][None, :] - above[1]  # clinician's true positives - AI's, per bin
        d_spec = m[0, 0][None, :] - (m[0].sum(axis=0)[None, :] - above[0])  # clinician's true negatives - AI's
        gain = (lams[None, :, None] * self.p1 * d_sens[:, None, :]) + (1 - self.p1) * d_spec[:, None, :]
        mass = self.p1 * m[1].sum(axis=0) + (1 - self.p1) * m[0].sum(axis=0)
        return gain, mass


def advantage(score: Any, clinician: Any, y: Any, *, theta: float, lam: float, bins: int, bandwidth: float
              ) -> dict[str, np.ndarray]:
    """CoDoC's advantage of deferring per bin for one configuration, on scores already on [0, 1] and a 0/1
    clinician opinion: {"edges": (bins + 1,), "gain": (bins,), "mass": (bins,)}.

    >>> s = np.array([0.1, 0.2, 0.6, 0.7, 0.8]); y = np.array([0, 0, 0, 1, 1])
    >>> adv = advantage(s, y, y, theta=0.5, lam=1.0, bins=2, bandwidth=1e-4)  # a clinician who is always right
    >>> np.round(adv["gain"], 6).tolist(), np.round(adv["mass"], 6).tolist()  # undoes the AI's false positive
    ([0.0, 0.2], [0.4, 0.6])
    """
    s = as_scores(score, "score")
    c = as_clinician(clinician, "clinician") >= 0.5
    yb = as_labels(y, "y")
    same_length("advantage", score=s, clinician=c, y=yb)
    edges = uniform_edges(int(bins))
    thetas = np.array([float(theta)])
    dens = Densities(s, c, yb, float(bandwidth), np.unique(np.concatenate([edges, thetas])))
    gain, mass = dens.advantage(edges, thetas, np.array([float(lam)]))
    return {"edges": edges, "gain": gain[0, 0], "mass": mass}


class CoDoC(Learner):
    """Complementarity-driven deferral to clinicians (Dvijotham et al. 2023), scikit-learn style.

    `CoDoC(...).fit(tune_score, tune_clinician, tune_y, val_score, val_clinician, val_y)` searches every
    combination of `theta` (the AI's threshold in the team; default: 19 quantiles of the tuning scores and the
    thresholds at which the AI matches the clinician's tuning sensitivity and specificity), `lam` (the cost of a
    false negative in false positives; default P(y=0)/P(y=1) times 1/8 ... 8), `bins` and `bandwidth`, on the
    tuning set, and keeps the one with the best validation specificity among those whose validation sensitivity
    is at least the clinician's minus `margin` and whose specificity beats the clinician's; if none does, the
    policy defers every case to the clinician. Give single values for a fixed configuration. `policy_` is the
    fitted `DeferralPolicy`; `predict(score, clinician)` applies it.
    """

    name = "codoc"
    method = ("CoDoC (Dvijotham et al., Nat Med 2023): Gaussian KDE of the score given truth and clinician opinion, "
              "advantage of deferring per score bin, deferral intervals of largest total advantage")

    def __init__(self, *, bins: int | Sequence[int] = DEFAULT_BINS,
                 bandwidth: float | Sequence[float] = DEFAULT_BANDWIDTHS, **options: Any):
        super().__init__(**options)
        self.bins = as_grid(bins, "bins", low=2, high=1000, integer=True)
        self.bandwidth = as_grid(bandwidth, "bandwidth", low=0, high=1, open_low=True)

    def candidates(self, prep: Prepared) -> list[Batch]:
        edges_all = [uniform_edges(int(b)) for b in self.bins]
        points = np.unique(np.concatenate([*edges_all, prep.thetas]))
        out = []
        for h in self.bandwidth:
            dens = Densities(prep.tune_s, prep.tune_c, prep.tune_y, float(h), points)
            for b, edges in zip(self.bins, edges_all, strict=True):
                gain, mass = dens.advantage(edges, prep.thetas, prep.lams)
                nt, nl, _ = gain.shape
                flat = gain.reshape(nt * nl, -1)
                found: list[Bins] = best_intervals(flat, prep.max_intervals)
                hyper = [{"bins": int(b), "bandwidth": float(h), "lambda": float(prep.lams[j]),
                          "sensitivity_weight": prep.weights[j], "max_intervals": prep.max_intervals}
                         for _ in range(nt) for j in range(nl)]
                out.append(Batch(self.name, hyper, np.repeat(prep.thetas, nl), edges, flat, mass, found))
        if not out:
            raise DeferralError("CoDoC has no configuration to search: give at least one bins and bandwidth value")
        return out
