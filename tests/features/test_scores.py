"""LACE and HOSPITAL point tables, pinned at every band boundary, plus monotonicity and range properties."""

from __future__ import annotations

import math

import numpy as np
import pytest
from hypothesis import given
from hypothesis import strategies as st

from careloop.features.comorbidity import charlson_index
from careloop.features.scores import (
    HospitalPoints,
    LacePoints,
    hospital_points,
    hospital_risk_category,
    hospital_score,
    lace_points,
    lace_risk_category,
    lace_score,
)


def lace_l(days: float) -> int:
    return lace_points(los_days=days, emergent=False, charlson=0, ed_visits_6m=0).length_of_stay


@pytest.mark.parametrize(
    ("days", "points"),
    [
        (0, 0),
        (0.99, 0),
        (1, 1),
        (1.5, 1),
        (2, 2),
        (3, 3),
        (3.99, 3),
        (4, 4),
        (6, 4),
        (6.99, 4),
        (7, 5),
        (13, 5),
        (13.99, 5),
        (14, 7),
        (30, 7),
        (math.inf, 7),
    ],
)
def test_lace_length_of_stay_bands(days, points):
    assert lace_l(days) == points


@pytest.mark.parametrize(("charlson", "points"), [(0, 0), (1, 1), (2, 2), (3, 3), (4, 5), (5, 5), (29, 5)])
def test_lace_comorbidity_bands(charlson, points):
    assert lace_points(los_days=0, emergent=False, charlson=charlson, ed_visits_6m=0).comorbidity == points


@pytest.mark.parametrize(("visits", "points"), [(0, 0), (1, 1), (2, 2), (3, 3), (4, 4), (10, 4)])
def test_lace_emergency_visit_bands(visits, points):
    assert lace_points(los_days=0, emergent=False, charlson=0, ed_visits_6m=visits).emergency_visits == points


def test_lace_acuity():
    assert lace_points(los_days=0, emergent=True, charlson=0, ed_visits_6m=0) == LacePoints(0, 3, 0, 0)


def test_lace_extremes_and_numpy_inputs():
    assert lace_score(los_days=0, emergent=False, charlson=0, ed_visits_6m=0) == 0
    assert lace_score(los_days=14, emergent=True, charlson=4, ed_visits_6m=4) == 19
    numpy_kw = dict(los_days=np.float64(3), emergent=np.bool_(True), charlson=np.int64(2), ed_visits_6m=np.int64(1))
    assert lace_score(**numpy_kw) == 3 + 3 + 2 + 1


def test_example_patient_lace_by_hand():
    # Emergent 5-day stay; HF (1) + T2DM with CKD (2) + CKD 3 (2) + COPD (1) = Charlson 6; two ED visits.
    charlson = charlson_index(["I50.9", "E11.22", "N18.30", "J44.9"])
    assert charlson == 6
    points = lace_points(los_days=5, emergent=True, charlson=charlson, ed_visits_6m=2)
    assert points == LacePoints(length_of_stay=4, acuity=3, comorbidity=5, emergency_visits=2)
    assert sum(points) == lace_score(los_days=5, emergent=True, charlson=charlson, ed_visits_6m=2) == 14
    assert lace_risk_category(14) == "high"


@pytest.mark.parametrize("bad", [-1, -0.5, math.nan, None, "3", True])
def test_lace_rejects_bad_counts(bad):
    with pytest.raises(ValueError):
        lace_score(los_days=bad, emergent=False, charlson=0, ed_visits_6m=0)
    with pytest.raises(ValueError):
        lace_score(los_days=1, emergent=False, charlson=0, ed_visits_6m=bad)


def test_lace_risk_category_boundaries():
    expected = ["low", "low", "moderate", "moderate", "high", "high"]
    assert [lace_risk_category(s) for s in (0, 4, 5, 9, 10, 19)] == expected


BASE = dict(
    hemoglobin_g_dl=14.0,
    oncology=False,
    sodium_mmol_l=140.0,
    procedure=False,
    urgent=False,
    admissions_12m=0,
    los_days=1,
)


