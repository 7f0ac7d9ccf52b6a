"""How a feature table becomes a model's input, learned on the training split and frozen into the bundle.

The same `Preprocessor` gives LightGBM its frame (numbers as float64 with NaN for missing, categoricals with the
training categories in a fixed order) and the logistic model its design matrix (median-imputed standardised
numbers, a missing indicator per number that was ever missing in training, one-hot categories). Its state is
plain JSON, so a bundle needs no pickle and the service rebuilds it exactly.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.compute as pc

from careloop.errors import CareloopError

OTHER = "__other__"  # categories too rare in training, and then any category never seen in training (without rare
# ones there is no OTHER: an unseen category is read as missing by LightGBM and as the reference level by the
# logistic model, so the service defers on it first: `Preprocessor.unknown_levels`)
MISSING = "__missing__"


class FrameError(CareloopError):
    pass


def _is_categorical(arr: pa.ChunkedArray | pa.Array) -> bool:
    t = arr.type
    return pa.types.is_string(t) or pa.types.is_large_string(t) or pa.types.is_dictionary(t)


def _as_float(arr: pa.ChunkedArray, name: str) -> np.ndarray:
    t = arr.type
    if pa.types.is_boolean(t) or pa.types.is_integer(t) or pa.types.is_floating(t) or pa.types.is_decimal(t):
        arr = pc.cast(arr, pa.float64())
    else:
        raise FrameError(f"column {name!r} of type {t} is neither numeric, boolean nor text")
    return arr.to_numpy(zero_copy_only=False).astype(np.float64, copy=False)


def _as_text(arr: pa.ChunkedArray) -> np.ndarray:
    """Text values as an object array with None for missing."""
    if pa.types.is_dictionary(arr.type):
        arr = pc.cast(arr, pa.string())
    return np.asarray(arr.to_pylist(), dtype=object)


def _cast_text(value: object) -> str:
    """A non-text value as Arrow's cast to string spells it (True -> "true", 2.0 -> "2")."""
    return pa.array([value]).cast(pa.string())[0].as_py()


@dataclass
class NumericColumn:
    name: str
    median: float
    mean: float  # of the imputed values, for standardising
    scale: float
    had_missing: bool


@dataclass
class CategoricalColumn:
    name: str
    categories: list[str]  # in training frequency order; OTHER and MISSING last when present
    design: list[str] = field(default_factory=list)  # one-hot levels (all but the reference level)


