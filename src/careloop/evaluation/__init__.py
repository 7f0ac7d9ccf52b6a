"""Model evaluation with honest uncertainty: discrimination, calibration, decision curves, alert burden, fairness.

Every number comes with a cluster-bootstrap interval (patients resampled, so repeated stays move together),
computed for all replicates at once as weighted statistics. Results are frozen objects whose `to_dict()` is the
JSON contract of docs/validation-report.md; computing is kept apart from rendering (`careloop.reports`).
"""

from careloop.evaluation._evaluate import compare, evaluate
from careloop.evaluation._fairness import (
    DEFAULT_TOLERANCES,
    FAIRNESS_METRICS,
    AttributeResult,
    FairnessFlag,
    FairnessReport,
    GroupResult,
    SuppressedGroup,
    fairness,
)
from careloop.evaluation._operating_point import OperatingPoint, choose_operating_point
from careloop.evaluation._recording import RecordingFinding, recording_disparity
from careloop.evaluation._result import CalibrationBin, DecisionPoint, Estimate, Evaluation, ThresholdRow
from careloop.evaluation._validate import EvaluationError

__all__ = [
    "DEFAULT_TOLERANCES",
    "FAIRNESS_METRICS",
    "AttributeResult",
    "CalibrationBin",
    "DecisionPoint",
    "Estimate",
    "Evaluation",
    "EvaluationError",
    "FairnessFlag",
    "FairnessReport",
    "GroupResult",
    "OperatingPoint",
    "RecordingFinding",
    "SuppressedGroup",
    "ThresholdRow",
    "choose_operating_point",
    "compare",
    "evaluate",
    "fairness",
    "recording_disparity",
]
