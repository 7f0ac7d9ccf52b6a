"""Synthetic scored data for the evaluation tests: patients with repeated stays, risk shared within a patient."""

from __future__ import annotations

from collections.abc import Callable

import numpy as np
import pytest

Data = tuple[np.ndarray, np.ndarray, np.ndarray]


def _make(n: int = 400, patients: int | None = None, seed: int = 0, miscalibration: float = 0.0) -> Data:
    """(y, p, patient ids): p is the model's risk, y drawn from it with the log-odds shifted by `miscalibration`."""
    rng = np.random.default_rng(seed)
    patients = patients or max(1, n // 3)
    pid = rng.integers(0, patients, n)
    frailty = rng.normal(0, 0.7, patients)[pid]
    logit = -1.5 + frailty + rng.normal(0, 0.8, n)
    p = 1 / (1 + np.exp(-logit))
    y = rng.random(n) < 1 / (1 + np.exp(-(logit + miscalibration)))
    return y, p, np.array([f"patient-{i:05d}" for i in pid])


@pytest.fixture
def make_data() -> Callable[..., Data]:
    return _make
