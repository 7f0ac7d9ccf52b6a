"""The principal diagnosis of a stay is read from `Encounter.diagnosis` when the EHR codes it there (as Epic does,
naming Conditions with a role and a rank), else from `Encounter.reasonCode`: the discharge or billing diagnosis of
the lowest rank, never the admission diagnosis, the chief complaint or a comorbidity. Its code is the Condition's
(ICD-10-CM first). The feature engine (SQL), the per-stay evaluator and the bedside give the same value."""

from __future__ import annotations

import datetime as dt
from pathlib import Path

import orjson
import pyarrow as pa
import pytest

from careloop.engines import DuckDBEngine
from careloop.features.engine import extract
from careloop.features.rows import Record, Stay, StayFeatures
from careloop.features.spec import FeatureSet, load_feature_set
from careloop.ingest.mapping import Batch, Context, decode, principal_diagnosis_ref
from careloop.ingest.runner import ingest
from careloop.serve.features import bedside_features, collect

ICD = "http://hl7.org/fhir/sid/icd-10-cm"
SCT = "http://snomed.info/sct"
ROLE = "http://terminology.hl7.org/CodeSystem/diagnosis-role"
P = {"reference": "Patient/p1"}
PATIENT = {"resourceType": "Patient", "id": "p1", "gender": "female", "birthDate": "1950-02-03"}


def _cond(cid: str, *codes: tuple[str, str]) -> dict:
    return {"resourceType": "Condition", "id": cid, "subject": P, "recordedDate": "2023-05-01T12:00:00Z",
            "code": {"coding": [{"system": s, "code": c} for s, c in codes]}}


def _dx(cid: str, use: str | None, rank: object = None) -> dict:
    out: dict = {"condition": {"reference": f"Condition/{cid}"}}
    if use:
        out["use"] = {"coding": [{"system": ROLE, "code": use}]}
    if rank is not None:
        out["rank"] = rank
    return out


def _enc(eid: str, start: str, end: str, diagnosis: list[dict], reason: str | None = "R07.9") -> dict:
    res = {"resourceType": "Encounter", "id": eid, "status": "finished", "subject": P,
           "class": {"system": "http://terminology.hl7.org/CodeSystem/v3-ActCode", "code": "IMP"},
           "period": {"start": start, "end": end}, "diagnosis": diagnosis,
           "hospitalization": {"dischargeDisposition": {"coding": [{"code": "home"}]}}}
    if reason:
        res["reasonCode"] = [{"coding": [{"system": ICD, "code": reason}]}]
    return res


CONDITIONS = [_cond("c-main", (SCT, "84114007"), (ICD, "I50.23")), _cond("c-adm", (ICD, "R06.02")),
              _cond("c-com", (ICD, "E11.9")), _cond("c-sct", (SCT, "233604007")),
              _cond("c-late", (ICD, "C34.90")) | {"recordedDate": "2023-09-08T09:00:00Z"}]  # coded after e5 ended
ENCOUNTERS = [
    # the billing diagnosis of rank 1, not the admission diagnosis (also rank 1) nor the comorbidity
    _enc("e1", "2023-05-01T10:00:00Z", "2023-05-05T10:00:00Z",
         [_dx("c-adm", "AD", 1), _dx("c-com", "CM", 2), _dx("c-main", "billing", 1)]),
    # a Condition not in the record: the reasonCode stands
    _enc("e2", "2023-06-01T10:00:00Z", "2023-06-03T10:00:00Z", [_dx("c-gone", "DD", 1)]),
    # unranked, no role: the first listed; a Condition coded only in SNOMED CT gives its SNOMED code
    _enc("e3", "2023-07-01T10:00:00Z", "2023-07-04T10:00:00Z", [_dx("c-sct", None), _dx("c-com", None)], None),
    # no Encounter.diagnosis at all: reasonCode, as before
    _enc("e4", "2023-08-01T10:00:00Z", "2023-08-02T10:00:00Z", [], "J18.9"),
    # a principal diagnosis coded three days after the discharge is not known at it: the reasonCode stands
    _enc("e5", "2023-09-01T10:00:00Z", "2023-09-05T10:00:00Z", [_dx("c-late", "DD", 1)], "R53.83"),
]
EXPECTED = {"e1": "ICD10CM/I50.23", "e2": "ICD10CM/R07.9", "e3": "SNOMED/233604007", "e4": "ICD10CM/J18.9",
            "e5": "ICD10CM/R53.83"}


