"""The vectorised cluster bootstrap equals a naive one that materialises every resample and calls scikit-learn.

The naive side re-implements the documented draw (replicate b: K cluster indices from `rng.integers`, in order,
on one generator seeded with `seed`; clusters numbered in sorted id order), so it checks the scheme as well as
the arithmetic.
"""

from __future__ import annotations

from collections.abc import Callable

import numpy as np
import pytest
from scipy.optimize import brentq
from scipy.special import expit
from sklearn.linear_model import LogisticRegression
from sklearn.metrics import average_precision_score, brier_score_loss, roc_auc_score

import careloop.evaluation._bootstrap as bootstrap
from careloop.evaluation import evaluate

Data = tuple[np.ndarray, np.ndarray, np.ndarray]
N_BOOT, SEED, CI = 150, 7, 0.9


def naive_resamples(clusters: np.ndarray, n_boot: int, seed: int) -> list[np.ndarray]:
    """Row indices of each resample: every row of a drawn cluster, once per draw."""
    ids, codes = np.unique(clusters, return_inverse=True)
    rng = np.random.default_rng(seed)
    out = []
    for _ in range(n_boot):
        counts = np.bincount(rng.integers(0, ids.size, ids.size), minlength=ids.size)
        out.append(np.repeat(np.arange(clusters.size), counts[codes]))
    return out


def logit(p: np.ndarray) -> np.ndarray:
    q = np.clip(p, 1e-6, 1 - 1e-6)
    return np.log(q / (1 - q))


def naive_stats(y: np.ndarray, p: np.ndarray) -> dict[str, float]:
    x = logit(p)
    lr = LogisticRegression(C=np.inf, solver="newton-cholesky", tol=1e-12, max_iter=200).fit(x[:, None], y)
    f = p >= 0.3
    tp, fp, fn, tn = (f & y).sum(), (f & ~y).sum(), (~f & y).sum(), (~f & ~y).sum()
    return {
        "auroc": roc_auc_score(y, p), "auprc": average_precision_score(y, p), "brier": brier_score_loss(y, p),
        "observed_expected": y.sum() / p.sum(), "calibration_slope": lr.coef_[0, 0],
        "calibration_intercept": brentq(lambda a: np.sum(y - expit(a + x)), -30, 30, xtol=1e-14),
        "sensitivity": tp / (tp + fn), "specificity": tn / (tn + fp), "ppv": tp / (tp + fp), "npv": tn / (tn + fn),
        "net_benefit": (tp - fp * 0.3 / 0.7) / y.size,
    }


@pytest.fixture(scope="module")
def data() -> Data:
    rng = np.random.default_rng(11)
    n, patients = 120, 40
    pid = rng.integers(0, patients, n)
    p = np.clip(rng.beta(2, 4, n) + 0.1 * rng.normal(size=patients)[pid], 0.02, 0.95)
    p[:10] = p[10:20]  # some ties
    y = rng.random(n) < p
    return y, p, np.array([f"pt{i}" for i in pid])


def test_intervals_equal_a_naive_loop_over_materialised_resamples(data: Data) -> None:
    y, p, clusters = data
    ev = evaluate(y, p, clusters=clusters, thresholds=[0.3], threshold=0.3, decision_thresholds=[0.3],
                  n_boot=N_BOOT, seed=SEED, ci=CI)
    rows = [naive_stats(y[i], p[i]) for i in naive_resamples(clusters, N_BOOT, SEED)]
    got = {k: ev.metrics[k].ci for k in ("auroc", "auprc", "brier", "observed_expected", "calibration_slope",
                                          "calibration_intercept")}
    got |= {k: getattr(ev.operating_point, k).ci for k in ("sensitivity", "specificity", "ppv", "npv")}
    got["net_benefit"] = ev.decision_curve[0].net_benefit.ci
    for key, ci in got.items():
        values = np.array([r[key] for r in rows])
        assert np.isfinite(values).all(), key
        expected = np.percentile(values, [5, 95])
        tol = 1e-7 if key.startswith("calibration") else 1e-9  # the fits converge to ~1e-10, not to the last bit
        assert ci == pytest.approx(tuple(expected), abs=tol), key
    nne = ev.operating_point.nne
    assert nne.ci == pytest.approx((1 / got["ppv"][1], 1 / got["ppv"][0]))


def test_rows_of_one_cluster_move_together(data: Data) -> None:
    """Each stay of a patient duplicated, under the same patient id: every weighted metric is unchanged in every
    replicate (weights double), so the intervals are identical. Resampling rows instead would split the copies."""
    y, p, clusters = data
    one = evaluate(y, p, clusters=clusters, n_boot=N_BOOT, seed=SEED).to_dict()
    two = evaluate(np.tile(y, 2), np.tile(p, 2), clusters=np.tile(clusters, 2), n_boot=N_BOOT, seed=SEED).to_dict()
    assert two["clusters"] == one["clusters"] and two["n"] == 2 * one["n"]
    for k in ("auroc", "auprc", "brier", "observed_expected", "calibration_slope", "calibration_intercept"):
        assert two["metrics"][k]["ci"] == pytest.approx(one["metrics"][k]["ci"], abs=1e-9), k
    rows = evaluate(np.tile(y, 2), np.tile(p, 2), n_boot=N_BOOT, seed=SEED).to_dict()
    assert rows["metrics"]["auroc"]["ci"] != pytest.approx(one["metrics"]["auroc"]["ci"], abs=1e-6)


