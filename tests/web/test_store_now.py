"""The dashboard reads the store as the cohort does: a booking that has not happened (status planned) is neither
the store's "now" nor a current inpatient, and the minimum age is a birthday reached, not days / 365.25."""

from __future__ import annotations

import datetime as dt
from types import SimpleNamespace

import pyarrow as pa

from careloop.web.data import _years, assess, current_stays, data_end, engine_for
from tests.tasks.test_cohort_cases import LAST, enc, make_store, patient


def test_a_booking_is_not_the_stores_now_nor_a_current_inpatient(tmp_path):
    store = make_store(tmp_path, [
        *LAST, patient("p1"),
        enc("a1", "2023-05-20T10:00:00Z", None, "p1", status="in-progress", dispo=None),  # in hospital now
        enc("b1", "2023-05-31T10:00:00Z", None, "p1", status="planned", dispo=None),  # booked, not come yet
        enc("c1", "2023-07-01T10:00:00Z", "2023-07-03T10:00:00Z", "p1", status="planned"),  # a booking next month
    ])
    eng = engine_for(store)
    try:
        as_of = data_end(eng)
        assert as_of == dt.datetime(2023, 6, 2, 10, tzinfo=dt.UTC)  # stay z's discharge, not c1's booked end
        current, recent = current_stays(eng, as_of)
    finally:
        eng.close()
    assert current.column("encounter_id").to_pylist() == ["a1"]
    assert recent.column("encounter_id").to_pylist() == ["z"]


def test_the_dashboard_counts_age_in_whole_years_as_the_cohort_does():
    birth = dt.datetime(2005, 1, 5, tzinfo=dt.UTC)
    us = lambda d: (d - dt.datetime(1970, 1, 1, tzinfo=dt.UTC)) // dt.timedelta(microseconds=1)  # noqa: E731
    rows = [{"birth_us": us(birth)}] * 3 + [{"birth_us": None}]
    at = [us(dt.datetime(2023, 1, 5, 10, tzinfo=dt.UTC)), us(dt.datetime(2023, 1, 4, 23, tzinfo=dt.UTC)),
          us(dt.datetime(2024, 1, 5, tzinfo=dt.UTC)), us(dt.datetime(2023, 1, 5, tzinfo=dt.UTC))]
    assert _years(rows, at) == [18, 17, 19, None]
    # assess reads those years: the 18th birthday (age feature 17.9998) is in scope, the day before is not
    feats = pa.table({"age": [17.9998, 17.997]})
    service = SimpleNamespace(
        store=SimpleNamespace(policy=lambda key: SimpleNamespace(enabled=True)), model_key="m",
        thresholds=lambda setting: (0.5, None), min_age=18.0, policy=None, infos=[],
        model=SimpleNamespace(predict_proba=lambda t: [0.7, 0.7], contributions=lambda t: [[0.0], [0.0]],
                              columns=["age"]),
        out_of_distribution=lambda row, at_discharge=True: None, excluded=lambda **kw: None)
    assessed, _ = assess(service, feats, years=[18, 17])
    assert [a.status for a in assessed] == ["flagged", "deferred"]
