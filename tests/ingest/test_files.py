"""Input files as other systems write them: one resource per .json file (an Encounter's, a Coverage's or a
DocumentReference's own `type` is not a Bundle's), a Bundle with one malformed entry (only that entry is
quarantined), a UTF-8 byte order mark at the start of a file."""

from __future__ import annotations

import base64
from pathlib import Path

import duckdb
import orjson
import pytest

from careloop.ingest.runner import ingest
from careloop.store import EventStore

P = {"reference": "Patient/p1"}
PATIENT = {"resourceType": "Patient", "id": "p1", "gender": "female", "birthDate": "1950-02-03"}
ENCOUNTER = {"resourceType": "Encounter", "id": "e1", "status": "finished", "subject": P,
             "class": {"system": "http://terminology.hl7.org/CodeSystem/v3-ActCode", "code": "IMP"},
             "type": [{"coding": [{"system": "http://snomed.info/sct", "code": "32485007"}]}],
             "period": {"start": "2023-05-01T10:00:00Z", "end": "2023-05-03T10:00:00Z"}}
COVERAGE = {"resourceType": "Coverage", "id": "cv1", "status": "active", "beneficiary": P,
            "type": {"coding": [{"system": "https://nahdo.org/sopt", "code": "1"}]}, "period": {"start": "2020-01-01"}}
NOTE = {"resourceType": "DocumentReference", "id": "d1", "status": "current", "subject": P,
        "type": {"coding": [{"system": "http://loinc.org", "code": "18842-5"}]}, "date": "2023-05-03T10:00:00Z",
        "content": [{"attachment": {"contentType": "text/plain", "data": base64.b64encode(b"Home.").decode()}}]}


def _obs(i: int) -> dict:
    return {"resourceType": "Observation", "id": f"o{i}", "status": "final", "subject": {"reference": "urn:uuid:p1"},
            "code": {"coding": [{"system": "http://loinc.org", "code": "2951-2"}]},
            "effectiveDateTime": "2023-05-01T10:00:00Z", "valueQuantity": {"value": 140 + i}}


def _run(folder: Path, tmp_path: Path) -> tuple[dict, duckdb.DuckDBPyConnection]:
    report = ingest([folder], tmp_path / "store", workers=1).to_json()
    return report, EventStore.open(tmp_path / "store").connect()


def test_single_resource_json_files_load(tmp_path):
    folder = tmp_path / "in"
    folder.mkdir()
    for name, res in (("patient.json", PATIENT), ("encounter.json", ENCOUNTER), ("coverage.json", COVERAGE),
                      ("note.json", NOTE)):
        (folder / name).write_bytes(orjson.dumps(res, option=orjson.OPT_INDENT_2))
    report, con = _run(folder, tmp_path)
    assert report["reconciled"] and report["quarantined"] == 0
    assert report["by_type"] == {t: {"input": 1, "loaded": 1, "quarantined": 0, "skipped": 0}
                                 for t in ("Coverage", "DocumentReference", "Encounter", "Patient")}
    assert con.execute("SELECT encounter_id, type_code FROM encounters").fetchall() == [("e1", "SNOMED/32485007")]
    assert con.execute("SELECT code FROM events WHERE source_resource = 'Coverage'").fetchall() == [("SOPT/1",)]
    assert con.execute("SELECT text FROM notes").fetchall() == [("Home.",)]


