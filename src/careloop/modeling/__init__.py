"""Estimators, calibration and model selection: LightGBM and a ridge logistic regression behind one interface.

`fit_candidates(...)` trains both on the training patients, calibrates each on the calibration split and chooses
one by calibration-split AUROC; the test split is never seen here. A `RiskModel` saves to text files (LightGBM's
model text, JSON) and loads back bit-for-bit, so a registry bundle can hash it and the service can load it.
"""

from careloop.modeling._calibration import Calibrator
from careloop.modeling._estimators import ESTIMATORS, GradientBoosting, Logistic
from careloop.modeling._frame import FrameError, Preprocessor
from careloop.modeling._model import RiskModel
from careloop.modeling._train import Candidates, TrainingError, fit_candidates, inner_folds

__all__ = ["ESTIMATORS", "Calibrator", "Candidates", "FrameError", "GradientBoosting", "Logistic", "Preprocessor",
           "RiskModel", "TrainingError", "fit_candidates", "inner_folds"]
