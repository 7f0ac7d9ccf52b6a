"""A ward named by a conditional reference (`Location?identifier=system|value`, as transaction Bundles write
Encounter.location) is resolved through the directory by the SQL engines and the bedside alike: the HOSPITAL score's
oncology points were lost for stays ingested from Bundles (2 points, against 4 from NDJSON naming `Location/<id>`)."""

from __future__ import annotations

import datetime as dt
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from careloop.engines import DuckDBEngine, SparkEngine
from careloop.features.engine import extract
from careloop.features.rows import location_names
from careloop.features.spec import FeatureSet
from careloop.serve.features import bedside_features, collect
from tests.features.three_ways import PATIENT, inpatient_stay, tiny_store

SYSTEM = "https://fhir.hospital.example/location-id"
ADMIT, INDEX = dt.datetime(2023, 5, 1, 10, tzinfo=dt.UTC), dt.datetime(2023, 5, 3, 22, tzinfo=dt.UTC)
WARDS = [{"resourceType": "Location", "id": "onc", "name": "Oncology Ward 5B",
          "identifier": [{"system": SYSTEM, "value": "5B"}]},
         {"resourceType": "Location", "id": "med", "name": "Medical Ward 3A",
          "identifier": [{"system": SYSTEM, "value": "3A"}]}]
FS = FeatureSet.model_validate({"name": "t", "description": "the HOSPITAL score", "features": [
    {"name": "hospital_score", "kind": "score", "score": "hospital", "description": "HOSPITAL"}]})


def _stay(eid: str, ward_ref: str) -> dict:
    return inpatient_stay(eid, ADMIT, INDEX, location=[{"location": {"reference": ward_ref}}])


# by hand: 2 days (0 points), no labs, procedures or admissions, elective: HOSPITAL is 2 on oncology, else 0
STAYS = {"by-id": (_stay("by-id", "Location/onc"), 2.0),
         "conditional": (_stay("conditional", f"Location?identifier={SYSTEM}|5B"), 2.0),
         "other-ward": (_stay("other-ward", f"Location?identifier={SYSTEM}|3A"), 0.0),
         "unknown-ward": (_stay("unknown-ward", f"Location?identifier={SYSTEM}|9Z"), 0.0)}


def _sql(store: Path, engine: str) -> dict[str, float]:
    eng = DuckDBEngine(store) if engine == "duckdb" else SparkEngine(store, master="local[1]")
    try:
        sid = eng.arrow("SELECT subject_id FROM patients").column(0)[0].as_py()
        n = len(STAYS)
        cohort = pa.table({"encounter_id": list(STAYS), "subject_id": [sid] * n, "patient_id": ["p1"] * n,
                           "label": [False] * n, "split": ["train"] * n, "index_time": [INDEX] * n,
                           "admit_time": [ADMIT] * n})
        rows = extract(FS, cohort, eng).table.to_pylist()
    finally:
        eng.close()
    return {r["encounter_id"]: r["hospital_score"] for r in rows}


@pytest.mark.parametrize("engine", ["duckdb", pytest.param("spark", marks=pytest.mark.scale)])  # Spark: slow runs
def test_a_ward_named_by_its_identifier_counts_in_every_engine(tmp_path: Path, engine: str):
    store = tiny_store(tmp_path, {"Location": WARDS, "Patient": [PATIENT],
                                  "Encounter": [enc for enc, _ in STAYS.values()]})
    expected = {eid: points for eid, (_, points) in STAYS.items()}
    assert _sql(store, engine) == expected
    # the bedside: the service's directory (the store's) resolves the ward the prefetched stay names
    directory = pq.read_table(next((store / "directory").rglob("*.parquet")))
    for eid, (enc, points) in STAYS.items():
        pre = collect({"patient": PATIENT, "encounters": {"resourceType": "Bundle", "type": "searchset",
                                                          "entry": [{"resource": enc}]}}, "p1")
        row = bedside_features(FS, pre, "p1", eid, directory=directory, now=INDEX + dt.timedelta(hours=1)).row
        assert row == {"hospital_score": points}, eid


def test_location_names_by_id_and_by_identifier():
    rows = [("Location", "a", "Oncology", SYSTEM, "1"), ("Location", "a", "Oncology", "urn:other", "x"),
            ("Location", "b", "Another", SYSTEM, "1"), ("Organization", "o", "Hospital", SYSTEM, "2"),
            ("Location", "c", None, SYSTEM, "3"), ("Location", "d", "No identifier", None, None)]
    assert location_names(rows) == {
        "a": "Oncology", f"Location?identifier={SYSTEM}|1": "Another", "Location?identifier=urn:other|x": "Oncology",
        "b": "Another", "d": "No identifier"}  # an identifier two wards share: the smaller name, as the SQL's min
