"""The dashboard through the app itself (Starlette's TestClient, no browser): what it records in the audit log,
its sessions, and its answers when the event store or the audit log fails."""

from __future__ import annotations

import datetime as dt
import json
import re
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import pytest
from fastapi.testclient import TestClient
from fhir.resources.R4B.auditevent import AuditEvent

from careloop.serve.app import Service, create_app
from careloop.serve.config import load_config
from careloop.state import StateError
from careloop.web import DEMO_PASSWORD, demo_users, mount
from careloop.web.auth import DUMMY_HASH, Sessions
from tests.fhir_server.harness import make_rsa_key
from tests.pg import database_url_fixture, postgres_server_fixture
from tests.serve.harness import write_config

pg_server = postgres_server_fixture()
db_url = database_url_fixture()

SECRET = b"a-secret-shared-by-every-worker-0123456789"
ADDRESS = ("203.0.113.7", 51000)  # the client's address, as the server sees it
SECURED = {"content-security-policy", "x-content-type-options", "x-frame-options", "cache-control"}


@contextmanager
def dashboard(bundle: Path, folder: Path, store_dir: Path, state: str | None = None) -> Iterator[tuple]:
    """(app, service) as `careloop serve --dashboard` mounts it, on `state` (default: a SQLite file in `folder`)."""
    _, jwk = make_rsa_key()
    cfg = write_config(folder, state=state or f"sqlite:///{folder / 'state.db'}", jwks={"keys": [jwk]}, port=1)
    service = Service(bundle, load_config(cfg))
    app = create_app(service)
    mount(app, service, users=demo_users(), store_dir=store_dir, secret=SECRET)
    try:
        yield app, service
    finally:
        service.close()


@pytest.fixture(scope="module")
def app(trained_bundle, hospital_store, tmp_path_factory):
    with dashboard(trained_bundle, tmp_path_factory.mktemp("dash-audit"), hospital_store[0]) as made:
        yield made


def signed_in(app, user: str | None, address: tuple[str, int] = ADDRESS) -> TestClient:
    c = TestClient(app, client=address, follow_redirects=False)
    if user is not None:
        r = sign_in(c, user)
        assert r.status_code == 303, r.text
    return c


def sign_in(c: TestClient, user: str, password: str = DEMO_PASSWORD):
    token = re.search(r'name="token" value="([^"]+)"', c.get("/dashboard/sign-in").text).group(1)
    return c.post("/dashboard/sign-in", data={"username": user, "password": password, "token": token, "next": ""})


def new_records(service, since: int) -> list[dict]:
    return [r for r in service.audit.records() if r["seq"] > since]


def last_seq(service) -> int:
    return service.audit.head()["seq"]


def secured(r) -> bool:
    return set(r.headers) >= SECURED and r.headers["cache-control"] == "no-store"


# -- 1: the worklist records one access per patient ----------------------------------------------------------
@pytest.mark.parametrize("path", ["/dashboard/api/worklist", "/dashboard/worklist"])
def test_each_worklist_view_records_one_access_per_patient_listed(app, path):
    """A-02: the JSON and the page list many patients' risks and reasons; each patient gets one `access` event
    (BALP Patient variant) with the user, the client's address, the route and the model's hash."""
    a, service = app
    c = signed_in(a, "clinician")
    listed = c.get("/dashboard/api/worklist").json()
    stays = {(x["patient"], x["encounter"]) for x in listed["current"] + listed["recent"]}
    patients = {p for p, _ in stays}
    assert len(patients) >= 2
    since = last_seq(service)
    r = c.get(path)
    assert r.status_code == 200
    recs = new_records(service, since)
    assert [x["kind"] for x in recs] == ["access"] * len(patients)
    assert {x["patient"] for x in recs} == patients  # one event per patient, each with its own
    for x in recs:
        AuditEvent.model_validate(x["event"])
        assert [e["what"]["reference"] for e in x["event"]["entity"] if "reference" in e["what"]] \
            == [f"Patient/{x['patient']}"]
        assert (x["outcome"], x["user"], x["network"]) == ("success", "clinician", ADDRESS[0])
        assert x["model_hash"] == service.bundle.bundle_id
        assert x["detail"]["route"] == path
        assert set(x["detail"]["value"].split(",")) == {e for p, e in stays if p == x["patient"]}
        client = next(g for g in x["event"]["agent"] if g["type"]["coding"][0]["code"] == "110153")
        assert client["network"] == {"address": ADDRESS[0], "type": "2"}  # IP address
    assert service.audit.verify().ok


