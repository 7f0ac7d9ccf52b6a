"""Input checks for the deferral learners: one-line messages that name the problem and what is allowed."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np
import pandas as pd

from careloop.errors import CareloopError

TRANSFORMS = (None, "logistic", "rank")


class DeferralError(CareloopError, ValueError):
    """Scores, clinician opinions, labels, tables or options a deferral policy cannot be fitted on or applied to."""


def _examples(values: np.ndarray, k: int = 3) -> str:
    shown = [repr(v.item() if hasattr(v, "item") else v) for v in values[:k]]
    return ", ".join(shown) + (", ..." if len(values) > k else "")


def _count(k: int, noun: str) -> str:
    return f"{k} {noun}" + ("" if k == 1 else "s")


def _array(x: Any, name: str) -> np.ndarray:
    if x is None:
        raise DeferralError(f"{name} is missing: give one value per case")
    arr = np.asarray(x.to_numpy() if isinstance(x, pd.Series) else x)
    if arr.ndim != 1:
        raise DeferralError(f"{name} must be one-dimensional, got shape {arr.shape}")
    if arr.size == 0:
        raise DeferralError(f"{name} is empty: give one value per case")
    return arr


def _numeric(arr: np.ndarray, name: str, allowed: str) -> np.ndarray:
    if arr.dtype == bool:
        return arr.astype(float)
    try:
        num = np.asarray(pd.to_numeric(pd.Series(arr, copy=False), errors="raise"), dtype=float)
    except (TypeError, ValueError):
        bad = pd.unique(pd.Series(arr[pd.to_numeric(pd.Series(arr), errors="coerce").isna()]).astype(str))
        raise DeferralError(f"{name} must be {allowed}; found non-numeric values ({_examples(bad)})") from None
    nan = int(np.isnan(num).sum())
    if nan:
        raise DeferralError(f"{name} has {_count(nan, 'missing (NaN) value')}: every case needs {allowed}")
    return num


def check_transform(transform: Any) -> str | None:
    if transform not in TRANSFORMS:
        raise DeferralError(f"score_transform must be one of None, 'logistic' (log-odds), 'rank', got {transform!r}")
    return transform


def as_scores(x: Any, name: str = "score", *, transform: str | None = None) -> np.ndarray:
    """Raw scores as finite float64; in [0, 1] unless a transform onto [0, 1] is declared."""
    arr = _array(x, name)
    num = _numeric(arr, name, "a number")
    if np.isinf(num).any():
        raise DeferralError(f"{name} has {_count(int(np.isinf(num).sum()), 'infinite value')}: scores must be finite")
    if transform is None:
        outside = (num < 0) | (num > 1)
        if outside.any():
            eg = float(num[outside][0])
            raise DeferralError(f"{name} has {_count(int(outside.sum()), 'value')} outside [0, 1] (e.g. {eg!r}): "
                                "declare score_transform='logistic' for log-odds or 'rank' for any other scale")
    return num


def as_clinician(x: Any, name: str = "clinician") -> np.ndarray:
    """The clinician's opinion: 0/1 (or bool), or a probability in [0, 1]."""
    num = _numeric(_array(x, name), name, "an opinion, 0/1 or a probability in [0, 1]")
    outside = (num < 0) | (num > 1) | np.isinf(num)
    if outside.any():
        raise DeferralError(f"{name} must be 0/1 or a probability in [0, 1]; found "
                            f"{_count(int(outside.sum()), 'value')} outside (e.g. {float(num[outside][0])!r})")
    return num