def test_a_malformed_bundle_entry_is_quarantined_alone(tmp_path):
    folder = tmp_path / "in"
    folder.mkdir()
    entries = [{"fullUrl": "urn:uuid:p1", "resource": PATIENT, "request": {"method": "PUT", "url": "Patient/p1"}}]
    entries += [{"fullUrl": f"urn:uuid:o{i}", "resource": _obs(i)} for i in range(4)]
    entries[2]["fullUrl"] = 12345  # o1
    entries[4]["request"] = "POST"  # o3
    (folder / "b.json").write_bytes(orjson.dumps({"resourceType": "Bundle", "type": "transaction", "entry": entries}))
    report, con = _run(folder, tmp_path)
    assert report["reconciled"]
    assert report["by_type"]["Observation"] == {"input": 4, "loaded": 2, "quarantined": 2, "skipped": 0}
    assert report["by_type"]["Patient"]["loaded"] == 1
    rows = con.execute("SELECT source, resource_type, resource_id, reason, raw FROM quarantine ORDER BY source")\
        .fetchall()
    assert [r[:4] for r in rows] == [(f"{folder / 'b.json'}#entry[2]", "Observation", "o1", "invalid value"),
                                     (f"{folder / 'b.json'}#entry[4]", "Observation", "o3", "invalid value")]
    assert orjson.loads(rows[0][4])["fullUrl"] == 12345
    events = con.execute("SELECT source_id, numeric_value FROM events WHERE code = 'LOINC/2951-2' ORDER BY 1")
    assert events.fetchall() == [("o0", 140.0), ("o2", 142.0)]


def test_a_bundle_whose_entry_is_not_a_list_is_quarantined_as_an_invalid_value(tmp_path):
    folder = tmp_path / "in"
    folder.mkdir()
    (folder / "b.json").write_bytes(orjson.dumps({"resourceType": "Bundle", "type": "collection",
                                                  "entry": {"resource": PATIENT}}))
    (folder / "c.json").write_bytes(b'{"resourceType": "Bundle", "entry": [')
    report, con = _run(folder, tmp_path)
    assert report["reconciled"] and report["quarantined"] == 2 and report["loaded"] == 0
    assert sorted(con.execute("SELECT reason FROM quarantine").fetchall()) == [("invalid value",),
                                                                                ("unparseable JSON",)]


@pytest.mark.parametrize("gz", [False, True])
def test_a_byte_order_mark_at_the_start_of_a_file_is_not_part_of_its_first_resource(tmp_path, gz):
    import gzip

    folder = tmp_path / "in"
    folder.mkdir()
    text = b"\xef\xbb\xbf" + b"".join(orjson.dumps(r) + b"\n" for r in (PATIENT, ENCOUNTER))
    name = "Patient.ndjson.gz" if gz else "Patient.ndjson"
    (folder / name).write_bytes(gzip.compress(text) if gz else text)
    (folder / "coverage.json").write_bytes(b"\xef\xbb\xbf" + orjson.dumps(COVERAGE))
    report, con = _run(folder, tmp_path)
    assert report["reconciled"] and report["quarantined"] == 0 and report["loaded"] == 3
    assert con.execute("SELECT patient_id FROM patients").fetchall() == [("p1",)]
    where = con.execute("SELECT source, line FROM resources WHERE resource_key = 'Encounter/e1'").fetchall()
    assert where == [(name, 2)]


def test_jsonl_files_are_read_and_files_of_other_names_are_listed_as_not_read(tmp_path, caplog):
    import gzip
    import logging

    folder = tmp_path / "in"
    (folder / "sub").mkdir(parents=True)
    (folder / "Encounter.jsonl").write_bytes(orjson.dumps(ENCOUNTER) + b"\n")
    (folder / "sub" / "Coverage.jsonl.gz").write_bytes(gzip.compress(orjson.dumps(COVERAGE) + b"\n"))
    (folder / "Patient").write_bytes(orjson.dumps(PATIENT) + b"\n")  # no extension: not read, but said so
    (folder / "notes.txt").write_text("hello")
    (folder / "manifest.json").write_bytes(b"{}")  # a Bulk export's manifest, not input
    (folder / "log.ndjson").write_bytes(b"{}\n")  # its server log
    with caplog.at_level(logging.WARNING, logger="careloop.ingest.runner"):
        report, _ = _run(folder, tmp_path)
    assert report["reconciled"] and report["loaded"] == 2
    assert set(report["by_type"]) == {"Encounter", "Coverage"}
    assert report["skipped_files"] == [str(folder / "Patient"), str(folder / "notes.txt")]
    assert sum("Patient" in r.getMessage() for r in caplog.records) == 1
    one = ingest([folder / "Encounter.jsonl"], tmp_path / "store2", workers=1).to_json()  # a file named alone
    assert one["loaded"] == 1 and one["quarantined"] == 0 and one["skipped_files"] == []
