"""A record that says it was a mistake, or that the thing never happened (entered-in-error, cancelled, not-done,
refuted), is loaded but gives no events: it replaces an earlier version of itself, and no feature reads it."""

from __future__ import annotations

import orjson
import pytest

from careloop.ingest.mapping import VOID_STATUS, VOID_VERIFICATION, Batch, Context, decode, map_resource
from careloop.ingest.runner import ingest
from careloop.store import EventStore

PAT = {"reference": "Patient/p1"}
ENC = {"reference": "Encounter/e1"}
T = "2021-03-04T05:06:07Z"
CC = {"coding": [{"system": "http://snomed.info/sct", "code": "38341003"}]}
VERIFICATION = "http://terminology.hl7.org/CodeSystem/condition-ver-status"

# one valid resource of every type a status can void, with a status that records something real
REAL: dict[str, dict] = {
    "Encounter": {"resourceType": "Encounter", "id": "x", "status": "finished", "subject": PAT,
                  "class": {"code": "IMP"}, "period": {"start": T, "end": "2021-03-06T00:00:00Z"}},
    "Observation": {"resourceType": "Observation", "id": "x", "status": "final", "subject": PAT, "encounter": ENC,
                    "code": {"coding": [{"system": "http://loinc.org", "code": "2160-0"}]}, "effectiveDateTime": T,
                    "valueQuantity": {"value": 1.1, "code": "mg/dL"}},
    "MedicationRequest": {"resourceType": "MedicationRequest", "id": "x", "status": "active", "subject": PAT,
                          "medicationCodeableConcept": {"coding": [{"system": "http://www.nlm.nih.gov/research/umls/rxnorm",
                                                                    "code": "197361"}]},
                          "authoredOn": T},
    "Procedure": {"resourceType": "Procedure", "id": "x", "status": "completed", "subject": PAT, "code": CC,
                  "performedDateTime": T},
    "Immunization": {"resourceType": "Immunization", "id": "x", "status": "completed", "patient": PAT,
                     "vaccineCode": {"coding": [{"system": "http://hl7.org/fhir/sid/cvx", "code": "140"}]},
                     "occurrenceDateTime": T},
    "DocumentReference": {"resourceType": "DocumentReference", "id": "x", "status": "current", "subject": PAT,
                          "date": T},
    "Coverage": {"resourceType": "Coverage", "id": "x", "status": "active", "beneficiary": PAT,
                 "period": {"start": T}},
    "Condition": {"resourceType": "Condition", "id": "x", "subject": PAT, "code": CC, "recordedDate": T,
                  "verificationStatus": {"coding": [{"system": VERIFICATION, "code": "confirmed"}]}},
    "AllergyIntolerance": {"resourceType": "AllergyIntolerance", "id": "x", "patient": PAT, "code": CC,
                           "recordedDate": T,
                           "verificationStatus": {"coding": [{"system": VERIFICATION, "code": "confirmed"}]}},
}

VOIDED = [(t.__name__, s) for t, statuses in VOID_STATUS.items() for s in sorted(statuses)]
VOIDED += [(t, s) for t in ("Condition", "AllergyIntolerance") for s in sorted(VOID_VERIFICATION)]


def _with_status(rtype: str, status: str) -> dict:
    res = dict(REAL[rtype])
    if rtype in ("Condition", "AllergyIntolerance"):
        res["verificationStatus"] = {"coding": [{"system": VERIFICATION, "code": status}]}
    else:
        res["status"] = status
    return res


def _map(res: dict) -> Batch:
    b = Batch()
    map_resource(decode(orjson.dumps(res)), Context(), b)
    return b


def test_every_type_with_a_void_status_has_a_case_here():
    assert {t.__name__ for t in VOID_STATUS} | {"Condition", "AllergyIntolerance"} == set(REAL)


@pytest.mark.parametrize("rtype", sorted(REAL))
def test_a_real_status_gives_events(rtype: str):
    b = _map(REAL[rtype])
    assert b.ev and not b.void


@pytest.mark.parametrize(("rtype", "status"), VOIDED)
def test_a_void_status_gives_no_events_and_is_counted(rtype: str, status: str):
    b = _map(_with_status(rtype, status))
    assert b.ev == [] and not b.enc["encounter_id"] and not b.notes["note_id"]
    assert b.void == {f"{rtype} {status}": 1}


@pytest.mark.parametrize(("rtype", "status"), [("Observation", "preliminary"), ("Observation", "amended"),
                                               ("Observation", "corrected"), ("MedicationRequest", "stopped"),
                                               ("Encounter", "in-progress"), ("DocumentReference", "superseded"),
                                               ("Condition", "unconfirmed"), ("Condition", "provisional")])
