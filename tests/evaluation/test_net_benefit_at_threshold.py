"""Net benefit at the operating threshold itself, point and interval, recomputed by hand with NumPy."""

from __future__ import annotations

import numpy as np
import pytest

from careloop.evaluation import Evaluation, evaluate
from tests.evaluation.test_bootstrap import naive_resamples

N_BOOT, SEED, CI = 120, 3, 0.9


def hand_net_benefit(y: np.ndarray, p: np.ndarray, t: float) -> float:
    flag = p >= t
    return float(((flag & y).sum() - (flag & ~y).sum() * t / (1 - t)) / y.size)


@pytest.fixture(scope="module")
def data() -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    rng = np.random.default_rng(5)
    pid = rng.integers(0, 150, 600)
    p = rng.uniform(0.02, 0.95, 600)
    y = rng.random(600) < p
    return y, p, np.array([f"pt{i:03d}" for i in pid])


@pytest.mark.parametrize("t", [0.2, 0.255, 0.7])  # on the decision-curve grid, between its points, beyond it
def test_operating_point_net_benefit_is_at_the_threshold(data, t: float) -> None:
    y, p, clusters = data
    ev = evaluate(y, p, clusters=clusters, threshold=t, n_boot=N_BOOT, seed=SEED, ci=CI)
    nb = ev.operating_point.net_benefit
    assert nb.estimate == pytest.approx(hand_net_benefit(y, p, t), abs=1e-12)
    reps = [hand_net_benefit(y[i], p[i], t) for i in naive_resamples(clusters, N_BOOT, SEED)]
    assert nb.ci == pytest.approx(tuple(np.percentile(reps, [5, 95])), abs=1e-12)
    on_grid = [d for d in ev.decision_curve if abs(d.threshold - t) < 1e-12]
    if on_grid:  # where the curve has the threshold, both agree
        assert on_grid[0].net_benefit == nb


def test_every_table_row_has_its_net_benefit_and_it_round_trips(data) -> None:
    y, p, _ = data
    ev = evaluate(y, p, threshold=0.7, n_boot=0)
    for row in ev.threshold_table:
        assert row.net_benefit.estimate == pytest.approx(hand_net_benefit(y, p, row.threshold), abs=1e-12)
        assert row.net_benefit.ci is None
    assert Evaluation.from_dict(ev.to_dict()) == ev


def test_threshold_one_has_no_net_benefit(data) -> None:
    y, p, _ = data
    row = evaluate(y, p, threshold=1.0, n_boot=20).operating_point
    assert row.net_benefit.estimate is None and row.net_benefit.ci is None
