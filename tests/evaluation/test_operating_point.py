"""The four threshold policies, what they achieve on the data they were chosen on, and their rationale."""

from __future__ import annotations

from collections.abc import Callable

import numpy as np
import pytest

from careloop.evaluation import EvaluationError, OperatingPoint, choose_operating_point

Data = tuple[np.ndarray, np.ndarray, np.ndarray]


@pytest.fixture
def calibration(make_data: Callable[..., Data]) -> tuple[np.ndarray, np.ndarray]:
    y, p, _ = make_data(n=2000, seed=9)
    return y, p


def test_budget_flags_at_most_the_target_fraction(calibration: tuple[np.ndarray, np.ndarray]) -> None:
    y, p = calibration
    op = choose_operating_point(y, p, policy="budget", target=0.10)
    assert (p >= op.threshold).mean() <= 0.10
    assert op.threshold == pytest.approx(np.quantile(p, 0.90), abs=0.01)  # continuous scores: the 90th percentile
    assert op.achieved["flag_rate"] == pytest.approx(0.10, abs=1 / y.size)
    assert op.rationale == (f"Flags the 10% of discharges at highest risk (threshold {op.threshold:.3g} on the "
                            "calibration split), to keep alerts within a budget of 10 per 100 discharges.")


def test_ppv_policy_meets_its_target(calibration: tuple[np.ndarray, np.ndarray]) -> None:
    y, p = calibration
    op = choose_operating_point(y, p, policy="ppv", target=0.4)
    flagged = p >= op.threshold
    assert y[flagged].mean() >= 0.4 and op.achieved["ppv"] == y[flagged].mean()
    for s in np.unique(p[p < op.threshold]):  # every more sensitive threshold misses the target
        assert y[p >= s].mean() < 0.4
    assert "at least 40% of alerts are true positives" in op.rationale


def test_ppv_policy_fails_when_no_threshold_reaches_it(calibration: tuple[np.ndarray, np.ndarray]) -> None:
    y, p = calibration
    with pytest.raises(EvaluationError, match=r"no threshold reaches a PPV of 0.999 on these data \(the highest is"):
        choose_operating_point(y, np.round(p, 1), policy="ppv", target=0.999)


def test_sensitivity_policy_meets_its_target(calibration: tuple[np.ndarray, np.ndarray]) -> None:
    y, p = calibration
    op = choose_operating_point(y, p, policy="sensitivity", target=0.8)
    assert (p[y] >= op.threshold).mean() >= 0.8
    assert (p[y] > op.threshold).mean() < 0.8  # the next higher score loses the target
    assert op.achieved["sensitivity"] == pytest.approx((p[y] >= op.threshold).mean())
    assert op.achieved["specificity"] == pytest.approx((p[~y] < op.threshold).mean())


def test_fixed_threshold(calibration: tuple[np.ndarray, np.ndarray]) -> None:
    y, p = calibration
    op = choose_operating_point(y, p, policy="threshold", target=0.25)
    assert op.threshold == 0.25 and op.achieved["flag_rate"] == (p >= 0.25).mean()
    assert op.rationale.startswith("Uses the fixed threshold 0.25, which flagged ")


def test_budget_fails_when_the_top_tie_exceeds_it() -> None:
    with pytest.raises(EvaluationError, match=r"no threshold flags at most 10% of rows: the 5 highest scores are tied"):
        choose_operating_point([1, 0, 1, 0, 0, 0, 0, 1, 0, 0], [0.9] * 5 + [0.1] * 5, policy="budget", target=0.1)


def test_to_dict_shape_and_round_trip(calibration: tuple[np.ndarray, np.ndarray]) -> None:
    y, p = calibration
    op = choose_operating_point(y, p, policy="budget", target=0.2)
    d = op.to_dict()
    assert list(d) == ["policy", "target", "threshold", "chosen_on", "achieved_on_calibration", "rationale"]
    assert d["chosen_on"] == "calibration"
    assert set(d["achieved_on_calibration"]) == {"flag_rate", "sensitivity", "specificity", "ppv"}
    assert OperatingPoint.from_dict(d) == op
