"""`hours_since` counts from the window's first measurement, in the SQL engines (DuckDB, Spark) and the per-stay
evaluator alike, and its reason says so ("first measured", not "last measured")."""

from __future__ import annotations

import datetime as dt
from pathlib import Path

from careloop.explain import ColumnInfo, column_title, phrase
from careloop.features.spec import FeatureSet
from tests.features.three_ways import PATIENT, P, features_three_ways, inpatient_stay, tiny_store

ADMIT, INDEX = dt.datetime(2023, 5, 1, 10, tzinfo=dt.UTC), dt.datetime(2023, 5, 5, 10, tzinfo=dt.UTC)
ENCOUNTER = inpatient_stay("e1", ADMIT, INDEX)


def _sodium(oid: str, when: dt.datetime, value: float) -> dict:
    return {"resourceType": "Observation", "id": oid, "status": "final", "subject": P,
            "effectiveDateTime": when.isoformat(),
            "code": {"coding": [{"system": "http://loinc.org", "code": "2951-2"}]},
            "valueQuantity": {"value": value, "unit": "mmol/L", "system": "http://unitsofmeasure.org",
                              "code": "mmol/L"}}


# measured 70 h and 2 h before the index time (within the stay), and once after it (not read)
OBSERVATIONS = [_sodium("s1", INDEX - dt.timedelta(hours=70), 131.0),
                _sodium("s2", INDEX - dt.timedelta(hours=2), 128.0),
                _sodium("s3", INDEX + dt.timedelta(hours=5), 140.0)]
FIRST_H = 70.0  # by hand: the index time minus the first measurement read
FS = FeatureSet.model_validate({"name": "t", "description": "sodium timing", "features": [
    {"name": "sodium", "kind": "measurement", "code": "LOINC/2951-2", "window": "stay",
     "aggs": ["hours_since", "last", "first", "count"], "description": "Sodium in the stay"}]})


def test_hours_since_is_from_the_first_measurement_in_every_engine(tmp_path: Path):
    store = tiny_store(tmp_path, {"Patient": [PATIENT], "Encounter": [ENCOUNTER], "Observation": OBSERVATIONS})
    cols = ["sodium_hours_since", "sodium_last", "sodium_first", "sodium_count"]
    got = {k: [row[c] for c in cols] for k, row in features_three_ways(store, FS, "e1", "p1", ADMIT, INDEX).items()}
    expected = [FIRST_H, 128.0, 131.0, 2.0]
    assert got == {"duckdb": expected, "spark": expected, "evaluator": expected}
    info = ColumnInfo("sodium_hours_since", "sodium", "measurement", "stay", "hours_since", "LOINC/2951-2",
                      unit="mmol/L", label="sodium")
    assert phrase(info, FIRST_H) == "sodium first measured 3 days ago during the stay"
    assert column_title(info) == "hours since first sodium"
