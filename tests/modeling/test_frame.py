"""The preprocessor: roles, frozen categories, missing values, and an exact JSON round trip."""

import json

import numpy as np
import pyarrow as pa
import pytest

from careloop.modeling import FrameError, Preprocessor
from careloop.modeling._frame import MISSING, OTHER


def _table(n=200, seed=0):
    rng = np.random.default_rng(seed)
    age = rng.normal(60, 10, n)
    age[::10] = np.nan
    sex = rng.choice(["male", "female"], n).astype(object)
    sex[::7] = None
    rare = np.where(np.arange(n) < 5, "rare", "common")
    return pa.table({"age": pa.array(age, from_pandas=True), "flag": pa.array(rng.random(n) < 0.3),
                     "sex": pa.array(sex, pa.string()), "kind": pa.array(rare)})


def test_roles_and_statistics():
    t = _table()
    pre = Preprocessor.fit(t, ["age", "flag", "sex", "kind"])
    assert [c.name for c in pre.numeric] == ["age", "flag"]
    assert [c.name for c in pre.categorical] == ["sex", "kind"]
    age = t.column("age").to_numpy(zero_copy_only=False)
    num = {c.name: c for c in pre.numeric}
    assert num["age"].median == pytest.approx(np.nanmedian(age))
    assert num["age"].had_missing and not num["flag"].had_missing
    cats = {c.name: c.categories for c in pre.categorical}
    assert cats["sex"][-1] == MISSING and set(cats["sex"][:2]) == {"male", "female"}
    assert cats["kind"] == ["common", OTHER]  # 5 < min_category_count: pooled


def test_unseen_and_missing_categories_map_to_reserved_levels():
    pre = Preprocessor.fit(_table(), ["age", "sex", "kind"])
    new = pa.table({"age": [50.0, None], "sex": ["other", None], "kind": ["brand-new", "common"]})
    f = pre.frame(new)
    assert np.isnan(f["age"].iloc[1])
    assert f["sex"].iloc[1] == MISSING
    assert str(f["kind"].iloc[0]) == OTHER and str(f["kind"].iloc[1]) == "common"
    assert list(f["sex"].cat.categories) == pre.categorical[0].categories


def test_design_matrix_standardises_and_one_hot_encodes():
    t = _table()
    pre = Preprocessor.fit(t, ["age", "sex"])
    x, owner = pre.design(t)
    age = t.column("age").to_numpy(zero_copy_only=False)
    filled = np.where(np.isnan(age), np.nanmedian(age), age)
    np.testing.assert_allclose(x[:, 0], (filled - filled.mean()) / filled.std())
    np.testing.assert_array_equal(x[:, 1], np.isnan(age).astype(float))  # missing indicator
    sex = t.column("sex").to_pylist()
    levels = pre.categorical[0].categories
    for j, level in enumerate(levels[1:], start=2):
        expect = [(s if s is not None else MISSING) == level for s in sex]
        np.testing.assert_array_equal(x[:, j], np.asarray(expect, float))
    assert owner.tolist() == [0, 0] + [1] * (len(levels) - 1)


def test_json_round_trip_is_exact():
    t = _table()
    pre = Preprocessor.fit(t, ["age", "flag", "sex", "kind"])
    back = Preprocessor.from_dict(json.loads(json.dumps(pre.to_dict())))
    assert back == pre
    np.testing.assert_array_equal(back.design(t)[0], pre.design(t)[0])


def test_missing_input_column_is_a_clear_error():
    pre = Preprocessor.fit(_table(), ["age", "sex"])
    with pytest.raises(FrameError, match=r"lacks 1 column.*sex"):
        pre.frame(pa.table({"age": [1.0]}))


def test_unsupported_type_is_a_clear_error():
    t = pa.table({"when": pa.array([1, 2], pa.timestamp("s"))})
    with pytest.raises(FrameError, match=r"'when'.*neither numeric"):
        Preprocessor.fit(t, ["when"])