def test_a_worklist_whose_viewing_cannot_be_recorded_is_not_shown(app, monkeypatch):
    """No patient data without its audit record: a failing audit log is a secured 503 naming no patient."""
    a, service = app
    c = signed_in(a, "clinician")
    listed = c.get("/dashboard/api/worklist").json()
    first = listed["current"][0]

    def broken(events):
        raise StateError("database error (OperationalError): disk I/O error")

    monkeypatch.setattr(service.audit, "append_many", broken)
    for path in ("/dashboard/api/worklist", "/dashboard/worklist", f"/dashboard/patient/{first['encounter']}"):
        r = c.get(path)
        assert r.status_code == 503 and secured(r), path
        assert "audit log" in r.text and first["patient"] not in r.text and first["encounter"] not in r.text, path


# -- 2: refusals are audited ------------------------------------------------------------------------------
def refusals(service, since: int) -> list[dict]:
    recs = new_records(service, since)
    assert all(x["kind"] == "auth-failure" for x in recs), recs
    return recs


def test_refused_requests_are_audited_with_the_route_role_reason_and_address(app):
    a, service = app
    since = last_seq(service)
    anon = signed_in(a, None)
    assert anon.get("/dashboard/api/worklist").status_code == 401
    [x] = refusals(service, since)
    assert (x["outcome"], x["user"], x["network"]) == ("minor", None, ADDRESS[0])
    assert x["detail"] == {"route": "/dashboard/api/worklist", "reason": "not signed in", "http_status": "401"}
    AuditEvent.model_validate(x["event"])

    since = last_seq(service)  # a page visited before signing in is only sent to sign in: not a refusal
    assert anon.get("/dashboard/worklist").status_code == 303
    assert new_records(service, since) == []

    ds = signed_in(a, "data-scientist")
    since = last_seq(service)
    assert ds.get("/dashboard/patient/enc-1").status_code == 403
    assert ds.get("/dashboard/api/worklist").status_code == 403
    assert ds.get("/dashboard/worklist").status_code == 403
    recs = refusals(service, since)
    assert [x["detail"]["route"] for x in recs] == ["/dashboard/patient/{encounter_id}", "/dashboard/api/worklist",
                                                    "/dashboard/worklist"]  # the template: never the caller's path
    for x in recs:
        assert (x["user"], x["network"], x["patient"]) == ("data-scientist", ADDRESS[0], None)
        assert x["detail"]["role"] == "data_scientist" and x["detail"]["http_status"] == "403"
        assert x["detail"]["reason"] == "role may not open this page"

    since = last_seq(service)  # a cookie that is no session (here, forged) is refused and recorded
    cookie = ds.cookies["careloop_dashboard"]
    forged = TestClient(a, client=ADDRESS, follow_redirects=False, cookies={"careloop_dashboard": cookie[:-4] + "AAAA"})
    assert forged.get("/dashboard/worklist").status_code == 303
    [x] = refusals(service, since)
    assert x["detail"]["reason"].startswith("not a valid session") and x["network"] == ADDRESS[0]
    assert service.audit.verify().ok


