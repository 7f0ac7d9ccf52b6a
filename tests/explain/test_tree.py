"""tree_contributions: LightGBM's TreeSHAP, checked against shap and against brute-force Shapley values."""

from __future__ import annotations

import itertools
import math
import warnings

import lightgbm as lgb
import numpy as np
import pandas as pd
import pytest

from careloop.explain import tree_contributions


@pytest.fixture(scope="module")
def data() -> tuple[pd.DataFrame, np.ndarray]:
    rng = np.random.default_rng(7)
    n = 400
    X = pd.DataFrame({
        "age": rng.normal(65, 15, n),
        "sodium": rng.normal(139, 4, n),
        "payer": pd.Categorical(rng.choice(["1", "2", "5", "81"], n)),
        "visits": rng.integers(0, 5, n).astype(float),
    })
    X.loc[rng.random(n) < 0.2, "sodium"] = np.nan
    X.loc[rng.random(n) < 0.1, "payer"] = np.nan
    logit = 0.04 * (X["age"] - 65) - 0.2 * (X["sodium"].fillna(139) - 139) + 1.2 * (X["payer"] == "2") + X["visits"]
    y = (logit + rng.logistic(size=n) > 1.5).astype(int).to_numpy()
    return X, y


@pytest.fixture(scope="module")
def model(data) -> lgb.LGBMClassifier:
    X, y = data
    return lgb.LGBMClassifier(n_estimators=12, num_leaves=6, min_child_samples=5, learning_rate=0.3,
                              verbose=-1).fit(X, y)


def test_equals_shap_tree_explainer(data, model):
    shap = pytest.importorskip("shap")
    X, _ = data
    c = tree_contributions(model, X)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        explainer = shap.TreeExplainer(model)
        sv = explainer.shap_values(X)
    sv = np.asarray(sv[1] if isinstance(sv, list) else sv)
    expected = np.ravel(explainer.expected_value)[-1]
    assert c.shape == (len(X), X.shape[1] + 1)
    np.testing.assert_allclose(c[:, :-1], sv, atol=1e-10)
    np.testing.assert_allclose(c[:, -1], expected, atol=1e-10)


def test_rows_sum_to_the_raw_log_odds(data, model):
    X, _ = data
    c = tree_contributions(model, X)
    np.testing.assert_allclose(c.sum(axis=1), model.booster_.predict(X, raw_score=True), atol=1e-10)
    p = 1 / (1 + np.exp(-c.sum(axis=1)))
    np.testing.assert_allclose(p, model.predict_proba(X)[:, 1], atol=1e-10)


def test_booster_and_column_order(data, model):
    X, _ = data
    c = tree_contributions(model, X)
    shuffled = X[["visits", "payer", "sodium", "age"]]
    c2 = tree_contributions(model.booster_, shuffled)
    # columns follow X's order, bias last
    np.testing.assert_allclose(c2[:, :-1], c[:, [3, 2, 1, 0]], atol=1e-12)
    np.testing.assert_allclose(c2[:, -1], c[:, -1], atol=1e-12)


def test_rejects_what_it_cannot_explain(data, model):
    X, _ = data
    with pytest.raises(TypeError):
        tree_contributions(object(), X)
    with pytest.raises(ValueError):
        tree_contributions(model, X[["age", "sodium"]])


def _shap(model: object, X: pd.DataFrame) -> np.ndarray:
    shap = pytest.importorskip("shap")
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        sv = shap.TreeExplainer(model).shap_values(X)
    return np.asarray(sv[1] if isinstance(sv, list) else sv)


@pytest.fixture(scope="module")
def renamed(data) -> tuple[pd.DataFrame, lgb.Booster]:
    """The data with names LightGBM rewrites ("sodium last" is stored as `sodium_last`), and a Booster on it."""
    X, y = data
    X = X.rename(columns={"sodium": "sodium last", "payer": "payer  code", "visits": "ED visits (180d)"})
    booster = lgb.train({"objective": "binary", "num_leaves": 6, "min_child_samples": 5, "learning_rate": 0.3,
                         "verbose": -1}, lgb.Dataset(X, y), 12)
    return X, booster


