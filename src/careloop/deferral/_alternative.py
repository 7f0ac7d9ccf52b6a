"""The alternative learner: a calibrated estimate of P(truth, clinician opinion | score) and a cost-weighted rule.

A multinomial logistic regression of the four outcomes (y, c) on a cubic spline of the score (knots at quantiles
of the tuning scores, L2 penalty C) estimates q_yc(s) = P(y, c | s). With a false negative costing lam false
positives, deferring a case of score s to the clinician instead of the AI (flagging when s >= theta) lowers the
expected cost by

    delta(s) = lam * [q_11(s) - 1{s >= theta} * (q_10(s) + q_11(s))] + [q_00(s) - 1{s < theta} * (q_00(s) + q_01(s))],

i.e. the clinician's expected cost at s is below the AI's exactly when delta(s) > 0. The rule needs the score only
(not the clinician's opinion), so the clinician's workload is what is deferred. On the tuning cases delta is summed
per bin of the score axis (the plug-in estimate of CoDoC's integrated advantage, from a discriminative model
rather than densities) and the deferral region is the union of at most `max_intervals` intervals of bins with the
largest total, as in CoDoC. theta, lam and the number of knots are selected on the validation set.
"""

from __future__ import annotations

import warnings
from collections.abc import Sequence
from typing import Any

import numpy as np
from sklearn.exceptions import ConvergenceWarning
from sklearn.linear_model import LogisticRegression
from sklearn.preprocessing import SplineTransformer

from careloop.deferral._intervals import best_intervals, bin_index, uniform_edges
from careloop.deferral._search import Batch, Learner, Prepared, as_grid

DEFAULT_KNOTS = (4, 6, 8)


def joint_probabilities(s: np.ndarray, c: np.ndarray, y: np.ndarray, *, knots: int, C: float = 1.0
                        ) -> np.ndarray:
    """(n, 4) estimated P(y, c | s) at the tuning scores, columns (y, c) = (0, 0), (0, 1), (1, 0), (1, 1)."""
    cuts = np.unique(np.quantile(s, np.linspace(0, 1, int(knots))))
    if cuts.size < 2:  # one distinct score: the outcome frequencies
        cuts = np.array([0.0, 1.0])
    spline = SplineTransformer(knots=cuts[:, None], degree=3, extrapolation="linear")
    x = spline.fit_transform(s[:, None])
    target = 2 * y.astype(int) + c.astype(int)
    out = np.zeros((s.size, 4))
    classes = np.unique(target)
    if classes.size == 1:
        out[:, classes[0]] = 1.0
        return out
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", ConvergenceWarning)
        model = LogisticRegression(C=float(C), max_iter=2000, tol=1e-8).fit(x, target)
    out[:, model.classes_] = model.predict_proba(x)
    return out


class CalibratedDeferral(Learner):
    """Cost-weighted deferral from a calibrated P(truth, clinician opinion | score) (learner name "alternative").

    Same surface and selection as `CoDoC`: `fit(tune_score, tune_clinician, tune_y, val_score, val_clinician,
    val_y)`, `predict(score, clinician)`, `policy_`. Searches `knots` (spline knots), `theta` and `lam`; `C` is
    the inverse L2 penalty, `bins` the resolution of the deferral intervals.
    """

    name = "alternative"
    method = ("multinomial logistic regression of (truth, clinician opinion) on a cubic spline of the score; defer "
              "where the clinician's expected cost (lam * FN + FP) is below the AI's")

    def __init__(self, *, knots: int | Sequence[int] = DEFAULT_KNOTS, C: float = 1.0, bins: int = 50,
                 **options: Any):
        super().__init__(**options)
        self.knots = as_grid(knots, "knots", low=2, high=50, integer=True)
        self.C = as_grid(C, "C", low=0, high=1e9, open_low=True)[0]
        self.bins = as_grid(bins, "bins", low=2, high=1000, integer=True)[0]

    def candidates(self, prep: Prepared) -> list[Batch]:
        s, n = prep.tune_s, prep.tune_s.size
        edges = uniform_edges(self.bins)
        idx = bin_index(s, edges)
        onehot = np.zeros((n, self.bins))
        onehot[np.arange(n), idx] = 1.0
        mass = np.bincount(idx, minlength=self.bins) / n
        above = (s[None, :] >= prep.thetas[:, None]).astype(float)  # (thetas, n)
        out = []
        for k in self.knots:
            q = joint_probabilities(s, prep.tune_c, prep.tune_y, knots=k, C=self.C)
            p1, p0 = q[:, 2] + q[:, 3], q[:, 0] + q[:, 1]
            d_sens = (q[:, 3][None, :] - above * p1[None, :]) @ onehot / n  # (thetas, bins)
            d_spec = (q[:, 0][None, :] - (1 - above) * p0[None, :]) @ onehot / n
            gain = prep.lams[None, :, None] * d_sens[:, None, :] + d_spec[:, None, :]  # (thetas, lams, bins)
            nt, nl, _ = gain.shape
            flat = gain.reshape(nt * nl, -1)
            hyper = [{"knots": int(k), "C": self.C, "bins": int(self.bins), "lambda": float(prep.lams[j]),
                      "sensitivity_weight": prep.weights[j], "max_intervals": prep.max_intervals}
                     for _ in range(nt) for j in range(nl)]
            out.append(Batch(self.name, hyper, np.repeat(prep.thetas, nl), edges, flat, mass,
                             best_intervals(flat, prep.max_intervals)))
        return out