def test_failed_and_throttled_sign_ins_are_audited_without_the_name_typed(app):
    a, service = app
    address = ("198.51.100.23", 40000)  # its own address: the throttle blocks by address too
    c = signed_in(a, None, address)
    since = last_seq(service)
    codes = [sign_in(c, "Jane.Doe", "hunter2-secret").status_code for _ in range(7)]
    assert codes == [401] * 5 + [429] * 2
    recs = refusals(service, since)
    assert [(x["detail"]["reason"], x["detail"]["http_status"]) for x in recs] == \
        [("bad credentials", "401")] * 5 + [("too many failed sign-ins", "429")] * 2
    assert {x["network"] for x in recs} == {address[0]}
    assert {x["detail"]["route"] for x in recs} == {"/dashboard/sign-in"}
    text = json.dumps([x["event"] for x in recs])
    assert "Jane" not in text and "hunter2" not in text  # neither the name typed nor the password


def test_a_patient_page_view_records_the_user_and_the_clients_address(app):
    a, service = app
    c = signed_in(a, "clinician")
    stay = c.get("/dashboard/api/worklist").json()["current"][0]
    since = last_seq(service)
    assert c.get(f"/dashboard/patient/{stay['encounter']}").status_code == 200
    [x] = [r for r in new_records(service, since) if r["detail"]["route"] == "/dashboard/patient/{encounter_id}"]
    AuditEvent.model_validate(x["event"])
    assert (x["kind"], x["outcome"], x["user"], x["network"], x["patient"]) == (
        "access", "success", "clinician", ADDRESS[0], stay["patient"])
    assert x["detail"]["value"] == stay["encounter"] and x["model_hash"] == service.bundle.bundle_id


def test_audit_events_take_only_an_address_as_the_clients_network():
    from careloop.audit import AuditContentError, audit_event, summarize

    e = audit_event(kind="access", outcome="success", network="2001:db8::1", user="ann")
    assert summarize(e)["network"] == "2001:db8::1" and AuditEvent.model_validate(e)
    assert audit_event(kind="access", outcome="success", network="ward-3.example")["agent"][0]["network"] \
        == {"address": "ward-3.example", "type": "1"}
    for bad in ("Jane Doe", "x" * 300, "eyJhbGciOiJIUzI1NiJ9.eyJzdWIiOiIxIn0.c2ln", 42):
        with pytest.raises(AuditContentError):
            audit_event(kind="access", outcome="success", network=bad)


# -- 3: sign-out holds everywhere --------------------------------------------------------------------------
def test_a_sign_out_holds_in_every_worker_and_after_a_restart(trained_bundle, hospital_store, tmp_path, db_url):
    """Two app instances (two workers) on one state store with the shared secret: a cookie signed out on one is
    refused by the other, and by a third started afterwards (a restart)."""
    store_dir = hospital_store[0]
    for name in ("a", "b", "c"):
        (tmp_path / name).mkdir()
    with dashboard(trained_bundle, tmp_path / "a", store_dir, db_url) as (app_a, _), \
            dashboard(trained_bundle, tmp_path / "b", store_dir, db_url) as (app_b, svc_b):
        a = signed_in(app_a, "clinician")
        cookie = {"careloop_dashboard": a.cookies["careloop_dashboard"]}
        assert TestClient(app_b, cookies=cookie).get("/dashboard/model").status_code == 200  # one session for all
        csrf = re.search(r'name="csrf" value="([^"]+)"', a.get("/dashboard/model").text).group(1)
        assert a.post("/dashboard/sign-out", data={"csrf": csrf}).status_code == 303
        for other in (app_a, app_b):
            assert TestClient(other, cookies=cookie).get("/dashboard/api/worklist").status_code == 401
            r = TestClient(other, cookies=cookie, follow_redirects=False).get("/dashboard/worklist")
            assert r.status_code == 303 and "/dashboard/sign-in" in r.headers["location"]
        since = last_seq(svc_b)
    with dashboard(trained_bundle, tmp_path / "c", store_dir, db_url) as (app_c, svc_c):
        assert TestClient(app_c, cookies=cookie).get("/dashboard/api/worklist").status_code == 401
        refused = [x for x in new_records(svc_c, since) if x["kind"] == "auth-failure"]
        assert refused and refused[-1]["detail"]["reason"].startswith("not a valid session")
        assert signed_in(app_c, "clinician").get("/dashboard/api/worklist").status_code == 200  # a new one is fine


