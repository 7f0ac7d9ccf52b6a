"""Ingest over REST from a real FHIR server (Medplum, tests/fhir_server) reads a MedicationRequest's drug from the
Medication it references: the search asks for it with `_include=MedicationRequest:medication`, so it arrives on the
same page, whichever order the server lists types and patients in."""

from __future__ import annotations

import pytest

from careloop.ingest.runner import ingest
from careloop.store import EventStore
from tests.fhir_server.harness import run_fhir_server

TOKEN = "static-test-token-med"
RXNORM = "http://www.nlm.nih.gov/research/umls/rxnorm"


def _transaction() -> dict:
    def post(rtype: str, full: str, res: dict) -> dict:
        return {"fullUrl": full, "resource": {"resourceType": rtype, **res},
                "request": {"method": "POST", "url": rtype}}

    pat = "urn:uuid:6a1c7e38-70a7-4a5e-8f7c-6a0d1f4f0a01"
    meds = [post("Medication", f"urn:uuid:6a1c7e38-70a7-4a5e-8f7c-6a0d1f4f0b0{i}",
                 {"code": {"coding": [{"system": RXNORM, "code": code}]}})
            for i, code in enumerate(("197361", "310429"))]
    requests = [post("MedicationRequest", f"urn:uuid:6a1c7e38-70a7-4a5e-8f7c-6a0d1f4f0c0{i}",
                     {"status": "active", "intent": "order", "subject": {"reference": pat},
                      "authoredOn": f"2023-05-0{i + 1}T10:00:00Z", "medicationReference": {"reference": m["fullUrl"]}})
                for i, m in enumerate(meds)]
    patient = post("Patient", pat, {"gender": "female", "birthDate": "1950-02-03"})
    return {"resourceType": "Bundle", "type": "transaction", "entry": [patient, *meds, *requests]}


@pytest.mark.parametrize("per_patient", [False, True])
def test_rest_ingest_reads_the_codes_of_referenced_medications(tmp_path, per_patient):
    with run_fhir_server(static_token=TOKEN) as server:
        result = server.load_bundle(_transaction())
        pid = next(e["response"]["location"].split("/")[1] for e in result["entry"]
                   if e["response"]["location"].startswith("Patient/"))
        options = {"token": TOKEN, "types": ("Patient", "MedicationRequest"), "backoff": 0.01,
                   **({"patients": (pid,)} if per_patient else {})}
        report = ingest([server.base_url], tmp_path / "store", workers=2, rest_options=options).to_json()
    assert report["reconciled"] and report["quarantined"] == 0, report["reasons"]
    assert report["by_type"]["MedicationRequest"]["loaded"] == 2
    assert report["by_type"]["Medication"]["input"] == 2  # brought along by the include, not asked for as a type
    con = EventStore.open(tmp_path / "store").connect()
    assert con.execute("SELECT time::DATE::VARCHAR, code FROM events WHERE source_resource = 'MedicationRequest' "
                       "ORDER BY time").fetchall() == [("2023-05-01", "RXNORM/197361"), ("2023-05-02", "RXNORM/310429")]
