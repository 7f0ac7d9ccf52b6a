"""Feedback (CDS Hooks 2.0 §Feedback) is tied to the card it is about: only the service that showed a card takes
feedback on it, an accepted suggestion must be one of that card's, every card shown (info cards too) can receive
feedback, a batch is stored whole or not at all, and every refusal is audited like every acceptance, with the card's
patient. Runs on SQLite and PostgreSQL."""

from __future__ import annotations

import datetime as dt
import json
import uuid

import httpx
import pytest

from careloop.serve.cards import suggestion_ids

from .harness import bearer, hook_request, picked_stays_service, prefetch_of


def when(seconds: float = 0) -> str:
    """An outcomeTimestamp: now (after the card it is about was shown), or `seconds` later."""
    return (dt.datetime.now(dt.UTC) + dt.timedelta(seconds=seconds)).isoformat().replace("+00:00", "Z")


@pytest.fixture(scope="module")
def setup(trained_bundle, hospital_store, hospital, tmp_path_factory, state_url):
    with picked_stays_service(trained_bundle, hospital_store[0], hospital, tmp_path_factory.mktemp("feedback"),
                              state_url, repeat_window_h=1e-6) as running_stays_res:
        yield running_stays_res


def call(running, body: dict, service: str = "readmission-risk") -> httpx.Response:
    url = f"{running.url}/cds-services/{service}"
    return httpx.post(url, json=body, headers=bearer(*running.keys, url), timeout=30)


def _card(running, stay, res, *, child: bool = False, service: str = "readmission-risk") -> dict:
    pf = prefetch_of(res[stay["patient_id"]])
    if child:
        pf["patient"] = dict(pf["patient"], birthDate="2016-03-01")
    body = hook_request(stay["patient_id"], stay["encounter_id"], pf)
    r = call(running, body, service=service)
    assert r.status_code == 200 and r.json()["cards"], r.text
    return r.json()["cards"][0]


def _post(running, items: list[dict], service: str = "readmission-risk") -> httpx.Response:
    url = f"{running.url}/cds-services/{service}/feedback"
    pem, kid = running.keys
    return httpx.post(url, json={"feedback": items}, headers=bearer(pem, kid, url), timeout=10)


def _feedback_records(running) -> list[dict]:
    return running.service.audit.records(kind="feedback")


def test_an_accepted_suggestion_must_be_one_of_the_cards(setup):
    running, stays, res = setup
    card = _card(running, stays[0], res)
    assert [s["uuid"] for s in card["suggestions"]] == suggestion_ids(card["uuid"])
    before = len(_feedback_records(running))
    other = _card(running, stays[1], res)  # another patient's warning card: its suggestions are not this card's
    r = _post(running, [{"card": card["uuid"], "outcome": "accepted", "outcomeTimestamp": when(),
                         "acceptedSuggestions": [{"id": other["suggestions"][0]["uuid"]}]}])
    assert r.status_code == 400 and "suggestion of the card" in r.text
    r = _post(running, [{"card": card["uuid"], "outcome": "accepted", "outcomeTimestamp": when(),
                         "acceptedSuggestions": [{"id": card["suggestions"][0]["uuid"]}]}])
    assert r.json() == {"received": 1, "new": 1}
    records = _feedback_records(running)[before:]
    assert [(x["outcome"], x["detail"].get("http_status")) for x in records] == [("minor", "400"), ("success", None)]
    assert {x["patient"] for x in records} == {stays[0]["patient_id"]}  # the card's patient, refused or not
    stored = [f for f in running.service.store.feedback("readmission-risk") if f["card"] == card["uuid"]]
    assert [f["accepted_suggestions"] for f in stored] == [[card["suggestions"][0]["uuid"]]]


def test_a_card_takes_feedback_only_at_the_service_that_showed_it(setup):
    running, stays, res = setup
    card = _card(running, stays[1], res)
    item = {"card": card["uuid"], "outcome": "overridden", "outcomeTimestamp": when()}
    r = _post(running, [item], service="readmission-risk-patient-view")
    assert r.status_code == 404 and "no card of this service" in r.text
    assert not any(f["card"] == card["uuid"] for f in running.service.store.feedback())
    assert _post(running, [item]).json() == {"received": 1, "new": 1}


