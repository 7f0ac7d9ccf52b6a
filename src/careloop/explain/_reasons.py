"""The top reasons for each patient's risk, from per-patient contributions (SHAP values in log-odds)."""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Literal

import numpy as np

from careloop.explain._columns import ColumnInfo, column_title
from careloop.explain._phrases import is_missing, phrase

__all__ = ["Reason", "global_importance", "reasons"]

Direction = Literal["raises", "lowers", "both"]


@dataclass(frozen=True)
class Reason:
    """One reason for a patient's risk: the column, its value for the patient, its contribution in log-odds
    (positive raises the risk) and the clinical phrase."""

    column: str
    value: object
    contribution: float
    phrase: str

    def to_dict(self) -> dict:
        return {"column": self.column, "value": _plain(self.value), "contribution": float(self.contribution),
                "phrase": self.phrase}


def _plain(value: object) -> object:
    """A JSON-ready value: numpy scalars as Python, missing as None."""
    if hasattr(value, "item") and not isinstance(value, str | bytes):
        try:
            value = value.item()  # type: ignore[union-attr]
        except Exception:
            return str(value)
    if is_missing(value):
        return None
    if isinstance(value, float) and not math.isfinite(value):
        return None
    if value is None or isinstance(value, bool | int | float | str):
        return value
    return str(value)


def _align(infos: Sequence[ColumnInfo], columns: Sequence[str] | None) -> list[ColumnInfo]:
    """`infos` in the order of the contribution columns `columns` (a column without an info gets a plain one)."""
    if columns is None:
        return list(infos)
    by = {i.column: i for i in infos}
    return [by.get(str(c)) or ColumnInfo(str(c)) for c in columns]


def _matrix(contributions: np.ndarray, k: int) -> np.ndarray:
    c = np.asarray(contributions, dtype=np.float64)
    if c.ndim == 1:
        c = c.reshape(1, -1)
    if c.ndim != 2 or c.shape[1] not in (k, k + 1):
        raise ValueError(f"contributions must be (n, {k}) or (n, {k + 1}) with the bias last for {k} columns, "
                         f"got shape {np.shape(contributions)}")
    return c[:, :k]


def _n_rows(rows: object) -> int:
    return len(rows)  # type: ignore[arg-type]


def _cells(rows: object, infos: Sequence[ColumnInfo], idx: np.ndarray, keep: np.ndarray) -> list[list[object]]:
    """The values of the chosen cells, row by row, from a DataFrame, a 2-D array or a sequence of mappings (or of
    sequences in column order)."""
    n, top = idx.shape
    if isinstance(rows, np.ndarray):
        return np.take_along_axis(rows, idx, axis=1).tolist()
    if hasattr(rows, "columns") and hasattr(rows, "iloc"):  # a DataFrame: one object array per chosen column
        out = np.full((n, top), None, dtype=object)
        for j in np.unique(idx[keep]).tolist():
            name = infos[j].column
            if name in rows.columns:  # type: ignore[attr-defined]
                col = rows[name].to_numpy(dtype=object)  # type: ignore[index]
                at = (idx == j) & keep
                out[at] = col[np.nonzero(at)[0]]
        return out.tolist()
    names = [i.column for i in infos]
    out_rows = []
    for row, ii, kk in zip(rows, idx.tolist(), keep.tolist(), strict=True):  # type: ignore[call-overload]
        if isinstance(row, Mapping):
            out_rows.append([row.get(names[j]) if k else None for j, k in zip(ii, kk, strict=True)])
        else:
            out_rows.append([row[j] if k else None for j, k in zip(ii, kk, strict=True)])
    return out_rows


_MISSING = object()


def _ended(ended: bool | Sequence[bool], n: int) -> list[bool]:
    """`reasons`' `ended`, one per row."""
    if isinstance(ended, bool | np.bool_):
        return [bool(ended)] * n
    out = [bool(e) for e in ended]
    if len(out) != n:
        raise ValueError(f"{n} rows of contributions but {len(out)} values of ended")
    return out