def test_sign_outs_expire_from_the_store_and_an_unreadable_store_refuses_sessions(app):
    _, service = app
    store = service.store
    now = dt.datetime.now(dt.UTC)
    store.sign_out("old-session", now + dt.timedelta(minutes=1), now=now)
    assert store.signed_out("old-session")
    later = now + dt.timedelta(minutes=2)  # the old session has expired by now: the next sign-out forgets it
    store.sign_out("new-session", later + dt.timedelta(hours=8), now=later)
    assert not store.signed_out("old-session") and store.signed_out("new-session")

    class Down:
        def signed_out(self, sid: str) -> bool:
            raise StateError("database error (OperationalError): unable to open database file")

        def sign_out(self, sid: str, expires_at: dt.datetime) -> None:
            raise StateError("database error (OperationalError): unable to open database file")

    users = {"ann": {"role": "clinician", "password_hash": DUMMY_HASH}}
    s = Sessions(SECRET, sign_outs=Down())
    cookie, sess = s.issue("ann", "clinician")
    assert s.read(cookie, users) is None  # a session that cannot be checked is not honoured
    with pytest.raises(StateError):
        s.revoke(sess)  # nor is a sign-out reported that other workers cannot see


# -- 4: the newest admission has its page -----------------------------------------------------------------
def test_the_newest_admission_has_a_page_with_one_point_at_admission(app, hospital_store, monkeypatch):
    """When the store's newest record is an admission, the worklist scores it at admission; its page does too."""
    from careloop.web import data as D

    a, service = app
    c = signed_in(a, "clinician")
    target = c.get("/dashboard/api/worklist").json()["current"][-1]
    admit = dt.datetime.fromisoformat(target["admitted"])
    monkeypatch.setattr(D, "data_end", lambda engine: admit)
    row = next(r for r in c.get("/dashboard/api/worklist").json()["current"] if r["encounter"] == target["encounter"])
    assert row["index_time"] == target["admitted"]
    tl = D.timeline(service, hospital_store[0], target["encounter"])
    assert tl is not None and tl.times == [admit] and tl.features.num_rows == 1
    if row["risk"] is None:
        assert tl.assessments[0].risk is None and tl.assessments[0].status == row["status"]
    else:
        assert tl.assessments[0].risk == pytest.approx(row["risk"], abs=1e-12)  # the worklist agrees
    since = last_seq(service)
    r = c.get(f"/dashboard/patient/{target['encounter']}")
    assert r.status_code == 200 and "There is no such inpatient stay" not in r.text
    [x] = new_records(service, since)
    assert (x["kind"], x["patient"], x["detail"]["value"]) == ("access", target["patient"], target["encounter"])


# -- 5: an unreadable store is a secured 503 ----------------------------------------------------------------
def test_an_unreadable_store_is_a_secured_503_on_every_patient_route(trained_bundle, tmp_path):
    empty = tmp_path / "empty-store"
    empty.mkdir()
    with dashboard(trained_bundle, tmp_path, empty) as (a, service):
        c = signed_in(a, "clinician")
        since = last_seq(service)
        r = c.get("/dashboard/api/worklist")
        assert r.status_code == 503 and secured(r) and r.headers["content-type"] == "application/json"
        assert "could not be scored" in r.json()["error"]
        for path in ("/dashboard/worklist", "/dashboard/patient/abc"):
            r = c.get(path)
            assert r.status_code == 503 and secured(r) and r.headers["content-type"].startswith("text/html"), path
        assert new_records(service, since) == []  # nothing was shown, so no access is recorded
