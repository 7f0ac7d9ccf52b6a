"""Nothing lost: every bad resource is quarantined with its reason and raw text; the rest of the file loads."""

from __future__ import annotations

import gzip
import json
from pathlib import Path

import orjson
import pytest

from careloop.ingest.runner import ingest
from careloop.store import EventStore

PATIENT = {"resourceType": "Patient", "id": "p1", "gender": "female", "birthDate": "1950-02-03"}


def _obs(i: int, **over) -> dict:
    o = {"resourceType": "Observation", "id": f"o{i}", "status": "final",
         "code": {"coding": [{"system": "http://loinc.org", "code": "2951-2"}]},
         "subject": {"reference": "Patient/p1"}, "effectiveDateTime": "2021-03-04T05:06:07Z",
         "valueQuantity": {"value": 140, "unit": "mmol/L", "code": "mmol/L"}}
    o.update(over)
    return {k: v for k, v in o.items() if v is not None}


BAD = [  # (line, reason)
    (b'{"resourceType": "Observation", "id": "broken", ', "unparseable JSON"),
    (b'["not", "a", "resource"]', "not a FHIR resource"),
    (b'{"id": "no-type"}', "not a FHIR resource"),
    (orjson.dumps(_obs(0, id=None)), "missing id"),
    (orjson.dumps(_obs(1, subject=None)), "missing subject"),
    (orjson.dumps(_obs(2, subject={"reference": "Patient?identifier=x|y"})), "unresolvable reference"),
    (orjson.dumps(_obs(3, subject={"reference": "Group/g1"})), "unresolvable reference"),
    (orjson.dumps(_obs(4, effectiveDateTime="2021-02-30T10:00:00Z")), "impossible date"),
    (orjson.dumps(_obs(5, effectiveDateTime="1066-10-14")), "impossible date"),
    (orjson.dumps(_obs(6, effectiveDateTime=None)), "missing time"),
    (orjson.dumps(_obs(7, code={"coding": [{"system": "http://example.org/local", "code": "NA"}]})),
     "unknown code system for a required field"),
    (orjson.dumps(_obs(8, valueQuantity={"value": "140", "unit": "mmol/L"})), "invalid value"),
    (orjson.dumps(_obs(9, valueQuantity={"value": 140, "comparator": "~", "unit": "mmol/L"})), "invalid value"),
    (orjson.dumps({"resourceType": "Encounter", "id": "e1", "subject": {"reference": "Patient/p1"},
                   "period": {"start": "2021-03-05T00:00:00Z", "end": "2021-03-04T00:00:00Z"}}), "impossible date"),
    (orjson.dumps({"resourceType": "Patient", "id": "p2", "birthDate": "2000-01-01",
                   "deceasedDateTime": "1999-01-01"}), "impossible date"),
]


def test_every_declared_reason_has_a_case_here():
    from careloop.ingest.mapping import REASONS

    assert {reason for _, reason in BAD} == set(REASONS)


@pytest.fixture
def bad_export(tmp_path: Path) -> Path:
    folder = tmp_path / "export"
    folder.mkdir()
    lines = [orjson.dumps(PATIENT)]
    for i, (line, _) in enumerate(BAD):
        lines.append(line)
        lines.append(orjson.dumps(_obs(100 + i)))  # a good resource after every bad one
    (folder / "Mixed.ndjson.gz").write_bytes(gzip.compress(b"\n".join(lines) + b"\n"))
    (folder / "Claim.ndjson").write_bytes(orjson.dumps({"resourceType": "Claim", "id": "c1"}) + b"\n")
    return folder


def test_every_quarantine_reason_is_counted_with_its_raw_text(bad_export: Path, tmp_path: Path):
    report = ingest([bad_export], tmp_path / "store", workers=1)
    d = report.to_json()
    assert d["reconciled"]
    assert d["input"] == 1 + 2 * len(BAD) + 1
    assert d["quarantined"] == len(BAD)
    assert d["loaded"] == 1 + len(BAD)  # the patient and every good observation after a bad line
    assert d["skipped"] == 1 and report.by_type["Claim"]["skipped"] == 1
    con = EventStore.open(tmp_path / "store").connect()
    rows = con.execute("SELECT source, reason, raw, detail FROM quarantine ORDER BY source").fetchall()
    assert len(rows) == len(BAD)
    by_line = {int(src.rsplit(":", 1)[1]): (reason, raw, detail) for src, reason, raw, detail in rows}
    for i, (line, reason) in enumerate(BAD):
        got_reason, raw, detail = by_line[2 + 2 * i]  # line numbers are 1-based, the patient is line 1
        assert got_reason == reason, (line, got_reason, detail)
        assert raw == line.decode()  # nothing lost: the resource exactly as received
        assert detail
    reasons = {k.removeprefix("quarantined: "): v for k, v in d["reasons"].items() if k.startswith("quarantined")}
    assert sum(reasons.values()) == len(BAD)
    assert con.execute("SELECT count(*) FROM events WHERE source_resource = 'Observation'").fetchone()[0] == len(BAD)


def test_a_rejected_resource_leaves_no_partial_rows(tmp_path: Path):
    """A blood-pressure panel whose second component is bad must not leave its first component behind."""
    folder = tmp_path / "x"
    folder.mkdir()
    bp = _obs(1, code={"coding": [{"system": "http://loinc.org", "code": "85354-9"}]}, valueQuantity=None,
              component=[{"code": {"coding": [{"system": "http://loinc.org", "code": "8480-6"}]},
                          "valueQuantity": {"value": 120, "code": "mm[Hg]"}},
                         {"code": {"coding": [{"system": "urn:local", "code": "dia"}]},
                          "valueQuantity": {"value": 80, "code": "mm[Hg]"}}])
    (folder / "Observation.ndjson").write_bytes(orjson.dumps(PATIENT) + b"\n" + orjson.dumps(bp) + b"\n")
    report = ingest([folder], tmp_path / "store", workers=1)
    assert report.total("quarantined") == 1
    con = EventStore.open(tmp_path / "store").connect()
    assert con.execute("SELECT count(*) FROM events WHERE source_resource = 'Observation'").fetchone()[0] == 0


def test_bad_bundle_files_and_entries_are_quarantined(tmp_path: Path):
    folder = tmp_path / "bundles"
    folder.mkdir()
    (folder / "broken.json").write_text('{"resourceType": "Bundle", "entry": [')
    (folder / "notgzip.json.gz").write_bytes(b"this is not gzip")
    bundle = {"resourceType": "Bundle", "type": "collection", "entry": [
        {"fullUrl": "urn:uuid:aaa", "resource": {"resourceType": "Patient", "id": "aaa", "birthDate": "1970-01-01"}},
        {"fullUrl": "urn:uuid:bbb", "resource": _obs(1, subject={"reference": "urn:uuid:aaa"})},
        {"fullUrl": "urn:uuid:ccc", "resource": _obs(2, subject={"reference": "urn:uuid:missing"})},
        {"request": {"method": "DELETE", "url": "Observation/o9"}},
        {"fullUrl": "urn:uuid:ddd"},
    ]}
    (folder / "good.json").write_text(json.dumps(bundle))
    report = ingest([folder], tmp_path / "store", workers=1)
    d = report.to_json()
    assert d["reconciled"]
    assert d["loaded"] == 2
    assert d["skipped"] == 1  # the DELETE entry
    assert d["quarantined"] == 4  # broken file, bad gzip, unresolvable urn:uuid, entry without resource
    reasons = {k: v for k, v in d["reasons"].items()}
    assert reasons["quarantined: unparseable JSON"] == 2
    assert reasons["quarantined: unresolvable reference"] == 1