def reasons(contributions: np.ndarray, rows: object, infos: Sequence[ColumnInfo], *, top: int = 3,
            direction: Direction = "raises", min_contribution: float = 0.0,
            columns: Sequence[str] | None = None, distinct: bool = True,
            ended: bool | Sequence[bool] = True) -> list[list[Reason]]:
    """Per row, the `top` columns that contribute most to the risk, as Reasons with the row's own values.

    `contributions` is (n, k) or (n, k+1) with the bias term last (LightGBM `pred_contrib`, SHAP), its columns in the
    order of `infos`, or of `columns` (the model's column names) when given: `infos` are then matched by name.
    `rows` holds the rows' values: a DataFrame, a sequence of column -> value mappings, or an (n, k) array in
    contribution order. `direction` "raises" keeps positive contributions, largest first; "lowers" negative ones
    (protective factors), most negative first; "both" ranks by absolute value. A column whose contribution in that
    direction is zero or below `min_contribution` is skipped, so a row may get fewer than `top`. Equal contributions
    among the chosen rank in column order. Selection is vectorised; phrases are built for the chosen cells only.
    With `distinct` (the default) a row names each measure once: "12 admissions in the past 6 months" is not
    followed by "14 admissions in the past year", nor "sodium 128 at discharge" by "lowest sodium 127".
    `ended` (one for all rows, or one per row) says whether the row's stay had ended at its index time, as in
    `phrase`: a stay still open reads "latest sodium 128 mmol/L", not "at discharge".
    """
    if direction not in ("raises", "lowers", "both"):
        raise ValueError(f"direction must be 'raises', 'lowers' or 'both', got {direction!r}")
    infos = _align(infos, columns)
    k = len(infos)
    c = _matrix(contributions, k)
    n = c.shape[0]
    if _n_rows(rows) != n:
        raise ValueError(f"{n} rows of contributions but {_n_rows(rows)} rows of values")
    over = _ended(ended, n)
    want = min(int(top), k)
    top = min(want * 4, k) if distinct else want  # candidates: enough to skip repeats of a measure
    if n == 0 or top <= 0:
        return [[] for _ in range(n)]
    score = c if direction == "raises" else -c if direction == "lowers" else np.abs(c)
    score = np.where(np.isnan(score), -np.inf, score)
    if top < k:
        idx = np.argpartition(-score, top - 1, axis=1)[:, :top]
        picked = np.take_along_axis(score, idx, axis=1)
        order = np.lexsort((idx, -picked), axis=1)  # by score descending, then column order
        idx = np.take_along_axis(idx, order, axis=1)
    else:
        idx = np.argsort(-score, axis=1, kind="stable")
    picked = np.take_along_axis(score, idx, axis=1)
    keep = (picked > 0) & (picked >= min_contribution)
    contrib = np.take_along_axis(c, idx, axis=1).tolist()
    cells = _cells(rows, infos, idx, keep)
    counts = keep.sum(axis=1).tolist()  # scores are sorted, so the kept cells come first
    idx_l = idx.tolist()
    columns_ = [i.column for i in infos]
    cache: dict[tuple[int, object], tuple[object, str]] = {}
    out: list[list[Reason]] = []
    for i in range(n):
        row_out: list[Reason] = []
        seen: set[str] = set()
        for pos in range(counts[i]):
            if len(row_out) == want:
                break
            j = idx_l[i][pos]
            if distinct:
                family = infos[j].label or infos[j].column
                if family in seen:
                    continue
                seen.add(family)
            value, end = cells[i][pos], over[i]
            try:
                key = (j, end, value)
                hit = cache.get(key)
                if hit is None:
                    key = (j, end, _MISSING) if is_missing(value) else key
                    hit = cache.get(key)
                    if hit is None:
                        hit = cache[key] = (_plain(value), phrase(infos[j], value, ended=end))
            except TypeError:  # an unhashable value
                hit = (_plain(value), phrase(infos[j], value, ended=end))
            row_out.append(Reason(columns_[j], hit[0], contrib[i][pos], hit[1]))
        out.append(row_out)
    return out


def global_importance(contributions: np.ndarray, infos: Sequence[ColumnInfo], *,
                      columns: Sequence[str] | None = None) -> list[dict]:
    """Mean absolute contribution per column, largest first: [{"column", "label", "mean_abs_contribution"}].

    Contribution columns are in the order of `infos`, or of `columns` when given (as in `reasons`). The label names
    the column itself ("lowest sodium", "admissions (past 6 months)"). NaN contributions are ignored; ties keep
    column order.
    """
    infos = _align(infos, columns)
    c = _matrix(contributions, len(infos))
    a = np.abs(c)
    counts = np.sum(~np.isnan(a), axis=0)
    sums = np.nansum(a, axis=0)
    mean = np.divide(sums, counts, out=np.zeros(len(infos)), where=counts > 0)
    order = np.argsort(-mean, kind="stable")
    return [{"column": infos[j].column, "label": column_title(infos[j]), "mean_abs_contribution": float(mean[j])}
            for j in order]