def test_replicate_weights_are_constant_within_a_cluster() -> None:
    codes = np.array([0, 0, 1, 2, 2, 2])
    for m in bootstrap.cluster_counts(3, 20, seed=1, chunk=6):
        w = m[:, codes]
        assert (w[:, 0] == w[:, 1]).all() and (w[:, 3] == w[:, 4]).all() and (w[:, 4] == w[:, 5]).all()
        assert (m.sum(axis=1) == 3).all()


def test_cluster_bootstrap_is_wider_when_a_patient_repeats_one_outcome() -> None:
    """100 patients with 10 stays each and one outcome per patient carry the information of 100 rows, not 1,000:
    the interval must be about sqrt(10) times wider than a bootstrap of rows gives."""
    rng = np.random.default_rng(5)
    risk = rng.uniform(0.05, 0.6, 100)
    p = np.repeat(risk, 10) * rng.uniform(0.9, 1.1, 1000)
    y = np.repeat(rng.random(100) < risk, 10)
    clusters = np.repeat(np.arange(100), 10)
    by_patient = evaluate(y, p, clusters=clusters, n_boot=200).metrics["observed_expected"].ci
    by_row = evaluate(y, p, n_boot=200).metrics["observed_expected"].ci
    assert by_patient[1] - by_patient[0] > 2 * (by_row[1] - by_row[0])


def test_same_seed_same_result_other_seed_other_intervals(make_data: Callable[..., Data]) -> None:
    y, p, clusters = make_data(n=600, seed=2)
    a = evaluate(y, p, clusters=clusters, threshold=0.2, n_boot=100, seed=3).to_dict()
    assert a == evaluate(y, p, clusters=clusters, threshold=0.2, n_boot=100, seed=3).to_dict()
    b = evaluate(y, p, clusters=clusters, threshold=0.2, n_boot=100, seed=4).to_dict()
    assert a["metrics"]["auroc"]["estimate"] == b["metrics"]["auroc"]["estimate"]
    assert a["metrics"]["auroc"]["ci"] != b["metrics"]["auroc"]["ci"]


def test_result_does_not_depend_on_chunking_or_threads(make_data: Callable[..., Data],
                                                       monkeypatch: pytest.MonkeyPatch) -> None:
    """Threads only change who computes a chunk: identical. Chunk size changes the shape of the arrays reduced,
    which may change the last bit of a sum: equal to 1e-12."""
    y, p, clusters = make_data(n=600, seed=2)
    reference = evaluate(y, p, clusters=clusters, threshold=0.2, n_boot=90, seed=3)
    monkeypatch.setattr(bootstrap, "workers", lambda: 3)
    assert evaluate(y, p, clusters=clusters, threshold=0.2, n_boot=90, seed=3) == reference
    monkeypatch.setattr(bootstrap, "workers", lambda: 1)
    assert evaluate(y, p, clusters=clusters, threshold=0.2, n_boot=90, seed=3) == reference
    monkeypatch.setattr(bootstrap, "CHUNK_ELEMENTS", 1000)  # 1 replicate per chunk
    chunked = evaluate(y, p, clusters=clusters, threshold=0.2, n_boot=90, seed=3)
    for k, est in reference.metrics.items():
        other = chunked.metrics[k]
        assert (other == est) if isinstance(est, float) else other.ci == pytest.approx(est.ci, abs=1e-12)


def test_row_order_does_not_change_the_result(make_data: Callable[..., Data]) -> None:
    """Clusters are numbered in sorted id order, so shuffling rows leaves every replicate the same."""
    y, p, clusters = make_data(n=500, seed=8)
    order = np.random.default_rng(0).permutation(y.size)
    a = evaluate(y, p, clusters=clusters, n_boot=60).to_dict()
    b = evaluate(y[order], p[order], clusters=clusters[order], n_boot=60).to_dict()
    for k in a["metrics"]:
        assert a["metrics"][k] == pytest.approx(b["metrics"][k], abs=1e-12) if isinstance(a["metrics"][k], float) \
            else a["metrics"][k]["ci"] == pytest.approx(b["metrics"][k]["ci"], abs=1e-12)


def test_replicates_without_both_classes_are_left_out() -> None:
    """A resample with no positive has no AUROC; the interval uses the replicates where it is defined."""
    y = np.array([1, 0, 0, 0, 0, 0, 0, 0, 0, 0])
    p = np.linspace(0.9, 0.1, 10)
    ev = evaluate(y, p, n_boot=200, seed=0)
    assert ev.metrics["auroc"].estimate == 1.0
    assert ev.metrics["auroc"].ci == (1.0, 1.0)


def test_no_bootstrap_gives_no_intervals(make_data: Callable[..., Data]) -> None:
    y, p, _ = make_data(n=200)
    d = evaluate(y, p, threshold=0.3, n_boot=0).to_dict()
    assert d["n_boot"] == 0 and d["metrics"]["auroc"]["ci"] is None and d["operating_point"]["ppv"]["ci"] is None