def _ref(enc: dict) -> str | None:
    res = decode(orjson.dumps(enc))
    return principal_diagnosis_ref(res, Context())


@pytest.mark.parametrize(("diagnosis", "expected"), [
    ([_dx("a", "AD", 1), _dx("b", "DD", 2), _dx("c", "billing", 3)], "Condition/b"),
    ([_dx("a", "DD", 2), _dx("b", "DD", 1)], "Condition/b"),
    ([_dx("a", "CC"), _dx("b", "CM")], None),  # a chief complaint and a comorbidity: no principal diagnosis
    ([_dx("a", "DD", "1"), _dx("b", "DD", 1)], "Condition/b"),  # a rank that is not a number is unranked
    ([_dx("a", "DD", True), _dx("b", "DD", 0), _dx("c", "DD")], "Condition/a"),  # none ranked: the first listed
    ([{"condition": {"reference": "Observation/o1"}}, _dx("b", None)], "Condition/b"),
    ([{"use": {"coding": [{"system": ROLE, "code": "DD"}]}}], None),  # no Condition named
])
def test_the_principal_diagnosis_is_the_discharge_or_billing_diagnosis_of_the_lowest_rank(diagnosis, expected):
    assert _ref(_enc("e", "2023-05-01T10:00:00Z", "2023-05-02T10:00:00Z", diagnosis)) == expected


def _feature_set() -> FeatureSet:
    doc = load_feature_set("readmission").model_dump(mode="json", exclude_defaults=True)
    doc["features"] = [f for f in doc["features"] if f["kind"] == "principal_diagnosis"]
    assert len(doc["features"]) == 1
    return FeatureSet.model_validate(doc)


def _us(text: str) -> int:
    return (dt.datetime.fromisoformat(text) - dt.datetime(1970, 1, 1, tzinfo=dt.UTC)) // dt.timedelta(microseconds=1)


