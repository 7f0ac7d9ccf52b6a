"""Exact per-row contributions of a LightGBM model (TreeSHAP, as computed by LightGBM itself)."""

from __future__ import annotations

import numpy as np

__all__ = ["tree_contributions"]


def tree_contributions(model: object, X) -> np.ndarray:
    """SHAP values of a binary LightGBM model in log-odds, shape (n, k+1): one column per column of `X`, in `X`'s
    order, then the bias term; each row sums to the model's raw score (log-odds).

    `model` is a `lightgbm.Booster` or a fitted scikit-learn LightGBM estimator (`LGBMClassifier`, which holds its
    Booster in `booster_`). `X` is a pandas DataFrame with the training columns (any order, named as in training or
    as LightGBM stored them, "sodium last" or `sodium_last`; categorical columns as pandas categoricals, as in
    training), or an array in training order. A DataFrame whose columns are not the model's features is refused
    (ValueError), never read by position. Equals `shap.TreeExplainer(model).shap_values(X)` and its expected_value.
    """
    import lightgbm as lgb

    booster = model if isinstance(model, lgb.Booster) else getattr(model, "booster_", None)
    if not isinstance(booster, lgb.Booster):
        raise TypeError(f"expected a lightgbm.Booster or a fitted LightGBM estimator, got {type(model).__name__}")
    names = booster.feature_name()
    k = len(names)
    where = None
    if hasattr(X, "columns"):
        where = _positions([str(c) for c in X.columns], names)
        if where is not None:
            X = X.iloc[:, np.argsort(where)]  # LightGBM reads columns by position: put them in training order
    elif np.shape(X)[1] != k:
        raise ValueError(f"the model has {k} features but X has {np.shape(X)[1]} columns")
    out = booster.predict(X, pred_contrib=True)
    if isinstance(out, list) or hasattr(out, "tocsr"):
        raise ValueError("sparse or multi-class contributions are not supported: use a binary model on dense X")
    out = np.asarray(out, dtype=np.float64)
    if out.ndim != 2 or out.shape[1] != k + 1:
        raise ValueError(f"expected contributions of shape (n, {k + 1}) from a binary model, got {out.shape}")
    if where is not None:
        out = np.concatenate([out[:, where], out[:, k:]], axis=1)
    return out


def lightgbm_name(column: str) -> str:
    """A column name as LightGBM stores it: LightGBM (4.x) replaces each space with "_" (and refuses the JSON
    characters " , : [ ] { } at training, so no stored name has them); a test holds this to the installed version."""
    return column.replace(" ", "_")


def _positions(columns: list[str], names: list[str]) -> np.ndarray | None:
    """The model feature each of X's `columns` is (its position in `names`), or None when X is in training order.

    A column matches a feature by its name as given, else as LightGBM renamed it ("sodium last" is `sodium_last`).
    Columns that still do not match are refused: read by position, one column's contributions would be reported
    as another's."""
    k = len(names)
    if len(columns) != k:
        raise ValueError(f"the model has {k} features but X has {len(columns)} columns")
    if columns == names:
        return None
    index = {name: i for i, name in enumerate(names)}
    found = [index.get(c, index.get(lightgbm_name(c))) for c in columns]
    unknown = [c for c, i in zip(columns, found, strict=True) if i is None]
    taken = [i for i in found if i is not None]
    if unknown or len(set(taken)) != k:
        missing = [n for i, n in enumerate(names) if i not in set(taken)]
        twice = sorted({names[i] for i in taken if taken.count(i) > 1})
        raise ValueError("X's columns are not the model's features (LightGBM stores a space as '_'): "
                         f"not in the model {unknown}, missing from X {missing}"
                         + (f", given twice {twice}" if twice else "")
                         + "; pass an array to read columns by position")
    where = np.array(taken)
    return None if np.array_equal(where, np.arange(k)) else where