def as_labels(x: Any, name: str = "y") -> np.ndarray:
    """Binary truth (0/1, 0.0/1.0 or bool) as a bool array."""
    arr = _array(x, name)
    if arr.dtype == bool:
        return arr
    try:
        num = np.asarray(pd.to_numeric(pd.Series(arr, copy=False), errors="coerce"), dtype=float)
    except (TypeError, ValueError):
        num = np.full(arr.size, np.nan)
    missing = np.isnan(num) & pd.isna(pd.Series(arr)).to_numpy()
    if missing.any():
        raise DeferralError(f"{name} has {_count(int(missing.sum()), 'missing label')}: every case needs 0 or 1")
    bad = ~((num == 0) | (num == 1))
    if bad.any():
        values = pd.unique(pd.Series(arr[bad]).astype(str))
        raise DeferralError(f"{name} must be binary (0/1 or bool); found {_count(int(bad.sum()), 'other value')} "
                            f"({_examples(values)})")
    return num == 1


def same_length(name: str, **arrays: np.ndarray) -> int:
    sizes = {k: v.size for k, v in arrays.items()}
    if len(set(sizes.values())) > 1:
        listed = ", ".join(f"{k} has {v}" for k, v in sizes.items())
        raise DeferralError(f"{name}: {listed} values; they must describe the same cases")
    return next(iter(sizes.values()))


def require_both_classes(y: np.ndarray, name: str) -> None:
    pos = int(y.sum())
    if pos == 0:
        raise DeferralError(f"{name} has no positives (all {y.size} labels are 0): sensitivity is undefined on it")
    if pos == y.size:
        raise DeferralError(f"{name} has no negatives (all {y.size} labels are 1): specificity is undefined on it")


def check_case_set(score: Any, clinician: Any, y: Any, name: str, transform: str | None
                   ) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(raw scores, clinician opinions, labels) of one set of cases, checked, with both classes present."""
    s = as_scores(score, f"{name} score", transform=transform)
    c = as_clinician(clinician, f"{name} clinician")
    yb = as_labels(y, f"{name} y")
    same_length(f"{name} set", score=s, clinician=c, y=yb)
    require_both_classes(yb, f"{name} set")
    return s, c, yb


def table_columns(table: Any, *, score: str, clinician: str, label: str, name: str = "table"
                  ) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """The three columns of a table (a pandas DataFrame or a mapping of column name -> values), unchecked.

    A missing column is an error that lists the columns the table has; names may contain spaces.
    """
    if not isinstance(table, pd.DataFrame | Mapping):
        raise DeferralError(f"{name} must be a table (a DataFrame or a mapping of columns), got {type(table).__name__}")
    have = [str(c) for c in table]
    out = []
    for role, col in (("score", score), ("clinician", clinician), ("label", label)):
        if col not in table:
            shown = ", ".join(repr(c) for c in have[:12]) + (", ..." if len(have) > 12 else "")
            raise DeferralError(f"{name} has no {role} column {col!r} (columns: {shown})")
        out.append(np.asarray(table[col]))
    return out[0], out[1], out[2]


def as_case_set(data: Any, name: str, *, score: str, clinician: str, label: str) -> tuple[Any, Any, Any]:
    """A table (by column names) or a (score, clinician, y) triple -> the three arrays, unchecked."""
    if isinstance(data, pd.DataFrame | Mapping):
        return table_columns(data, score=score, clinician=clinician, label=label, name=f"{name} table")
    if isinstance(data, Sequence) and not isinstance(data, str) and len(data) == 3:
        return data[0], data[1], data[2]
    raise DeferralError(f"{name} must be a table or a (score, clinician, y) triple, got {type(data).__name__}")


def check_option(value: Any, name: str, *, low: float, high: float, integer: bool = False,
                 open_low: bool = False) -> float:
    ok = isinstance(value, int | float | np.integer | np.floating) and not isinstance(value, bool)
    ok = ok and np.isfinite(value) and (value > low if open_low else value >= low) and value <= high
    if integer:
        ok = ok and float(value) == int(value)
    if not ok:
        bound = f"({low}" if open_low else f"[{low}"
        kind = "an integer" if integer else "a number"
        raise DeferralError(f"{name} must be {kind} in {bound}, {high}], got {value!r}")
    return int(value) if integer else float(value)