@pytest.mark.parametrize(("admissions", "points"), [(0, 0), (1, 0), (2, 2), (3, 2), (5, 2), (6, 5), (20, 5)])
def test_hospital_admission_bands(admissions, points):
    assert hospital_points(**BASE | {"admissions_12m": admissions}).admissions == points


@pytest.mark.parametrize(("days", "points"), [(0, 0), (4, 0), (4.99, 0), (5, 2), (30, 2)])
def test_hospital_length_of_stay(days, points):
    assert hospital_points(**BASE | {"los_days": days}).length_of_stay == points


@pytest.mark.parametrize(
    ("field", "value", "component", "points"),
    [
        ("hemoglobin_g_dl", 12.0, "hemoglobin", 0),
        ("hemoglobin_g_dl", 11.99, "hemoglobin", 1),
        ("sodium_mmol_l", 135.0, "sodium", 0),
        ("sodium_mmol_l", 134.9, "sodium", 1),
        ("oncology", True, "oncology", 2),
        ("procedure", True, "procedure", 1),
        ("urgent", True, "index_type", 1),
    ],
)
def test_hospital_single_items(field, value, component, points):
    assert getattr(hospital_points(**BASE | {field: value}), component) == points
    assert hospital_score(**BASE | {field: value}) == points


@pytest.mark.parametrize("missing", [None, math.nan])
def test_missing_labs_score_as_normal(missing):
    points = hospital_points(**BASE | {"hemoglobin_g_dl": missing, "sodium_mmol_l": missing})
    assert points.hemoglobin == points.sodium == 0


def test_hospital_extremes():
    assert hospital_score(**BASE) == 0
    worst = dict(
        hemoglobin_g_dl=8.0,
        oncology=True,
        sodium_mmol_l=125.0,
        procedure=True,
        urgent=True,
        admissions_12m=6,
        los_days=5,
    )
    assert hospital_points(**worst) == HospitalPoints(1, 2, 1, 1, 1, 5, 2)
    assert hospital_score(**worst) == 13


def test_hospital_risk_category_boundaries():
    assert [hospital_risk_category(s) for s in range(14)] == ["low"] * 5 + ["intermediate"] * 2 + ["high"] * 7


counts = st.integers(min_value=0, max_value=40)
days = st.floats(min_value=0, max_value=60, allow_nan=False)


@given(los=days, dl=days, emergent=st.booleans(), c=counts, dc=counts, e=counts, de=counts)
def test_lace_monotone_and_in_range(los, dl, emergent, c, dc, e, de):
    low = lace_score(los_days=los, emergent=False, charlson=c, ed_visits_6m=e)
    high = lace_score(los_days=los + dl, emergent=True, charlson=c + dc, ed_visits_6m=e + de)
    assert 0 <= low <= high <= 19
    for kw in ({"los_days": los + dl}, {"emergent": True}, {"charlson": c + dc}, {"ed_visits_6m": e + de}):
        base = dict(los_days=los, emergent=emergent, charlson=c, ed_visits_6m=e)
        assert lace_score(**base | kw) >= lace_score(**base)


labs = st.floats(min_value=0, max_value=200, allow_nan=False)


@given(
    hb=labs,
    na=labs,
    drop=labs,
    onc=st.booleans(),
    proc=st.booleans(),
    urg=st.booleans(),
    a=counts,
    da=counts,
    los=days,
    dl=days,
)
def test_hospital_monotone_and_in_range(hb, na, drop, onc, proc, urg, a, da, los, dl):
    base = dict(
        hemoglobin_g_dl=hb, oncology=onc, sodium_mmol_l=na, procedure=proc, urgent=urg, admissions_12m=a, los_days=los
    )
    score = hospital_score(**base)
    assert 0 <= score <= 13
    # Lower labs, and more of everything else, never lower the score.
    for kw in (
        {"hemoglobin_g_dl": max(hb - drop, 0)},
        {"sodium_mmol_l": max(na - drop, 0)},
        {"oncology": True},
        {"procedure": True},
        {"urgent": True},
        {"admissions_12m": a + da},
        {"los_days": los + dl},
    ):
        assert hospital_score(**base | kw) >= score
