"""`hours_since` counts from the window's first measurement, in the SQL engines (DuckDB, Spark) and the per-stay
evaluator alike, and its reason says so ("first measured", not "last measured")."""

from __future__ import annotations

import datetime as dt
from pathlib import Path

import orjson
import pyarrow as pa

from careloop.engines import DuckDBEngine, SparkEngine
from careloop.explain import ColumnInfo, column_title, phrase
from careloop.features.engine import extract
from careloop.features.rows import Record, Stay, StayFeatures
from careloop.features.spec import FeatureSet

P = {"reference": "Patient/p1"}
PATIENT = {"resourceType": "Patient", "id": "p1", "gender": "female", "birthDate": "1950-02-03"}
ADMIT, INDEX = dt.datetime(2023, 5, 1, 10, tzinfo=dt.UTC), dt.datetime(2023, 5, 5, 10, tzinfo=dt.UTC)
ENCOUNTER = {"resourceType": "Encounter", "id": "e1", "status": "finished", "subject": P,
             "class": {"system": "http://terminology.hl7.org/CodeSystem/v3-ActCode", "code": "IMP"},
             "period": {"start": ADMIT.isoformat(), "end": INDEX.isoformat()}}


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


def _us(t: dt.datetime) -> int:
    return (t - dt.datetime(1970, 1, 1, tzinfo=dt.UTC)) // dt.timedelta(microseconds=1)


def test_hours_since_is_from_the_first_measurement_in_every_engine(tmp_path: Path):
    src = tmp_path / "export"
    src.mkdir()
    for name, rows in (("Patient", [PATIENT]), ("Encounter", [ENCOUNTER]), ("Observation", OBSERVATIONS)):
        (src / f"{name}.ndjson").write_bytes(b"".join(orjson.dumps(r) + b"\n" for r in rows))
    from careloop.ingest.runner import ingest

    assert ingest([src], tmp_path / "store", workers=1).to_json()["quarantined"] == 0
    cols = ["sodium_hours_since", "sodium_last", "sodium_first", "sodium_count"]
    got = {}
    for name, make in (("duckdb", lambda: DuckDBEngine(tmp_path / "store")),
                       ("spark", lambda: SparkEngine(tmp_path / "store", master="local[1]"))):
        eng = make()
        try:
            sid = eng.arrow("SELECT subject_id FROM patients").column(0)[0].as_py()
            cohort = pa.table({"encounter_id": ["e1"], "subject_id": [sid], "patient_id": ["p1"], "label": [False],
                               "split": ["train"], "index_time": [INDEX], "admit_time": [ADMIT]})
            row = extract(FS, cohort, eng).table.to_pylist()[0]
            got[name] = [row[c] for c in cols]
            events = [tuple(r.values()) for r in eng.arrow(
                f"SELECT subject_id, {eng.dialect.micros('time')} AS t, code, numeric_value, text_value, unit, "
                "original_value, original_unit, encounter_id, source_resource, source_id FROM events").to_pylist()]
        finally:
            eng.close()
    stay = Stay("e1", _us(ADMIT), _us(INDEX), _us(INDEX), "IMP")
    row = StayFeatures(FS)(Record(events, []), stay)
    got["evaluator"] = [row[c] for c in cols]
    expected = [FIRST_H, 128.0, 131.0, 2.0]
    assert got == {"duckdb": expected, "spark": expected, "evaluator": expected}
    info = ColumnInfo("sodium_hours_since", "sodium", "measurement", "stay", "hours_since", "LOINC/2951-2",
                      unit="mmol/L", label="sodium")
    assert phrase(info, FIRST_H) == "sodium first measured 3 days ago during the stay"
    assert column_title(info) == "hours since first sodium"
