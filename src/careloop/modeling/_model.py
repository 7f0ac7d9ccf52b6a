"""A trained risk model: preprocessor + estimator + calibrator, saved as text files a bundle can hash."""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pyarrow as pa

from careloop.modeling._calibration import Calibrator
from careloop.modeling._estimators import ESTIMATORS
from careloop.modeling._frame import Preprocessor

SPEC_FILE = "model.json"


@dataclass
class RiskModel:
    """`predict_proba(table)` gives calibrated probabilities; `contributions(table)` the log-odds reasons."""

    preprocessor: Preprocessor
    estimator: object  # GradientBoosting | Logistic
    calibrator: Calibrator

    @property
    def columns(self) -> list[str]:
        return self.preprocessor.columns

    @property
    def kind(self) -> str:
        return self.estimator.name

    def raw_score(self, table: pa.Table) -> np.ndarray:
        return np.asarray(self.estimator.raw_score(table), dtype=np.float64)

    def predict_proba(self, table: pa.Table) -> np.ndarray:
        """Calibrated probability of the positive class, one per row."""
        return self.calibrator(self.raw_score(table))

    def contributions(self, table: pa.Table) -> np.ndarray:
        """(n, k + 1): each input column's share of the uncalibrated log-odds; the expected value last."""
        return np.asarray(self.estimator.contributions(table), dtype=np.float64)

    def predict_proba_rows(self, rows: list[dict]) -> np.ndarray:
        """`predict_proba` for {column: value} dicts (the service's one stay), without building a table."""
        return self.calibrator(np.asarray(self.estimator.raw_score_rows(rows), dtype=np.float64))

    def contributions_rows(self, rows: list[dict]) -> np.ndarray:
        """`contributions` for {column: value} dicts."""
        return np.asarray(self.estimator.contributions_rows(rows), dtype=np.float64)

    def save(self, folder: Path) -> list[str]:
        """Write the model's files into `folder`; return their names."""
        folder.mkdir(parents=True, exist_ok=True)
        self.estimator.save(folder)
        spec = {"estimator": self.kind, "preprocessor": self.preprocessor.to_dict(),
                "calibration": self.calibrator.to_dict(), "hyperparameters": self.estimator.hyperparameters}
        (folder / SPEC_FILE).write_text(json.dumps(spec, indent=1, sort_keys=True))
        return [SPEC_FILE, self.estimator.model_file]

    @classmethod
    def load(cls, folder: Path) -> RiskModel:
        spec = json.loads((folder / SPEC_FILE).read_text())
        pre = Preprocessor.from_dict(spec["preprocessor"])
        est = ESTIMATORS[spec["estimator"]].load(folder, pre)
        return cls(pre, est, Calibrator.from_dict(spec["calibration"]))
