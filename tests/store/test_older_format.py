"""A store written by an older careloop is read before its next ingest upgrades it: the columns added since read as
null, in DuckDB and in Spark, so `careloop train`, `features` and the dashboard work on it unchanged (they raised a
binder error naming the new column)."""

from __future__ import annotations

import datetime as dt

import pyarrow.parquet as pq
import pytest

from careloop.engines import DuckDBEngine, SparkEngine
from careloop.features.spec import load_feature_set
from careloop.store import EventStore
from tests.features.three_ways import features_three_ways, tiny_store

P = {"reference": "Patient/p1"}
PATIENT = {"resourceType": "Patient", "id": "p1", "gender": "female", "birthDate": "1950-02-03"}
ENCOUNTER = {"resourceType": "Encounter", "id": "e1", "status": "finished", "subject": P,
             "class": {"system": "http://terminology.hl7.org/CodeSystem/v3-ActCode", "code": "IMP"},
             "period": {"start": "2023-05-01T10:00:00Z", "end": "2023-05-05T10:00:00Z"},
             "reasonCode": [{"coding": [{"system": "http://hl7.org/fhir/sid/icd-10-cm", "code": "I50.23"}]}]}
MEDICATION = {"resourceType": "Medication", "id": "m1",
              "code": {"coding": [{"system": "http://www.nlm.nih.gov/research/umls/rxnorm", "code": "197361"}]}}


def _as_format_3(store) -> None:
    """Drop the columns format 4 added (encounters.diagnosis_ref) and say the store is of format 3."""
    for part in (store / "encounters").glob("part-*.parquet"):
        pq.write_table(pq.read_table(part).drop(["diagnosis_ref"]), part)
    (store / "_format").write_text("3\n")


@pytest.mark.parametrize("engine", ["duckdb", pytest.param("spark", marks=pytest.mark.scale)])  # Spark: slow runs
def test_an_older_store_reads_with_the_new_columns_as_null(tmp_path, engine):
    store = tiny_store(tmp_path, {"Patient": [PATIENT], "Encounter": [ENCOUNTER], "Medication": [MEDICATION]})
    _as_format_3(store)
    assert not EventStore.open(store).current_format()
    eng = DuckDBEngine(store) if engine == "duckdb" else SparkEngine(store, master="local[1]")
    try:
        rows = eng.arrow("SELECT encounter_id, reason_code, diagnosis_ref FROM encounters").to_pylist()
        meds = eng.arrow("SELECT resource_id, code FROM directory WHERE resource_type = 'Medication'").to_pylist()
    finally:
        eng.close()
    assert rows == [{"encounter_id": "e1", "reason_code": "ICD10CM/I50.23", "diagnosis_ref": None}]
    assert meds == [{"resource_id": "m1", "code": "RXNORM/197361"}]


@pytest.mark.scale  # four Spark sessions: with the slow runs (make test-scale, run by CI)
def test_features_of_an_older_store_equal_those_after_its_upgrade(tmp_path):
    store = tiny_store(tmp_path, {"Patient": [PATIENT], "Encounter": [ENCOUNTER]})
    doc = load_feature_set("readmission").model_dump(mode="json", exclude_defaults=True)
    doc["features"] = [f for f in doc["features"] if f["kind"] in ("principal_diagnosis", "age", "comorbidity")]
    from careloop.features.spec import FeatureSet

    fs = FeatureSet.model_validate(doc)
    admit, index = dt.datetime(2023, 5, 1, 10, tzinfo=dt.UTC), dt.datetime(2023, 5, 5, 10, tzinfo=dt.UTC)
    fresh = features_three_ways(store, fs, "e1", "p1", admit, index)
    _as_format_3(store)
    old = features_three_ways(store, fs, "e1", "p1", admit, index)
    assert old == fresh and old["duckdb"][fs.features[0].name] is not None
