"""Estimators, calibration and selection on data whose generating model is known."""

import numpy as np
import pyarrow as pa
import pytest
import shap
from sklearn.linear_model import LogisticRegression
from sklearn.metrics import roc_auc_score

from careloop.modeling import Calibrator, RiskModel, TrainingError, fit_candidates

BETA = {"x1": 0.9, "x2": -0.6, "x3": 0.0}
CAT = {"a": 0.0, "b": 0.7, "c": -0.5}


def world(n: int, seed: int):
    """Logistic truth with a categorical, missing values, and repeated patients."""
    rng = np.random.default_rng(seed)
    x = {k: rng.normal(size=n) for k in BETA}
    cat = rng.choice(list(CAT), n)
    lp = -1.6 + sum(BETA[k] * x[k] for k in BETA) + np.vectorize(CAT.get)(cat)
    p = 1 / (1 + np.exp(-lp))
    y = (rng.random(n) < p).astype(np.int64)
    x1 = x["x1"].copy()
    x1[rng.random(n) < 0.1] = np.nan  # missing at random: the model must cope
    t = pa.table({"x1": pa.array(x1, from_pandas=True), "x2": x["x2"], "x3": x["x3"], "cat": cat})
    pids = [f"p{i // 2}" for i in range(n)]
    return t, y, p, pids


@pytest.fixture(scope="module")
def fitted():
    tr, ytr, _, pids = world(6000, 1)
    ca, yca, _, _ = world(3000, 2)
    te, yte, pte, _ = world(3000, 3)
    c = fit_candidates(tr, ytr, pids, ca, yca, columns=["x1", "x2", "x3", "cat"], seed=0)
    return c, (tr, ytr), (ca, yca), (te, yte, pte)


def test_both_candidates_approach_the_truth(fitted):
    c, _, _, (te, yte, pte) = fitted
    truth = roc_auc_score(yte, pte)
    for name, m in c.models.items():
        auc = roc_auc_score(yte, m.predict_proba(te))
        assert auc > 0.95 * truth, name
    assert set(c.models) == {"lightgbm", "logistic"}


def test_selection_is_by_calibration_auroc_computed_independently(fitted):
    c, _, (ca, yca), _ = fitted
    for name, m in c.models.items():
        assert c.calibration_auroc[name] == pytest.approx(roc_auc_score(yca, m.raw_score(ca)))
    best = max(c.calibration_auroc, key=c.calibration_auroc.get)
    gap = c.calibration_auroc[best] - c.calibration_auroc["logistic"]
    assert c.chosen == ("logistic" if gap < 0.005 else best)
    assert c.chosen in c.selection


def test_calibrated_on_calibration_split(fitted):
    c, _, (ca, yca), (te, yte, _) = fitted
    for m in c.models.values():
        p = m.predict_proba(te)
        assert abs(p.mean() - yte.mean()) < 0.02
        raw = m.raw_score(ca)
        ref = LogisticRegression(C=1e6, max_iter=1000, tol=1e-8).fit(raw.reshape(-1, 1), yca)
        assert m.calibrator.a == pytest.approx(ref.coef_[0, 0], rel=1e-4)
        np.testing.assert_allclose(m.predict_proba(ca), ref.predict_proba(raw.reshape(-1, 1))[:, 1], atol=1e-6)


def test_contributions_add_up_to_the_raw_score(fitted):
    c, _, _, (te, _, _) = fitted
    for m in c.models.values():
        contrib = m.contributions(te.slice(0, 300))
        assert contrib.shape == (300, 5)
        np.testing.assert_allclose(contrib.sum(axis=1), m.raw_score(te.slice(0, 300)), atol=1e-9)


def test_tree_contributions_are_shap_values(fitted):
    c, _, _, (te, _, _) = fitted
    m = c.models["lightgbm"]
    rows = te.slice(0, 50)
    ref = shap.TreeExplainer(m.estimator.booster).shap_values(m.preprocessor.frame(rows))
    np.testing.assert_allclose(m.contributions(rows)[:, :-1], ref, atol=1e-6)


