"""The two estimators careloop trains: gradient-boosted trees (LightGBM) and a ridge logistic regression.

Both expose the same small surface: `fit`, `raw_score` (log-odds before calibration), `contributions` (per input
column, in log-odds, with the expected value last: SHAP for the trees, the exact linear attribution for the
logistic model), and a save format that is text, never a pickle, so a bundle can be hashed, read and reviewed.
"""

from __future__ import annotations

import json
from pathlib import Path

import lightgbm as lgb
import numpy as np
import pyarrow as pa
from sklearn.linear_model import LogisticRegression
from sklearn.metrics import log_loss

from careloop.modeling._frame import Preprocessor

LGBM_DEFAULTS = {
    "objective": "binary", "learning_rate": 0.05, "num_leaves": 15, "min_data_in_leaf": 40,
    "feature_fraction": 0.8, "bagging_fraction": 0.8, "bagging_freq": 1, "lambda_l2": 1.0,
    "cat_smooth": 20.0, "min_data_per_group": 50, "max_cat_to_onehot": 8, "verbose": -1,
    "deterministic": True, "force_row_wise": True,
}
MAX_ROUNDS = 2000
EARLY_STOP = 50
C_GRID = (0.001, 0.003, 0.01, 0.03, 0.1, 0.3, 1.0)


def _logit(p: np.ndarray) -> np.ndarray:
    p = np.clip(p, 1e-12, 1 - 1e-12)
    return np.log(p / (1 - p))


class GradientBoosting:
    """LightGBM binary classifier with early stopping on a held-out part of the training patients."""

    name = "lightgbm"
    model_file = "model.lgb.txt"

    def __init__(self, pre: Preprocessor, *, seed: int = 0, threads: int = 0, params: dict | None = None) -> None:
        self.pre = pre
        self.params = {**LGBM_DEFAULTS, "seed": seed, "num_threads": threads, **(params or {})}
        self.booster: lgb.Booster | None = None

    def fit(self, train: pa.Table, y: np.ndarray, folds: np.ndarray) -> GradientBoosting:
        """Early stopping on held-out patients: with two folds (0 = held out) the model trained on the rest is kept;
        with more, cross-validation picks the number of rounds and the model is refitted on every row."""
        cats = [c.name for c in self.pre.categorical]
        frame = self.pre.frame(train)
        k = int(folds.max()) + 1
        if k == 2:
            fit, held = folds != 0, folds == 0
            dtrain = lgb.Dataset(frame[fit], label=y[fit], categorical_feature=cats)
            dvalid = lgb.Dataset(frame[held], label=y[held], reference=dtrain, categorical_feature=cats)
            self.booster = lgb.train(self.params, dtrain, num_boost_round=MAX_ROUNDS, valid_sets=[dvalid],
                                     callbacks=[lgb.early_stopping(EARLY_STOP, verbose=False)])
            return self
        dtrain = lgb.Dataset(frame, label=y, categorical_feature=cats, free_raw_data=False)
        splits = [(np.flatnonzero(folds != f), np.flatnonzero(folds == f)) for f in range(k)]
        cv = lgb.cv({**self.params, "metric": "binary_logloss"}, dtrain, num_boost_round=MAX_ROUNDS, folds=splits,
                    callbacks=[lgb.early_stopping(EARLY_STOP, verbose=False)], stratified=False)
        rounds = len(next(iter(cv.values())))
        self.booster = lgb.train(self.params, dtrain, num_boost_round=rounds)
        return self

    @property
    def hyperparameters(self) -> dict:
        return {**{k: v for k, v in self.params.items() if k not in ("verbose", "num_threads")},
                "rounds": int(self.booster.best_iteration or self.booster.current_iteration())}

    def raw_score(self, table: pa.Table) -> np.ndarray:
        return self.booster.predict(self.pre.frame(table), raw_score=True, num_iteration=self.booster.best_iteration)

    def contributions(self, table: pa.Table) -> np.ndarray:
        return self.booster.predict(self.pre.frame(table), pred_contrib=True,
                                    num_iteration=self.booster.best_iteration)

    def raw_score_rows(self, rows: list[dict]) -> np.ndarray:
        return self.booster.predict(self.pre.array_rows(rows), raw_score=True,
                                    num_iteration=self.booster.best_iteration)

    def contributions_rows(self, rows: list[dict]) -> np.ndarray:
        return self.booster.predict(self.pre.array_rows(rows), pred_contrib=True,
                                    num_iteration=self.booster.best_iteration)

    def save(self, folder: Path) -> None:
        self.booster.save_model(str(folder / self.model_file), num_iteration=self.booster.best_iteration)

    @classmethod
    def load(cls, folder: Path, pre: Preprocessor) -> GradientBoosting:
        m = cls(pre)
        m.booster = lgb.Booster(model_file=str(folder / cls.model_file))
        return m