def test_an_info_card_takes_feedback_but_offers_nothing_to_accept(setup):
    running, stays, res = setup
    card = _card(running, stays[3], res, child=True)  # out of scope: the deferral card
    assert card["indicator"] == "info"
    assert _post(running, [{"card": card["uuid"], "outcome": "overridden", "outcomeTimestamp": when()}]).json() == {
        "received": 1, "new": 1}
    r = _post(running, [{"card": card["uuid"], "outcome": "accepted", "outcomeTimestamp": when(),
                         "acceptedSuggestions": [{"id": suggestion_ids(card["uuid"])[0]}]}])
    assert r.status_code == 400
    assert running.service.store.last_card("readmission-risk", stays[3]["patient_id"],
                                           running.service.model_key, "warning") is None  # info cards never suppress


def test_a_batch_with_one_bad_item_stores_nothing(setup):
    running, stays, res = setup
    card = _card(running, stays[4], res, child=True)
    good = {"card": card["uuid"], "outcome": "overridden", "outcomeTimestamp": when()}
    before = len(running.service.store.feedback())
    for bad in ({"card": str(uuid.uuid4()), "outcome": "overridden", "outcomeTimestamp": when()},
                {"card": card["uuid"], "outcome": "overridden", "outcomeTimestamp": "9999-12-31T23:59:59-05:00"},
                {"card": card["uuid"], "outcome": "overridden", "outcomeTimestamp": "0001-01-01T00:00:00+05:00"},
                {"card": card["uuid"], "outcome": "overridden", "outcomeTimestamp": when(),
                 "overrideReason": {"reason": {"code": "has a space"}}}):
        audited = len(_feedback_records(running))
        r = _post(running, [good, bad])
        assert r.status_code in (400, 404) and r.json()["resourceType"] == "OperationOutcome", r.text
        assert "feedback[1]" in r.text and not any(w in r.text for w in ("has a space", "9999-12", "0001-01"))
        assert len(running.service.store.feedback()) == before
        refused = _feedback_records(running)[audited:]
        assert [(x["outcome"], x["detail"]["http_status"]) for x in refused] == [("minor", str(r.status_code))]
    assert _post(running, [good]).json() == {"received": 1, "new": 1}


def test_every_refused_feedback_is_audited(setup):
    running, stays, res = setup
    card = _card(running, stays[0], res)
    url = f"{running.url}/cds-services/readmission-risk/feedback"
    pem, kid = running.keys
    cases = [
        ([{"card": card["uuid"], "outcome": "accepted", "outcomeTimestamp": when()}], 400),  # nothing accepted
        ([{"card": card["uuid"], "outcome": "maybe", "outcomeTimestamp": when()}], 400),
        ([{"card": card["uuid"], "outcome": "overridden", "outcomeTimestamp": 1700000000}], 400),  # not RFC 3339
        ([{"card": str(uuid.uuid4()), "outcome": "overridden", "outcomeTimestamp": when()}], 404),
    ]
    for items, status in cases:
        before = len(_feedback_records(running))
        r = httpx.post(url, json={"feedback": items}, headers=bearer(pem, kid, url), timeout=10)
        assert r.status_code == status, r.text
        assert [x["outcome"] for x in _feedback_records(running)[before:]] == ["minor"]
    before = len(_feedback_records(running))
    r = httpx.post(url, content=b"{" + b" " * (6 << 20) + b"}", headers=bearer(pem, kid, url), timeout=30)
    assert r.status_code == 413
    assert [x["detail"]["http_status"] for x in _feedback_records(running)[before:]] == ["413"]


def test_each_item_of_a_batch_is_audited_with_its_own_reason(setup):
    running, stays, res = setup
    card = _card(running, stays[1], res)
    reasons = card["overrideReasons"][:2]
    items = [{"card": card["uuid"], "outcome": "overridden", "outcomeTimestamp": when(i),
              "overrideReason": {"reason": r}} for i, r in enumerate(reasons)]
    before = len(_feedback_records(running))
    assert _post(running, items).json() == {"received": 2, "new": 2}
    records = _feedback_records(running)[before:]
    assert [x["detail"]["reason"] for x in records] == [r["code"] for r in reasons]
    assert {x["patient"] for x in records} == {stays[1]["patient_id"]}


