"""Recording disparity: a group whose documentation-derived column is thinner than its other data implies."""

import numpy as np
import pandas as pd
import pytest
from sklearn.linear_model import Ridge

from careloop.evaluation import fairness, recording_disparity


def world(n, seed, under=None):
    rng = np.random.default_rng(seed)
    x = rng.normal(size=(n, 4))
    group = rng.choice(["a", "b", "c"], n, p=[0.6, 0.25, 0.15])
    target = 2 + x @ np.array([0.8, 0.5, 0.0, -0.3]) + rng.normal(0, 1.0, n)
    if under:
        target = np.where(group == under, target - 0.8, target)  # recorded less than the rest implies
    return x, target, group


def test_under_recorded_group_is_flagged_and_gap_is_exact():
    xtr, ytr, _ = world(4000, 1, under="b")
    xte, yte, g = world(3000, 2, under="b")
    out = recording_disparity(xtr, {"charlson": ytr}, xte, {"charlson": yte}, {"race": g}, n_boot=300)
    flagged = [f for f in out if f.flagged]
    assert [(f.group, f.column) for f in flagged] == [("b", "charlson")]
    # independent: the same ridge fit, standardised residuals, group mean minus overall mean
    m = Ridge(alpha=1.0).fit(xtr, ytr)
    sd = np.std(ytr - m.predict(xtr))
    r = (yte - m.predict(xte)) / sd
    for f in out:
        assert f.gap.estimate == pytest.approx(r[g == f.group].mean() - r.mean(), abs=1e-9)
        assert f.gap.lo < f.gap.estimate < f.gap.hi
    assert flagged[0].gap.estimate < -0.25 and "under-recorded" in flagged[0].message


def test_no_flag_without_under_recording():
    xtr, ytr, _ = world(4000, 3)
    xte, yte, g = world(3000, 4)
    out = recording_disparity(xtr, {"charlson": ytr, "elix": ytr * 2}, xte, {"charlson": yte, "elix": yte * 2},
                              {"race": g}, n_boot=300)
    assert len(out) == 6 and not any(f.flagged for f in out)


def test_small_groups_are_not_tested():
    xtr, ytr, _ = world(2000, 5)
    xte, yte, _ = world(400, 6)
    g = np.array(["big"] * 380 + ["tiny"] * 20)
    out = recording_disparity(xtr, {"c": ytr}, xte, {"c": yte}, {"attr": g}, n_boot=100)
    assert out == []  # "tiny" is under the minimum, and so is the rest of "big"'s complement


MISSING_KINDS = [None, float("nan"), np.nan, np.float64("nan"), pd.NA]


@pytest.mark.parametrize("as_series", [False, True])
def test_every_kind_of_missing_value_is_the_unknown_group_as_in_fairness(as_series):
    """None, NaN (float and NumPy) and pd.NA are one "unknown" group here as in `fairness`, so the two analyses
    of one attribute report the same groups with the same sizes."""
    n, per = 700, 80
    xtr, ytr, _ = world(2000, 7)
    xte, yte, _ = world(n, 8)
    raw = ["A"] * (n - per * len(MISSING_KINDS)) + [v for v in MISSING_KINDS for _ in range(per)]
    race = pd.Series(raw, dtype="string") if as_series else np.array(raw, dtype=object)
    out = recording_disparity(xtr, {"cci": ytr}, xte, {"cci": yte}, {"race": race}, n_boot=50)
    unknown = np.array([v is None or v is pd.NA or (isinstance(v, float) and np.isnan(v)) for v in raw])
    assert {f.group: f.n for f in out} == {"A": int((~unknown).sum()), "unknown": int(unknown.sum())}
    m = Ridge(alpha=1.0).fit(xtr, ytr)
    r = (yte - m.predict(xte)) / np.std(ytr - m.predict(xtr))
    gap = {f.group: f.gap.estimate for f in out}
    assert gap["unknown"] == pytest.approx(r[unknown].mean() - r.mean(), abs=1e-9)

    rng = np.random.default_rng(9)
    p = rng.uniform(0.05, 0.6, n)
    y = (rng.random(n) < p).astype(int)
    fair = fairness(y, p, {"race": race}, threshold=0.3, n_boot=0)
    assert {g.group: g.n for g in fair.attributes["race"].groups} == {f.group: f.n for f in out}
