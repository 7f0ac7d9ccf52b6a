"""audit_event: a FHIR R4 AuditEvent with the required elements, identifiers only, never tokens or free text."""

from __future__ import annotations

import json
from datetime import UTC, datetime, timedelta, timezone

import pytest
from fhir.resources.R4B.auditevent import AuditEvent

from careloop.audit import AuditContentError, audit_event, summarize
from careloop.audit.event import KINDS

JWT = "eyJhbGciOiJSUzM4NCIsInR5cCI6IkpXVCJ9.eyJpc3MiOiJodHRwczovL2VociJ9.c2lnbmF0dXJlLWJ5dGVz"
FULL = dict(
    kind="cds-call",
    outcome="success",
    client="https://ehr.example.org/cds",
    patient="Patient/1288992",
    hook_instance="d1577c69-dfbe-44ad-ba6d-3e05e953b2ea",
    jti="a4f3-77-jti",
    request_id="4bf92f3577b34da6a3ce929d0e0e4736",
    model_hash="9f" * 32,
    input_digest="sha256:" + "ab" * 32,
    score=0.3127,
    cards=[{"uuid": "card-1", "indicator": "warning", "summary": "Jane Doe: high risk", "detail": "notes..."}],
    deferral_reason=None,
    detail={"band": "high", "elapsed_ms": 12.5},
    service="readmission-risk",
    user="Practitioner/example",
    recorded=datetime(2025, 5, 1, 10, 0, 0, 123456, tzinfo=timezone(timedelta(hours=2))),
)


def test_required_elements_and_fhir_validity():
    e = audit_event(**FULL)
    AuditEvent.model_validate(e)  # FHIR R4(B) structure
    assert e["resourceType"] == "AuditEvent"
    assert e["type"]["code"] == "rest" and e["type"]["system"].endswith("audit-event-type")
    assert e["subtype"][0]["code"] == "cds-call"
    assert e["action"] == "E"
    assert e["recorded"] == "2025-05-01T08:00:00.123456Z"  # UTC with Z
    assert e["outcome"] == "0"
    assert e["source"]["observer"] and e["source"]["type"][0]["code"] == "4"
    agents = e["agent"]
    assert all(isinstance(a["requestor"], bool) for a in agents)
    assert [a["requestor"] for a in agents].count(True) == 1
    client = next(a for a in agents if a["type"]["coding"][0]["code"] == "110153")
    assert client["who"]["identifier"]["value"] == "https://ehr.example.org/cds"
    user = next(a for a in agents if a["requestor"])
    assert user["who"] == {"reference": "Practitioner/example"}
    patients = [x for x in e["entity"] if x["what"].get("reference", "").startswith("Patient/")]
    assert [p["what"]["reference"] for p in patients] == ["Patient/1288992"]  # exactly one patient entity
    ids = {x["type"]["code"]: x["what"]["identifier"]["value"] for x in e["entity"] if "identifier" in x["what"]}
    assert ids["XrequestId"] == "4bf92f3577b34da6a3ce929d0e0e4736"
    assert ids["hookInstance"] == "d1577c69-dfbe-44ad-ba6d-3e05e953b2ea"
    assert ids["jti"] == "a4f3-77-jti"
    assert ids["2"] == "9f" * 32  # the model bundle's hash
    s = summarize(e)
    assert s["kind"] == "cds-call" and s["outcome"] == "success" and s["patient"] == "1288992"
    assert s["score"] == 0.3127 and s["cards"] == ["card-1|warning"] and s["input_digest"] == "sha256:" + "ab" * 32
    assert s["user"] == "Practitioner/example" and s["service"] == "readmission-risk"
    assert s["detail"] == {"band": "high", "elapsed_ms": "12.5"}
    text = json.dumps(e)
    assert "Jane Doe" not in text and "notes" not in text  # only a card's uuid and indicator are kept


@pytest.mark.parametrize("kind", list(KINDS))
@pytest.mark.parametrize(("outcome", "code"), [("success", "0"), ("minor", "4"), ("serious", "8"), ("major", "12")])
def test_every_kind_and_outcome_is_a_valid_minimal_event(kind, outcome, code):
    e = audit_event(kind=kind, outcome=outcome, client=None, patient=None, hook_instance=None, jti=None,
                    request_id=None, model_hash=None, input_digest=None, score=None, cards=None,
                    deferral_reason=None)
    AuditEvent.model_validate(e)
    assert e["outcome"] == code and e["subtype"][0]["code"] == kind
    assert e["recorded"].endswith("Z") and abs(
        datetime.fromisoformat(e["recorded"]) - datetime.now(UTC)) < timedelta(seconds=5)
    assert [a["requestor"] for a in e["agent"]] == [True, False]  # no user: the client is the requestor
    assert "entity" not in e
    assert summarize(e)["kind"] == kind


