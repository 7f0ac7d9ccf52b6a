"""No prefetch: the service reads the EHR's FHIR server (a real one: Medplum's server in Node, tests/fhir_server)
with the access token the EHR granted, scores as it would have from prefetch, and answers `{"cards": []}` in time,
audited, when that server is slower than the deadline."""

from __future__ import annotations

import json
import time
import uuid

import httpx
import pytest

from careloop.serve.demo import _pick
from tests.fhir_server.harness import make_rsa_key, run_fhir_server

from .harness import Running, free_port, hook_request, patient_resources, prefetch_of
from .harness import write_config as _write_config

ACCESS = "ehr-granted-access-token-0123456789"
DEADLINE_MS = 3000  # generous: a real FHIR server read whole on a busy 2-core CI machine stays well inside it


@pytest.fixture(scope="module")
def setup(trained_bundle, hospital_store, hospital, tmp_path_factory):
    stays, _ = _pick(trained_bundle, hospital_store[0])
    high = stays[0]
    res = patient_resources(hospital / "ndjson", {high["patient_id"]})[high["patient_id"]]
    pem, jwk = make_rsa_key()
    with run_fhir_server(static_token=ACCESS) as fhir:
        entries = [{"resource": r, "request": {"method": "PUT", "url": f"{r['resourceType']}/{r['id']}"}}
                   for group in res.values() for r in group]
        fhir.load_bundle({"resourceType": "Bundle", "type": "batch", "entry": entries})
        folder = tmp_path_factory.mktemp("fhir-fetch")
        port = free_port()
        cfg = _write_config(folder, state=f"sqlite:///{folder / 'state.db'}", jwks={"keys": [jwk]}, port=port,
                            repeat_window_h=1e-6, deadline_ms=DEADLINE_MS)
        doc = cfg.read_text().replace("https://ehr.careloop-test.example/fhir", fhir.base_url)  # the EHR's own base
        cfg.write_text(doc)
        running = Running(trained_bundle, cfg, port)
        try:
            yield running, fhir, (pem, jwk["kid"]), high, res
        finally:
            running.stop()


def _call(running, fhir, key, body):
    from careloop.serve.auth import sign_request_token

    url = f"{running.url}/cds-services/readmission-risk"
    token = sign_request_token(key[0], key[1], fhir.base_url, url)
    return httpx.post(url, json=body, headers={"Authorization": f"Bearer {token}"}, timeout=30)


def _audited(running, body) -> list:
    """The audit records of the call `body` (its kind, outcome and detail: why a call got no card)."""
    return [{k: x.get(k) for k in ("kind", "outcome", "detail", "deferral_reason")}
            for x in running.service.audit.records() if x.get("hook_instance") == body["hookInstance"]]


def _without_prefetch(fhir, high):
    body = hook_request(high["patient_id"], high["encounter_id"], None)
    body["fhirServer"] = fhir.base_url
    body["fhirAuthorization"] = {"access_token": ACCESS, "token_type": "Bearer", "expires_in": 300,
                                 "scope": "patient/*.read", "subject": "careloop-cds"}
    return body


def test_without_prefetch_the_service_reads_the_fhir_server_and_scores_the_same(setup):
    running, fhir, key, high, res = setup
    with_prefetch = _call(running, fhir, key, hook_request(high["patient_id"], high["encounter_id"],
                                                           prefetch_of(res)))
    fhir.reset_stats()
    fetched = _call(running, fhir, key, _without_prefetch(fhir, high))
    assert with_prefetch.status_code == fetched.status_code == 200, fetched.text
    a, b = with_prefetch.json()["cards"], fetched.json()["cards"]
    assert a and a[0]["indicator"] == "warning"
    assert [c["summary"] for c in b] == [c["summary"] for c in a]  # the same risk, to the percent shown
    assert [c["detail"].split("Model bundle")[0] for c in b] == [c["detail"].split("Model bundle")[0] for c in a]
    stats = fhir.stats()  # every prefetch key read with the granted token, the Observations page by page
    assert stats["unauthorized"] == 0
    assert {path.rsplit("/", 1)[-1] for path in stats["requests"]} >= {
        "Encounter", "Condition", "Observation", "MedicationRequest", "Procedure", "Coverage", high["patient_id"]}
    assert stats["requests"]["/fhir/R4/Observation"] > 1


