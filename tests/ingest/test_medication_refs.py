"""A MedicationRequest that names its drug by `medicationReference` (as Epic's FHIR API and Bulk exports do) reads
the code of that Medication: contained in the request, in the same Bundle (a transaction, or a search page with
`_include=MedicationRequest:medication`), in another file of a Bulk export, or loaded into the store by an earlier
run. Ingest and the bedside read the same codes; a reference that resolves to nothing is quarantined, saying so."""

from __future__ import annotations

from pathlib import Path

import orjson
import pytest

from careloop.ingest import rest
from careloop.ingest.runner import ingest, store_medications
from careloop.serve.features import PREFETCH, collect
from careloop.store import EventStore

RXNORM = "http://www.nlm.nih.gov/research/umls/rxnorm"
NDC = "http://hl7.org/fhir/sid/ndc"
P = {"reference": "Patient/p1"}
PATIENT = {"resourceType": "Patient", "id": "p1", "gender": "female", "birthDate": "1950-02-03"}


def _med(mid: str, *codings: tuple[str, str], text: str | None = None) -> dict:
    code: dict = {"coding": [{"system": s, "code": c} for s, c in codings]}
    if text:
        code["text"] = text
    return {"resourceType": "Medication", "id": mid, "code": code}


def _mr(rid: str, ref: str) -> dict:
    return {"resourceType": "MedicationRequest", "id": rid, "status": "active", "intent": "order", "subject": P,
            "authoredOn": "2023-05-02T10:00:00Z", "medicationReference": {"reference": ref}}


AMLODIPINE = _med("med-aml", (NDC, "0093-0058-01"), (RXNORM, "197361"), text="amlodipine 5 mg tablet")
FUROSEMIDE = _med("med-fur", (RXNORM, "310429"))
FORMULARY_ONLY = _med("med-local", ("http://example.org/formulary", "A1"))


def _ndjson(path: Path, resources: list[dict]) -> None:
    path.write_bytes(b"".join(orjson.dumps(r) + b"\n" for r in resources))


def _med_events(store: Path) -> list[tuple[str, str]]:
    con = EventStore.open(store).connect()
    return sorted(con.execute("SELECT source_id, code FROM events WHERE source_resource = 'MedicationRequest'")
                  .fetchall())


def _quarantined(store: Path) -> list[tuple[str, str, str]]:
    con = EventStore.open(store).connect()
    return sorted(con.execute("SELECT resource_type, resource_id, reason FROM quarantine").fetchall())


@pytest.mark.parametrize("workers", [1, 2])
def test_a_bulk_export_resolves_references_to_its_medication_file(tmp_path, workers):
    """The Medication file sorts after the requests' (and is in another folder): it is still read first."""
    src = tmp_path / "export"
    (src / "a").mkdir(parents=True)
    (src / "z").mkdir()
    _ndjson(src / "a" / "Patient.ndjson", [PATIENT])
    _ndjson(src / "a" / "MedicationRequest.ndjson", [
        _mr("r1", "Medication/med-aml"), _mr("r2", "Medication/med-fur"),
        _mr("r3", "https://ehr.example.org/fhir/R4/Medication/med-fur/_history/2"),  # absolute and versioned
        _mr("r4", "Medication/med-local"), _mr("r5", "Medication/nowhere")])
    _ndjson(src / "z" / "Medication.ndjson", [AMLODIPINE, FUROSEMIDE, FORMULARY_ONLY])
    report = ingest([src], tmp_path / "store", workers=workers).to_json()
    assert report["reconciled"]
    assert report["by_type"]["Medication"] == {"input": 3, "loaded": 3, "quarantined": 0, "skipped": 0}
    assert report["by_type"]["MedicationRequest"] == {"input": 5, "loaded": 3, "quarantined": 2, "skipped": 0}
    assert _med_events(tmp_path / "store") == [("r1", "NDC/0093-0058-01"), ("r1", "RXNORM/197361"),
                                               ("r2", "RXNORM/310429"), ("r3", "RXNORM/310429")]
    assert _quarantined(tmp_path / "store") == [
        ("MedicationRequest", "r4", "unknown code system for a required field"),
        ("MedicationRequest", "r5", "unresolvable reference")]
    con = EventStore.open(tmp_path / "store").connect()
    assert con.execute("SELECT resource_id, name, code FROM directory WHERE resource_type = 'Medication' "
                       "ORDER BY ALL").fetchall() == [
        ("med-aml", "amlodipine 5 mg tablet", "NDC/0093-0058-01"),
        ("med-aml", "amlodipine 5 mg tablet", "RXNORM/197361"),
        ("med-fur", None, "RXNORM/310429"), ("med-local", None, None)]


