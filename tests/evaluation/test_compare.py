"""Paired AUROC differences between the primary score and each reference."""

from __future__ import annotations

from collections.abc import Callable

import numpy as np
import pytest
from sklearn.metrics import roc_auc_score

from careloop.evaluation import compare, evaluate

Data = tuple[np.ndarray, np.ndarray, np.ndarray]


def test_difference_is_primary_minus_reference(make_data: Callable[..., Data]) -> None:
    y, p, clusters = make_data(n=1500, seed=4)
    rng = np.random.default_rng(0)
    lace = np.round(p * 19 + rng.normal(0, 3, p.size))  # a raw points score: not a probability
    weak = p + rng.normal(0, 0.3, p.size)
    out = compare(y, {"model": p, "lace": lace, "weak": weak}, "model", clusters=clusters, n_boot=200)
    assert [o["reference"] for o in out] == ["lace", "weak"]
    for o, ref in zip(out, (lace, weak), strict=True):
        assert o["metric"] == "auroc"
        assert o["difference"]["estimate"] == pytest.approx(roc_auc_score(y, p) - roc_auc_score(y, ref), abs=1e-12)
        assert o["difference"]["ci"][0] > 0  # the model discriminates better than a noisy copy of itself
        assert set(o) == {"reference", "metric", "difference", "intervals_overlap"}


def test_pairing_makes_the_difference_interval_narrower_than_unpaired(make_data: Callable[..., Data]) -> None:
    """Two scores that share most of their signal: the paired interval of the difference is far narrower than the
    two AUROC intervals suggest, which is the reason to pair."""
    y, p, clusters = make_data(n=1500, seed=6)
    other = p + np.random.default_rng(1).normal(0, 0.02, p.size)
    (out,) = compare(y, {"a": p, "b": other}, "a", clusters=clusters, n_boot=200, seed=2)
    ci_a = evaluate(y, p, clusters=clusters, n_boot=200, seed=2).metrics["auroc"].ci
    lo, hi = out["difference"]["ci"]
    assert hi - lo < 0.3 * (ci_a[1] - ci_a[0])
    assert out["intervals_overlap"] is True


def test_overlap_uses_the_same_intervals_as_evaluate(make_data: Callable[..., Data]) -> None:
    y, p, clusters = make_data(n=800, seed=3)
    noise = np.random.default_rng(3).random(p.size)
    (out,) = compare(y, {"model": p, "noise": noise}, "model", clusters=clusters, n_boot=100, seed=5)
    a = evaluate(y, p, clusters=clusters, n_boot=100, seed=5).metrics["auroc"].ci
    b = compare(y, {"noise": noise, "model": p}, "noise", clusters=clusters, n_boot=100, seed=5)[0]
    assert out["intervals_overlap"] == b["intervals_overlap"] is False
    assert a[0] > 0.55  # the model's own interval, as evaluate reports it, clears chance
    assert b["difference"]["ci"] == pytest.approx([-out["difference"]["ci"][1], -out["difference"]["ci"][0]])


def test_difference_interval_equals_a_naive_paired_loop(make_data: Callable[..., Data]) -> None:
    y, p, clusters = make_data(n=150, seed=12)
    ref = p + np.random.default_rng(2).normal(0, 0.1, p.size)
    (out,) = compare(y, {"p": p, "ref": ref}, "p", clusters=clusters, n_boot=80, seed=1)
    ids, codes = np.unique(clusters, return_inverse=True)
    rng = np.random.default_rng(1)
    diffs = []
    for _ in range(80):
        counts = np.bincount(rng.integers(0, ids.size, ids.size), minlength=ids.size)
        idx = np.repeat(np.arange(y.size), counts[codes])
        diffs.append(roc_auc_score(y[idx], p[idx]) - roc_auc_score(y[idx], ref[idx]))
    assert out["difference"]["ci"] == pytest.approx(list(np.percentile(diffs, [2.5, 97.5])), abs=1e-12)