def test_a_fhir_server_slower_than_the_deadline_gets_an_empty_answer_in_time_and_is_audited(setup):
    running, fhir, key, high, _ = setup
    fhir.inject_fault(status=None, count=20, delay_ms=DEADLINE_MS + 2000)
    body = _without_prefetch(fhir, high)
    t0 = time.perf_counter()
    r = _call(running, fhir, key, body)
    took = time.perf_counter() - t0
    fhir.clear_faults()
    assert r.status_code == 200 and r.json() == {"cards": []}
    assert took < DEADLINE_MS / 1000 + 0.5, took
    recs = [x for x in running.service.audit.records(kind="timeout")
            if body["hookInstance"] in json.dumps(x, default=str)]
    assert len(recs) == 1 and "slower than the deadline" in json.dumps(recs[0], default=str)
    assert set(json.loads(recs[0]["detail"]["missing_prefetch"])) == set(running.service.prefetch)  # none was read
    time.sleep(DEADLINE_MS / 1000)  # the abandoned read ends (its own timeout is the deadline)


def test_the_observation_template_selects_on_a_real_fhir_server_what_the_ehr_emulation_sends(setup):
    """The advertised Observation search (`combo-code`: the codes the features read) run by a real FHIR server gives
    exactly the Observations `prefetch_of` sends for it (the benchmark and the demo play the EHR with that), and fewer
    than the whole record."""
    from careloop.serve.features import fetch_prefetch

    running, fhir, _key, high, res = setup
    templates = httpx.get(f"{running.url}/cds-services").json()["services"][0]["prefetch"]
    assert "combo-code=" in templates["observations"]
    fetched = fetch_prefetch(fhir.base_url, ACCESS, high["patient_id"], ["observations"], templates=templates)
    got = sorted(e["resource"]["id"] for e in fetched["observations"]["entry"])
    sent = sorted(e["resource"]["id"] for e in prefetch_of(res, templates)["observations"]["entry"])
    assert got == sent
    assert 0 < len(sent) < len(res["observations"])


def test_a_slow_fhir_server_delays_only_its_own_call(setup):
    """Reads from the FHIR server wait off the scoring thread, within one deadline for all of them: calls with their
    prefetch are answered as fast as ever while another call waits on a slow server."""
    import threading

    running, fhir, key, high, res = setup
    full = hook_request(high["patient_id"], high["encounter_id"], prefetch_of(res))
    fhir.inject_fault(status=None, count=50, delay_ms=DEADLINE_MS + 2000)
    slow: dict = {}

    def wait_on_the_slow_server():
        t0 = time.perf_counter()
        slow["r"] = _call(running, fhir, key, _without_prefetch(fhir, high))
        slow["took"] = time.perf_counter() - t0

    thread = threading.Thread(target=wait_on_the_slow_server)
    thread.start()
    try:
        time.sleep(0.2)  # the slow call is waiting on the FHIR server now
        for _ in range(3):
            t0 = time.perf_counter()
            r = _call(running, fhir, key, dict(full, hookInstance=str(uuid.uuid4())))
            assert r.status_code == 200 and r.json()["cards"][0]["indicator"] == "warning", r.text
            assert time.perf_counter() - t0 < 1.0
        thread.join(timeout=DEADLINE_MS / 1000 + 5)
    finally:
        fhir.clear_faults()
    assert slow["r"].status_code == 200 and slow["r"].json() == {"cards": []}
    assert slow["took"] < DEADLINE_MS / 1000 + 0.5, slow["took"]
    time.sleep(DEADLINE_MS / 1000)  # the abandoned read ends


def _first_page(pf: dict, key: str, next_url: str) -> dict:
    bundle = pf[key]
    return dict(pf, **{key: dict(bundle, entry=bundle["entry"][:1], total=len(bundle["entry"]),
                                 link=[{"relation": "self", "url": next_url}, {"relation": "next", "url": next_url}])})


