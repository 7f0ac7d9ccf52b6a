"""What a call's audit record holds when the caller sends something odd, and what refusals leave in the log.

A field the audit log cannot take (an X-Request-ID with a space, a user that is not a reference) is left out alone,
and named: the record still has the patient, the correlation ids, the score and the cards (BALP: always the
patient). A hookInstance that is not a UUID is refused (400). Nothing the caller sent is quoted back, neither in
the answer nor in the audit log. The user of the hook's context is recorded. Admin refusals are audited. Card links
lead to pages that exist.
"""

from __future__ import annotations

import json
import uuid

import httpx
import pytest

from .harness import ADMIN_SECRET, bearer, hook_request, picked_stays_service, prefetch_of


@pytest.fixture(scope="module")
def setup(trained_bundle, hospital_store, hospital, tmp_path_factory):
    folder = tmp_path_factory.mktemp("audit-record")
    with picked_stays_service(trained_bundle, hospital_store[0], hospital, folder, f"sqlite:///{folder / 'state.db'}",
                              repeat_window_h=1e-6) as running_stays_res:
        yield running_stays_res


def _post(running, body, headers: dict | None = None, service: str = "readmission-risk") -> httpx.Response:
    url = f"{running.url}/cds-services/{service}"
    return httpx.post(url, json=body, headers={**bearer(*running.keys, url), **(headers or {})}, timeout=30)


def _record(running, hook_instance: str | None = None) -> dict:
    records = running.service.audit.records()
    if hook_instance is None:
        return records[-1]
    return next(r for r in reversed(records) if r.get("hook_instance") == hook_instance)


def test_an_unrecordable_field_is_left_out_alone_and_the_rest_is_recorded(setup):
    running, stays, res = setup
    high = stays[0]
    body = hook_request(high["patient_id"], high["encounter_id"], prefetch_of(res[high["patient_id"]]))
    body["context"]["userId"] = "Dr Jane Doe"  # not a reference: left out
    r = _post(running, body, {"X-Request-ID": "pulmonary embolism"})
    assert r.status_code == 200 and r.json()["cards"][0]["indicator"] == "warning"
    rec = _record(running, body["hookInstance"])
    assert rec["kind"] == "cds-call" and rec["outcome"] == "success"
    assert rec["patient"] == high["patient_id"] and rec["jti"] and rec["score"] is not None
    assert rec["cards"] == [f"{r.json()['cards'][0]['uuid']}|warning"]
    assert rec.get("request_id") is None and rec.get("user") is None
    assert rec["detail"]["error"] == "unrecordable request fields"
    assert set(rec["detail"]["field"].split(",")) == {"request_id", "user"}
    text = json.dumps(running.service.audit.records(), default=str)
    assert "pulmonary" not in text and "Jane" not in text


def test_the_user_of_the_hook_context_is_recorded(setup):
    running, stays, res = setup
    low = stays[-1]
    body = hook_request(low["patient_id"], low["encounter_id"], prefetch_of(res[low["patient_id"]]))
    body["context"]["userId"] = "PractitionerRole/ward-4-nurse"
    assert _post(running, body).status_code == 200
    rec = _record(running, body["hookInstance"])
    assert rec["user"] == "PractitionerRole/ward-4-nurse" and rec["patient"] == low["patient_id"]


def test_a_hook_instance_that_is_not_a_uuid_is_refused(setup):
    running, stays, _ = setup
    body = hook_request(stays[0]["patient_id"], stays[0]["encounter_id"], None)
    body["hookInstance"] = "Jane.Doe-DOB-1950-02-03"  # id-shaped, so the audit log would take it: not recorded
    r = _post(running, body)
    assert r.status_code == 400 and "hookInstance must be a UUID" in r.text
    rec = _record(running)
    assert rec["outcome"] == "minor" and rec.get("hook_instance") is None and "Jane" not in json.dumps(rec, default=str)


def test_a_body_that_is_not_utf8_is_a_400_and_audited(setup):
    running, *_ = setup
    url = f"{running.url}/cds-services/readmission-risk"
    before = len(running.service.audit.records())
    r = httpx.post(url, content=b'{"hook": "\xff\xfe"}', headers={**bearer(*running.keys, url),
                                                                    "Content-Type": "application/json"}, timeout=10)
    assert r.status_code == 400 and "not UTF-8" in r.text
    assert [x["outcome"] for x in running.service.audit.records()[before:]] == ["minor"]


@pytest.mark.parametrize("secret", ["Jane Doe DOB 1950-02-03 MRN 12345", "Jane O'Brien"])  # repr: '...' or "..."
@pytest.mark.parametrize("field", ["hook", "token_type"])
def test_nothing_the_caller_sent_is_quoted_back(setup, field, secret):
    running, stays, _ = setup
    body = hook_request(stays[0]["patient_id"], stays[0]["encounter_id"], None)
    if field == "hook":
        body["hook"] = secret
    else:
        body |= {"fhirServer": "https://ehr.careloop-test.example/fhir",
                 "fhirAuthorization": {"access_token": "x", "token_type": secret, "expires_in": 300, "scope": "s",
                                       "subject": "s"}}
    before = len(running.service.audit.records())
    r = _post(running, body)
    assert r.status_code == 400 and r.json()["resourceType"] == "OperationOutcome"
    records = running.service.audit.records()[before:]
    assert [x["outcome"] for x in records] == ["minor"]
    assert "Jane" not in r.text and "Jane" not in json.dumps(records, default=str)
    assert ("hook" if field == "hook" else "token_type") in r.json()["issue"][0]["diagnostics"]


