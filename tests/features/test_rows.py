"""Conformance: the per-stay Python evaluator (the service's) equals the SQL engine (training's), feature by feature.

Every index stay of several hundred patients of the session's synthetic hospital, with the readmission feature set
plus features of every kind and aggregation it does not use, must come out equal to the last digit (a mean to
1e-12: the SQL engine sums in its own order).
"""

from __future__ import annotations

import math
from collections import defaultdict

import pytest

from careloop.engines import DuckDBEngine
from careloop.features.engine import extract
from careloop.features.rows import Record, Stay, StayFeatures
from careloop.features.spec import FeatureSet, load_feature_set
from careloop.tasks.cohort import build_cohort
from careloop.tasks.spec import load_task

EXTRA = [
    {"name": "sodium_ever", "kind": "measurement", "code": "LOINC/2951-2", "window": "all",
     "aggs": ["first", "last", "min", "max", "mean", "count", "trend", "hours_since"], "description": "Sodium ever"},
    {"name": "glucose_30d", "kind": "measurement", "code": "LOINC/2345-7", "window": "30d",
     "aggs": ["first", "mean", "count", "hours_since"], "description": "Glucose in 30 days"},
    {"name": "diagnoses_365d", "kind": "distinct_codes", "prefix": "ICD10CM/", "window": "365d",
     "description": "Distinct diagnoses in a year"},
    {"name": "observations_ever", "kind": "event_count", "source": "Observation", "window": "all",
     "description": "Observations ever"},
    {"name": "conditions_90d", "kind": "event_count", "source": "Condition", "window": "90d",
     "description": "Conditions in 90 days"},
    {"name": "latest_snomed_30d", "kind": "latest_code", "prefix": "SNOMED/", "window": "30d",
     "description": "Latest SNOMED code in 30 days"},
    {"name": "latest_drug", "kind": "latest_code", "prefix": "RXNORM/", "window": "stay",
     "description": "Latest medication of the stay"},
    {"name": "ed_visits_30d", "kind": "encounter_count", "classes": ["EMER", "AMB"], "window": "30d",
     "description": "ED and ambulatory visits in 30 days"},
    {"name": "days_since_any", "kind": "days_since_discharge", "classes": ["IMP", "EMER", "AMB"],
     "description": "Days since any discharge"},
]
PATIENTS = 700


@pytest.fixture(scope="module")
def feature_set() -> FeatureSet:
    base = load_feature_set("readmission")
    doc = base.model_dump(mode="json", exclude_defaults=True)
    doc["features"] = [*doc["features"], *EXTRA]
    return FeatureSet.model_validate(doc)


@pytest.fixture(scope="module")
def both(hospital_store, feature_set):
    """(SQL rows, evaluator rows) for every index stay of the first PATIENTS patients of the cohort."""
    store, _ = hospital_store
    eng = DuckDBEngine(store)
    cohort = build_cohort(load_task("readmission-30d"), eng).table
    keep = sorted(set(cohort.column("subject_id").to_pylist()))[:PATIENTS]
    import pyarrow as pa
    import pyarrow.compute as pc

    cohort = cohort.filter(pc.is_in(cohort.column("subject_id"), pa.array(keep, pa.int64())))
    sql = extract(feature_set, cohort, eng).table.to_pylist()
    con = eng.con
    con.register("keep_ids", pa.table({"sid": pa.array(keep, pa.int64())}))
    events: dict[int, list[tuple]] = defaultdict(list)
    for row in con.execute(
        "SELECT subject_id, epoch_us(time), code, numeric_value, text_value, unit, original_value, original_unit, "
        "encounter_id, source_resource, source_id FROM events WHERE subject_id IN (SELECT sid FROM keep_ids)"
    ).fetchall():
        events[row[0]].append(row)
    encounters: dict[int, list[dict]] = defaultdict(list)
    enc_rows = con.execute(
        'SELECT encounter_id, subject_id, class, epoch_us(start), epoch_us("end"), priority, admit_source, '
        "location_ref, reason_code, diagnosis_ref FROM encounters WHERE subject_id IN (SELECT sid FROM keep_ids)"
    ).fetchall()
    by_id = {}
    for eid, sid, cls, start, end, prio, src, loc, reason, dx in enc_rows:
        encounters[sid].append({"encounter_id": eid, "class": cls, "start": start, "end": end})
        by_id[eid] = (end, cls, prio, src, loc, reason, dx)
    births = dict(con.execute("SELECT subject_id, epoch_us(CAST(birth_date AS TIMESTAMP)) // 86400000000 FROM patients "
                              "WHERE subject_id IN (SELECT sid FROM keep_ids)").fetchall())
    locations = dict(con.execute("SELECT DISTINCT resource_id, name FROM directory "
                                 "WHERE resource_type = 'Location'").fetchall())
    eng.close()
    evaluate = StayFeatures(feature_set)
    mine = []
    for c in cohort.select(["encounter_id", "subject_id", "index_time", "admit_time"]).to_pylist():
        end, cls, prio, src, loc, reason, dx = by_id[c["encounter_id"]]
        stay = Stay(c["encounter_id"], _us(c["admit_time"]), _us(c["index_time"]), end, cls, prio, src, loc, reason,
                    dx)
        rec = Record(events[c["subject_id"]], encounters[c["subject_id"]], births.get(c["subject_id"]), locations)
        mine.append(evaluate(rec, stay))
    return sql, mine


def _us(t) -> int:
    import datetime as dt

    return (t - dt.datetime(1970, 1, 1, tzinfo=dt.UTC)) // dt.timedelta(microseconds=1)


def test_every_stay_and_every_feature_is_equal(both, feature_set):
    sql, mine = both
    assert len(sql) == len(mine) > 300
    means = {c for c in feature_set.columns if c.endswith("_mean")}
    for a, b in zip(sql, mine, strict=True):
        for c in feature_set.columns:
            if c in means and a[c] is not None and b[c] is not None:
                assert math.isclose(a[c], b[c], rel_tol=1e-12), (c, a["encounter_id"], a[c], b[c])
            else:
                assert a[c] == b[c] and type(a[c]) is type(b[c]), (c, a["encounter_id"], a[c], b[c])


def test_the_conformance_set_exercises_every_kind(both, feature_set):
    """Each feature takes more than one value over the stays, so an evaluator that ignored one would be seen."""
    _, mine = both
    kinds = {f.kind for f in feature_set.features}
    assert kinds >= {"age", "static", "latest_code", "latest_text", "length_of_stay", "emergent", "admit_source",
                     "principal_diagnosis", "encounter_count", "days_since_discharge", "distinct_codes",
                     "event_count", "comorbidity", "measurement", "score"}
    for c in feature_set.columns:
        assert len({repr(r[c]) for r in mine}) > 1, c
