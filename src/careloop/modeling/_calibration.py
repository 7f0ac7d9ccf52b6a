"""Probability calibration on the calibration split, on the log-odds scale.

scikit-learn's `CalibratedClassifierCV` fits Platt scaling on `predict_proba` when an estimator has no
`decision_function` (LightGBM's wrapper has none), which is the wrong scale for an over-confident booster; here the
calibrator always sees the raw log-odds: `sigmoid` is logistic recalibration (an intercept and a slope on the
logit, fitted with scikit-learn's `LogisticRegression`), `isotonic` is scikit-learn's `IsotonicRegression` on the
logit. Both are stored as a few numbers in JSON.
"""

from __future__ import annotations

from typing import Literal

import numpy as np
from sklearn.isotonic import IsotonicRegression
from sklearn.linear_model import LogisticRegression

Method = Literal["sigmoid", "isotonic"]


class Calibrator:
    def __init__(self, method: Method = "sigmoid") -> None:
        if method not in ("sigmoid", "isotonic"):
            raise ValueError(f"unknown calibration method {method!r} (choose sigmoid or isotonic)")
        self.method: Method = method
        self.a = 1.0  # sigmoid: p = 1 / (1 + exp(-(a * raw + b)))
        self.b = 0.0
        self.x: np.ndarray | None = None  # isotonic: knots on the raw scale
        self.y: np.ndarray | None = None

    def fit(self, raw: np.ndarray, y: np.ndarray) -> Calibrator:
        if self.method == "sigmoid":
            m = LogisticRegression(C=1e6, max_iter=1000, tol=1e-8).fit(raw.reshape(-1, 1), y)
            self.a, self.b = float(m.coef_[0, 0]), float(m.intercept_[0])
        else:
            iso = IsotonicRegression(out_of_bounds="clip", y_min=1e-4, y_max=1 - 1e-4).fit(raw, y)
            self.x, self.y = iso.X_thresholds_.astype(float), iso.y_thresholds_.astype(float)
        return self

    def __call__(self, raw: np.ndarray) -> np.ndarray:
        if self.method == "sigmoid":
            z = self.a * np.asarray(raw, dtype=np.float64) + self.b
            return 0.5 * (1.0 + np.tanh(0.5 * z))  # the logistic function without overflow
        return np.interp(raw, self.x, self.y)

    def to_dict(self) -> dict:
        if self.method == "sigmoid":
            return {"method": "sigmoid", "slope": self.a, "intercept": self.b}
        return {"method": "isotonic", "x": self.x.tolist(), "y": self.y.tolist()}

    @classmethod
    def from_dict(cls, d: dict) -> Calibrator:
        c = cls(d["method"])
        if c.method == "sigmoid":
            c.a, c.b = float(d["slope"]), float(d["intercept"])
        else:
            c.x, c.y = np.asarray(d["x"], dtype=float), np.asarray(d["y"], dtype=float)
        return c