@pytest.mark.parametrize(
    "override",
    [
        {"detail": {"reason": JWT}},
        {"detail": {"unknown_field": JWT}},  # refused even where it would have been dropped
        {"detail": {"reason": "header was Bearer abcdefghijklmnop"}},
        {"detail": {"old": {"nested": ["x", JWT]}}},
        {"jti": JWT},
        {"client": JWT},
        {"request_id": JWT},
        {"deferral_reason": f"could not parse {JWT}"},
        {"cards": [{"uuid": JWT}]},
    ],
)
def test_tokens_are_refused(override):
    with pytest.raises(AuditContentError, match=r"JWT|Bearer"):
        audit_event(**(FULL | override))


@pytest.mark.parametrize(
    ("override", "match"),
    [
        ({"patient": "John Smith"}, "patient"),
        ({"patient": "Patient/../etc"}, "patient"),
        ({"user": "Dr Jane Roe"}, "user"),
        ({"kind": "chat"}, "kind"),
        ({"outcome": "fine"}, "outcome"),
        ({"score": float("nan")}, "score"),
        ({"score": True}, "score"),
        ({"recorded": datetime(2025, 1, 1)}, "timezone"),
        ({"hook_instance": "has spaces in it"}, "hook_instance"),
        ({"deferral_reason": "x" * 600}, "deferral_reason"),
    ],
)
def test_non_identifiers_are_refused(override, match):
    with pytest.raises(AuditContentError, match=match):
        audit_event(**(FULL | override))


def test_unknown_free_text_is_dropped():
    e = audit_event(**(FULL | {"detail": {
        "clinical_note": "Patient John Smith, DOB 1950-01-01, complains of chest pain",  # unknown text: dropped
        "comment": "free text",  # unknown: dropped
        "nested": {"a": 1},  # unknown structure: dropped
        "bad key!": 3,  # not a key: dropped
        "rows": 42,  # numbers are kept under any key
        "retries": 2,
        "ok": True,
        "reason": "expired",  # a known coded field: kept
        "setting": "x" * 600,  # known but too long: dropped
        "nan": float("nan"),  # dropped
        "old": {"threshold": 0.3},  # known: kept as canonical JSON
    }}))
    text = json.dumps(e)
    for gone in ("John Smith", "chest", "free text", "nested", "bad key", "xxxx"):
        assert gone not in text
    assert summarize(e)["detail"] == {"rows": "42", "retries": "2", "ok": "true", "reason": "expired",
                                      "old": '{"threshold":0.3}'}


def test_patient_prefix_and_user_identifier():
    e = audit_event(**(FULL | {"patient": "abc-123", "user": "nurse-42"}))
    assert summarize(e)["patient"] == "abc-123"
    user = next(a for a in e["agent"] if a["requestor"])
    assert user["who"]["identifier"]["value"] == "nurse-42"
    assert summarize(e)["user"] == "nurse-42"


def test_the_encounter_is_a_reference_entity_read_back():
    e = audit_event(**(FULL | {"encounter": "Encounter/enc-7"}))
    (entity,) = [x for x in e["entity"] if x["what"].get("reference", "").startswith("Encounter/")]
    assert entity["what"] == {"reference": "Encounter/enc-7"}
    assert summarize(e)["encounter"] == "enc-7" and summarize(e)["patient"] == FULL["patient"].removeprefix("Patient/")
    assert summarize(audit_event(**FULL))["encounter"] is None
    with pytest.raises(AuditContentError):
        audit_event(**(FULL | {"encounter": "not an id!"}))


def test_the_services_coded_details_are_kept():
    e = audit_event(**(FULL | {"cards": None, "detail": {
        "card": "9368d37b-283f-44a0-93ea-547cebab93ed", "outcome": "overridden", "new": True, "by": "admin-1",
        "note": "repeat suppressed", "reason": "412: no prefetch and no FHIR access"}}))
    s = summarize(e)
    assert s["cards"] == ["9368d37b-283f-44a0-93ea-547cebab93ed"]
    assert s["detail"] == {"outcome": "overridden", "new": "true", "by": "admin-1", "note": "repeat suppressed",
                           "reason": "412: no prefetch and no FHIR access"}
