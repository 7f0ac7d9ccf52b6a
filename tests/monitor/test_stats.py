"""The statistics behind drift alerts: bins, PSI, its noise floor, and a homogeneity test that stays honest when one
patient has several stays."""

from __future__ import annotations

import json
import math

import numpy as np
import pyarrow as pa
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from careloop.monitor import Binning, homogeneity_test, make_binning, psi, psi_noise
from careloop.monitor._stats import (
    MISSING,
    OTHER,
    Family,
    binomial_p,
    occupied_bins,
    two_proportion_p,
    wilson,
    z_p,
)


def test_numeric_bins_are_the_reference_deciles_with_a_missing_bin() -> None:
    x = np.arange(1000, dtype=float)
    b = make_binning("x", pa.array(list(x) + [None] * 10, pa.float64()), bins=10)
    assert b.kind == "numeric" and len(b.edges) == 9 and b.size == 11
    counts = b.counts(pa.array(list(x) + [None] * 10, pa.float64()))
    assert counts.tolist() == [100] * 10 + [10]
    assert b.labels()[-1] == MISSING and b.labels()[0].startswith("< ")
    assert Binning.from_dict(b.to_dict()) == b


def test_tied_values_give_fewer_bins_and_every_value_lands_somewhere() -> None:
    values = pa.array([0.0] * 700 + [1.0] * 200 + [2.0] * 100)
    b = make_binning("admissions", values)
    counts = b.counts(values)
    assert counts.sum() == 1000 and counts[-1] == 0
    assert b.size < 11
    assert b.counts(pa.array([5.0, -1.0, None])).sum() == 3  # out-of-range values fall in the end bins


def test_categorical_bins_keep_common_categories_and_pool_the_rest() -> None:
    values = pa.array(["a"] * 600 + ["b"] * 390 + ["rare"] * 5 + [None] * 5)
    b = make_binning("payer", values)
    assert b.kind == "categorical" and b.categories == ("a", "b")
    assert b.labels() == ["a", "b", OTHER, MISSING]
    assert b.counts(pa.array(["a", "new", None, "rare"])).tolist() == [1, 0, 2, 1]
    flags = pa.array([True, False, None])
    assert make_binning("emergent", flags).counts(flags).tolist() == [1, 1, 0, 1]


def test_psi_is_zero_for_identical_counts_and_matches_its_formula() -> None:
    ref = np.array([100, 200, 300, 400])
    assert psi(ref, ref) == pytest.approx(0.0, abs=1e-12)
    cur = np.array([400, 300, 200, 100])
    p, q = (ref + 0.5) / (ref + 0.5).sum(), (cur + 0.5) / (cur + 0.5).sum()
    assert psi(ref, cur) == pytest.approx(float(np.sum((q - p) * np.log(q / p))))
    assert math.isfinite(psi(np.array([100, 0, 5]), np.array([0, 100, 5])))  # empty bins stay finite


@settings(max_examples=50, deadline=None)
@given(st.lists(st.integers(0, 500), min_size=2, max_size=12), st.lists(st.integers(0, 500), min_size=2, max_size=12))
def test_psi_is_symmetric_and_never_negative(a: list[int], b: list[int]) -> None:
    n = min(len(a), len(b))
    r, c = np.array(a[:n]), np.array(b[:n])
    if r.sum() == 0 or c.sum() == 0:
        return
    assert psi(r, c) >= -1e-12
    assert psi(r, c) == pytest.approx(psi(c, r), rel=1e-9, abs=1e-12)


def test_psi_noise_floor_is_what_chance_alone_gives() -> None:
    rng = np.random.default_rng(0)
    ref = rng.normal(size=5000)
    b = make_binning("x", ref)
    values = [psi(b.counts(ref), b.counts(rng.normal(size=200))) for _ in range(300)]
    expected = psi_noise(occupied_bins(b.counts(ref)), 5000, 200)  # the empty missing bin carries nothing
    assert occupied_bins(b.counts(ref)) == b.size - 1
    assert np.mean(values) == pytest.approx(expected, rel=0.25)
    assert np.mean(values) > 0.03  # why PSI alone, on 200 stays, cannot be the alarm


def _clustered(rng: np.random.Generator, patients: int, shift: float = 0.0) -> tuple[np.ndarray, int]:
    """Stays of `patients` patients, 1-6 each, values shared within a patient (strongly clustered)."""
    per = rng.integers(1, 7, patients)
    level = rng.normal(shift, 1.0, patients)
    x = np.repeat(level, per) + rng.normal(0, 0.1, per.sum())
    return x, patients