def test_a_prefetch_of_one_page_is_read_whole_from_the_fhir_server_or_not_scored(setup):
    """A prefetched search Bundle with a `next` link is only part of the record: scoring it would understate the
    history (a lower risk, no warning). With FHIR access the service reads the search whole and scores as from the
    full prefetch; without, it defers and the audit record names the key."""
    running, fhir, key, high, res = setup
    full = prefetch_of(res)
    whole = _call(running, fhir, key, hook_request(high["patient_id"], high["encounter_id"], full))
    assert whole.status_code == 200 and whole.json()["cards"][0]["indicator"] == "warning"
    paged = _first_page(full, "encounters", f"{fhir.base_url}/Encounter?patient={high['patient_id']}&page=2")
    fhir.reset_stats()
    body = _without_prefetch(fhir, high) | {"prefetch": paged}
    r = _call(running, fhir, key, body)
    assert r.status_code == 200
    assert [c["summary"] for c in r.json()["cards"]] == [c["summary"] for c in whole.json()["cards"]]
    assert set(fhir.stats()["requests"]) == {"/fhir/R4/Encounter"}  # only the paged key was read again
    alone = hook_request(high["patient_id"], high["encounter_id"], paged)
    r = _call(running, fhir, key, alone)
    cards = r.json()["cards"]
    assert r.status_code == 200 and [c["indicator"] for c in cards] == ["info"]
    assert "only part of encounters" in cards[0]["detail"]
    rec = [x for x in running.service.audit.records(kind="cds-call") if x["hook_instance"] == alone["hookInstance"]]
    assert len(rec) == 1 and json.loads(rec[0]["detail"]["partial_prefetch"]) == ["encounters"], rec


def test_an_access_token_for_another_patient_is_not_used(setup):
    running, fhir, key, high, _ = setup
    body = _without_prefetch(fhir, high)
    body["fhirAuthorization"]["patient"] = "someone-else"
    fhir.reset_stats()
    r = _call(running, fhir, key, body)
    assert r.status_code == 412 and "the access token is for another patient" in r.text, r.text
    assert not fhir.stats()["requests"]
    body = _without_prefetch(fhir, high)
    body["fhirAuthorization"]["patient"] = high["patient_id"]
    r = _call(running, fhir, key, body)
    assert r.status_code == 200 and [c["indicator"] for c in r.json()["cards"]] == ["warning"], _audited(running, body)


def test_the_kill_switch_flipped_while_the_fhir_server_is_read_stops_that_call(setup):
    """An administrator switches the model off while a call waits on the EHR's FHIR server: that call, scored only
    after the read, shows no card (the switch takes effect on the next scoring, not the next request only)."""
    from .harness import ADMIN_SECRET

    running, fhir, key, high, _ = setup
    service = running.service
    real_fetch = service.fetch
    url = f"{running.url}/admin/models/{service.model_key[:12]}/enabled"
    admin = {"Authorization": f"Bearer {ADMIN_SECRET}"}

    async def fetch_then_switch_off(*args, **kw):
        got = await real_fetch(*args, **kw)
        async with httpx.AsyncClient() as client:
            r = await client.post(url, json={"enabled": False}, headers=admin, timeout=10)
        assert r.json()["enabled"] is False
        return got

    service.fetch = fetch_then_switch_off
    body = _without_prefetch(fhir, high)
    try:
        r = _call(running, fhir, key, body)
    finally:
        service.fetch = real_fetch
        httpx.post(url, json={"enabled": True}, headers=admin, timeout=10)
    assert r.status_code == 200 and r.json() == {"cards": []}
    assert [x["kind"] for x in _audited(running, body)] == ["kill-switch"]
    body = _without_prefetch(fhir, high)  # switched on again: the next call is scored
    r = _call(running, fhir, key, body)
    assert [c["indicator"] for c in r.json()["cards"]] == ["warning"], _audited(running, body)



