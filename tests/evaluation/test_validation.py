"""Bad input fails early with one line naming the problem, in every entry point."""

from __future__ import annotations

import numpy as np
import pytest

from careloop.errors import CareloopError
from careloop.evaluation import EvaluationError, choose_operating_point, compare, evaluate, fairness

Y = np.array([0, 1, 0, 1, 1, 0])
P = np.array([0.1, 0.8, 0.3, 0.6, 0.9, 0.2])


@pytest.mark.parametrize(
    ("y", "p", "match"),
    [
        ([], [], "y is empty"),
        ([0, 1, 2, 1, 0, 0], P, r"y must be binary \(0/1 or bool\); found 1 other values \(2\)"),
        (["a", "b", "a", "b", "a", "b"], P, "y must be binary"),
        ([0, 1, np.nan, 1, 1, 0], P, "y must be binary"),
        (Y, [0.1, 0.8, np.nan, 0.6, 0.9, 0.2], r"p must be probabilities in \[0, 1\]; found 1 NaN"),
        (Y, [0.1, 1.2, 0.3, 0.6, 0.9, 0.2], r"found 0 NaN and 1 outside \[0, 1\] \(e.g. 1.2\)"),
        (Y, [0.1, -0.1, 0.3, 0.6, 0.9, 0.2], "outside"),
        (Y, [0.1, 0.8, 0.3], "y has 6 values but p has 3"),
        ([0, 0, 0, 0, 0, 0], P, r"y has no positives \(all 6 are 0\)"),
        ([True] * 6, P, r"y has no negatives \(all 6 are 1\)"),
        ([[0, 1], [1, 0]], [[0.1, 0.2], [0.3, 0.4]], "one-dimensional"),
    ],
)
def test_evaluate_rejects_bad_input(y: object, p: object, match: str) -> None:
    with pytest.raises(EvaluationError, match=match) as info:
        evaluate(y, p, n_boot=0)
    assert "\n" not in str(info.value)


def test_errors_are_careloop_errors() -> None:
    assert issubclass(EvaluationError, CareloopError)


@pytest.mark.parametrize(
    ("kwargs", "match"),
    [
        ({"n_boot": -1}, "n_boot must be a non-negative integer"),
        ({"n_boot": 1.5}, "n_boot must be a non-negative integer"),
        ({"ci": 1.0}, "ci must be a level strictly between 0 and 1"),
        ({"seed": -3}, "seed must be a non-negative integer"),
        ({"threshold": 1.5}, r"threshold must be a probability in \[0, 1\]"),
        ({"thresholds": [0.2, np.nan]}, "thresholds must be a non-empty list of probabilities"),
        ({"decision_thresholds": [0.0, 0.2]}, "decision_thresholds must lie strictly between 0 and 1"),
        ({"clusters": ["a", "b"]}, "y has 6 values but clusters has 2"),
        ({"clusters": ["a", None, "b", "b", "c", "c"]}, "clusters has 1 missing ids"),
    ],
)
def test_evaluate_rejects_bad_options(kwargs: dict, match: str) -> None:
    with pytest.raises(EvaluationError, match=match):
        evaluate(Y, P, **({"n_boot": 0} | kwargs))


def test_bool_and_float_labels_are_accepted() -> None:
    a = evaluate(Y.astype(bool), P, n_boot=0).to_dict()
    b = evaluate(Y.astype(float), P, n_boot=0).to_dict()
    assert a == b == evaluate(list(Y), list(P), n_boot=0).to_dict()


def test_compare_rejects_unknown_primary_and_nan_scores() -> None:
    with pytest.raises(EvaluationError, match="primary 'x' is not among the scores"):
        compare(Y, {"a": P}, "x", n_boot=0)
    with pytest.raises(EvaluationError, match=r"scores\['b'\] must be finite numbers; found 1 NaN"):
        compare(Y, {"a": P, "b": [1, 2, np.nan, 4, 5, 6]}, "a", n_boot=0)


def test_fairness_rejects_bad_groups_and_options() -> None:
    with pytest.raises(EvaluationError, match=r"groups\['sex'\] has 2"):
        fairness(Y, P, {"sex": ["F", "M"]}, threshold=0.5, n_boot=0)
    with pytest.raises(EvaluationError, match="tolerances has unknown metric 'accuracy'"):
        fairness(Y, P, {"sex": ["F"] * 6}, threshold=0.5, tolerances={"accuracy": 0.1}, n_boot=0)
    with pytest.raises(EvaluationError, match="the tolerance for tpr must be a non-negative number"):
        fairness(Y, P, {"sex": ["F"] * 6}, threshold=0.5, tolerances={"tpr": -1}, n_boot=0)
    with pytest.raises(EvaluationError, match="min_group_size must be a positive integer"):
        fairness(Y, P, {"sex": ["F"] * 6}, threshold=0.5, min_group_size=0, n_boot=0)
    with pytest.raises(EvaluationError, match="p must be probabilities"):
        fairness(Y, P * 2, {"sex": ["F"] * 6}, threshold=0.5, n_boot=0)


@pytest.mark.parametrize(
    ("policy", "target", "match"),
    [
        ("top", 0.1, "policy must be one of budget, ppv, sensitivity, threshold; got 'top'"),
        ("budget", 0.0, r"the budget policy needs a target in \(0, 1\]"),
        ("sensitivity", 1.5, r"the sensitivity policy needs a target in \(0, 1\]"),
        ("threshold", -0.1, r"the threshold policy needs a target in \[0, 1\]"),
        ("ppv", float("nan"), "target must be a number"),
    ],
)
def test_choose_operating_point_rejects_bad_policy(policy: str, target: float, match: str) -> None:
    with pytest.raises(EvaluationError, match=match):
        choose_operating_point(Y, P, policy=policy, target=target)  # type: ignore[arg-type]
