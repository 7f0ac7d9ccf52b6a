"""Invariants that must hold for any data (hypothesis)."""

from __future__ import annotations

import numpy as np
from hypothesis import assume, given, settings
from hypothesis import strategies as st
from sklearn.metrics import average_precision_score, brier_score_loss, roc_auc_score

from careloop.evaluation import choose_operating_point, compare, evaluate
from careloop.evaluation._metrics import Cells, Ranked, auroc, average_precision, brier, observed_expected

SCORES = st.sampled_from([0.0, 0.05, 0.1, 0.2, 0.3, 0.5, 0.7, 0.9, 1.0])  # few values: many ties


@st.composite
def weighted_rows(draw: st.DrawFn) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    n = draw(st.integers(2, 30))
    y = np.array(draw(st.lists(st.booleans(), min_size=n, max_size=n)))
    p = np.array(draw(st.lists(st.one_of(SCORES, st.floats(0, 1)), min_size=n, max_size=n)))
    w = np.array(draw(st.lists(st.integers(0, 4), min_size=n, max_size=n)), dtype=float)
    expanded = np.repeat(y, w.astype(int))
    assume(expanded.any() and not expanded.all())
    return y, p, w


@given(weighted_rows())
@settings(max_examples=100, deadline=None)
def test_weighted_metrics_equal_the_expanded_data(rows: tuple[np.ndarray, np.ndarray, np.ndarray]) -> None:
    """A row of weight k counts as k copies: this is what makes the bootstrap a matter of weights."""
    y, p, w = rows
    cells = Cells.build(y, p, np.arange(y.size))
    cw = cells.weights(w[None, :])
    r = Ranked.of(cells, cw)
    ye, pe = np.repeat(y, w.astype(int)), np.repeat(p, w.astype(int))
    assert np.isclose(auroc(r)[0], roc_auc_score(ye, pe), atol=1e-12)
    assert np.isclose(average_precision(r)[0], average_precision_score(ye, pe), atol=1e-12)
    assert np.isclose(brier(cells, cw)[0], brier_score_loss(ye, pe), atol=1e-12)
    if pe.sum() > 0:
        assert np.isclose(observed_expected(cells, cw)[0], ye.sum() / pe.sum())


@st.composite
def labelled(draw: st.DrawFn, min_size: int = 4) -> tuple[np.ndarray, np.ndarray]:
    n = draw(st.integers(min_size, 40))
    y = np.array(draw(st.lists(st.booleans(), min_size=n, max_size=n)))
    assume(y.any() and not y.all())
    p = np.array(draw(st.lists(st.one_of(SCORES, st.integers(0, 1000).map(lambda k: k / 1000)), min_size=n,
                               max_size=n)))  # complements 1 - p keep the order (unlike 1 - 5e-324 == 1)
    return y, p


@given(labelled())
@settings(max_examples=40, deadline=None)
def test_reversing_the_score_reverses_auroc(data: tuple[np.ndarray, np.ndarray]) -> None:
    y, p = data
    a = evaluate(y, p, n_boot=0).metrics["auroc"].estimate
    b = evaluate(y, 1 - p, n_boot=0).metrics["auroc"].estimate
    assert np.isclose(a + b, 1.0, atol=1e-12)


@given(labelled(), st.randoms(use_true_random=False))
@settings(max_examples=40, deadline=None)
def test_point_estimates_do_not_depend_on_row_order(data: tuple[np.ndarray, np.ndarray], rnd: object) -> None:
    y, p = data
    order = np.array(rnd.sample(range(y.size), y.size))  # type: ignore[attr-defined]
    a = evaluate(y, p, n_boot=0).to_dict()
    b = evaluate(y[order], p[order], n_boot=0).to_dict()
    for k, v in a["metrics"].items():
        other = b["metrics"][k]
        if isinstance(v, dict):
            assert (v["estimate"] is None) == (other["estimate"] is None)
            if v["estimate"] is not None:
                assert np.isclose(v["estimate"], other["estimate"], atol=1e-8), k
        else:
            assert np.isclose(v, other)


@given(labelled(), st.floats(0.01, 1.0))
@settings(max_examples=100, deadline=None)
def test_budget_never_exceeds_the_budget_and_is_the_most_it_can_flag(data: tuple[np.ndarray, np.ndarray],
                                                                     budget: float) -> None:
    y, p = data
    try:
        op = choose_operating_point(y, p, policy="budget", target=budget)
    except Exception:  # the tie at the top score alone exceeds the budget
        assert (p == p.max()).mean() > budget
        return
    assert (p >= op.threshold).mean() <= budget + 1e-12
    lower = p[p < op.threshold]
    if lower.size:  # the next lower score would break the budget
        assert (p >= lower.max()).mean() > budget


@given(labelled(min_size=6), st.floats(0.05, 1.0))
@settings(max_examples=100, deadline=None)
def test_sensitivity_policy_meets_its_target_at_the_highest_threshold(data: tuple[np.ndarray, np.ndarray],
                                                                      target: float) -> None:
    y, p = data
    op = choose_operating_point(y, p, policy="sensitivity", target=target)
    sens = lambda t: (y & (p >= t)).sum() / y.sum()  # noqa: E731
    assert sens(op.threshold) >= target - 1e-12
    assert op.achieved["sensitivity"] == sens(op.threshold)
    higher = p[p > op.threshold]
    if higher.size:
        assert sens(higher.min()) < target


@given(labelled(min_size=6), st.floats(0.05, 1.0))
@settings(max_examples=100, deadline=None)
def test_ppv_policy_meets_its_target_at_the_lowest_threshold(data: tuple[np.ndarray, np.ndarray],
                                                             target: float) -> None:
    y, p = data
    ppv = lambda t: (y & (p >= t)).sum() / (p >= t).sum()  # noqa: E731
    feasible = [s for s in np.unique(p) if ppv(s) >= target - 1e-12]
    if not feasible:
        return
    op = choose_operating_point(y, p, policy="ppv", target=target)
    assert op.threshold == min(feasible)
    assert op.achieved["ppv"] >= target - 1e-12


@given(labelled())
@settings(max_examples=30, deadline=None)
def test_a_score_compared_with_itself_differs_by_exactly_zero(data: tuple[np.ndarray, np.ndarray]) -> None:
    y, p = data
    out = compare(y, {"a": p, "b": p.copy()}, "a", n_boot=20)
    assert out[0]["difference"]["estimate"] == 0.0
    assert out[0]["difference"]["ci"] in ([0.0, 0.0], None)