@dataclass
class Preprocessor:
    """Column roles and statistics learned on training rows; `to_dict`/`from_dict` round-trip exactly."""

    numeric: list[NumericColumn]
    categorical: list[CategoricalColumn]

    @property
    def columns(self) -> list[str]:
        return [c.name for c in self.numeric] + [c.name for c in self.categorical]

    @classmethod
    def fit(cls, table: pa.Table, columns: list[str], *, categorical: set[str] | None = None,
            min_category_count: int = 20) -> Preprocessor:
        """Learn roles (text is categorical unless told) and statistics from the training rows."""
        categorical = set(categorical or ())
        nums, cats = [], []
        for name in columns:
            arr = table.column(name)
            if name in categorical or _is_categorical(arr):
                values = _as_text(arr)
                present = values[values != None]  # noqa: E711 (elementwise)
                labels, counts = np.unique(present.astype(str), return_counts=True) if len(present) else ([], [])
                order = sorted(zip(labels, counts, strict=True), key=lambda lc: (-lc[1], lc[0]))
                kept = [str(v) for v, n in order if n >= min_category_count]
                rare = any(n < min_category_count for _, n in order)
                cats_ = kept + ([OTHER] if rare or not kept else []) + ([MISSING] if len(present) < len(values) else [])
                cats.append(CategoricalColumn(name, cats_, design=cats_[1:]))
            else:
                x = _as_float(arr, name)
                finite = x[np.isfinite(x)]
                median = float(np.median(finite)) if len(finite) else 0.0
                filled = np.where(np.isfinite(x), x, median)
                sd = float(filled.std())
                nums.append(NumericColumn(name, median, float(filled.mean()), sd if sd > 0 else 1.0,
                                          bool(len(finite) < len(x))))
        return cls(nums, cats)

    def check(self, table: pa.Table) -> None:
        missing = [c for c in self.columns if c not in table.column_names]
        if missing:
            raise FrameError(f"input lacks {len(missing)} column(s) the model needs: {', '.join(missing[:8])}")

    def _codes(self, table: pa.Table, col: CategoricalColumn) -> np.ndarray:
        """Index of each row's category in `col.categories` (unseen → OTHER, missing → MISSING)."""
        arr = table.column(col.name)
        arr = pc.cast(arr, pa.string()) if not pa.types.is_string(arr.type) else arr
        idx = pc.index_in(arr, value_set=pa.array(col.categories, pa.string()))
        lookup = {c: i for i, c in enumerate(col.categories)}
        other = lookup.get(OTHER, -1)
        miss = lookup.get(MISSING, other)
        idx = pc.if_else(pc.is_null(arr), miss, pc.fill_null(idx, other))
        return idx.to_numpy(zero_copy_only=False).astype(np.int32)

    def frame(self, table: pa.Table) -> pd.DataFrame:
        """LightGBM's input: float64 numbers with NaN, categoricals with the training categories."""
        self.check(table)
        data: dict[str, object] = {}
        for c in self.numeric:
            data[c.name] = _as_float(table.column(c.name), c.name)
        for c in self.categorical:
            codes = self._codes(table, c)
            data[c.name] = pd.Categorical.from_codes(codes, categories=c.categories)
        return pd.DataFrame(data, columns=self.columns)

    def design(self, table: pa.Table) -> tuple[np.ndarray, np.ndarray]:
        """The logistic model's design matrix and, for each design column, the index of its source column."""
        self.check(table)
        n = table.num_rows
        num = np.column_stack([_as_float(table.column(c.name), c.name) for c in self.numeric]) if self.numeric \
            else np.zeros((n, 0))
        codes = np.column_stack([self._codes(table, c) for c in self.categorical]) if self.categorical \
            else np.zeros((n, 0), dtype=np.int32)
        return self._design(num, codes)

    def _design(self, num: np.ndarray, codes: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """Design columns in a fixed order: each number (median-imputed, standardised) followed by its missing
        indicator if it was ever missing in training, then each categorical's one-hot levels but the first."""
        plan = self.__dict__.get("_plan")
        if plan is None:
            plan = self.__dict__["_plan"] = self._design_plan()
        z_pos, ind_cols, ind_pos, cat_offset, width, owner, median, mean, scale = plan
        n = num.shape[0]
        x = np.zeros((n, width))
        isna = ~np.isfinite(num)
        x[:, z_pos] = (np.where(isna, median, num) - mean) / scale
        x[:, ind_pos] = isna[:, ind_cols]
        if codes.shape[1]:
            hot = codes >= 1  # level 0 is the reference
            rows, cols = np.nonzero(hot)
            x[rows, cat_offset[cols] + codes[rows, cols] - 1] = 1.0
        return x, owner

    def _design_plan(self) -> tuple:
        z_pos, ind_cols, ind_pos, owner = [], [], [], []
        for j, c in enumerate(self.numeric):
            z_pos.append(len(owner))
            owner.append(j)
            if c.had_missing:
                ind_cols.append(j)
                ind_pos.append(len(owner))
                owner.append(j)
        offsets = []
        for j, c in enumerate(self.categorical):
            offsets.append(len(owner))
            owner += [len(self.numeric) + j] * (len(c.categories) - 1)
        as_array = lambda v, t=np.float64: np.asarray(v, dtype=t)  # noqa: E731
        return (as_array(z_pos, np.int64), as_array(ind_cols, np.int64), as_array(ind_pos, np.int64),
                as_array(offsets, np.int64), len(owner), as_array(owner, np.int64),
                as_array([c.median for c in self.numeric]), as_array([c.mean for c in self.numeric]),
                as_array([c.scale for c in self.numeric]))

    # -- one row at a time (the service): plain Python values in, the same numbers out as for a table ----------
    def _row_code(self, col: CategoricalColumn, value: object) -> int:
        lookups = self.__dict__.setdefault("_lookups", {})  # a cache, not state: to_dict never sees it
        lookup = lookups.get(col.name)
        if lookup is None:
            lookup = lookups[col.name] = {c: i for i, c in enumerate(col.categories)}
        other = lookup.get(OTHER, -1)
        if value is None:
            return lookup.get(MISSING, other)
        text = value if isinstance(value, str) else _cast_text(value)
        return lookup.get(text, other)

    def unknown_levels(self, row: dict, *, missing: bool = True) -> list[tuple[str, object]]:
        """(column, value) of each categorical input of `row` with no level of its own: a value never seen in
        training when training pooled no rare values into OTHER, or (`missing`) a missing value (None) when training
        never had one. `frame` and `design` still read them (as missing, or as the reference level), so a caller that
        must not guess (the service) checks first."""
        out = []
        for col in self.categorical:
            value = row.get(col.name)
            if value is None:
                if missing and MISSING not in col.categories:
                    out.append((col.name, None))
            elif OTHER not in col.categories and (value if isinstance(value, str) else _cast_text(value)) \
                    not in col.categories:
                out.append((col.name, value))
        return out

    def row_inputs(self, rows: list[dict]) -> tuple[np.ndarray, np.ndarray]:
        """(numbers with NaN for missing, category codes) of `rows` ({column: value} dicts, e.g. from
        `careloop.features.rows`): what `frame` and `design` read from a table."""
        missing = [c for c in self.columns if c not in rows[0]] if rows else []
        if missing:
            raise FrameError(f"input lacks {len(missing)} column(s) the model needs: {', '.join(missing[:8])}")
        num = np.array([[np.nan if r[c.name] is None else float(r[c.name]) for c in self.numeric] for r in rows],
                       dtype=np.float64).reshape(len(rows), len(self.numeric))
        codes = np.array([[self._row_code(c, r[c.name]) for c in self.categorical] for r in rows],
                         dtype=np.int32).reshape(len(rows), len(self.categorical))
        return num, codes

    def design_rows(self, rows: list[dict]) -> tuple[np.ndarray, np.ndarray]:
        """`design` for a list of row dicts."""
        num, codes = self.row_inputs(rows)
        return self._design(num, codes)

    def array_rows(self, rows: list[dict]) -> np.ndarray:
        """LightGBM's input for row dicts as one float matrix: category codes as numbers, NaN where pandas would
        give -1 (LightGBM reads a categorical frame the same way)."""
        num, codes = self.row_inputs(rows)
        cats = codes.astype(np.float64)
        cats[codes < 0] = np.nan
        return np.hstack([num, cats])

    def to_dict(self) -> dict:
        return {"numeric": [vars(c) for c in self.numeric], "categorical": [vars(c) for c in self.categorical]}

    @classmethod
    def from_dict(cls, d: dict) -> Preprocessor:
        return cls([NumericColumn(**c) for c in d["numeric"]], [CategoricalColumn(**c) for c in d["categorical"]])
