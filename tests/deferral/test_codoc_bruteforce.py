"""CoDoC against brute force: the advantage per bin by explicit loops and numerical integration, the deferral
region against an exhaustive search over unions of intervals, on small inputs."""

from __future__ import annotations

import itertools
import math

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from careloop.deferral import CoDoC, advantage, best_intervals, fit_policy
from careloop.deferral._intervals import bin_index, bins_mask, uniform_edges


def small_cases(n: int, seed: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Scores on the half-grid (k + 0.5) / 1000, so no score sits on a bin edge or on a theta of the form m / 1000."""
    rng = np.random.default_rng(seed)
    s = (rng.integers(0, 1000, n) + 0.5) / 1000
    y = (rng.random(n) < s).astype(int)
    c = np.where(rng.random(n) < 0.75, y, 1 - y)
    return s, c, y


def all_regions(t: int, k: int):
    """Every union of at most k disjoint non-empty bin intervals [a, b), as masks (by brute enumeration)."""
    intervals = [(a, b) for a in range(t) for b in range(a + 1, t + 1)]
    for m in range(k + 1):
        for combo in itertools.combinations(intervals, m):
            spans = sorted(combo)
            if all(spans[i][1] <= spans[i + 1][0] for i in range(len(spans) - 1)):
                yield bins_mask(tuple(spans), t)


def brute_advantage(s, c, y, *, theta, lam, bins, h, steps=4000):
    """The advantage per bin from its definition: reflected Gaussian KDE of each (y, c) group as an explicit sum
    over cases, integrated over each bin by the midpoint rule, normalised on [0, 1], times P(c | y)."""
    n = len(s)
    p1 = sum(y) / n
    edges = [b / bins for b in range(bins + 1)]

    def density(t, group):
        total = 0.0
        for si in group:
            for centre in (si, -si, 2 - si):
                total += math.exp(-0.5 * ((t - centre) / h) ** 2) / (h * math.sqrt(2 * math.pi))
        return total

    def integral(lo, hi, group):
        if hi <= lo:
            return 0.0
        width = (hi - lo) / steps
        return sum(density(lo + (i + 0.5) * width, group) for i in range(steps)) * width

    m = {}  # (y, c) -> per-bin joint mass P(s in bin, c | y); and the mass above theta
    above = {}
    for yv in (0, 1):
        n_y = sum(1 for v in y if v == yv)
        for cv in (0, 1):
            group = [s[i] for i in range(n) if y[i] == yv and c[i] == cv]
            if not group:
                m[yv, cv] = [0.0] * bins
                above[yv, cv] = [0.0] * bins
                continue
            norm = sum(integral(edges[b], edges[b + 1], group) for b in range(bins))
            w = len(group) / n_y / norm
            m[yv, cv] = [w * integral(edges[b], edges[b + 1], group) for b in range(bins)]
            above[yv, cv] = [w * integral(max(edges[b], theta), edges[b + 1], group) for b in range(bins)]
    gain = []
    for b in range(bins):
        d_sens = m[1, 1][b] - (above[1, 0][b] + above[1, 1][b])
        below0 = (m[0, 0][b] - above[0, 0][b]) + (m[0, 1][b] - above[0, 1][b])
        d_spec = m[0, 0][b] - below0
        gain.append(lam * p1 * d_sens + (1 - p1) * d_spec)
    return np.array(gain)


def test_advantage_matches_explicit_kde_integration():
    s, c, y = small_cases(24, seed=3)
    got = advantage(s, c, y, theta=0.437, lam=1.7, bins=5, bandwidth=0.08)
    want = brute_advantage(list(s), list(c), list(y), theta=0.437, lam=1.7, bins=5, h=0.08)
    np.testing.assert_allclose(got["gain"], want, atol=2e-7)
    assert got["mass"].sum() == pytest.approx(1.0)


@pytest.mark.parametrize(("theta", "lam", "bins"), [(0.437, 1.0, 4), (0.5, 3.0, 10), (0.05, 0.25, 8)])
def test_advantage_with_a_narrow_kernel_counts_the_cases(theta, lam, bins):
    """With a tiny bandwidth the KDE masses are the empirical ones: the gain of bin b is
    (lam * (TP by the clinician - TP by the AI) + (TN by the clinician - TN by the AI)) / n over its cases."""
    s, c, y = small_cases(300, seed=bins)
    got = advantage(s, c, y, theta=theta, lam=lam, bins=bins, bandwidth=1e-5)["gain"]
    want = np.zeros(bins)
    for si, ci, yi in zip(s, c, y, strict=True):
        b = min(int(si * bins), bins - 1)
        ai = int(si >= theta)
        want[b] += lam * (yi * ci - yi * ai) + ((1 - yi) * (1 - ci) - (1 - yi) * (1 - ai))
    np.testing.assert_allclose(got, want / len(s), atol=1e-12)


def test_best_intervals_equal_exhaustive_search():
    rng = np.random.default_rng(0)
    for t in range(1, 8):
        for k in (1, 2, 3):
            gains = rng.normal(0, 1, (30, t))
            found = best_intervals(gains, k)
            masks = np.array(list(all_regions(t, k)))
            for g, f in zip(gains, found, strict=True):
                values = masks @ g
                best = masks[int(np.argmax(values))]
                assert len(f) <= k
                np.testing.assert_array_equal(bins_mask(f, t), best)


@settings(max_examples=300, deadline=None)
@given(st.lists(st.sampled_from([-2.0, -1.0, -0.5, 0.0, 0.5, 1.0, 3.0]), min_size=1, max_size=7),
       st.integers(1, 3))
def test_best_intervals_value_is_optimal_with_ties(gains, k):
    g = np.array(gains)
    (found,) = best_intervals(g[None, :], k)
    best = max(float(m @ g) for m in all_regions(g.size, k))
    assert len(found) <= k
    assert float(bins_mask(found, g.size) @ g) == pytest.approx(best)
    if best <= 0:
        assert found == ()  # nothing to gain: nothing deferred


def test_one_interval_runs_from_the_minimum_of_the_cumulative_advantage_to_its_later_maximum():
    rng = np.random.default_rng(1)
    for _ in range(50):
        g = rng.normal(0, 1, 12)
        cum = np.concatenate([[0.0], np.cumsum(g)])
        pairs = [(a, b) for a in range(13) for b in range(a + 1, 13)]
        a, b = max(pairs, key=lambda p: cum[p[1]] - cum[p[0]])
        (found,) = best_intervals(g[None, :], 1)
        assert found == (((a, b),) if cum[b] - cum[a] > 0 else ())


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_region_maximises_the_paper_objective_over_every_union_of_intervals(seed):
    """End to end, with a narrow kernel: the region CoDoC picks maximises lam * TP + TN of the team on the tuning
    cases among all unions of at most two bin intervals, the team's decisions computed explicitly."""
    s, c, y = small_cases(400, seed)
    theta, lam, bins = 0.481, 2.0, 7
    adv = advantage(s, c, y, theta=theta, lam=lam, bins=bins, bandwidth=1e-5)
    (found,) = best_intervals(adv["gain"][None, :], 2)
    idx = bin_index(s, uniform_edges(bins))

    def objective(mask):
        team = np.where(mask[idx], c, (s >= theta).astype(int))
        return lam * np.sum((team == 1) & (y == 1)) + np.sum((team == 0) & (y == 0))

    best = max(objective(m) for m in all_regions(bins, 2))
    assert objective(bins_mask(found, bins)) == best


def test_the_fitted_policy_stores_the_advantage_it_was_chosen_from(band):
    (ts, tc, ty), val, _ = band
    model = CoDoC(theta=0.45, lam=1.0, bins=10, bandwidth=0.02).fit(ts, tc, ty, *val)
    policy = model.policy_
    assert policy.learner == "codoc"
    adv = advantage(ts, tc, ty, theta=0.45, lam=1.0, bins=10, bandwidth=0.02)
    np.testing.assert_array_equal(policy.advantage["gain"], adv["gain"])
    (found,) = best_intervals(adv["gain"][None, :], 2)
    assert policy.intervals == tuple((a / 10, b / 10) for a, b in found)
    # predict applies exactly those intervals
    probe = np.linspace(0, 1, 1001)
    inside = np.zeros(probe.size, dtype=bool)
    for lo, hi in policy.intervals:
        inside |= (probe >= lo) & ((probe < hi) | ((hi == 1.0) & (probe <= 1.0)))
    np.testing.assert_array_equal(model.predict(probe).defer, inside)


def test_fit_policy_with_codoc_only_equals_codoc_fit(band):
    tune, val, _ = band
    a = fit_policy(tune, val, learners=["codoc"], theta=0.45, lam=[1.0, 2.0])
    b = CoDoC(theta=0.45, lam=[1.0, 2.0]).fit(*tune, *val).policy_
    assert a.to_json() == b.to_json()
