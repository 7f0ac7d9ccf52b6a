"""No feature sees the future: planting later events and encounters for every feature changes nothing."""

from __future__ import annotations

import shutil
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from careloop import contracts as C
from careloop.engines import DuckDBEngine
from careloop.features.engine import extract
from careloop.features.spec import load_feature_set
from careloop.tasks.cohort import build_cohort
from careloop.tasks.spec import load_task

US = 1


def _future_rows(cohort: pa.Table, fs) -> tuple[pa.Table, pa.Table]:
    """For each patient's last index time: one event per code or prefix any feature reads, and new encounters,
    all stamped after it (so they are the future of every index stay of that patient)."""
    last: dict[int, tuple] = {}
    for r in cohort.to_pylist():
        if r["subject_id"] not in last or r["index_time"] > last[r["subject_id"]][0]:
            last[r["subject_id"]] = (r["index_time"], r["patient_id"])
    codes = {f.code for f in fs.features if f.code}
    codes |= {f"{f.prefix}FUTURE" for f in fs.features if f.prefix}
    codes |= {"ICD10CM/C79.9", "ICD10CM/I50.9", "ICD10CM/N18.6", "SNOMED/40701008"}
    ev = {k: [] for k in C.EVENTS.names}
    enc = {k: [] for k in C.ENCOUNTERS.names}
    for sid, (when, pid) in last.items():
        t = when + pa.scalar(1, pa.duration("us")).as_py()
        for code in sorted(codes):
            for k, v in {"subject_id": sid, "time": t, "code": code, "numeric_value": 9999.0, "text_value": "FUTURE",
                         "unit": None, "original_value": None, "original_unit": None, "encounter_id": None,
                         "source_resource": "Procedure" if code.startswith("SNOMED") else "Observation",
                         "source_id": f"future-{sid}-{code}"}.items():
                ev[k].append(v)
        for cls in ("IMP", "EMER"):
            for k, v in {"encounter_id": f"future-{sid}-{cls}", "subject_id": sid, "patient_id": pid, "class": cls,
                         "status": "finished", "start": t, "end": t, "priority": "EM", "type_code": None,
                         "admit_source": "emd", "discharge_disposition": "home", "discharge_disposition_nubc": None,
                         "site_ref": None, "location_ref": None, "reason_code": None, "diagnosis_ref": None}.items():
                enc[k].append(v)
    return pa.table(ev, schema=C.EVENTS), pa.table(enc, schema=C.ENCOUNTERS)


@pytest.fixture(scope="module")
def before_and_after(hospital_store, tmp_path_factory: pytest.TempPathFactory):
    fs = load_feature_set("readmission")
    eng = DuckDBEngine(hospital_store[0])
    cohort = build_cohort(load_task("readmission-30d"), eng).table
    before = extract(fs, cohort, eng).table
    store = tmp_path_factory.mktemp("planted") / "store"
    shutil.copytree(hospital_store[0], store)
    ev, enc = _future_rows(cohort, fs)
    pq.write_table(ev, store / "events" / "part-planted-future.parquet")
    pq.write_table(enc, store / "encounters" / "part-planted-future.parquet")
    after = extract(fs, cohort, DuckDBEngine(store)).table
    return fs, cohort, before, after, len(ev)


def test_planted_future_data_moves_no_feature(before_and_after):
    fs, cohort, before, after, planted = before_and_after
    assert planted > 1000
    assert before.num_rows == after.num_rows == cohort.num_rows
    for col in fs.columns:
        assert before.column(col).to_pylist() == after.column(col).to_pylist(), col


def test_every_feature_is_exercised(before_and_after):
    """The leakage test only means something if every column has values to move."""
    fs, _, before, _, _ = before_and_after
    for col in fs.columns:
        assert before.column(col).null_count < before.num_rows, col


def test_an_event_at_the_index_time_is_seen(hospital_store, tmp_path: Path):
    """'At or before': MEDS prediction times include events stamped exactly then."""
    fs = load_feature_set("readmission")
    eng = DuckDBEngine(hospital_store[0])
    cohort = build_cohort(load_task("readmission-30d"), eng).table.slice(0, 1)
    row = cohort.to_pylist()[0]
    store = tmp_path / "store"
    shutil.copytree(hospital_store[0], store)
    ev = {k: [None] for k in C.EVENTS.names}
    ev.update(subject_id=[row["subject_id"]], time=[row["index_time"]], code=["LOINC/2951-2"], numeric_value=[99.0],
              source_resource=["Observation"], source_id=["at-index"])
    pq.write_table(pa.table(ev, schema=C.EVENTS), store / "events" / "part-at-index.parquet")
    out = extract(fs, cohort, DuckDBEngine(store)).table.to_pylist()[0]
    assert out["sodium_last"] == 99.0


def test_a_prediction_during_the_stay_sees_nothing_of_its_end(hospital_store):
    """At admission + 24 h the discharge (disposition, final ward) has not happened yet."""
    fs = load_feature_set("readmission")
    eng = DuckDBEngine(hospital_store[0])
    cohort = build_cohort(load_task("inhospital-mortality-24h"), eng).table
    rows = extract(fs, cohort, eng).table.to_pylist()
    assert len(rows) > 1000
    assert all(r["discharge_disposition"] is None for r in rows)
    assert all(r["principal_diagnosis"] is None for r in rows)  # coded at discharge
    assert all(abs(r["los_days"] - 1.0) < 1e-9 for r in rows)


def test_principal_diagnosis_is_the_index_stays_reason_code(hospital_store):
    fs = load_feature_set("readmission")
    eng = DuckDBEngine(hospital_store[0])
    cohort = build_cohort(load_task("readmission-30d"), eng).table
    got = dict(zip(cohort.column("encounter_id").to_pylist(),
                   extract(fs, cohort, eng).table.column("principal_diagnosis").to_pylist(), strict=True))
    ref = eng.arrow("SELECT encounter_id, reason_code FROM encounters WHERE class = 'IMP'").to_pylist()
    expect = {r["encounter_id"]: r["reason_code"] for r in ref if r["encounter_id"] in got}
    assert len(expect) == len(got) and got == expect
    assert sum(v is not None for v in got.values()) > 0.95 * len(got)