class Logistic:
    """L2-regularised logistic regression on the preprocessor's design matrix; C chosen on held-out patients."""

    name = "logistic"
    model_file = "model.logistic.json"

    def __init__(self, pre: Preprocessor, *, seed: int = 0, threads: int = 0, params: dict | None = None) -> None:
        self.pre = pre
        self.seed = seed
        self.C: float | None = (params or {}).get("C")
        self.coef: np.ndarray | None = None
        self.intercept = 0.0
        self.centre: np.ndarray | None = None  # mean design row of the training data (attribution baseline)

    def fit(self, train: pa.Table, y: np.ndarray, folds: np.ndarray) -> Logistic:
        """C by held-out log loss over the patient folds (fold 0 only when there are two), then a refit on all rows."""
        x, _ = self.pre.design(train)
        k = int(folds.max()) + 1
        held_out = [0] if k == 2 else list(range(k))
        grid = (self.C,) if self.C else C_GRID
        losses = []
        for c in grid:
            total = 0.0
            for f in held_out:
                tr, te = folds != f, folds == f
                m = LogisticRegression(C=c, max_iter=2000, tol=1e-6).fit(x[tr], y[tr])
                total += log_loss(y[te], m.predict_proba(x[te])[:, 1], labels=[0, 1]) * te.sum()
            losses.append(total)
        self.C = grid[int(np.argmin(losses))]
        m = LogisticRegression(C=self.C, max_iter=2000, tol=1e-6).fit(x, y)
        self.coef = m.coef_[0].astype(np.float64)
        self.intercept = float(m.intercept_[0])
        self.centre = x.mean(axis=0)
        return self

    @property
    def hyperparameters(self) -> dict:
        return {"penalty": "l2", "C": self.C, "design_columns": len(self.coef)}

    def raw_score(self, table: pa.Table) -> np.ndarray:
        x, _ = self.pre.design(table)
        return x @ self.coef + self.intercept

    def raw_score_rows(self, rows: list[dict]) -> np.ndarray:
        x, _ = self.pre.design_rows(rows)
        return x @ self.coef + self.intercept

    def contributions(self, table: pa.Table) -> np.ndarray:
        """Exact attribution of a linear model: coef * (x - mean x), summed per source column; bias last."""
        return self._attribution(*self.pre.design(table))

    def contributions_rows(self, rows: list[dict]) -> np.ndarray:
        return self._attribution(*self.pre.design_rows(rows))

    def _attribution(self, x: np.ndarray, owner: np.ndarray) -> np.ndarray:
        per_design = (x - self.centre) * self.coef
        k = len(self.pre.columns)
        to_source = np.zeros((len(owner), k))
        to_source[np.arange(len(owner)), owner] = 1.0
        out = np.empty((x.shape[0], k + 1))
        out[:, :k] = per_design @ to_source
        out[:, k] = float(self.centre @ self.coef + self.intercept)
        return out

    def save(self, folder: Path) -> None:
        doc = {"C": self.C, "intercept": self.intercept, "coef": self.coef.tolist(), "centre": self.centre.tolist()}
        (folder / self.model_file).write_text(json.dumps(doc, indent=1))

    @classmethod
    def load(cls, folder: Path, pre: Preprocessor) -> Logistic:
        doc = json.loads((folder / cls.model_file).read_text())
        m = cls(pre, params={"C": doc["C"]})
        m.intercept = float(doc["intercept"])
        m.coef = np.asarray(doc["coef"], dtype=np.float64)
        m.centre = np.asarray(doc["centre"], dtype=np.float64)
        return m


ESTIMATORS = {GradientBoosting.name: GradientBoosting, Logistic.name: Logistic}
