"""Generated cases where the truth about the clinician and the AI is known."""

from __future__ import annotations

import numpy as np
import pytest

Cases = tuple[np.ndarray, np.ndarray, np.ndarray]
BAND = (0.3, 0.6)


def band_cases(n: int, seed: int, band: tuple[float, float] = BAND) -> Cases:
    """The AI is uninformative inside `band` (P(y=1 | s) = 0.5 there) and a good logistic score elsewhere; the
    clinician is right 95% of the time inside the band and, outside it, only follows the score with noise (no
    information beyond it, and noisier than the AI's threshold): deferring the band, and only it, should help."""
    rng = np.random.default_rng(seed)
    s = rng.random(n)
    inside = (s >= band[0]) & (s < band[1])
    p = np.where(inside, 0.5, 1 / (1 + np.exp(-10 * (s - 0.45))))
    y = rng.random(n) < p
    c_in = np.where(rng.random(n) < 0.95, y, ~y)
    c_out = (s + rng.normal(0, 0.3, n)) > 0.45
    return s, np.where(inside, c_in, c_out).astype(int), y.astype(int)


def never_cases(n: int, seed: int) -> Cases:
    """A clinician who is never better: the opinion is the AI's score plus noise, with nothing else about y."""
    rng = np.random.default_rng(seed)
    s = rng.random(n)
    y = rng.random(n) < 1 / (1 + np.exp(-12 * (s - 0.5)))
    c = (s + rng.normal(0, 0.25, n)) > 0.5
    return s, c.astype(int), y.astype(int)


@pytest.fixture(scope="module")
def band() -> tuple[Cases, Cases, Cases]:
    return band_cases(3000, 1), band_cases(3000, 2), band_cases(3000, 3)


@pytest.fixture(scope="module")
def never() -> tuple[Cases, Cases, Cases]:
    return never_cases(3000, 1), never_cases(3000, 2), never_cases(3000, 3)