def test_the_homogeneity_test_holds_its_level_with_repeated_stays() -> None:
    """Counting patients, not stays: without the design effect the test rejects far too often on clustered data."""
    rng = np.random.default_rng(1)
    ref, ref_pat = _clustered(rng, 800)
    b = make_binning("x", ref)
    rc = b.counts(ref)
    honest, naive = [], []
    for _ in range(300):
        cur, cur_pat = _clustered(rng, 150)
        cc = b.counts(cur)
        honest.append(homogeneity_test(rc, cc, ref_pat, cur_pat).p_value)
        naive.append(homogeneity_test(rc, cc, rc.sum(), cc.sum()).p_value)
    assert np.mean(np.array(honest) < 0.05) <= 0.10
    assert np.mean(np.array(naive) < 0.05) > 0.25


def test_the_homogeneity_test_sees_a_real_shift() -> None:
    rng = np.random.default_rng(2)
    ref = rng.lognormal(0, 0.4, 3000)
    b = make_binning("creatinine", ref)
    shifted = rng.lognormal(0, 0.4, 200) * 1.12 + 0.05  # the drift scenario's new assay
    h = homogeneity_test(b.counts(ref), b.counts(shifted), 2500, 180)
    assert h.p_value < 1e-4 and h.df >= 5
    assert psi(b.counts(ref), b.counts(shifted)) > 0.10
    assert homogeneity_test(b.counts(ref), np.zeros(b.size), 2500, 0).p_value == 1.0


def test_missingness_is_judged_on_the_psi_scale() -> None:
    from careloop.monitor._stats import missing_psi

    assert missing_psi(0, 5000, 20, 100) > 1.0  # a value that was always recorded goes missing in 20% of stays
    assert missing_psi(50, 1000, 15, 100) > 0.10  # 5% -> 15%
    assert missing_psi(530, 1000, 43, 100) < 0.05  # 53% -> 43%: the record lengthens, little changes
    assert missing_psi(100, 1000, 10, 100) == pytest.approx(0.0, abs=1e-3)


def test_proportion_and_normal_tests() -> None:
    assert two_proportion_p(10, 100, 10, 100, 100, 100) == pytest.approx(1.0)
    assert two_proportion_p(10, 1000, 60, 200, 1000, 200) < 1e-10
    # fewer effective observations (patients) give a larger p-value for the same proportions
    assert two_proportion_p(100, 1000, 40, 200, 300, 60) > two_proportion_p(100, 1000, 40, 200, 1000, 200)
    assert z_p(0.0, 0.1) == pytest.approx(1.0)
    assert z_p(0.3, 0.1, alternative="greater") == pytest.approx(0.00135, rel=0.01)
    assert z_p(1.0, None) == 1.0
    assert binomial_p(30, 100, 0.5) > 0.99 and binomial_p(80, 100, 0.5) < 1e-8
    lo, hi = wilson(5, 10)
    assert lo < 0.5 < hi and wilson(0, 0) is None


def test_bonferroni_over_every_test_of_a_report() -> None:
    t = Family(alpha=0.05)
    t.add("input_drift", 90)
    t.add("performance", 10)
    assert t.count == 100 and t.level == pytest.approx(0.0005) and t.by_kind == {"input_drift": 90,
                                                                                  "performance": 10}


# ---------------------------------------------------------------------------------------------------------------------
# few-valued columns: PSI and the homogeneity test against a computation on the values themselves


def _by_value(ref: np.ndarray, cur: np.ndarray) -> np.ndarray:
    """2 x V table of counts per distinct value of either sample (NaN one more column): the bins a few-valued
    column should have, counted without careloop."""
    keys = np.unique(np.concatenate([ref, cur])[np.isfinite(np.concatenate([ref, cur]))])

    def row(x: np.ndarray) -> list[int]:
        return [int((x == k).sum()) for k in keys] + [int(np.isnan(x).sum())]
    table = np.array([row(ref), row(cur)])
    return table[:, table.sum(axis=0) > 0]


def _hand_psi(table: np.ndarray) -> float:
    p, q = (table[0] + 0.5) / (table[0] + 0.5).sum(), (table[1] + 0.5) / (table[1] + 0.5).sum()
    return float(np.sum((q - p) * np.log(q / p)))


def _check_against_hand(ref: np.ndarray, cur: np.ndarray, table: np.ndarray, n_ref: float, n_cur: float) -> float:
    """careloop's PSI and chi-square test on its own bins equal a hand PSI and scipy's test on `table` (samples
    large enough that no sparse bin is merged)."""
    from scipy.stats import chi2_contingency

    b = make_binning("x", ref)
    rc, cc = b.counts(ref), b.counts(cur)
    assert psi(rc, cc) == pytest.approx(_hand_psi(table), rel=1e-12)
    scaled = table * np.array([[n_ref / len(ref)], [n_cur / len(cur)]])  # the design effect: patients, not stays
    want = chi2_contingency(scaled, correction=False)
    h = homogeneity_test(rc, cc, n_ref, n_cur)
    assert (h.statistic, h.df) == (pytest.approx(want.statistic, rel=1e-9), want.dof)
    assert h.p_value == pytest.approx(want.pvalue, rel=1e-6, abs=1e-300)
    return h.p_value


