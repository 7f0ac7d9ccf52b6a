"""Fit the candidate estimators on the training patients, calibrate them, and pick one, never looking at test."""

from __future__ import annotations

import hashlib
from dataclasses import dataclass, field

import numpy as np
import pyarrow as pa
from sklearn.metrics import roc_auc_score

from careloop.errors import CareloopError
from careloop.modeling._calibration import Calibrator, Method
from careloop.modeling._estimators import ESTIMATORS
from careloop.modeling._frame import Preprocessor
from careloop.modeling._model import RiskModel

FOLDS = 5  # patient-level folds of the training split, for early stopping and the choice of C
CV_BELOW = 20_000  # under this many training rows every fold is used (cross-validation); above, fold 0 only
SIMPLER_WITHIN = 0.005  # AUROC margin inside which the logistic model is preferred


class TrainingError(CareloopError):
    pass


def _patient_hash(pid: str, seed: int) -> int:
    return int.from_bytes(hashlib.blake2b(f"inner:{seed}:{pid}".encode(), digest_size=8).digest(), "big")


def inner_folds(patient_ids: list[str], seed: int, k: int = FOLDS) -> np.ndarray:
    """Fold 0..k-1 of each training row, from a hash of its patient: a patient's stays share a fold, so no fold used
    for early stopping or the choice of C sees a patient it was trained on.

    When the hash leaves a fold empty (few patients), the patients, ordered by their hash, are dealt out in turn
    over min(k, patients) folds; never the rows, which would split a patient's stays across folds."""
    hashes = {p: _patient_hash(p, seed) for p in set(patient_ids)}
    if len(hashes) < 2:
        raise TrainingError(f"the training split needs at least 2 patients for its inner folds; it has {len(hashes)}")
    patients = sorted(hashes, key=lambda p: (hashes[p], p))
    fold = {p: h % k for p, h in hashes.items()}
    if len(set(fold.values())) < k:  # too few patients to hash into every fold: deal the patients out in turn
        k = min(k, len(patients))
        fold = {p: i % k for i, p in enumerate(patients)}
    return np.fromiter((fold[p] for p in patient_ids), dtype=np.int64, count=len(patient_ids))


@dataclass
class Candidates:
    models: dict[str, RiskModel]
    chosen: str
    selection: str
    calibration_auroc: dict[str, float] = field(default_factory=dict)

    @property
    def model(self) -> RiskModel:
        return self.models[self.chosen]


def fit_candidates(train: pa.Table, y_train: np.ndarray, train_patients: list[str], calib: pa.Table,
                   y_calib: np.ndarray, *, columns: list[str], categorical: set[str] | None = None,
                   estimators: tuple[str, ...] = ("lightgbm", "logistic"), calibration: Method = "sigmoid",
                   seed: int = 0, threads: int = 0, progress=None) -> Candidates:
    """Train each estimator on the training split, calibrate on the calibration split, choose by calibration AUROC."""
    for name, y in (("training", y_train), ("calibration", y_calib)):
        if len(y) == 0 or y.min() == y.max():
            raise TrainingError(f"the {name} split needs both outcomes; it has {len(y)} rows, {int(y.sum())} positive")
    unknown = [e for e in estimators if e not in ESTIMATORS]
    if unknown:
        raise TrainingError(f"unknown estimator {unknown[0]!r} (choose from {', '.join(ESTIMATORS)})")
    pre = Preprocessor.fit(train, columns, categorical=categorical)
    folds = inner_folds(train_patients, seed)
    if train.num_rows >= CV_BELOW:
        folds = np.where(folds == 0, 0, 1)  # enough data: one held-out fold is stable, and 5x cheaper
    models, aurocs = {}, {}
    for name in estimators:
        if progress:
            progress(f"fitting {name}")
        est = ESTIMATORS[name](pre, seed=seed, threads=threads).fit(train, y_train, folds)
        raw_cal = np.asarray(est.raw_score(calib), dtype=np.float64)
        models[name] = RiskModel(pre, est, Calibrator(calibration).fit(raw_cal, y_calib))
        aurocs[name] = float(roc_auc_score(y_calib, raw_cal))
    best = max(aurocs, key=aurocs.get)
    chosen, why = best, f"highest AUROC on the calibration split ({aurocs[best]:.3f})"
    if "logistic" in aurocs and best != "logistic" and aurocs[best] - aurocs["logistic"] < SIMPLER_WITHIN:
        chosen = "logistic"
        why = (f"logistic regression ({aurocs['logistic']:.3f}) is within {SIMPLER_WITHIN} AUROC of {best} "
               f"({aurocs[best]:.3f}) on the calibration split and is preferred for its transparency")
    others = ", ".join(f"{k} {v:.3f}" for k, v in aurocs.items() if k != chosen)
    selection = f"Chose {chosen}: {why}" + (f"; other candidates: {others}." if others else ".")
    return Candidates(models, chosen, selection, aurocs)
