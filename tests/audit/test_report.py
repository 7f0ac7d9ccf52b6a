"""The audit report (ONC (d)(3)): a time range, a patient, sorted by each recorded field; FHIR Bundle export."""

from __future__ import annotations

from datetime import timedelta

import pytest
from fhir.resources.R4B.bundle import Bundle

from careloop.audit import AuditError, AuditLog
from careloop.audit.log import SORT_FIELDS
from careloop.state import canonical_json
from tests.audit.helpers import T0, make_events

EVENTS = make_events(60)


@pytest.fixture
def log(db_url):
    log = AuditLog.open(db_url)
    log.append_many(EVENTS[30:] + EVENTS[:30])  # recorded order differs from seq order
    yield log
    log.close()


def test_time_range_and_patient(log):
    start, end = T0 + timedelta(seconds=10), T0 + timedelta(seconds=20)
    recs = log.records(start, end)
    assert sorted(r["recorded"] for r in recs) == [T0 + timedelta(seconds=s) for s in range(10, 20)]  # [start, end)
    assert log.records(start=T0 + timedelta(seconds=55)) and all(
        r["recorded"] >= T0 + timedelta(seconds=55) for r in log.records(start=T0 + timedelta(seconds=55)))
    assert len(log.records(end=T0 + timedelta(seconds=5))) == 5
    p3 = log.records(patient="p3")
    assert len(p3) == 6 and {r["patient"] for r in p3} == {"p3"}
    assert log.records(patient="Patient/p3") == p3
    assert len(log.records(start, end, patient="p3")) == 1
    assert log.records(patient="nobody") == []
    assert {r["kind"] for r in log.records(kind="feedback")} == {"feedback"}
    assert len(log.records(client="https://ehr0.example/iss")) == 20
    assert len(log.records(limit=7)) == 7


def _expected_order(recs: list[dict], field: str, descending: bool) -> list[int]:
    def key(r):
        v = r[field]
        return canonical_json(v) if isinstance(v, list | dict) else v

    present = sorted((r for r in recs if r[field] is not None), key=lambda r: r["seq"])
    present.sort(key=key, reverse=descending)
    return [r["seq"] for r in present] + [r["seq"] for r in sorted(recs, key=lambda r: r["seq"])
                                          if r[field] is None]


def test_sortable_by_each_field(log):
    recs = log.records()
    for field in SORT_FIELDS:
        for descending in (False, True):
            got = log.records(sort=("-" if descending else "") + field)
            assert [r["seq"] for r in got] == _expected_order(recs, field, descending), field
            values = [r[field] for r in got if r[field] is not None]
            if values and not isinstance(values[0], list | dict):
                assert values == sorted(values, reverse=descending), field
    by_time = log.records(sort="recorded")
    assert [r["seq"] for r in by_time[:3]] == [31, 32, 33]  # appended after the later half
    assert log.records(sort="-score")[0]["seq"] == next(r["seq"] for r in recs if r["score"] == 0.99)


def test_unknown_sort_field(log):
    with pytest.raises(AuditError, match="sort"):
        log.records(sort="name")


def test_export_bundle_round_trip(log):
    bundle = log.export_bundle(T0, T0 + timedelta(seconds=30), sort="recorded")
    Bundle.model_validate(bundle)  # a valid FHIR R4(B) Bundle of AuditEvents
    assert bundle["resourceType"] == "Bundle" and bundle["type"] == "collection"
    assert bundle["timestamp"].endswith("Z")
    assert len(bundle["entry"]) == 30
    resources = [e["resource"] for e in bundle["entry"]]
    assert all(r["resourceType"] == "AuditEvent" for r in resources)
    assert [r["id"] for r in resources] == [f"audit-{s}" for s in range(31, 61)]
    assert len({e["fullUrl"] for e in bundle["entry"]}) == 30
    assert resources[0]["recorded"] == EVENTS[0]["recorded"]
    assert AuditLog.verify_bundle(bundle).ok

    whole = log.export_bundle()
    assert AuditLog.verify_bundle(whole) == AuditLog.verify_bundle(whole).__class__(True, 60)
    patient = log.export_bundle(patient="p1")  # gaps between seqs are fine
    assert AuditLog.verify_bundle(patient).ok and len(patient["entry"]) == 6

    edited = log.export_bundle()
    edited["entry"][10]["resource"]["entity"][0]["what"]["reference"] = "Patient/other"
    res = AuditLog.verify_bundle(edited)
    assert not res.ok and res.first_bad == 11

    dropped = log.export_bundle()
    moved = dropped["entry"][20]["resource"]
    moved["meta"]["extension"][0]["extension"][0]["valueInteger"] = 20  # claims another place in the chain
    del dropped["entry"][19]
    res = AuditLog.verify_bundle(dropped)
    assert not res.ok and res.first_bad == 20
