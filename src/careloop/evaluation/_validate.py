"""Input checks shared by every entry point: one-line messages that name the problem and what is allowed."""

from __future__ import annotations

import math
import numbers
from collections.abc import Sequence
from typing import Any

import numpy as np
import pandas as pd

from careloop.errors import CareloopError


class EvaluationError(CareloopError, ValueError):
    """Labels, scores, clusters or options that cannot be evaluated; the message is one line."""


def _examples(values: np.ndarray, k: int = 3) -> str:
    shown = [repr(v.item() if hasattr(v, "item") else v) for v in values[:k]]
    return ", ".join(shown) + (", ..." if len(values) > k else "")


def as_labels(y: Any, name: str = "y") -> np.ndarray:
    """Binary labels (0/1, 0.0/1.0 or bool) as a bool array; missing or other values are an error."""
    arr = np.asarray(y)
    if arr.ndim != 1:
        raise EvaluationError(f"{name} must be one-dimensional, got shape {arr.shape}")
    if arr.size == 0:
        raise EvaluationError(f"{name} is empty: evaluation needs at least one positive and one negative")
    if arr.dtype == bool:
        return arr
    try:
        num = arr.astype(float)
    except (TypeError, ValueError):
        bad = np.unique(arr.astype(str))
        raise EvaluationError(f"{name} must be binary (0/1 or bool); found {_examples(bad)}") from None
    bad_mask = ~((num == 0) | (num == 1))
    if bad_mask.any():
        bad = pd.unique(arr[bad_mask])
        raise EvaluationError(f"{name} must be binary (0/1 or bool); found {bad_mask.sum()} other values "
                              f"({_examples(bad)})")
    return num == 1


def as_scores(p: Any, n: int, *, name: str = "p", probabilities: bool = True) -> np.ndarray:
    """Scores as float64, of length n, finite, and in [0, 1] when they are probabilities."""
    try:
        arr = np.asarray(p, dtype=float)
    except (TypeError, ValueError):
        raise EvaluationError(f"{name} must be numeric scores") from None
    if arr.ndim != 1:
        raise EvaluationError(f"{name} must be one-dimensional, got shape {arr.shape}")
    if arr.size != n:
        raise EvaluationError(f"y has {n} values but {name} has {arr.size}: they must describe the same rows")
    nan = int(np.isnan(arr).sum())
    if probabilities:
        outside = (arr < 0) | (arr > 1) | np.isinf(arr)
        if nan or outside.any():
            eg = f" (e.g. {float(arr[outside][0])!r})" if outside.any() else ""
            raise EvaluationError(f"{name} must be probabilities in [0, 1]; found {nan} NaN and "
                                  f"{int(outside.sum())} outside [0, 1]{eg}")
    elif nan or np.isinf(arr).any():
        raise EvaluationError(f"{name} must be finite numbers; found {nan} NaN and {int(np.isinf(arr).sum())} "
                              "infinite")
    return arr


def require_both_classes(y: np.ndarray, what: str = "y") -> None:
    pos = int(y.sum())
    if pos == 0:
        raise EvaluationError(f"{what} has no positives (all {y.size} are 0): discrimination and calibration "
                              "are undefined")
    if pos == y.size:
        raise EvaluationError(f"{what} has no negatives (all {y.size} are 1): discrimination and calibration "
                              "are undefined")


def cluster_codes(clusters: Any, n: int) -> tuple[np.ndarray, int]:
    """Cluster ids (any hashable values, e.g. patient ids) -> (codes 0..K-1 in sorted id order, K).

    Sorted order makes the bootstrap independent of row order; ids that cannot be sorted together (mixed types)
    fall back to order of first appearance. Without clusters every row is its own cluster.
    """
    if clusters is None:
        return np.arange(n, dtype=np.intp), n
    values = np.asarray(clusters, dtype=object) if not isinstance(clusters, np.ndarray) else clusters
    if values.ndim != 1 or values.size != n:
        raise EvaluationError(f"y has {n} values but clusters has {values.size}: give one cluster id per row")
    try:
        codes, uniques = pd.factorize(values, sort=True)
    except TypeError:
        codes, uniques = pd.factorize(values, sort=False)
    if (codes < 0).any():
        raise EvaluationError(f"clusters has {int((codes < 0).sum())} missing ids: every row needs a cluster "
                              "(patient) id")
    return codes.astype(np.intp), len(uniques)


def is_number(value: Any) -> bool:
    """A finite real number (NumPy scalars included), not a bool."""
    return isinstance(value, numbers.Real) and not isinstance(value, bool) and math.isfinite(value)


def check_probability(value: Any, name: str) -> float:
    if not is_number(value) or not 0 <= value <= 1:
        raise EvaluationError(f"{name} must be a probability in [0, 1], got {value!r}")
    return float(value)


def check_options(*, n_boot: int, ci: float, seed: int) -> None:
    if isinstance(n_boot, bool) or not isinstance(n_boot, int | np.integer) or n_boot < 0:
        raise EvaluationError(f"n_boot must be a non-negative integer (0 for no intervals), got {n_boot!r}")
    if not is_number(ci) or not 0 < ci < 1:
        raise EvaluationError(f"ci must be a level strictly between 0 and 1 (e.g. 0.95), got {ci!r}")
    if isinstance(seed, bool) or not isinstance(seed, int | np.integer) or seed < 0:
        raise EvaluationError(f"seed must be a non-negative integer, got {seed!r}")


def check_thresholds(values: Sequence[float] | np.ndarray, name: str) -> np.ndarray:
    arr = np.asarray(values, dtype=float).ravel()
    if arr.size == 0 or np.isnan(arr).any() or (arr < 0).any() or (arr > 1).any():
        raise EvaluationError(f"{name} must be a non-empty list of probabilities in [0, 1], got {list(arr)[:5]}")
    return np.unique(arr)