def test_a_refusal_quotes_nothing_the_caller_sent_and_both_stores_refuse_alike(setup):
    """Refusals are audited, so their text must hold no caller text: not a value (in any quoting, cut or not), not a
    key the caller made up. A NUL byte, which PostgreSQL cannot store, is refused the same way on both stores."""
    running, stays, res = setup
    card = _card(running, stays[0], res)
    base = {"card": card["uuid"], "outcome": "overridden", "outcomeTimestamp": when()}
    secret = "Mrs O'Brien, DOB 1950-01-01, lives alone; daughter says no"
    cases = [
        ({**base, "Patient Jane Doe MRN 12345": 1}, 400),
        ({**base, "overrideReason": {"reason": {"code": secret}}}, 400),
        ({**base, "overrideReason": {"reason": {"code": "x" * 300 + secret}}}, 400),
        ({**base, "overrideReason": {"reason": {"code": "ok", "display": "a\x00b"}}}, 400),
        ({**base, "overrideReason": {"reason": {"code": "ok"}, "userComment": "seen\x00"}}, 400),
        ({**base, "card": card["uuid"] + "\x00"}, 404),
        ({**base, "outcome": secret}, 400),
    ]
    for item, status in cases:
        before = len(_feedback_records(running))
        r = _post(running, [item])
        assert r.status_code == status, (item, r.text)
        new = _feedback_records(running)[before:]
        assert [x["outcome"] for x in new] == ["minor"]
        text = r.text + json.dumps(new, default=str)
        assert not any(w in text for w in ("Jane", "Brien", "daughter", "\\u0000")), text


def test_an_override_reason_must_be_one_the_card_offered(setup):
    running, stays, res = setup
    card = _card(running, stays[0], res)
    before = len(_feedback_records(running))
    r = _post(running, [{"card": card["uuid"], "outcome": "overridden", "outcomeTimestamp": when(),
                         "overrideReason": {"reason": {"code": "Jane.Doe-MRN-12345-lives-alone"}}}])
    assert r.status_code == 400 and "overrideReasons" in r.text
    new = _feedback_records(running)[before:]
    assert [x["outcome"] for x in new] == ["minor"] and "Jane" not in json.dumps(new, default=str)
    info = _card(running, stays[3], res, child=True)  # an info card offers no reasons
    r = _post(running, [{"card": info["uuid"], "outcome": "overridden", "outcomeTimestamp": when(),
                         "overrideReason": {"reason": card["overrideReasons"][0]}}])
    assert r.status_code == 400


def _empty_buckets(service) -> None:
    from sqlalchemy import delete

    from careloop.state.store import rate_table

    with service.store.transaction(write=True) as conn:
        conn.execute(delete(rate_table))


def test_feedback_beyond_the_clients_limit_gets_429_with_retry_after_and_is_audited(setup):
    """Checklist C-18: a burst above the limit gets 429 (a token bucket per client, in the state store); the refusal
    is audited, nothing of it is stored, and after Retry-After the client may send again."""
    import time

    from careloop.serve.config import FeedbackLimit

    running, stays, res = setup
    card = _card(running, stays[0], res)
    service = running.service
    kept = service.config.feedback_limit
    service.config.feedback_limit = FeedbackLimit(per_minute=60, burst=3)
    _empty_buckets(service)
    try:
        item = {"card": card["uuid"], "outcome": "overridden", "outcomeTimestamp": when()}
        before = len(_feedback_records(running))
        got = [_post(running, [item]) for _ in range(5)]
        assert [r.status_code for r in got] == [200, 200, 200, 429, 429]
        assert got[3].json()["issue"][0]["code"] == "throttled"
        assert 1 <= int(got[3].headers["Retry-After"]) <= 2
        new = _feedback_records(running)[before:]
        assert [x["outcome"] for x in new] == ["success"] * 3 + ["minor"] * 2
        assert all("rate limit" in json.dumps(x["detail"]) for x in new[3:])
        time.sleep(int(got[4].headers["Retry-After"]))
        assert _post(running, [item]).status_code == 200
    finally:
        service.config.feedback_limit = kept
        _empty_buckets(service)


def test_feedback_that_contradicts_itself_or_the_card_is_refused(setup):
    """Suggestions accepted on a card the user overrode; an override reason that is not a Coding, or whose code is
    not text (a list or an object: a 400, not a 500): each a 400, nothing stored."""
    running, stays, res = setup
    card = _card(running, stays[0], res)
    reason = card["overrideReasons"][0]
    before = len(running.service.store.feedback())
    for bad, why in (
        ({"outcome": "overridden", "acceptedSuggestions": [{"id": card["suggestions"][0]["uuid"]}]},
         "only with the outcome 'accepted'"),
        ({"outcome": "overridden", "overrideReason": {"reason": dict(reason, code=[reason["code"]])}},
         "code must be a non-empty string"),
        ({"outcome": "overridden", "overrideReason": {"reason": dict(reason, code={"code": reason["code"]})}},
         "code must be a non-empty string"),
        ({"outcome": "overridden", "overrideReason": {"reason": dict(reason, system=["x"])}},
         "system must be a non-empty string"),
        ({"outcome": "overridden", "overrideReason": {"reason": "not-a-coding"}}, "must be a Coding"),
    ):
        r = _post(running, [{"card": card["uuid"], "outcomeTimestamp": when(), **bad}])
        assert r.status_code == 400 and why in r.text, r.text
    assert len(running.service.store.feedback()) == before
    ok = {"card": card["uuid"], "outcome": "overridden", "outcomeTimestamp": when(),
          "overrideReason": {"reason": {"code": reason["code"]}}}  # the code alone: its system is the card's
    assert _post(running, [ok]).status_code == 200