def test_a_later_run_resolves_against_medications_already_in_the_store(tmp_path):
    """An incremental export (`_since`) brings new requests but not the unchanged Medications they name."""
    first, second = tmp_path / "first", tmp_path / "second"
    first.mkdir()
    second.mkdir()
    _ndjson(first / "Patient.ndjson", [PATIENT])
    _ndjson(first / "Medication.ndjson", [AMLODIPINE])
    _ndjson(second / "MedicationRequest.ndjson", [_mr("r9", "Medication/med-aml")])
    store = tmp_path / "store"
    ingest([first], store, workers=1)
    report = ingest([second], store, workers=2).to_json()
    assert report["quarantined"] == 0
    assert _med_events(store) == [("r9", "NDC/0093-0058-01"), ("r9", "RXNORM/197361")]
    # and a re-run of both changes nothing (already ingested)
    again = ingest([first, second], store, workers=2).to_json()
    assert again["loaded"] == 0 and again["quarantined"] == 0
    assert _med_events(store) == [("r9", "NDC/0093-0058-01"), ("r9", "RXNORM/197361")]


def test_a_medication_updated_in_a_later_run_is_read_in_its_newest_version(tmp_path):
    first, second, third = (tmp_path / n for n in ("first", "second", "third"))
    for d in (first, second, third):
        d.mkdir()
    _ndjson(first / "Medication.ndjson", [AMLODIPINE])
    _ndjson(second / "Medication.ndjson", [_med("med-aml", (RXNORM, "308135"))])  # recoded (10 mg)
    _ndjson(third / "MedicationRequest.ndjson", [PATIENT, _mr("r1", "Medication/med-aml")])
    store = tmp_path / "store"
    ingest([first], store, workers=1)
    ingest([second], store, workers=1)
    assert store_medications(EventStore.open(store)) == {"med-aml": ("RXNORM/308135",)}
    ingest([third], store, workers=1)
    assert _med_events(store) == [("r1", "RXNORM/308135")]


def test_a_bundle_resolves_references_to_its_own_medications(tmp_path):
    """A transaction Bundle names its Medication by fullUrl (urn:uuid) or Type/id; the Medication may come after."""
    entries = [
        {"fullUrl": "urn:uuid:p1", "resource": PATIENT},
        {"fullUrl": "urn:uuid:r1", "resource": _mr("r1", "urn:uuid:0b1e5f3a-3c1c-4a0e-9a8e-6a6f5f2b9c01")},
        {"fullUrl": "urn:uuid:r2", "resource": _mr("r2", "Medication/med-fur")},
        {"fullUrl": "urn:uuid:0b1e5f3a-3c1c-4a0e-9a8e-6a6f5f2b9c01",
         "resource": {k: v for k, v in AMLODIPINE.items() if k != "id"}},  # known only by its fullUrl
        {"fullUrl": "https://ehr.example.org/fhir/Medication/med-fur", "resource": FUROSEMIDE},
    ]
    src = tmp_path / "in"
    src.mkdir()
    (src / "bundle.json").write_bytes(orjson.dumps({"resourceType": "Bundle", "type": "transaction",
                                                    "entry": entries}))
    report = ingest([src], tmp_path / "store", workers=1).to_json()
    assert report["quarantined"] == 0, _quarantined(tmp_path / "store")
    assert _med_events(tmp_path / "store") == [("r1", "NDC/0093-0058-01"), ("r1", "RXNORM/197361"),
                                               ("r2", "RXNORM/310429")]


def test_the_bedside_reads_included_medications_as_ingest_does(tmp_path):
    """The prefetch template asks for the Medications the requests name (`_include`); the codes read from the
    search Bundle are those ingest read from the Bulk export, and a request naming none is set aside alike."""
    assert PREFETCH["medications"].endswith("&_include=MedicationRequest:medication")
    requests = [_mr("r1", "Medication/med-aml"), _mr("r2", "Medication/med-fur"), _mr("r5", "Medication/nowhere")]
    src = tmp_path / "export"
    src.mkdir()
    _ndjson(src / "Patient.ndjson", [PATIENT])
    _ndjson(src / "MedicationRequest.ndjson", requests)
    _ndjson(src / "Medication.ndjson", [AMLODIPINE, FUROSEMIDE])
    ingest([src], tmp_path / "store", workers=1)
    search = {"resourceType": "Bundle", "type": "searchset", "total": 3, "entry": [
        *({"resource": r, "search": {"mode": "match"}} for r in requests),
        *({"resource": m, "search": {"mode": "include"}} for m in (AMLODIPINE, FUROSEMIDE))]}
    for value in (search, orjson.dumps(search)):  # parsed JSON, and the service's undecoded fast path
        pre = collect({"patient": PATIENT, "medications": value}, "p1")
        assert not pre.partial
        bedside = sorted((e[10], e[2]) for e in pre.batch.ev if e[9] == "MedicationRequest")
        assert bedside == _med_events(tmp_path / "store")
        assert pre.rejected == ["MedicationRequest: unresolvable reference"]


def test_rest_searches_ask_for_the_medications_their_requests_name():
    src = rest.RestSource(base_url="https://fhir.example.org/R4", types=("Patient", "MedicationRequest", "Medication"),
                          patients=("p1",))
    searches = list(rest._searches(src))
    query = {"patient": "p1", "_count": str(src.page_size), "_include": "MedicationRequest:medication"}
    assert ("MedicationRequest", query, "MedicationRequest?patient=p1") in searches
    assert all("_include" not in q for t, q, _ in searches if t != "MedicationRequest")