def test_logistic_contribution_of_an_unused_column_is_small(fitted):
    c, _, _, (te, _, _) = fitted
    contrib = c.models["logistic"].contributions(te)
    mean_abs = np.abs(contrib[:, :-1]).mean(axis=0)
    assert mean_abs[2] < 0.2 * mean_abs[0]  # x3 has no effect in the truth


def test_save_and_load_round_trip_bit_for_bit(fitted, tmp_path):
    c, _, _, (te, _, _) = fitted
    for name, m in c.models.items():
        files = m.save(tmp_path / name)
        assert all((tmp_path / name / f).is_file() for f in files)
        back = RiskModel.load(tmp_path / name)
        np.testing.assert_array_equal(back.predict_proba(te), m.predict_proba(te))
        np.testing.assert_array_equal(back.contributions(te.slice(0, 20)), m.contributions(te.slice(0, 20)))


def test_isotonic_calibration_is_monotone_and_clipped():
    rng = np.random.default_rng(0)
    raw = rng.normal(size=2000)
    y = (rng.random(2000) < 1 / (1 + np.exp(-2 * raw))).astype(int)
    cal = Calibrator("isotonic").fit(raw, y)
    grid = np.linspace(-6, 6, 200)
    out = cal(grid)
    assert np.all(np.diff(out) >= 0) and out.min() > 0 and out.max() < 1
    back = Calibrator.from_dict(cal.to_dict())
    np.testing.assert_array_equal(back(grid), out)


def test_a_split_with_one_outcome_is_refused():
    tr, ytr, _, pids = world(500, 1)
    ca, _, _, _ = world(200, 2)
    with pytest.raises(TrainingError, match="calibration split needs both outcomes"):
        fit_candidates(tr, ytr, pids, ca, np.zeros(200, int), columns=["x1", "x2"])


def test_unknown_estimator_is_refused():
    tr, ytr, _, pids = world(500, 1)
    with pytest.raises(TrainingError, match="unknown estimator 'xgboost'"):
        fit_candidates(tr, ytr, pids, tr, ytr, columns=["x1"], estimators=("xgboost",))


def test_training_is_deterministic():
    tr, ytr, _, pids = world(3000, 5)
    ca, yca, _, _ = world(1000, 6)
    a = fit_candidates(tr, ytr, pids, ca, yca, columns=["x1", "x2", "cat"], seed=3)
    b = fit_candidates(tr, ytr, pids, ca, yca, columns=["x1", "x2", "cat"], seed=3)
    for k in a.models:
        np.testing.assert_array_equal(a.models[k].predict_proba(ca), b.models[k].predict_proba(ca))


def test_one_row_at_a_time_gives_the_table_path_s_numbers(fitted):
    """The service scores {column: value} dicts; each model must give what it gives for the same rows as a table,
    unseen and missing categories and missing numbers included."""
    c, _, _, (te, _, _) = fitted
    t = te.slice(0, 400)
    cats = t.column("cat").to_pylist()
    cats[:3] = [None, "never-seen", "b"]
    t = t.set_column(t.schema.get_field_index("cat"), "cat", pa.array(cats))
    rows = t.to_pylist()
    for name, m in c.models.items():
        np.testing.assert_allclose(m.predict_proba_rows(rows), m.predict_proba(t), rtol=1e-12, atol=0, err_msg=name)
        np.testing.assert_allclose(m.contributions_rows(rows[:50]), m.contributions(t.slice(0, 50)), rtol=1e-9,
                                   atol=1e-12, err_msg=name)
        one = [m.predict_proba_rows([r])[0] for r in rows[:20]]
        np.testing.assert_allclose(one, m.predict_proba(t.slice(0, 20)), rtol=1e-12, atol=0, err_msg=name)
    with pytest.raises(Exception, match="lacks 1 column"):
        c.models["logistic"].predict_proba_rows([{k: v for k, v in rows[0].items() if k != "x2"}])