def test_engine_evaluator_and_bedside_read_the_same_principal_diagnosis(tmp_path: Path):
    src = tmp_path / "export"
    src.mkdir()
    for name, rows in (("Patient", [PATIENT]), ("Encounter", ENCOUNTERS), ("Condition", CONDITIONS)):
        (src / f"{name}.ndjson").write_bytes(b"".join(orjson.dumps(r) + b"\n" for r in rows))
    report = ingest([src], tmp_path / "store", workers=1).to_json()
    assert report["quarantined"] == 0
    fs = _feature_set()
    col = fs.features[0].name
    eng = DuckDBEngine(tmp_path / "store")
    try:
        refs = dict(eng.con.execute("SELECT encounter_id, diagnosis_ref FROM encounters").fetchall())
        assert refs == {"e1": "Condition/c-main", "e2": "Condition/c-gone", "e3": "Condition/c-sct", "e4": None,
                        "e5": "Condition/c-late"}
        ((sid,),) = eng.con.execute("SELECT subject_id FROM patients").fetchall()
        n = len(ENCOUNTERS)
        cohort = pa.table({"encounter_id": list(EXPECTED), "subject_id": [sid] * n, "patient_id": ["p1"] * n,
                           "label": [False] * n, "split": ["train"] * n,
                           "index_time": [dt.datetime.fromisoformat(e["period"]["end"]) for e in ENCOUNTERS],
                           "admit_time": [dt.datetime.fromisoformat(e["period"]["start"]) for e in ENCOUNTERS]})
        sql = extract(fs, cohort, eng).table.to_pylist()
        events = eng.con.execute(
            "SELECT subject_id, epoch_us(time), code, numeric_value, text_value, unit, original_value, original_unit, "
            "encounter_id, source_resource, source_id FROM events").fetchall()
    finally:
        eng.close()
    assert {r["encounter_id"]: r[col] for r in sql} == EXPECTED
    evaluate = StayFeatures(fs)
    encounters = [{"encounter_id": e["id"], "class": "IMP", "start": _us(e["period"]["start"]),
                   "end": _us(e["period"]["end"])} for e in ENCOUNTERS]
    for e in ENCOUNTERS:
        start, end = _us(e["period"]["start"]), _us(e["period"]["end"])
        reason = f"ICD10CM/{e['reasonCode'][0]['coding'][0]['code']}" if e.get("reasonCode") else None
        stay = Stay(e["id"], start, end, end, "IMP", None, None, None, reason, refs[e["id"]])
        assert evaluate(Record(events, encounters), stay)[col] == EXPECTED[e["id"]], e["id"]
    search = {"resourceType": "Bundle", "type": "searchset", "entry": [{"resource": r} for r in ENCOUNTERS]}
    conditions = {"resourceType": "Bundle", "type": "searchset", "entry": [{"resource": r} for r in CONDITIONS]}
    for eid, expected in EXPECTED.items():
        pre = collect({"patient": PATIENT, "encounters": orjson.dumps(search), "conditions": orjson.dumps(conditions)},
                      "p1")
        assert isinstance(pre.batch, Batch)
        feats = bedside_features(fs, pre, "p1", eid)
        assert feats.row is not None and feats.row[col] == expected, eid


HOUSING = "71802-3"  # LOINC housing status: answered with a LOINC answer code, or asked and declined


def _housing(oid: str, when: str, answer: str | None) -> dict:
    res = {"resourceType": "Observation", "id": oid, "status": "final", "subject": P, "effectiveDateTime": when,
           "code": {"coding": [{"system": "http://loinc.org", "code": HOUSING}]}}
    if answer:
        res["valueCodeableConcept"] = {"coding": [{"system": "http://loinc.org", "code": answer}]}
    else:
        res["dataAbsentReason"] = {"coding": [{"code": "asked-declined"}]}
    return res


def test_the_latest_answer_skips_a_question_left_unanswered_in_every_engine(tmp_path: Path):
    """DuckDB's max_by skipped the later unanswered screening, Spark's and the evaluator took its missing text: the
    three now read the latest answer given."""
    from tests.features.three_ways import features_three_ways, tiny_store

    enc = _enc("e1", "2023-05-01T10:00:00Z", "2023-05-05T10:00:00Z", [])
    obs = [_housing("h1", "2023-05-02T10:00:00Z", "LA31993-1"), _housing("h2", "2023-05-04T10:00:00Z", None),
           _housing("h3", "2023-05-06T10:00:00Z", "LA30190-5")]  # after the discharge: not read
    store = tiny_store(tmp_path, {"Patient": [PATIENT], "Encounter": [enc], "Observation": obs})
    fs = FeatureSet.model_validate({"name": "t", "description": "housing", "features": [
        {"name": "housing", "kind": "latest_text", "code": f"LOINC/{HOUSING}", "window": "all",
         "description": "Latest housing answer"}]})
    got = features_three_ways(store, fs, "e1", "p1", dt.datetime(2023, 5, 1, 10, tzinfo=dt.UTC),
                              dt.datetime(2023, 5, 5, 10, tzinfo=dt.UTC))
    assert {k: row["housing"] for k, row in got.items()} == {
        "duckdb": "LOINC/LA31993-1", "spark": "LOINC/LA31993-1", "evaluator": "LOINC/LA31993-1"}