def test_a_rare_flag_that_becomes_common_is_seen() -> None:
    """A flag set in 5% of the reference has every decile at 0: it used to share one bin with 0 (PSI 0, p 1)."""
    rng = np.random.default_rng(3)
    ref = np.where(rng.random(5000) < 0.02, np.nan, (rng.random(5000) < 0.05).astype(float))
    cur = np.where(rng.random(500) < 0.02, np.nan, (rng.random(500) < 0.60).astype(float))
    table = _by_value(ref, cur)
    assert table.shape == (2, 3)  # 0, 1, missing
    p = _check_against_hand(ref, cur, table, 3000, 300)
    assert psi(make_binning("x", ref).counts(ref), make_binning("x", ref).counts(cur)) > 1.0 and p < 1e-50
    same = np.where(rng.random(500) < 0.02, np.nan, (rng.random(500) < 0.05).astype(float))
    assert _check_against_hand(ref, same, _by_value(ref, same), 3000, 300) > 1e-3


def test_a_constant_column_that_changes_is_seen_and_new_values_show_on_either_side() -> None:
    ref = np.full(1000, 3.0)
    b = make_binning("x", ref)
    assert b.labels() == ["< 3", "= 3", "> 3", MISSING]
    assert psi(b.counts(ref), b.counts(np.full(200, 3.0))) == 0.0
    assert homogeneity_test(b.counts(ref), b.counts(np.full(200, 3.0)), 1000, 200).p_value == 1.0
    cur = np.array([1.0] * 80 + [3.0] * 240 + [9.0] * 80)
    assert b.counts(cur).tolist() == [80, 240, 80, 0]
    assert _check_against_hand(ref, cur, _by_value(ref, cur), 800, 300) < 1e-10


def test_a_three_valued_count_gets_a_bin_per_value() -> None:
    rng = np.random.default_rng(4)
    ref = rng.choice([0.0, 1.0, 2.0], 3000, p=[0.6, 0.3, 0.1])
    cur = rng.choice([0.0, 1.0, 2.0, 4.0], 1000, p=[0.4, 0.35, 0.2, 0.05])  # 4 was never seen
    b = make_binning("admissions", pa.array(ref))
    assert b.labels() == ["< 0", "= 0", "> 0 to < 1", "= 1", "> 1 to < 2", "= 2", "> 2", MISSING]
    assert _check_against_hand(ref, cur, _by_value(ref, cur), 2000, 800) < 1e-6
    assert Binning.from_dict(json.loads(json.dumps(b.to_dict()))) == b  # single-value bins survive the JSON file


def test_continuous_columns_keep_their_decile_bins() -> None:
    from scipy.stats import chi2_contingency

    rng = np.random.default_rng(5)
    ref, cur = rng.normal(size=5000), rng.normal(0.3, 1.0, 500)
    deciles = np.quantile(ref, np.linspace(0, 1, 11)[1:-1])
    b = make_binning("x", ref)
    assert b.edges == tuple(deciles.tolist())
    table = np.array([np.histogram(x, [-np.inf, *deciles, np.inf])[0] for x in (ref, cur)])
    assert psi(b.counts(ref), b.counts(cur)) == pytest.approx(_hand_psi(table), rel=1e-12)
    want = chi2_contingency(table, correction=False)
    assert homogeneity_test(b.counts(ref), b.counts(cur), 5000, 500).p_value == pytest.approx(want.pvalue, rel=1e-6)


def test_a_value_as_common_as_a_decile_gets_its_own_bin() -> None:
    """Mostly zero, otherwise continuous (more values than bins): the zeros are kept apart from small values."""
    rng = np.random.default_rng(6)
    ref = np.where(rng.random(4000) < 0.85, 0.0, rng.lognormal(size=4000))
    cur = np.where(rng.random(400) < 0.50, 0.0, rng.lognormal(size=400))
    b = make_binning("days_on_dialysis", ref)
    zero = b.labels().index("= 0")
    assert b.counts(ref)[zero] == (ref == 0).sum() and b.counts(cur)[zero] == (cur == 0).sum()
    assert b.counts(cur)[:zero].sum() == 0
    assert psi(b.counts(ref), b.counts(cur)) > 0.5