def test_a_key_neither_sent_nor_read_is_412_and_is_named(setup):
    """Scoring without a key the EHR did not send would understate the history (no conditions: a lower risk, no
    card). Without FHIR access that is the spec's 412, and so it is when the FHIR server cannot be read for it ("the
    service SHALL respond with an HTTP 412" when it "cannot access the FHIR server and the request did not contain
    the necessary prefetch keys"): the answer and the audit record say why; a key the EHR answered with an
    OperationOutcome is read from the server when access was granted."""
    running, fhir, key, high, res = setup
    pf = {k: v for k, v in prefetch_of(res).items() if k != "conditions"}
    alone = hook_request(high["patient_id"], high["encounter_id"], pf)
    r = _call(running, fhir, key, alone)
    assert r.status_code == 412 and "prefetch conditions missing" in r.text, r.text
    rec = _audited(running, alone)
    assert len(rec) == 1 and json.loads(rec[0]["detail"]["missing_prefetch"]) == ["conditions"]
    body = _without_prefetch(fhir, high) | {"prefetch": pf}
    fhir.inject_fault(500, count=3)  # the one read this call makes (Condition) fails
    try:
        r = _call(running, fhir, key, body)
    finally:
        fhir.clear_faults()
    assert r.status_code == 412 and r.json()["resourceType"] == "OperationOutcome", r.text
    assert "the EHR's FHIR server could not be read: conditions (HTTP 500)" in r.text
    (rec,) = _audited(running, body)
    assert json.loads(rec["detail"]["missing_prefetch"]) == ["conditions"] and rec["kind"] == "cds-call"
    assert "conditions (HTTP 500)" in rec["detail"]["note"]
    body = _without_prefetch(fhir, high) | {"prefetch": pf}  # the server answers again: scored as from prefetch
    assert [c["indicator"] for c in _call(running, fhir, key, body).json()["cards"]] == ["warning"]
    outcome = {"resourceType": "OperationOutcome", "issue": [{"severity": "error", "code": "timeout"}]}
    body = _without_prefetch(fhir, high) | {"prefetch": pf | {"conditions": outcome}}
    fhir.reset_stats()
    assert [c["indicator"] for c in _call(running, fhir, key, body).json()["cards"]] == ["warning"]
    assert set(fhir.stats()["requests"]) == {"/fhir/R4/Condition"}


def test_a_fhir_server_without_combo_code_is_asked_for_every_observation_and_scores_the_same(setup):
    """The advertised Observation search uses `combo-code`, which a FHIR server may not support (HAPI answers an
    unknown search parameter with 400). The service then reads the whole Observation search, scores as from
    prefetch, audits that it did, and asks that server the broader search straight away on the next calls."""
    running, fhir, key, high, res = setup
    service = running.service
    whole = _call(running, fhir, key, hook_request(high["patient_id"], high["encounter_id"], prefetch_of(res)))
    pf = {k: v for k, v in prefetch_of(res).items() if k != "observations"}
    refusal = dict(status=400, count=5, query_contains="combo-code",
                   operation_outcome="Unknown search parameter \"combo-code\" for resource type \"Observation\"")
    fhir.inject_fault(**refusal)
    try:
        first = _without_prefetch(fhir, high) | {"prefetch": pf}
        r = _call(running, fhir, key, first)
        assert [f["remaining"] for f in fhir._admin("GET", "/_faults")["faults"]] == [4]  # tried once, refused
        assert r.status_code == 200
        assert [c["summary"] for c in r.json()["cards"]] == [c["summary"] for c in whole.json()["cards"]], \
            _audited(running, first)
        assert json.loads(_audited(running, first)[0]["detail"]["widened_prefetch"]) == ["observations"]
        fhir.reset_stats()
        again = _without_prefetch(fhir, high) | {"prefetch": pf}
        r = _call(running, fhir, key, again)
        assert [c["summary"] for c in r.json()["cards"]] == [c["summary"] for c in whole.json()["cards"]]
        assert [f["remaining"] for f in fhir._admin("GET", "/_faults")["faults"]] == [4]  # not asked again
        assert set(fhir.stats()["requests"]) == {"/fhir/R4/Observation"}
    finally:
        fhir.clear_faults()
        service._narrow_refused.clear()


def test_the_service_reads_fhir_servers_through_one_client_closed_at_shutdown(trained_bundle, tmp_path):
    import asyncio

    from careloop.serve.app import Service
    from careloop.serve.config import load_config

    cfg = _write_config(tmp_path, state=f"sqlite:///{tmp_path / 'state.db'}", jwks={"keys": [make_rsa_key()[1]]},
                        port=free_port())
    service = Service(trained_bundle, load_config(cfg))

    async def serve_and_stop():
        client = service.fhir_client("https://ehr-a.example/fhir/R4")
        assert service.fhir_client("https://ehr-a.example/fhir/R4/tenant-2") is client  # one server: one pool
        other = service.fhir_client("https://ehr-b.example/fhir")  # another EHR does not wait on its pool
        assert other is not client
        await service.close_fhir_clients()
        return client, other

    try:
        assert all(c.is_closed for c in asyncio.run(serve_and_stop()))
        assert all(c.is_closed for c in asyncio.run(serve_and_stop()))  # a new event loop (a restart) gets its own
    finally:
        service.close()
