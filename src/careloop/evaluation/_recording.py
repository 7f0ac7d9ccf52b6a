"""Recording disparity: is a group's documentation thinner than the rest of its data implies?

Under-recorded diagnoses are invisible to outcome-based fairness checks when the model leans on other signals too:
the group's risk is under-estimated only a little, and its outcomes look almost right. But the recording gap
itself can be measured. For each documentation-derived column (comorbidity indices computed from recorded
diagnoses), a ridge regression learned on the training split predicts it from the stay's other data (utilisation,
medications, laboratory values, age); on the test split each group's mean standardised residual is compared with
the overall mean. A group whose diagnoses are under-recorded has recorded indices well below what its other data
predicts. Intervals come from the same cluster bootstrap as every other figure, and a gap is flagged only beyond its
tolerance (in residual standard deviations) and after a Bonferroni correction over every group and column tested.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

import numpy as np
from sklearn.linear_model import Ridge

from careloop.evaluation._fairness import group_values
from careloop.evaluation._result import Estimate

DEFAULT_TOLERANCE = 0.25  # residual standard deviations
MIN_GROUP = 50


@dataclass(frozen=True)
class RecordingFinding:
    attribute: str
    group: str
    label: str
    column: str
    n: int
    gap: Estimate  # group mean standardised residual minus the overall mean
    p_adjusted: float | None
    flagged: bool
    message: str

    def to_dict(self) -> dict[str, Any]:
        return {"attribute": self.attribute, "group": self.group, "label": self.label, "column": self.column,
                "n": self.n, "gap": self.gap.to_dict(), "p_adjusted": self.p_adjusted, "flagged": self.flagged,
                "message": self.message}


def _cluster_index(clusters: Any, n: int) -> tuple[np.ndarray, int]:
    if clusters is None:
        return np.arange(n), n
    _, codes = np.unique(np.asarray(clusters, dtype=object).astype(str), return_inverse=True)
    return codes, int(codes.max()) + 1 if n else 0


def recording_disparity(x_train: np.ndarray, targets_train: Mapping[str, np.ndarray], x_test: np.ndarray,
                        targets_test: Mapping[str, np.ndarray], groups: Mapping[str, Any], *, clusters: Any = None,
                        labels: Mapping[tuple[str, str], str] | None = None, tolerance: float = DEFAULT_TOLERANCE,
                        min_group_size: int = MIN_GROUP, n_boot: int = 1000, seed: int = 0,
                        alpha: float = 0.05) -> list[RecordingFinding]:
    """Each group's recorded-vs-expected gap for each documentation-derived column, on the test split.

    Groups are formed as `fairness` forms them (missing values, of any kind, are "unknown"), so that the two
    analyses of one attribute report the same groups."""
    labels = labels or {}
    n = x_test.shape[0]
    codes, k = _cluster_index(clusters, n)
    rng = np.random.default_rng(seed)
    counts = rng.multinomial(k, np.full(k, 1.0 / k), size=n_boot) if k else np.zeros((n_boot, 0))
    weights = counts[:, codes].astype(np.float32)  # (B, n): each row's multiplicity in each resample
    residuals = {}
    for column, y_train in targets_train.items():
        ok = np.isfinite(y_train)
        model = Ridge(alpha=1.0).fit(x_train[ok], y_train[ok])
        sd = float(np.std(y_train[ok] - model.predict(x_train[ok]))) or 1.0
        y_test = targets_test[column]
        residuals[column] = np.where(np.isfinite(y_test), (y_test - model.predict(x_test)) / sd, np.nan)
    cells = []
    for attribute, values in groups.items():
        g = group_values(values, n, attribute)  # fairness's groups: None, NaN, pd.NA and "" are all "unknown"
        for name in sorted(set(g)):
            mask = g == name
            if mask.sum() >= min_group_size and (~mask).sum() >= min_group_size:
                cells.append((attribute, name, mask))
    tests = len(cells) * len(residuals)
    out = []
    for column, r in residuals.items():
        ok = np.isfinite(r)
        r0 = np.where(ok, r, 0.0)
        w_ok = weights * ok
        overall_b = (w_ok @ r0) / np.maximum(w_ok.sum(axis=1), 1e-12)
        overall = float(r0[ok].mean()) if ok.any() else math.nan
        for attribute, name, mask in cells:
            m = mask & ok
            point = float(r0[m].mean()) - overall if m.any() else math.nan
            wm = weights * m
            group_b = (wm @ r0) / np.maximum(wm.sum(axis=1), 1e-12)
            gaps = (group_b - overall_b)[wm.sum(axis=1) > 0]
            lo, hi = (np.percentile(gaps, [2.5, 97.5]) if len(gaps) > 1 else (math.nan, math.nan))
            sd = float(np.std(gaps, ddof=1)) if len(gaps) > 1 else math.nan
            p_adj = None
            if np.isfinite(sd) and sd > 0:
                p_adj = float(min(1.0, tests * math.erfc(abs(point) / sd / math.sqrt(2))))
            flagged = bool(np.isfinite(point) and abs(point) > tolerance and p_adj is not None and p_adj < alpha)
            label = str(labels.get((attribute, name), name))
            direction = "below" if point < 0 else "above"
            message = (f"{attribute} = {label}: recorded {column} is {abs(point):.2f} SD {direction} what the rest of "
                       f"the stay's data predicts (95% CI {lo:+.2f} to {hi:+.2f} against the overall figure)"
                       + (": diagnoses may be under-recorded for this group, and the model then under-estimates its "
                          "risk." if point < 0 else ": diagnoses are recorded more fully than for others."))
            out.append(RecordingFinding(attribute, name, label, column, int(m.sum()),
                                        Estimate.of(point, float(lo), float(hi)), p_adj, flagged, message))
    return out
