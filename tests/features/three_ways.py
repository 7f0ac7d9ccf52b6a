"""One stay's features three ways: the SQL engine on DuckDB and on Spark (local), and the per-stay evaluator the
bedside uses; for tests that hold all three equal on a tiny store."""

from __future__ import annotations

import datetime as dt
from pathlib import Path

import orjson
import pyarrow as pa

from careloop.engines import DuckDBEngine, SparkEngine
from careloop.features.engine import extract
from careloop.features.rows import Record, Stay, StayFeatures
from careloop.features.spec import FeatureSet
from careloop.ingest.runner import ingest

P = {"reference": "Patient/p1"}  # the one patient of the tiny stores
PATIENT = {"resourceType": "Patient", "id": "p1", "gender": "female", "birthDate": "1950-02-03"}


def inpatient_stay(eid: str, admit: dt.datetime, end: dt.datetime, **fields) -> dict:
    """A finished inpatient Encounter of p1 (with any other `fields`)."""
    return {"resourceType": "Encounter", "id": eid, "status": "finished", "subject": P,
            "class": {"system": "http://terminology.hl7.org/CodeSystem/v3-ActCode", "code": "IMP"},
            "period": {"start": admit.isoformat(), "end": end.isoformat()}, **fields}


def tiny_store(root: Path, resources: dict[str, list[dict]]) -> Path:
    """A store ingested from one NDJSON file per resource type ({type: resources}); nothing quarantined."""
    src = root / "export"
    src.mkdir()
    for name, rows in resources.items():
        (src / f"{name}.ndjson").write_bytes(b"".join(orjson.dumps(r) + b"\n" for r in rows))
    assert ingest([src], root / "store", workers=1).to_json()["quarantined"] == 0
    return root / "store"


def _us(t: dt.datetime) -> int:
    return (t - dt.datetime(1970, 1, 1, tzinfo=dt.UTC)) // dt.timedelta(microseconds=1)


def features_three_ways(store: Path, fs: FeatureSet, encounter_id: str, patient_id: str, admit: dt.datetime,
                        index: dt.datetime) -> dict[str, dict]:
    """{"duckdb" | "spark" | "evaluator": the stay's feature row}, for a stay that ended at `index`."""
    out: dict[str, dict] = {}
    engines = (("duckdb", lambda: DuckDBEngine(store)), ("spark", lambda: SparkEngine(store, master="local[1]")))
    for name, make in engines:
        eng = make()
        try:
            sid = eng.arrow("SELECT subject_id FROM patients").column(0)[0].as_py()
            cohort = pa.table({"encounter_id": [encounter_id], "subject_id": [sid], "patient_id": [patient_id],
                               "label": [False], "split": ["train"], "index_time": [index], "admit_time": [admit]})
            out[name] = extract(fs, cohort, eng).table.to_pylist()[0]
            events = [tuple(r.values()) for r in eng.arrow(
                f"SELECT subject_id, {eng.dialect.micros('time')} AS t, code, numeric_value, text_value, unit, "
                "original_value, original_unit, encounter_id, source_resource, source_id FROM events").to_pylist()]
        finally:
            eng.close()
    stay = Stay(encounter_id, _us(admit), _us(index), _us(index), "IMP")
    out["evaluator"] = StayFeatures(fs)(Record(events, []), stay)
    return out