def test_an_encounter_id_that_is_not_a_fhir_id_is_refused(setup):
    running, stays, res = setup
    body = hook_request(stays[0]["patient_id"], "../../admin/status?x=", prefetch_of(res[stays[0]["patient_id"]]))
    r = _post(running, body)
    assert r.status_code == 400 and "encounterId must be a FHIR id" in r.text


def test_admin_refusals_are_audited(setup):
    running, *_ = setup
    key = running.service.model_key[:12]
    switch = f"{running.url}/admin/models/{key}/enabled"
    admin = {"Authorization": f"Bearer {ADMIN_SECRET}"}
    ehr_status = bearer(*running.keys, f"{running.url}/admin/status")
    cases = [
        (lambda: httpx.get(f"{running.url}/admin/status", headers=ehr_status), 403, "auth-failure"),
        (lambda: httpx.post(switch, json={"enabled": "maybe"}, headers=admin), 400, "admin-change"),
        (lambda: httpx.post(f"{running.url}/admin/models/{'0' * 12}/enabled", json={"enabled": False},
                            headers=admin), 404, "admin-change"),
    ]
    for send, status, kind in cases:
        before = len(running.service.audit.records())
        assert send().status_code == status
        new = running.service.audit.records()[before:]
        assert [(x["kind"], x["outcome"]) for x in new] == [(kind, "serious" if kind == "auth-failure" else "minor")]
    assert running.service.store.enabled(running.service.model_key)


def test_every_link_of_a_card_opens(setup):
    """Without the dashboard there is no patient page, so no card links to one; the model card answers."""
    running, stays, res = setup
    body = hook_request(stays[1]["patient_id"], stays[1]["encounter_id"], prefetch_of(res[stays[1]["patient_id"]]))
    card = _post(running, body).json()["cards"][0]
    urls = [link["url"] for link in card["links"]] + [card["source"]["url"]]
    assert not any("/dashboard/" in u for u in urls)
    for u in urls:
        assert httpx.get(u, timeout=10).status_code == 200, u
    assert str(uuid.UUID(card["uuid"])) == card["uuid"]


def test_a_withdrawn_result_is_recorded_as_not_read_and_leaves_the_score_alone(setup):
    running, stays, res = setup
    high = stays[0]
    pid, enc = high["patient_id"], high["encounter_id"]
    plain = hook_request(pid, enc, prefetch_of(res[pid]))
    assert _post(running, plain).status_code == 200
    before = _record(running, plain["hookInstance"])
    already = json.loads((before["detail"] or {}).get("void_resources", "{}")).get("Observation entered-in-error", 0)
    last = max((o for o in res[pid]["observations"] if o["encounter"]["reference"] == f"Encounter/{enc}"
                and o["code"]["coding"][0]["code"] == "2160-0"), key=lambda o: o["effectiveDateTime"])  # creatinine
    slips = [last | {"id": f"slip-{i}", "status": "entered-in-error",
                     "valueQuantity": last["valueQuantity"] | {"value": last["valueQuantity"]["value"] * 10}}
             for i in range(2)]
    sent = hook_request(pid, enc, prefetch_of({**res[pid], "observations": res[pid]["observations"] + slips}))
    assert _post(running, sent).status_code == 200
    rec = _record(running, sent["hookInstance"])
    assert json.loads(rec["detail"]["void_resources"]) == {"Observation entered-in-error": already + 2}
    assert rec["score"] == before["score"] and rec["input_digest"] != before["input_digest"]


def test_a_value_in_a_unit_without_conversion_is_counted_not_read_and_not_quoted(setup):
    running, stays, res = setup
    low = stays[-1]
    pid, enc = low["patient_id"], low["encounter_id"]
    stay_obs = [o for o in res[pid]["observations"] if o["encounter"]["reference"] == f"Encounter/{enc}"]
    creat = max((o for o in stay_obs if o["code"]["coding"][0]["code"] == "2160-0"),
                key=lambda o: o["effectiveDateTime"])
    odd = creat | {"id": "odd-unit", "effectiveDateTime": creat["effectiveDateTime"],
                   "valueQuantity": {"value": 4.2, "unit": "zorkmid per fortnight"}}
    sent = hook_request(pid, enc, prefetch_of({**res[pid], "observations": res[pid]["observations"] + [odd]}))
    plain = hook_request(pid, enc, prefetch_of(res[pid]))
    assert _post(running, plain).status_code == 200 and _post(running, sent).status_code == 200
    before, rec = _record(running, plain["hookInstance"]), _record(running, sent["hookInstance"])
    assert int(rec["detail"]["unconverted_values"]) == int((before["detail"] or {}).get("unconverted_values", 0)) + 1
    assert "zorkmid" not in json.dumps(running.service.audit.records(), default=str)