def test_lightgbm_name_is_the_installed_lightgbms_renaming():
    """Every space becomes "_"; nothing else is rewritten (tabs, non-breaking spaces, letters, punctuation)."""
    from careloop.explain._tree import lightgbm_name

    names = ["age", "sodium last", "payer  code", "ED visits (180d)", "a\tb", "nbsp\u00a0x", "café au lait",
             "x-y.z/w%", "q'x;=*#<>", " edge "]
    rng = np.random.default_rng(1)
    X = pd.DataFrame(rng.normal(size=(60, len(names))), columns=names)
    booster = lgb.train({"objective": "binary", "verbose": -1}, lgb.Dataset(X, rng.integers(0, 2, 60)), 1)
    assert booster.feature_name() == [lightgbm_name(c) for c in names]
    assert booster.feature_name()[:4] == ["age", "sodium_last", "payer__code", "ED_visits_(180d)"]


@pytest.mark.parametrize("order", [[0, 1, 2, 3], [1, 0, 2, 3], [3, 2, 1, 0], [2, 3, 0, 1]])
def test_renamed_features_in_any_order_equal_shap(renamed, order):
    """X's columns follow X's order whatever the names LightGBM stored, equal to shap's on the training order."""
    X, booster = renamed
    ref = _shap(booster, X)
    got = tree_contributions(booster, X.iloc[:, order])
    np.testing.assert_allclose(got[:, :-1], ref[:, order], atol=1e-10)
    np.testing.assert_allclose(got.sum(axis=1), booster.predict(X, raw_score=True), atol=1e-10)
    as_stored = X.iloc[:, order].set_axis([booster.feature_name()[j] for j in order], axis=1)
    np.testing.assert_allclose(tree_contributions(booster, as_stored), got, atol=1e-12)


def test_names_that_do_not_match_are_refused_not_read_by_position(renamed):
    X, booster = renamed
    with pytest.raises(ValueError, match=r"not in the model \['sodium'\], missing from X \['sodium_last'\]"):
        tree_contributions(booster, X.rename(columns={"sodium last": "sodium"}))
    twice = X.rename(columns={"age": "sodium_last"})  # "sodium last" and "sodium_last" are both sodium_last
    with pytest.raises(ValueError, match=r"missing from X \['age'\], given twice \['sodium_last'\]"):
        tree_contributions(booster, twice)


# --- brute force: exact Shapley values of the tree-path-dependent value function --------------------------------


def _goes_left(node: dict, x: float) -> bool:
    if node["decision_type"] == "==":  # categorical: the listed category codes go left; missing goes right
        if math.isnan(x) or x < 0:
            return False
        return int(x) in {int(v) for v in str(node["threshold"]).split("||")}
    missing = node["missing_type"]
    if math.isnan(x):
        if missing == "NaN":
            return node["default_left"]
        x = 0.0
    if missing == "Zero" and x == 0.0:
        return node["default_left"]
    return x <= node["threshold"]


def _count(node: dict) -> float:
    return node["leaf_count"] if "leaf_value" in node else node["internal_count"]


def _expect(node: dict, x: np.ndarray, known: frozenset[int]) -> float:
    """E[f(x) | x_S] by the tree path: a split on an unknown feature averages its children by training cover."""
    if "leaf_value" in node:
        return node["leaf_value"]
    left, right = node["left_child"], node["right_child"]
    f = node["split_feature"]
    if f in known:
        return _expect(left if _goes_left(node, x[f]) else right, x, known)
    total = _count(left) + _count(right)
    return (_count(left) * _expect(left, x, known) + _count(right) * _expect(right, x, known)) / total


def test_matches_brute_force_shapley_values(data, model):
    X, _ = data
    trees = [t["tree_structure"] for t in model.booster_.dump_model()["tree_info"]]
    rows = X.head(40)
    assert rows["sodium"].isna().any() and rows["payer"].isna().any()
    values = np.column_stack([rows["age"], rows["sodium"], rows["payer"].cat.codes.replace(-1, np.nan),
                              rows["visits"]]).astype(float)
    k = X.shape[1]
    c = tree_contributions(model, rows)
    for i, x in enumerate(values):
        def v(s: frozenset[int], x=x) -> float:
            return sum(_expect(t, x, s) for t in trees)

        phi = np.zeros(k)
        for j in range(k):
            others = [f for f in range(k) if f != j]
            for size in range(k):
                w = math.factorial(size) * math.factorial(k - size - 1) / math.factorial(k)
                for s in itertools.combinations(others, size):
                    phi[j] += w * (v(frozenset(s) | {j}) - v(frozenset(s)))
        np.testing.assert_allclose(c[i, :-1], phi, atol=1e-9)
        np.testing.assert_allclose(c[i, -1], v(frozenset()), atol=1e-9)
