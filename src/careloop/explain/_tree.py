"""Exact per-row contributions of a LightGBM model (TreeSHAP, as computed by LightGBM itself)."""

from __future__ import annotations

import numpy as np

__all__ = ["tree_contributions"]


def tree_contributions(model: object, X) -> np.ndarray:
    """SHAP values of a binary LightGBM model in log-odds, shape (n, k+1): one column per column of `X`, in `X`'s
    order, then the bias term; each row sums to the model's raw score (log-odds).

    `model` is a `lightgbm.Booster` or a fitted scikit-learn LightGBM estimator (`LGBMClassifier`, which holds its
    Booster in `booster_`). `X` is a pandas DataFrame with the training columns (any order; categorical columns as
    pandas categoricals, as in training). Equals `shap.TreeExplainer(model).shap_values(X)` and its expected_value.
    """
    import lightgbm as lgb

    booster = model if isinstance(model, lgb.Booster) else getattr(model, "booster_", None)
    if not isinstance(booster, lgb.Booster):
        raise TypeError(f"expected a lightgbm.Booster or a fitted LightGBM estimator, got {type(model).__name__}")
    names = booster.feature_name()
    k = len(names)
    perm = None
    if hasattr(X, "columns"):
        cols = [str(c) for c in X.columns]
        if len(cols) != k:
            raise ValueError(f"the model has {k} features but X has {len(cols)} columns")
        if cols != names and set(cols) == set(names):
            X = X[names]  # LightGBM reads columns by position: put them in training order
            where = {name: i for i, name in enumerate(names)}
            perm = np.array([where[c] for c in cols])
    elif np.shape(X)[1] != k:
        raise ValueError(f"the model has {k} features but X has {np.shape(X)[1]} columns")
    out = booster.predict(X, pred_contrib=True)
    if isinstance(out, list) or hasattr(out, "tocsr"):
        raise ValueError("sparse or multi-class contributions are not supported: use a binary model on dense X")
    out = np.asarray(out, dtype=np.float64)
    if out.ndim != 2 or out.shape[1] != k + 1:
        raise ValueError(f"expected contributions of shape (n, {k + 1}) from a binary model, got {out.shape}")
    if perm is not None:
        out = np.concatenate([out[:, perm], out[:, k:]], axis=1)
    return out