def test_feedback_from_the_future_or_before_the_card_is_refused_and_extensions_are_accepted(setup):
    running, stays, res = setup
    card = _card(running, stays[0], res)
    before = len(running.service.store.feedback())
    future = {"card": card["uuid"], "outcome": "overridden", "outcomeTimestamp": "2999-01-01T00:00:00Z"}
    r = _post(running, [future])
    assert r.status_code == 400 and "in the future" in r.text
    audited = len(_feedback_records(running))
    for earlier in (when(-3600), "2001-11-22T10:00:00Z"):  # an hour, or 25 years, before the card was shown
        r = _post(running, [{"card": card["uuid"], "outcome": "overridden", "outcomeTimestamp": earlier}])
        assert r.status_code == 400 and "before the card was shown" in r.text, r.text
    assert len(running.service.store.feedback()) == before
    assert [x["detail"]["http_status"] for x in _feedback_records(running)[audited:]] == ["400", "400"]
    # within the clock skew the service allows (60 s), the EHR's clock may be a little behind
    assert _post(running, [{"card": card["uuid"], "outcome": "overridden",
                            "outcomeTimestamp": when(-30)}]).json() == {"received": 1, "new": 1}
    url = f"{running.url}/cds-services/readmission-risk/feedback"
    body = {"feedback": [{"card": card["uuid"], "outcome": "overridden", "outcomeTimestamp": when(),
                          "extension": {"org.example.unit": "4 West"}}], "extension": {"org.example.batch": 7}}
    r = httpx.post(url, json=body, headers=bearer(*running.keys, url), timeout=10)
    assert r.status_code == 200 and r.json()["received"] == 1, r.text
    assert "4 West" not in json.dumps(running.service.store.feedback(), default=str)  # accepted, not stored


def test_the_feedback_export_names_the_user_and_the_location_of_each_card(setup):
    """Checklist T-09 (HTI-1 (b)(11)): each exported row holds the intervention, the action, the feedback, the user
    (the hook's userId the card was shown to), the date and the location (the stay's ward), and round-trips to the
    card and the model."""
    running, stays, res = setup
    card = _card(running, stays[0], res)
    item = {"card": card["uuid"], "outcome": "overridden", "outcomeTimestamp": when(),
            "overrideReason": {"reason": card["overrideReasons"][1]}}
    assert _post(running, [item]).status_code == 200
    (row,) = [r for r in running.service.store.feedback() if r["card"] == card["uuid"]][-1:]
    assert row["user"] == "Practitioner/example"  # tests.serve.harness.hook_request's userId
    shown = running.service.store.card(card["uuid"])
    assert row["location"] == shown["unit"] and row["location"].startswith("Location/")
    assert row["model_hash"] == running.service.model_key and row["intervention"] == "readmission-risk"
    for field in ("intervention", "action", "override_code", "user", "date", "location"):
        assert row[field], field


def test_the_ehrs_own_override_reasons_are_taken_and_exported_with_their_code_system(setup):
    """CDS Hooks lets the EHR offer reasons of its own beside the card's: one in another code system is stored as
    sent, on a warning and on an info card (which offers none), and the export names its system."""
    running, stays, res = setup
    warning = _card(running, stays[1], res)
    info = _card(running, stays[3], res, child=True)
    assert warning["indicator"] == "warning" and info["indicator"] == "info"
    own = {"system": "http://ehr.example.org/override-reasons", "code": "discussed-with-team",
           "display": "Discussed with the care team"}
    items = [{"card": c["uuid"], "outcome": "overridden", "outcomeTimestamp": when(),
              "overrideReason": {"reason": own, "userComment": "plan already in place"}} for c in (warning, info)]
    assert _post(running, items).json() == {"received": 2, "new": 2}
    exported = {r["card"]: r for r in running.service.store.feedback()}
    for c in (warning, info):
        r = exported[c["uuid"]]
        assert (r["override_system"], r["override_code"], r["override_display"], r["comment"]) == (
            own["system"], own["code"], own["display"], "plan already in place")