def test_statuses_that_record_something_real_keep_their_events(rtype: str, status: str):
    b = _map(_with_status(rtype, status))
    assert b.ev and not b.void


def _ndjson(folder, *resources: dict) -> None:
    folder.mkdir()
    (folder / "export.ndjson").write_bytes(b"".join(orjson.dumps(r) + b"\n" for r in resources))


def test_a_result_withdrawn_later_leaves_the_store_and_the_report_says_why(tmp_path):
    """Run 1 loads a creatinine as final; run 2 receives the same result marked entered-in-error (what a feed
    sends when a result is withdrawn): its events are gone, the resource stays once, and the report counts it."""
    patient = {"resourceType": "Patient", "id": "p1", "gender": "female", "birthDate": "1950-02-03"}
    final = {k: v for k, v in REAL["Observation"].items() if k != "encounter"} | {"id": "cr1"}
    store = tmp_path / "store"
    _ndjson(tmp_path / "run1", patient, final)
    ingest([tmp_path / "run1"], store, workers=1)
    con = EventStore.open(store).connect()
    assert con.execute("SELECT numeric_value FROM events WHERE source_id = 'cr1'").fetchall() == [(1.1,)]
    con.close()

    withdrawn = {**final, "status": "entered-in-error", "valueQuantity": {"value": 11.0, "code": "mg/dL"}}
    _ndjson(tmp_path / "run2", withdrawn)
    report = ingest([tmp_path / "run2"], store, workers=1).to_json()
    assert report["reconciled"] and report["loaded"] == 1
    assert report["reasons"]["loaded without events: Observation entered-in-error"] == 1
    assert report["reasons"]["loaded: update replacing an earlier version (same Type/id, new content)"] == 1
    con = EventStore.open(store).connect()
    assert con.execute("SELECT count(*) FROM events WHERE source_id = 'cr1'").fetchone() == (0,)
    assert con.execute("SELECT count(*) FROM resources WHERE resource_key = 'Observation/cr1'").fetchone() == (1,)
    assert con.execute("SELECT count(*) FROM events WHERE source_id = 'p1'").fetchone()[0] > 0  # the rest stays


def test_a_cancelled_encounter_is_not_a_stay(tmp_path):
    patient = {"resourceType": "Patient", "id": "p1", "gender": "male", "birthDate": "1950-02-03"}
    _ndjson(tmp_path / "x", patient, {**REAL["Encounter"], "id": "e1"},
            {**REAL["Encounter"], "id": "e2", "status": "cancelled"})
    ingest([tmp_path / "x"], tmp_path / "store", workers=1)
    con = EventStore.open(tmp_path / "store").connect()
    assert con.execute("SELECT encounter_id FROM encounters").fetchall() == [("e1",)]
    assert con.execute("SELECT count(*) FROM events WHERE source_id = 'e2'").fetchone() == (0,)


def test_the_synthetic_feed_withdraws_some_results_and_none_reaches_the_events(hospital, hospital_store, resources):
    """The synthetic hospital sends about 0.5% of inpatient lab results twice: right, and withdrawn with a
    decimal slip (status entered-in-error). Each withdrawn one is counted, and not one gives an event."""
    import uuid

    from careloop.synth.fhir import ENTERED_IN_ERROR

    obs = resources("Observation")
    withdrawn = [o for o in obs if o["status"] == "entered-in-error"]
    twins = {str(uuid.uuid5(uuid.NAMESPACE_URL, o["id"])): o for o in obs if o["status"] == "final"}
    labs = sum(1 for o in obs if o["status"] == "final" and o["category"][0]["coding"][0]["code"] == "laboratory"
               and "issued" in o)
    assert 0.5 * ENTERED_IN_ERROR * labs < len(withdrawn) < 2 * ENTERED_IN_ERROR * labs
    for w in withdrawn:
        right = twins[w["id"]]  # the right result it shadows: same test, patient, stay and time, ten times the value
        assert (w["code"], w["subject"], w["encounter"], w["effectiveDateTime"]) == (
            right["code"], right["subject"], right["encounter"], right["effectiveDateTime"])
        assert w["valueQuantity"]["value"] == pytest.approx(10 * right["valueQuantity"]["value"], rel=0.06, abs=0.6)
    store, report = hospital_store
    assert report.reasons["loaded without events: Observation entered-in-error"] == len(withdrawn)
    con = EventStore.open(store).connect()
    con.execute("CREATE TEMP TABLE w AS SELECT unnest(?) AS id", [[w["id"] for w in withdrawn]])
    assert con.execute("SELECT count(*) FROM events JOIN w ON source_id = w.id").fetchone() == (0,)
    assert con.execute("SELECT count(*) FROM resources JOIN w ON resource_key = 'Observation/' || w.id"
                       ).fetchone() == (len(withdrawn),)
