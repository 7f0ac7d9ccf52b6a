"""The CDS Hooks service over real HTTP on loopback, with real signed JWTs, on the synthetic hospital."""

from __future__ import annotations

import copy
import datetime as dt
import json
import time
import uuid

import httpx
import jsonschema
import jwt
import numpy as np
import pyarrow.compute as pc
import pytest
from fhir.resources.R4B.appointment import Appointment
from fhir.resources.R4B.servicerequest import ServiceRequest
from typer.testing import CliRunner

from careloop.cli import app as cli
from careloop.engines import DuckDBEngine
from careloop.features.engine import extract
from careloop.features.spec import load_feature_set
from careloop.registry import verify
from careloop.serve.app import MAX_BODY, READY_TIMEOUT_S
from careloop.serve.auth import sign_request_token
from careloop.serve.features import PREFETCH, bedside_features, collect, prefetch_templates
from careloop.serve.schema import DISCOVERY, RESPONSE
from careloop.state import StateError
from careloop.tasks.cohort import build_cohort
from careloop.tasks.spec import load_task
from tests.fhir_server.harness import make_ec_key, make_rsa_key

from .harness import (
    ADMIN_SECRET,
    ISS,
    Running,
    as_if_recent,
    assert_no_null_or_empty,
    bearer,
    free_port,
    hook_request,
    patient_resources,
    prefetch_of,
    write_config,
)

SPEC = __import__("pathlib").Path(__file__).resolve().parents[3] / "shared" / "fixtures" / "cds-hooks-spec-examples"


@pytest.fixture(scope="module")
def keys():
    rsa_pem, rsa_jwk = make_rsa_key()
    ec_pem, ec_jwk = make_ec_key()
    return {"rsa": (rsa_pem, rsa_jwk["kid"]), "ec": (ec_pem, ec_jwk["kid"]), "jwks": {"keys": [rsa_jwk, ec_jwk]}}


@pytest.fixture(scope="module")
def stays(hospital_store, trained_bundle):
    """Test-split index stays with their training features and the model's risk."""
    eng = DuckDBEngine(hospital_store[0])
    cohort = build_cohort(load_task("readmission-30d"), eng).table
    cohort = cohort.filter(pc.equal(cohort.column("split"), "test"))
    feats = extract(load_feature_set("readmission"), cohort, eng).table
    model = verify(trained_bundle).model()
    risk = model.predict_proba(feats)
    return feats, risk


@pytest.fixture(scope="module")
def chosen(stays, trained_bundle, hospital):
    feats, risk = stays
    thr = verify(trained_bundle).metadata["operating_point"]["threshold_ci"][1]
    order = np.argsort(-risk)
    high = [int(i) for i in order[:40] if risk[i] > thr + 0.03][:6]
    low = [int(i) for i in order[-6:]]
    rows = feats.take(high + low).to_pylist()
    res = patient_resources(hospital / "ndjson", {r["patient_id"] for r in rows})
    return rows[: len(high)], rows[len(high):], res


@pytest.fixture(scope="module")
def spare(stays, trained_bundle, hospital):
    """A high-risk stay (and its patient's record) that no other test of the module calls about, for a test that
    needs a warning card not suppressed as a repeat."""
    feats, risk = stays
    thr = verify(trained_bundle).metadata["operating_point"]["threshold_ci"][1]
    order = np.argsort(-risk)
    high = [int(i) for i in order[:40] if risk[i] > thr + 0.03]
    assert len(high) >= 7, "the seeded test hospital has fewer than seven high-risk stays: pick the spare otherwise"
    (row,) = feats.take([high[6]]).to_pylist()
    return row, patient_resources(hospital / "ndjson", {row["patient_id"]})


@pytest.fixture(scope="module")
def running(trained_bundle, keys, tmp_path_factory, state_url):
    """The service on loopback, once with SQLite state and once with PostgreSQL (every test runs on both)."""
    folder = tmp_path_factory.mktemp("service")
    port = free_port()
    cfg = write_config(folder, state=state_url, jwks=keys["jwks"], port=port)
    r = Running(trained_bundle, cfg, port)
    r.state_url = state_url
    yield r
    r.stop()


def call(running, body, *, key=None, alg="RS384", service="readmission-risk", headers=None, **kw):
    key = key or running.keys
    pem, kid = key
    aud = f"{running.url}/cds-services/{service}"
    h = headers if headers is not None else bearer(pem, kid, aud, alg=alg, **kw)
    return httpx.post(aud, json=body, headers=h, timeout=30)


# The tests that touch the state store (cards, repeats, jti replay, feedback, the kill switch, the audit log, the
# readiness probe) run on PostgreSQL as well as SQLite; the others exercise no state and run once, on SQLite.
STATEFUL = ("test_high_risk", "test_repeat", "test_es384", "test_feedback", "test_kill_switch", "test_audit_log",
            "test_replay", "test_health")


@pytest.fixture(autouse=True)
def _keys(request, running, keys, state_url):
    if state_url.startswith("postgresql") and not request.node.name.startswith(STATEFUL):
        pytest.skip("stateless: run on SQLite only")
    running.keys = keys["rsa"]


def test_discovery_is_valid_and_every_service_answers(running):
    d = httpx.get(f"{running.url}/cds-services").json()
    jsonschema.validate(d, DISCOVERY)
    assert {s["id"]: s["hook"] for s in d["services"]} == {"readmission-risk": "encounter-discharge",
                                                            "readmission-risk-patient-view": "patient-view"}
    for s in d["services"]:
        assert "{{context.patientId}}" in s["prefetch"]["observations"]
        assert s["prefetch"] == prefetch_templates(running.service.fs)  # Observations of the codes read only
        # every listed service answers its own call (a 401 without a token, never a 404), and its feedback route
        assert httpx.post(f"{running.url}/cds-services/{s['id']}", json={}).status_code == 401
        assert httpx.post(f"{running.url}/cds-services/{s['id']}/feedback", json={}).status_code == 401
    # no unlisted service route answers (API9: an inventory of what is served): the app's routes under
    # /cds-services are discovery, the listed services and their feedback, nothing else; no interactive API pages
    paths = {r.path for r in running.app.routes if r.path.startswith("/cds-services")}
    assert paths == {"/cds-services", "/cds-services/{service_id}", "/cds-services/{service_id}/feedback"}, paths
    assert httpx.post(f"{running.url}/cds-services/no-such-service", json={}).status_code == 404
    assert httpx.get(f"{running.url}/docs").status_code == 404
    assert httpx.get(f"{running.url}/redoc").status_code == 404


@pytest.mark.parametrize("templates", ["advertised", "whole record"])
def test_bedside_features_equal_training_features_to_the_last_digit(stays, trained_bundle, hospital, templates):
    """200 test-split stays, each from what a FHIR server returns for the service's prefetch templates (the
    Observations of the codes the features read) or for the patient's whole record: decoded, mapped (Observations
    only where a feature can read them) and evaluated per stay, against the training features of the same stays
    (DuckDB SQL over the event store)."""
    feats, _ = stays
    rows = feats.slice(0, 200).to_pylist()
    res = patient_resources(hospital / "ndjson", {r["patient_id"] for r in rows})
    b = verify(trained_bundle)
    import pyarrow.parquet as pq

    directory = pq.read_table(b.path / "directory.parquet")
    fs = load_feature_set("readmission")
    asked = prefetch_templates(fs) if templates == "advertised" else PREFETCH
    unread = deferred = 0
    for row in rows:
        pre = collect(prefetch_of(res[row["patient_id"]], asked), row["patient_id"])
        deferred += len(pre.deferred)
        out = bedside_features(fs, pre, row["patient_id"], row["encounter_id"], directory=directory)
        unread += pre.unread
        got = out.row
        assert {c: got[c] for c in fs.columns} == {c: row[c] for c in fs.columns}, row["encounter_id"]
    assert 0 < unread < deferred  # the pruning was exercised, and did not drop everything


def test_high_risk_patient_gets_an_actionable_warning(running, chosen):
    high, _, res = chosen
    row = high[0]
    r = call(running, hook_request(row["patient_id"], row["encounter_id"], prefetch_of(res[row["patient_id"]])))
    assert r.status_code == 200, r.text
    body = r.json()
    jsonschema.validate(body, RESPONSE)
    (card,) = body["cards"]
    assert card["indicator"] == "warning" and len(card["summary"]) < 140
    assert "Main reasons" in card["detail"] and "Intended use" in card["detail"] and "Not for" in card["detail"]
    bundle_id = running.service.bundle.bundle_id
    assert f"version `{bundle_id[:12]}` (its bundle's hash; trained 20" in card["detail"]  # the model's version
    assert card["selectionBehavior"] == "any" and card["overrideReasons"]
    Appointment.model_validate(card["suggestions"][0]["actions"][0]["resource"])
    ServiceRequest.model_validate(card["suggestions"][1]["actions"][0]["resource"])
    assert_no_null_or_empty(body["cards"], "cards")
    assert httpx.get(card["links"][0]["url"]).status_code == 200  # the model card resolves
    assert httpx.get(card["source"]["url"]).status_code == 200  # and so does the card's source (H-01)


def test_a_configured_patient_page_is_the_cards_link(trained_bundle, keys, chosen, tmp_path):
    """`patient_page` in the configuration: every card links to the hospital's page for the patient (its ids
    percent-encoded), warnings and info cards alike."""
    import yaml

    high, _, res = chosen
    row = high[0]
    port = free_port()
    cfg = write_config(tmp_path, state=f"sqlite:///{tmp_path / 'state.db'}", jwks=keys["jwks"], port=port)
    doc = yaml.safe_load(cfg.read_text())
    cfg.write_text(yaml.safe_dump(doc | {"patient_page": "https://ehr.example.org/chart/{patient}?enc={encounter}"}))
    page = Running(trained_bundle, cfg, port)
    try:
        page.keys = keys["rsa"]
        pf = prefetch_of(res[row["patient_id"]])
        (card,) = call(page, hook_request(row["patient_id"], row["encounter_id"], pf)).json()["cards"]
        (info,) = call(page, hook_request(row["patient_id"], row["encounter_id"], pf | {"encounters": None})
                       ).json()["cards"]
    finally:
        page.stop()
    want = {"label": "Patient risk page", "type": "absolute",
            "url": f"https://ehr.example.org/chart/{row['patient_id']}?enc={row['encounter_id']}"}
    assert card["indicator"] == "warning" and want in card["links"]
    assert info["indicator"] == "info" and want in info["links"]
    jsonschema.validate({"cards": [card, info]}, RESPONSE)


def test_low_risk_patient_gets_no_card(running, chosen):
    _, low, res = chosen
    row = low[0]
    r = call(running, hook_request(row["patient_id"], row["encounter_id"], prefetch_of(res[row["patient_id"]])))
    assert r.status_code == 200 and r.json() == {"cards": []}


def test_repeat_card_is_suppressed_within_the_window(running, chosen):
    high, _, res = chosen
    row = high[1]
    body = hook_request(row["patient_id"], row["encounter_id"], prefetch_of(res[row["patient_id"]]))
    first = call(running, body).json()
    body["hookInstance"] = str(uuid.uuid4())
    second = call(running, body).json()
    assert len(first["cards"]) == 1 and second == {"cards": []}


@pytest.mark.parametrize("mutate, reason, pick", [  # a patient each: the same deferral is not shown twice
    (lambda p: p.update(encounters=None), "required data", 2),
    (lambda p: p.update(patient=None), "required data", -3),
    (lambda p: p.update(observations={"resourceType": "OperationOutcome", "issue": []}), "could not supply", -4),
    # a value that is no resource or Bundle would read as "no conditions" and lower the risk: deferred instead
    (lambda p: p.update(conditions="garbage"), "conditions as something other than a FHIR resource or Bundle", 0),
    (lambda p: p.update(medications=[p["medications"]]), "medications as something other than a FHIR", 1),
    (lambda p: p.update(conditions={}), "conditions as something other than a FHIR resource", 3),
    # a search that failed, said by an OperationOutcome inside the Bundle (search mode "outcome")
    (lambda p: p["conditions"]["entry"].append({"resource": {
        "resourceType": "OperationOutcome", "issue": [{"severity": "fatal", "code": "timeout"}]},
        "search": {"mode": "outcome"}}), "could not supply conditions", 4),
])
def test_missing_or_failed_prefetch_defers(running, chosen, mutate, reason, pick):
    high, low, res = chosen
    row = high[pick] if pick >= 0 else low[pick]
    pf = prefetch_of(res[row["patient_id"]])
    mutate(pf)
    body = hook_request(row["patient_id"], row["encounter_id"], pf)
    r = call(running, body)
    assert r.status_code == 200, r.text
    jsonschema.validate(r.json(), RESPONSE)
    assert_no_null_or_empty(r.json()["cards"], "cards")
    (card,) = r.json()["cards"]
    assert card["indicator"] == "info" and "defers to clinical judgement" in card["summary"]
    assert reason in card["detail"]
    (rec,) = [r for r in running.service.audit.records(kind="cds-call") if r["hook_instance"] == body["hookInstance"]]
    assert rec["score"] is None and reason in rec["deferral_reason"]
    if "other than a FHIR" in reason:  # the audit names the keys set apart
        assert any(k in rec["detail"]["malformed_prefetch"] for k in ("conditions", "medications"))


def test_no_prefetch_and_no_fhir_access_is_412(running, chosen):
    high, _, res = chosen
    r = call(running, hook_request(high[0]["patient_id"], high[0]["encounter_id"], None))
    assert r.status_code == 412 and r.json()["resourceType"] == "OperationOutcome"
    pf = prefetch_of(res[high[0]["patient_id"]])
    del pf["encounters"]  # a required key omitted (the client could not get it) is the same
    assert call(running, hook_request(high[0]["patient_id"], high[0]["encounter_id"], pf)).status_code == 412
    pf = prefetch_of(res[high[0]["patient_id"]])
    del pf["coverage"]  # so is any key the features read: scoring without it would understate the record
    r = call(running, hook_request(high[0]["patient_id"], high[0]["encounter_id"], pf))
    assert r.status_code == 412 and "prefetch coverage missing" in r.text
    pf["coverage"] = None  # null: the EHR looked and found nothing, which is data
    assert call(running, hook_request(high[0]["patient_id"], high[0]["encounter_id"], pf)).status_code == 200


def test_child_is_out_of_scope(running, chosen):
    high, _, res = chosen
    row = high[3]
    pf = prefetch_of(res[row["patient_id"]])
    pf["patient"] = dict(pf["patient"], birthDate="2015-06-01")
    (card,) = call(running, hook_request(row["patient_id"], row["encounter_id"], pf)).json()["cards"]
    assert "under 18" in card["detail"]


def _with_disposition(pf: dict, encounter_id: str, code: str) -> dict:
    """The prefetch with the index stay's discharge disposition recorded: an HL7 discharge-disposition code, or
    a two-digit NUBC patient status code alone."""
    system = ("https://www.nubc.org/CodeSystem/PatDischargeStatus" if code.isdigit()
              else "http://terminology.hl7.org/CodeSystem/discharge-disposition")
    out = json.loads(json.dumps(pf))
    for e in out["encounters"]["entry"]:
        if e["resource"]["id"] == encounter_id:
            e["resource"].setdefault("hospitalization", {})["dischargeDisposition"] = {"coding": [
                {"system": system, "code": code}]}
    return out


@pytest.mark.parametrize(("code", "why", "pick"), [  # the same deferral is not shown a patient twice: two rows
    ("hosp", "discharged to hospice", 1), ("51", "discharged to hospice", -2),
    ("other-hcf", "transferred to another acute hospital", 1), ("aadvice", "left against medical advice", 1),
    ("exp", "died in the stay", 1)])
def test_a_stay_the_task_excludes_is_not_scored(running, chosen, code, why, pick):
    """The task's exclusions hold at the bedside: a high-risk stay discharged to hospice (or transferred, or
    leaving against advice, or ending in death) gets no risk, only the deferral that says why; sent home, it is
    scored."""
    high, _, res = chosen
    row = high[pick]
    pf = prefetch_of(res[row["patient_id"]])
    (card,) = call(running, hook_request(row["patient_id"], row["encounter_id"],
                                         _with_disposition(pf, row["encounter_id"], code))).json()["cards"]
    assert card["indicator"] == "info" and why in card["detail"] and "%" not in card["summary"]
    excluded = running.service.audit.records()[-1]
    assert excluded["deferral_reason"].startswith(why) and excluded["score"] is None
    home = hook_request(row["patient_id"], row["encounter_id"], _with_disposition(pf, row["encounter_id"], "home"))
    assert call(running, home).status_code == 200
    scored = running.service.audit.records()[-1]
    assert scored["hook_instance"] == home["hookInstance"]
    assert scored["deferral_reason"] is None and scored["score"] > running.service.threshold


@pytest.mark.parametrize("status", ["cancelled", "entered-in-error"])
def test_a_withdrawn_index_encounter_is_named_as_such(running, chosen, status):
    high, _, res = chosen
    row = high[3]
    pf = json.loads(json.dumps(prefetch_of(res[row["patient_id"]])))
    for e in pf["encounters"]["entry"]:
        if e["resource"]["id"] == row["encounter_id"]:
            e["resource"]["status"] = status
    (card,) = call(running, hook_request(row["patient_id"], row["encounter_id"], pf)).json()["cards"]
    assert card["indicator"] == "info" and f"the context's encounter is {status}" in card["detail"]


def _days_after(when: str, days: float) -> str:
    import datetime as dt

    return (dt.datetime.fromisoformat(when.replace("Z", "+00:00")) + dt.timedelta(days=days)).isoformat()


@pytest.mark.parametrize("death, pick", [("at discharge", 2), ("later", -1), ("no time", -2)])
def test_a_patient_recorded_dead_is_not_scored(running, chosen, death, pick):
    """Dead as the stay ended (the task's exclusion), dead later (a chart opened after the death: patient-view),
    or recorded as deceasedBoolean: no readmission risk, the deferral says why (a patient each: the last two have
    the same reason, and the same deferral is not shown a patient twice within the repeat window)."""
    high, low, res = chosen
    row = high[pick] if pick >= 0 else low[pick]
    pf = prefetch_of(res[row["patient_id"]])
    end = next(e["resource"]["period"]["end"] for e in pf["encounters"]["entry"]
               if e["resource"]["id"] == row["encounter_id"])
    # the record as it stood at this stay's discharge: nothing after it, no death yet
    pf["encounters"]["entry"] = [e for e in pf["encounters"]["entry"] if e["resource"]["period"]["start"] <= end]
    alive = {k: v for k, v in pf["patient"].items() if not k.startswith("deceased")}
    pf["patient"] = dict(alive, **{"at discharge": {"deceasedDateTime": end},
                                           "later": {"deceasedDateTime": _days_after(end, 1 / 24)},
                                           "no time": {"deceasedBoolean": True}}[death])
    hook = "encounter-discharge" if death == "at discharge" else "patient-view"
    if hook == "patient-view":  # the chart opened two hours after the discharge (an hour after the death)
        pf = as_if_recent(pf, row["encounter_id"])
    encounter = row["encounter_id"] if hook == "encounter-discharge" else None
    service = "readmission-risk" if hook == "encounter-discharge" else "readmission-risk-patient-view"
    (card,) = call(running, hook_request(row["patient_id"], encounter, pf, hook=hook), service=service
                   ).json()["cards"]
    assert card["indicator"] == "info"
    assert ("died in the stay" if death == "at discharge" else "death is recorded") in card["detail"]


def _record_to_stay(res: dict, row: dict) -> dict:
    """The prefetch of a patient's record as it stood at the end of the stay `row` (no later encounter, no death):
    the chart a clinician opens during it or just after it."""
    pf = copy.deepcopy(prefetch_of(res[row["patient_id"]]))  # the record is shared with other tests
    for k in ("deceasedDateTime", "deceasedBoolean"):
        pf["patient"].pop(k, None)
    end = next(e["resource"]["period"]["end"] for e in pf["encounters"]["entry"]
               if e["resource"]["id"] == row["encounter_id"])
    pf["encounters"]["entry"] = [e for e in pf["encounters"]["entry"] if e["resource"]["period"]["start"] <= end]
    return pf


def test_a_chart_opened_during_a_stay_reads_its_latest_values_not_values_at_discharge(running, spare, monkeypatch):
    """The reasons of a stay still open are phrased as its latest values; the service tells `reasons` so (and a
    discharge's, tested elsewhere, as values at discharge)."""
    import careloop.explain

    asked = []
    original = careloop.explain.reasons

    def spy(*args, **kw):
        asked.append(kw.get("ended"))
        return original(*args, **kw)

    monkeypatch.setattr(careloop.explain, "reasons", spy)
    row, res = spare
    pf = _record_to_stay(res, row)
    still_open = copy.deepcopy(as_if_recent(pf, row["encounter_id"]))
    for e in still_open["encounters"]["entry"]:
        if e["resource"]["id"] == row["encounter_id"]:  # its end not recorded yet
            del e["resource"]["period"]["end"]
            e["resource"]["status"] = "in-progress"
    body = hook_request(row["patient_id"], None, still_open, hook="patient-view")
    opened = call(running, body, service="readmission-risk-patient-view").json()
    (rec,) = _records(running, "cds-call", body["hookInstance"])
    assert [c["indicator"] for c in opened["cards"]] == ["warning"], rec
    reasons = [line for line in opened["cards"][0]["detail"].splitlines() if line.startswith("- ")]
    assert reasons and not [r for r in reasons if "at discharge" in r], reasons
    assert asked == [False]


def test_a_chart_opened_shows_the_current_stay_only(running, chosen):
    """patient-view: a stay that ended two hours ago is scored (a warning for a high-risk one, its follow-up from
    now); the same record as it stands years later gets no card (a stay long over is no discharge to warn about),
    and the audit record says why; a record with no inpatient stay is quiet too."""
    high, _, res = chosen
    row = high[5] if len(high) > 5 else high[2]
    pf = _record_to_stay(res, row)
    view = "readmission-risk-patient-view"
    recent = call(running, hook_request(row["patient_id"], None, as_if_recent(pf, row["encounter_id"]),
                                        hook="patient-view"), service=view).json()
    assert [c["indicator"] for c in recent["cards"]] == ["warning"], recent
    reasons = [line for line in recent["cards"][0]["detail"].splitlines() if line.startswith("- ")]
    assert not [r for r in reasons if r.startswith("- latest ")], reasons  # the stay has ended: "at discharge"
    # the audit record names the stay the chart's card was about (no encounter was in the hook's context)
    (scored,) = [r for r in running.service.audit.records(kind="cds-call")
                 if r["cards"] and r["cards"][0] == f"{recent['cards'][0]['uuid']}|warning"]
    assert scored["encounter"] == row["encounter_id"] and scored["patient"] == row["patient_id"]
    old = hook_request(row["patient_id"], None, pf, hook="patient-view")
    assert call(running, old, service=view).json() == {"cards": []}
    (rec,) = [r for r in running.service.audit.records(kind="cds-call") if r["hook_instance"] == old["hookInstance"]]
    assert rec["score"] is None and rec["detail"]["note"].startswith("no current inpatient stay (the latest ended")
    outpatient = copy.deepcopy(pf)
    for e in outpatient["encounters"]["entry"]:
        e["resource"]["class"]["code"] = "AMB"
    none = hook_request(row["patient_id"], None, as_if_recent(outpatient, row["encounter_id"]), hook="patient-view")
    assert call(running, none, service=view).json() == {"cards": []}


def test_another_patients_data_is_not_used(running, chosen):
    high, _, res = chosen
    a, b = high[4], high[5] if len(high) > 5 else high[0]
    pf = prefetch_of(res[a["patient_id"]])
    pf["conditions"]["entry"] += [{"resource": r} for r in res[b["patient_id"]]["conditions"]]
    body, rid = hook_request(a["patient_id"], a["encounter_id"], pf), str(uuid.uuid4())
    aud = f"{running.url}/cds-services/readmission-risk"
    token = sign_request_token(*running.keys, ISS, aud)
    r = httpx.post(aud, json=body, headers={"Authorization": f"Bearer {token}", "X-Request-Id": rid}, timeout=30)
    assert r.status_code == 200
    # the anomaly is audited (C-13), on a record that carries the call's correlation ids and model hash
    (rec,) = [x for x in running.service.audit.records(kind="cds-call") if x["request_id"] == rid]
    assert rec["detail"]["foreign_resources"] == str(len(res[b["patient_id"]]["conditions"]))
    assert (rec["patient"], rec["encounter"], rec["hook_instance"]) == (a["patient_id"], a["encounter_id"],
                                                                        body["hookInstance"])
    assert rec["jti"] == jwt.decode(token, options={"verify_signature": False})["jti"] and rec["client"] == ISS
    assert rec["model_hash"] == running.service.bundle.bundle_id and rec["score"] is not None
    clean = collect(prefetch_of(res[a["patient_id"]]), a["patient_id"])
    mixed = collect(pf, a["patient_id"])
    assert mixed.foreign == len(res[b["patient_id"]]["conditions"]) and sorted(mixed.used) == sorted(clean.used)
    fs = load_feature_set("readmission")
    assert bedside_features(fs, mixed, a["patient_id"], a["encounter_id"]).row == \
        bedside_features(fs, clean, a["patient_id"], a["encounter_id"]).row


@pytest.mark.parametrize("example", ["docs-hook-encounter-discharge.01.hook-context.json",
                                     "docs-hook-patient-view.01.hook-context.json",
                                     "docs-hook-patient-view.02.hook-context.json"])
def test_spec_hook_contexts_are_accepted(running, example):
    ctx = json.loads((SPEC / example).read_text())["context"]
    service = "readmission-risk" if "encounterId" in ctx and "discharge" in example else \
        "readmission-risk-patient-view"
    hook = "encounter-discharge" if service == "readmission-risk" else "patient-view"
    body = {"hook": hook, "hookInstance": str(uuid.uuid4()), "context": ctx,
            "prefetch": dict.fromkeys(running.service.prefetch)}  # every key sent, as null: no data
    r = call(running, body, service=service)
    assert r.status_code == 200, r.text
    jsonschema.validate(r.json(), RESPONSE)


def test_spec_request_example_is_accepted(running):
    """The spec's example request is valid and is answered as the spec says: it prefetches only a `patientToGreet`
    and names a FHIR server this client's token may not have read (not under its issuer: never fetched), so the
    data the model needs cannot be had, which is the spec's 412; the answer and the audit record say which."""
    body = json.loads((SPEC / "hl7ig-index.02.hook-request.json").read_text())
    r = call(running, body, service="readmission-risk-patient-view")
    assert r.status_code == 412 and r.json()["resourceType"] == "OperationOutcome", r.text
    assert "prefetch patient, encounters" in r.text and "not one this client's token may read" in r.text
    (rec,) = [x for x in running.service.audit.records() if x["hook_instance"] == body["hookInstance"]]
    assert rec["kind"] == "cds-call" and "patient" in json.loads(rec["detail"]["missing_prefetch"])


@pytest.mark.parametrize("case", ["none", "expired", "hs256", "wrong-aud", "unknown-iss", "garbage"])
def test_bad_tokens_get_a_bare_401(running, keys, case):
    pem, kid = keys["rsa"]
    aud = f"{running.url}/cds-services/readmission-risk"
    token = {"none": None,
             "expired": sign_request_token(pem, kid, ISS, aud, now=__import__("time").time() - 4000),
             "hs256": None, "wrong-aud": sign_request_token(pem, kid, ISS, aud + "-other"),
             "unknown-iss": sign_request_token(pem, kid, "https://evil.example", aud), "garbage": "abc.def.ghi"}[case]
    if case == "hs256":
        import jwt

        token = jwt.encode({"iss": ISS, "aud": aud, "jti": "x", "exp": 2**31}, "secret", algorithm="HS256",
                           headers={"kid": kid})
    rid = str(uuid.uuid4())
    headers = {"X-Request-Id": rid} | ({} if token is None else {"Authorization": f"Bearer {token}"})
    r = call(running, hook_request("p", "e", None), headers=headers)
    assert r.status_code == 401 and r.content in (b"{}", b"")
    assert r.headers["www-authenticate"] == "Bearer"  # RFC 6750: the challenge, with no error named
    # audited (checklist C-03): a serious failure; the client is the issuer the token names when it is on the
    # allowlist (claimed: its signature was not what failed, or was never checked), else unidentified; no token
    (rec,) = [x for x in running.service.audit.records(kind="auth-failure") if x["request_id"] == rid]
    assert rec["outcome"] == "serious" and rec["detail"]["reason"]
    claimed = case in ("expired", "wrong-aud")  # (a symmetric alg is refused before its claims are read)
    assert rec["client"] == (ISS if claimed else None), rec
    assert rec["jti"] is None and rec["detail"]["signature_verified"] == "false"
    assert (token or "eyJ") not in json.dumps(rec, default=str) and "eyJ" not in json.dumps(rec, default=str)


def test_es384_accepted_and_replay_refused(running, keys, chosen):
    _, low, res = chosen
    row = low[1]
    aud = f"{running.url}/cds-services/readmission-risk"
    token = sign_request_token(keys["ec"][0], keys["ec"][1], ISS, aud, alg="ES384")
    body = hook_request(row["patient_id"], row["encounter_id"], prefetch_of(res[row["patient_id"]]))
    h = {"Authorization": f"Bearer {token}"}
    assert httpx.post(aud, json=body, headers=h, timeout=30).status_code == 200
    rid = str(uuid.uuid4())
    assert httpx.post(aud, json=body, headers=h | {"X-Request-Id": rid}, timeout=30).status_code == 401
    # the replay's record names the client and the replayed jti: its signature verified
    (rec,) = [x for x in running.service.audit.records(kind="auth-failure") if x["request_id"] == rid]
    jti = jwt.decode(token, options={"verify_signature": False})["jti"]
    assert (rec["client"], rec["jti"], rec["detail"]["signature_verified"]) == (ISS, jti, "true"), rec


@pytest.mark.parametrize("body, status", [
    ({"hook": "encounter-discharge", "context": {"patientId": "p", "encounterId": "e"}}, 400),  # no hookInstance
    ({"hook": "patient-view", "hookInstance": str(uuid.uuid4()), "context": {"patientId": "p", "encounterId": "e"}},
     400),  # the wrong hook for this service (with a valid hookInstance, so that the hook is what is refused)
    ({"hook": "encounter-discharge", "hookInstance": str(uuid.uuid4()),
      "context": {"patientId": "p", "encounterId": "e"},
      "fhirAuthorization": {"access_token": "t", "token_type": "Bearer", "expires_in": 30, "scope": "s",
                            "subject": "c"}}, 400),  # fhirAuthorization without fhirServer
    ([1, 2, 3], 400),
])
def test_malformed_requests_get_4xx_with_an_outcome(running, body, status):
    r = call(running, body)
    assert r.status_code == status and r.json()["resourceType"] == "OperationOutcome"
    said = r.json()["issue"][0]["diagnostics"]
    if isinstance(body, dict) and "fhirAuthorization" in body:
        assert "fhirServer is required when fhirAuthorization is given" in said, said
    elif isinstance(body, dict) and body["hook"] == "patient-view":
        assert said.startswith("hook: this service answers 'encounter-discharge' only"), said
    elif isinstance(body, dict):
        assert "hookInstance" in said, said


def test_health_and_readiness_for_a_load_balancer_need_no_credential_and_leave_no_audit_record(running,
                                                                                              monkeypatch):
    before = running.service.audit.head()["seq"]
    assert httpx.get(f"{running.url}/healthz").json() == {"status": "ok"}
    ready = httpx.get(f"{running.url}/readyz")
    assert ready.status_code == 200 and ready.json() == {"status": "ready"}
    assert running.service.audit.head()["seq"] == before  # a probe every few seconds must not flood the log

    def broken() -> None:
        raise StateError("database error (OperationalError): could not connect to server at 10.0.0.9")

    monkeypatch.setattr(running.service.store, "ping", broken)
    down = httpx.get(f"{running.url}/readyz")
    assert down.status_code == 503 and down.json() == {"status": "not ready", "failing": ["state store: an error"]}

    def stuck() -> None:
        time.sleep(READY_TIMEOUT_S + 1)

    monkeypatch.setattr(running.service.store, "ping", stuck)
    t0 = time.perf_counter()
    slow = httpx.get(f"{running.url}/readyz", timeout=30)
    assert slow.status_code == 503 and slow.json()["failing"] == ["state store: no answer"]
    assert time.perf_counter() - t0 < READY_TIMEOUT_S + 0.9  # answered at the timeout, not when the read returns
    assert httpx.get(f"{running.url}/healthz").status_code == 200  # alive all the same


def test_oversized_request_is_413(running):
    big = {"hook": "encounter-discharge", "hookInstance": "x", "context": {"patientId": "p", "encounterId": "e"},
           "prefetch": {"patient": {"resourceType": "Patient", "id": "p", "text": "x" * (6 * 1024 * 1024)}}}
    assert call(running, big).status_code == 413


def test_a_prefetch_of_a_hundred_thousand_entries_is_refused_and_one_just_under_the_limit_answered_in_time(
        running, chosen):
    """Checklist C-20: 10^5 prefetched entries get 413 at once; 15,000 Observations of a feature's code within the
    stay (4.7 MB, under the 5 MB limit) are answered within the deadline (scored, or `{"cards": []}` when late)."""
    _, low, res = chosen
    row = low[-1]
    entries = ",".join(f'{{"resource":{{"resourceType":"Observation","id":"o{i}"}}}}' for i in range(100_000))
    flood = '{"resourceType":"Bundle","type":"searchset","entry":[' + entries + "]}"
    body = hook_request(row["patient_id"], row["encounter_id"], prefetch_of(res[row["patient_id"]]))
    body["prefetch"]["observations"] = "FLOOD"
    raw = json.dumps(body).replace('"FLOOD"', flood, 1)
    aud = f"{running.url}/cds-services/readmission-risk"
    r = httpx.post(aud, content=raw, headers={**bearer(*running.keys, aud), "content-type": "application/json"},
                   timeout=30)
    assert r.status_code == 413 and r.json()["resourceType"] == "OperationOutcome"
    start = next(e["period"]["start"] for e in res[row["patient_id"]]["encounters"] if e["id"] == row["encounter_id"])
    many = [{"resourceType": "Observation", "id": f"na{i}", "status": "final",
             "code": {"coding": [{"system": "http://loinc.org", "code": "2951-2"}]},
             "subject": {"reference": f"Patient/{row['patient_id']}"}, "effectiveDateTime": start,
             "valueQuantity": {"value": 140, "unit": "mmol/L"}} for i in range(15_000)]
    body = hook_request(row["patient_id"], row["encounter_id"],
                        prefetch_of(res[row["patient_id"]] | {"observations": many}))
    assert 4_500_000 < len(json.dumps(body)) < MAX_BODY
    t0 = time.perf_counter()
    r = call(running, body)
    elapsed_ms = (time.perf_counter() - t0) * 1000
    assert r.status_code == 200 and isinstance(r.json()["cards"], list)
    assert elapsed_ms < running.service.config.deadline_ms + 1000  # the deadline holds, whatever the load


def test_feedback_validated_idempotent_and_stored(running, chosen):
    high, _, res = chosen
    row = high[0]
    body = hook_request(row["patient_id"], row["encounter_id"], prefetch_of(res[row["patient_id"]]))
    cards = call(running, body).json()["cards"]
    if not cards:  # suppressed as a repeat of the card issued earlier in this module: issue one for another stay
        row = high[-1]
        body = hook_request(row["patient_id"], row["encounter_id"], prefetch_of(res[row["patient_id"]]))
        cards = call(running, body).json()["cards"]
    card = cards[0]
    url = f"{running.url}/cds-services/readmission-risk/feedback"

    def post(fb, **kw):
        pem, kid = running.keys
        return httpx.post(url, json={"feedback": [fb]}, headers=bearer(pem, kid, url, **kw), timeout=10)

    when = dt.datetime.now(dt.UTC).isoformat()  # after the card was shown
    assert post({"card": card["uuid"], "outcome": "accepted", "outcomeTimestamp": when}).status_code == 400
    assert post({"card": str(uuid.uuid4()), "outcome": "overridden", "outcomeTimestamp": when}).status_code == 404
    fb = {"card": card["uuid"], "outcome": "overridden", "outcomeTimestamp": when,
          "overrideReason": {"reason": card["overrideReasons"][0], "userComment": "seen in clinic"}}
    assert post(fb).json() == {"received": 1, "new": 1}
    assert post(fb).json() == {"received": 1, "new": 0}
    no_jwt = httpx.post(url, json={"feedback": [fb]}, timeout=10)
    assert no_jwt.status_code == 401 and no_jwt.headers["www-authenticate"] == "Bearer"
    stored = running.service.store.feedback("readmission-risk")
    assert sum(f.get("card") == card["uuid"] for f in stored) == 1


def test_kill_switch_needs_an_admin_and_takes_effect_at_once(running, chosen, keys):
    high, _, res = chosen
    row = high[-2]
    key = running.service.model_key[:12]
    url = f"{running.url}/admin/models/{key}/enabled"
    pem, kid = keys["rsa"]
    ehr = bearer(pem, kid, url)
    assert httpx.post(url, json={"enabled": False}, headers=ehr).status_code == 403  # C-19: an EHR token, refused
    no_secret = httpx.post(url, json={"enabled": False})  # no credential at all
    assert no_secret.status_code == 401 and no_secret.headers["www-authenticate"] == "Bearer"
    assert httpx.post(url, json={"enabled": False}, headers={"Authorization": "Bearer guess"}).status_code == 401
    admin = {"Authorization": f"Bearer {ADMIN_SECRET}"}
    assert httpx.post(url, json={"enabled": False}, headers=admin).json()["enabled"] is False
    body = hook_request(row["patient_id"], row["encounter_id"], prefetch_of(res[row["patient_id"]]))
    assert call(running, body).json() == {"cards": []}
    assert httpx.post(url, json={"enabled": True}, headers=admin).json()["enabled"] is True
    body["hookInstance"] = str(uuid.uuid4())
    assert call(running, body).status_code == 200


def test_audit_log_records_everything_without_tokens_and_verifies(running):
    records = running.service.audit.records()
    kinds = {json.dumps(r, default=str).count("auth-failure") > 0 for r in records}
    assert kinds == {True, False}
    text = json.dumps(records, default=str)
    assert "eyJ" not in text and "Bearer" not in text and ADMIN_SECRET not in text
    res = CliRunner().invoke(cli, ["audit", "verify", "--state", running.state_url, "--json"])
    assert res.exit_code == 0, res.output
    assert json.loads(res.output)["ok"] is True


def _slow(monkeypatch, running, seconds: float, deadline_ms: int):
    """The model takes `seconds` per call and the deadline is `deadline_ms` (for this test only)."""
    model = running.service.model
    real = model.predict_proba_rows

    def slow(rows):
        import time

        time.sleep(seconds)
        return real(rows)

    monkeypatch.setattr(model, "predict_proba_rows", slow)
    shorter = running.service.config.model_copy(update={"deadline_ms": deadline_ms})
    monkeypatch.setattr(running.service, "config", shorter)


def _records(running, kind: str, hook_instance: str) -> list[dict]:
    return [r for r in running.service.audit.records(kind=kind) if hook_instance in json.dumps(r, default=str)]


def test_a_model_slower_than_the_deadline_is_answered_empty_in_time_and_audited(running, chosen, monkeypatch):
    import time

    high, _, res = chosen
    row = high[0]
    _slow(monkeypatch, running, 1.0, 300)
    body = hook_request(row["patient_id"], row["encounter_id"], prefetch_of(res[row["patient_id"]]))
    t0 = time.perf_counter()
    r = call(running, body)
    took = time.perf_counter() - t0
    assert r.status_code == 200 and r.json() == {"cards": []}
    assert took < 0.3 + 0.25, took  # the deadline, plus the request's own transfer and the audit write
    (rec,) = _records(running, "timeout", body["hookInstance"])
    assert "slower than the deadline" in json.dumps(rec, default=str)
    time.sleep(1.0)  # let the abandoned call finish before the next test


def test_overload_is_shed_in_time_and_every_shed_call_is_audited(running, chosen, monkeypatch):
    """Twelve calls at once against a model that takes 150 ms and a 400 ms deadline: the scoring thread can finish
    two or three in time; every call is answered within the deadline (plus transfer), none late, and each call
    answered empty is in the audit log as a timeout (shed at once when the queue predicts it would be late)."""
    import time
    from concurrent.futures import ThreadPoolExecutor

    high, low, res = chosen
    _slow(monkeypatch, running, 0.15, 400)
    running.service.cost_s = 0.15  # the moving average would learn it after a few calls
    rows = (high + low) * 2
    bodies = [hook_request(r["patient_id"], r["encounter_id"], prefetch_of(res[r["patient_id"]])) for r in rows[:12]]
    pem, kid = running.keys
    url = f"{running.url}/cds-services/readmission-risk"
    ready = [(json.dumps(b).encode(), {**bearer(pem, kid, url), "Content-Type": "application/json"}) for b in bodies]
    client = httpx.Client(limits=httpx.Limits(max_connections=12), timeout=30)
    client.get(f"{running.url}/cds-services")

    def one(item):
        content, headers = item
        t0 = time.perf_counter()
        r = client.post(url, content=content, headers=headers)
        return r, time.perf_counter() - t0

    with ThreadPoolExecutor(12) as pool:
        out = list(pool.map(one, ready))
    client.close()
    assert all(r.status_code == 200 for r, _ in out)
    assert max(t for _, t in out) < 0.4 + 0.4, [round(t, 3) for _, t in out]
    shed, scored = [], 0
    for b, (r, _) in zip(bodies, out, strict=True):  # each call is audited once: scored, or a timeout
        t, c = _records(running, "timeout", b["hookInstance"]), _records(running, "cds-call", b["hookInstance"])
        assert len(t) + len(c) == 1, b["hookInstance"]
        scored += len(c)
        if t:
            assert r.json() == {"cards": []}
            shed.append(json.dumps(t[0], default=str))
    assert 1 <= scored <= 4 and len(shed) == len(bodies) - scored
    assert any("overloaded" in x for x in shed)
    time.sleep(0.6)


def test_replay_to_another_worker_is_refused_when_its_claim_is_committed(running, chosen, trained_bundle, keys,
                                                                          tmp_path):
    """Two workers on one state store (as `--workers 2` runs): a token used at one and replayed at the other is
    refused there (401) by the jti claim in the group commit, and recorded as an authentication failure."""
    high, _, res = chosen
    row = high[0]
    cfg = write_config(tmp_path, state=running.state_url, jwks=keys["jwks"], port=running.port)  # same base URL
    other = Running(trained_bundle, cfg, free_port())
    try:
        pem, kid = running.keys
        aud = f"{running.url}/cds-services/readmission-risk"
        h = bearer(pem, kid, aud)
        body = hook_request(row["patient_id"], row["encounter_id"], prefetch_of(res[row["patient_id"]]))
        assert httpx.post(aud, json=body, headers=h, timeout=30).status_code == 200
        replay = httpx.post(f"{other.url}/cds-services/readmission-risk", json=body, headers=h, timeout=30)
        assert replay.status_code == 401 and replay.json() == {}
        failures = other.service.audit.records(kind="auth-failure")
        assert any("replayed" in json.dumps(r, default=str) for r in failures)
    finally:
        other.stop()


def test_the_demo_picks_stays_that_show_each_answer(trained_bundle, hospital_store, stays):
    """`make demo` shows a warning card, a quiet low-risk discharge and a deferral: its high-risk stay must be within
    the training ranges (else the service defers) and above the threshold band, its low-risk one below it."""
    from careloop.serve.app import outside_training
    from careloop.serve.demo import _pick

    picked, threshold = _pick(trained_bundle, hospital_store[0])
    meta = verify(trained_bundle).metadata
    lo, hi = meta["operating_point"]["threshold_ci"]
    feats, _ = stays
    by_id = {r["encounter_id"]: r for r in feats.to_pylist()}
    high, low = picked[0], picked[-1]
    assert high["risk"] >= hi and outside_training(by_id[high["encounter_id"]], meta["input_ranges"]) is None
    assert low["risk"] < lo and outside_training(by_id[low["encounter_id"]], meta["input_ranges"]) is None
    assert lo <= threshold <= hi


def test_inputs_far_outside_the_training_data_defer_rather_than_extrapolate():
    from careloop.serve.app import outside_training

    ranges = {"los_days": (0.5, 20.5), "prior_admissions": (0, 4), "flag": (0, 0)}  # widths 20, 4, 0
    assert outside_training({"los_days": 40, "prior_admissions": 3, "flag": 0}, ranges) is None  # one, a little out
    assert outside_training({"los_days": 120, "prior_admissions": 3}, ranges) is None  # one, within 5 widths
    assert outside_training({"los_days": 121, "prior_admissions": 3}, ranges) == "los_days"  # one, beyond them
    assert outside_training({"los_days": 40, "prior_admissions": 7}, ranges) == "los_days, prior_admissions"
    assert outside_training({"flag": 2, "prior_admissions": 7}, ranges) == "prior_admissions, flag"
    assert outside_training({"flag": 1, "los_days": None, "prior_admissions": "x"}, ranges) is None


def test_a_stay_far_longer_than_any_in_training_gets_a_deferral_not_a_score(running, chosen):
    """A discharge 2 years after admission (an encounter left open in the EHR): the length of stay is far beyond
    anything the model was trained on, so it defers (a tree model would answer with its extreme leaf)."""
    _, low, res = chosen
    row = low[0]
    pf = copy.deepcopy(prefetch_of(res[row["patient_id"]]))  # the record is shared with other tests
    for e in pf["encounters"]["entry"]:
        if e["resource"]["id"] == row["encounter_id"]:
            start = dt.datetime.fromisoformat(e["resource"]["period"]["start"])
            e["resource"]["period"]["end"] = (start + dt.timedelta(days=730)).isoformat()
    body = hook_request(row["patient_id"], row["encounter_id"], pf)
    (card,) = call(running, body).json()["cards"]
    assert card["indicator"] == "info" and "inputs outside the training data (los_days" in card["detail"], card


def test_a_category_the_model_has_no_level_for_gets_a_deferral_not_a_guess(running, chosen):
    """A sex recorded as "other", or a discharge disposition not recorded, where training saw neither (and pooled no
    rare values): the logistic model would read it as its reference level (female, home), so the service defers and
    says which input."""
    pre = running.service.model.preprocessor
    levels = {c.name: c.categories for c in pre.categorical}
    assert "other" not in levels["sex"] and "__other__" not in levels["sex"]
    assert "__missing__" not in levels["discharge_disposition"]
    _, low, res = chosen
    row = low[1]
    pf = copy.deepcopy(prefetch_of(res[row["patient_id"]]))  # the record is shared with other tests
    pf["patient"] = dict(pf["patient"], gender="other")
    for e in pf["encounters"]["entry"]:
        if e["resource"]["id"] == row["encounter_id"]:
            e["resource"]["hospitalization"].pop("dischargeDisposition")
    body = hook_request(row["patient_id"], row["encounter_id"], pf)
    (card,) = call(running, body).json()["cards"]
    assert card["indicator"] == "info", card
    assert ("inputs outside the training data (sex 'other', a value never seen in training; discharge_disposition "
            "missing, never missing in training)") in card["detail"], card["detail"]
    (rec,) = _records(running, "cds-call", body["hookInstance"])
    assert "sex 'other'" in json.dumps(rec, default=str)
    assert rec["network"] == "127.0.0.1"  # the EHR's address (agent.network), from the loopback connection
    # the same stay as recorded is scored
    body = hook_request(row["patient_id"], row["encounter_id"], prefetch_of(res[row["patient_id"]]))
    assert "outside the training data" not in json.dumps(call(running, body).json())


def test_unknown_levels_names_each_input_without_a_level_of_its_own():
    import pyarrow as pa

    from careloop.modeling._frame import Preprocessor

    t = pa.table({"sex": ["female"] * 30 + ["male"] * 30,
                  "lang": ["en"] * 40 + ["es"] * 19 + ["ht"],  # es and ht are rare: pooled into OTHER
                  "housing": ["own"] * 59 + [None]})
    pre = Preprocessor.fit(t, ["sex", "lang", "housing"])
    assert pre.unknown_levels({"sex": "male", "lang": "zh", "housing": None}) == []  # zh -> OTHER, None -> MISSING
    assert pre.unknown_levels({"sex": "other", "lang": "en", "housing": "own"}) == [("sex", "other")]
    assert pre.unknown_levels({"sex": None, "lang": None, "housing": "rent"}) == [("sex", None), ("lang", None),
                                                                                ("housing", "rent")]
    assert pre.unknown_levels({"sex": True, "lang": 2.0, "housing": "own"}) == [("sex", True)]  # read as text
    # during a stay (patient-view, the dashboard) a missing value is read as the model reads one; unseen ones are not
    assert pre.unknown_levels({"sex": None, "lang": None, "housing": "rent"}, missing=False) == [("housing", "rent")]


def test_when_the_audit_log_cannot_be_written_no_call_is_answered_as_scored(running, chosen, monkeypatch):
    """The group commit failing (the database gone) must not let a scored answer out unaudited: a 503 with an
    OperationOutcome, and the service answers again once the database is back."""
    high, _, res = chosen
    row = high[3]
    body = hook_request(row["patient_id"], row["encounter_id"], prefetch_of(res[row["patient_id"]]))
    journal = running.service.journal

    def broken(batch):
        for w in batch:
            w.future.set_exception(RuntimeError("database is gone"))

    monkeypatch.setattr(journal, "_commit", broken)
    r = call(running, body)
    assert r.status_code == 503 and r.json()["resourceType"] == "OperationOutcome"
    assert "audit log" in r.json()["issue"][0]["diagnostics"]
    monkeypatch.undo()
    body["hookInstance"] = str(uuid.uuid4())
    assert call(running, body).status_code == 200


def test_when_the_state_store_cannot_be_read_a_call_gets_503_not_a_500(running, chosen, monkeypatch):
    """Whether the model is switched off cannot be known with the store down: the call is not scored, and the
    answer is a 503 with an OperationOutcome (not a 500 and its traceback); the store back, it is scored."""
    high, _, res = chosen
    row = high[4]
    body = hook_request(row["patient_id"], row["encounter_id"], prefetch_of(res[row["patient_id"]]))

    def gone(model_key):
        raise StateError("database error (OperationalError): could not connect to server at 10.0.0.9")

    monkeypatch.setattr(running.service.store, "policy", gone)
    r = call(running, body)
    assert r.status_code == 503 and r.json()["resourceType"] == "OperationOutcome"
    assert "state store" in r.json()["issue"][0]["diagnostics"] and "10.0.0.9" not in r.text
    monkeypatch.undo()
    body["hookInstance"] = str(uuid.uuid4())
    assert call(running, body).status_code == 200


def test_shutdown_writes_the_queued_audit_records(trained_bundle, keys, tmp_path):
    """Stopping the server (uvicorn's lifespan shutdown) waits for the journal to write what it holds, then ends its
    thread: here the writer is held back (the store's write lock taken) while calls are queued and the server told
    to stop, and only released a second later."""
    import time

    port = free_port()
    cfg = write_config(tmp_path, state=f"sqlite:///{tmp_path / 'state.db'}", jwks=keys["jwks"], port=port)
    r = Running(trained_bundle, cfg, port)
    service = r.service
    before = service.audit.head()["seq"]
    works = [service.work("cds-call", "success", claims=None, service="readmission-risk") for _ in range(5)]
    with service.store._lock:  # the writer blocks on it
        for w in works:
            service.journal.submit(w)
        r.server.should_exit = True
        time.sleep(1.0)
        assert r.thread.is_alive()  # the shutdown waits for the journal
    r.thread.join(timeout=20)
    assert not r.thread.is_alive() and not service.journal._thread.is_alive()
    assert all(w.future.done() and w.future.result() is True for w in works)
    assert service.audit.head()["seq"] == before + 5
    service.close()


@pytest.mark.parametrize("mutate, reason", [
    (lambda p: p["patient"].pop("birthDate"), "birth date is missing"),
    (lambda p: p.update(patient=dict(p["patient"], id="someone-else")), "another patient than the one in context"),
])
def test_a_missing_birth_date_or_anothers_patient_is_named_not_taken_for_a_child(running, chosen, mutate, reason):
    high, _, res = chosen
    row = high[3]
    pf = prefetch_of(res[row["patient_id"]])
    pf["patient"] = dict(pf["patient"])
    mutate(pf)
    (card,) = call(running, hook_request(row["patient_id"], row["encounter_id"], pf)).json()["cards"]
    assert card["indicator"] == "info" and reason in card["detail"] and "under 18" not in card["detail"]


def test_json_nested_too_deeply_is_a_400_and_audited(running):
    head = f'{{"hook": "encounter-discharge", "hookInstance": "{uuid.uuid4()}", "context": {{"patientId": "p", '
    raw = head + '"encounterId": "e", "deep": ' + "[" * 3000 + '"x"' + "]" * 3000 + "}}"
    url = f"{running.url}/cds-services/readmission-risk"
    before = len(running.service.audit.records(kind="cds-call"))
    r = httpx.post(url, content=raw, headers={**bearer(*running.keys, url), "Content-Type": "application/json"},
                   timeout=30)
    assert r.status_code == 400 and "nested too deeply" in r.json()["issue"][0]["diagnostics"]
    assert len(running.service.audit.records(kind="cds-call")) == before + 1


def test_an_unknown_service_is_a_404_and_audited(running):
    before = len(running.service.audit.records(kind="cds-call"))
    r = httpx.post(f"{running.url}/cds-services/no-such-service", json={}, timeout=10)
    assert r.status_code == 404 and r.json()["resourceType"] == "OperationOutcome"
    new = running.service.audit.records(kind="cds-call")[before:]
    text = json.dumps(new, default=str)
    assert len(new) == 1 and "no such CDS service" in text and "no-such-service" not in text


def test_a_defect_met_while_scoring_is_answered_empty_and_audited_never_a_500(running, chosen, monkeypatch):
    high, _, res = chosen
    row = high[0]

    def broken(rows):
        raise ZeroDivisionError("a value from the request")

    monkeypatch.setattr(running.service.model, "predict_proba_rows", broken)
    body = hook_request(row["patient_id"], row["encounter_id"], prefetch_of(res[row["patient_id"]]))
    r = call(running, body)
    assert r.status_code == 200 and r.json() == {"cards": []}
    (rec,) = _records(running, "cds-call", body["hookInstance"])
    assert rec["outcome"] == "serious" and "ZeroDivisionError" in json.dumps(rec, default=str)
    assert "a value from the request" not in json.dumps(rec, default=str)


def test_no_token_reaches_any_log_or_the_audit_record(running, chosen, caplog):
    """Checklist C-16 end to end: every logger at DEBUG while the service answers a scored call, a refused token and
    a call carrying an access token for a FHIR server; neither the JWT, nor the access token, nor a JWT-shaped
    string is in any log line or in the audit records of those calls."""
    import logging

    high, _, res = chosen
    row = high[3]
    aud = f"{running.url}/cds-services/readmission-risk"
    token = sign_request_token(*running.keys, ISS, aud)
    access = "careloop-test-access-token-7f3c9e21"
    scored = hook_request(row["patient_id"], row["encounter_id"], prefetch_of(res[row["patient_id"]]))
    fetching = hook_request(row["patient_id"], row["encounter_id"], None) | {
        "fhirServer": "https://fhir.elsewhere.example/r4",
        "fhirAuthorization": {"access_token": access, "token_type": "Bearer", "expires_in": 300,
                              "scope": "patient/*.read", "subject": "careloop"}}
    with caplog.at_level(logging.DEBUG):
        assert httpx.post(aud, json=scored, headers={"Authorization": f"Bearer {token}"}, timeout=30).status_code \
            == 200
        assert httpx.post(aud, json=scored, headers={"Authorization": f"Bearer {token}"}, timeout=30).status_code \
            == 401  # the same token again: a replay, refused and logged as such
        assert call(running, fetching).status_code == 412  # a FHIR server not under the issuer: never read
    logged = "\n".join(f"{r.name} {r.getMessage()} {r.exc_text or ''}" for r in caplog.records)
    assert caplog.records  # the service did log (so the check below looked at something)
    for secret in (token, token.split(".")[2], access, "eyJ"):
        assert secret not in logged
    hooks = {scored["hookInstance"], fetching["hookInstance"]}
    recorded = json.dumps([r for r in running.service.audit.records() if r["hook_instance"] in hooks], default=str)
    assert scored["hookInstance"] in recorded and fetching["hookInstance"] in recorded
    for secret in (token, access, "eyJ"):
        assert secret not in recorded


def test_one_of_each_action_leaves_one_audit_record_of_its_kind(trained_bundle, keys, chosen, tmp_path):
    """Checklist A-01 and A-02 on a service of its own: a scored call with its card, feedback on the card, a refused
    token, an administrator's threshold change and kill switch, a call while the switch is off, and an export of the
    log give exactly these records, in this order, each a valid FHIR R4 AuditEvent with at most one Patient."""
    from fhir.resources.R4B.auditevent import AuditEvent

    from careloop.audit import AuditLog

    high, _, res = chosen
    row = high[2]
    port, state = free_port(), f"sqlite:///{tmp_path / 'state.db'}"
    own = Running(trained_bundle, write_config(tmp_path, state=state, jwks=keys["jwks"], port=port), port)
    try:
        own.keys = keys["rsa"]
        body = hook_request(row["patient_id"], row["encounter_id"], prefetch_of(res[row["patient_id"]]))
        (card,) = call(own, body).json()["cards"]
        url = f"{own.url}/cds-services/readmission-risk/feedback"
        fb = {"card": card["uuid"], "outcome": "overridden", "outcomeTimestamp": dt.datetime.now(dt.UTC).isoformat(),
              "overrideReason": {"reason": card["overrideReasons"][0]}}
        assert httpx.post(url, json={"feedback": [fb]}, headers=bearer(*own.keys, url), timeout=10).status_code == 200
        assert call(own, body, headers={"Authorization": "Bearer abc.def.ghi"}).status_code == 401
        admin = {"Authorization": f"Bearer {ADMIN_SECRET}"}
        key = own.service.model_key[:12]
        threshold = own.service.validation.span[0] + 0.01
        assert httpx.post(f"{own.url}/admin/models/{key}/threshold", json={"threshold": threshold},
                          headers=admin).status_code == 200
        assert httpx.post(f"{own.url}/admin/models/{key}/enabled", json={"enabled": False},
                          headers=admin).status_code == 200
        body["hookInstance"] = str(uuid.uuid4())
        assert call(own, body).json() == {"cards": []}
    finally:
        own.stop()
    res_ = CliRunner().invoke(cli, ["audit", "export", "--state", state, "--out", str(tmp_path / "e.json"),
                                    "--by", "auditor-1"])
    assert res_.exit_code == 0, res_.output
    with AuditLog.open(state) as log:
        records = log.records()
        events = [e["resource"] for e in log.export_bundle()["entry"]]
    assert [r["kind"] for r in records] == ["cds-call", "feedback", "auth-failure", "admin-change", "admin-change",
                                           "kill-switch", "export"]
    scored, feedback, refused, threshold_change, switch, off, export = records
    assert scored["cards"] == [f"{card['uuid']}|warning"] and scored["patient"] == row["patient_id"]
    assert feedback["cards"] == [card["uuid"]] and feedback["patient"] == row["patient_id"]
    assert refused["outcome"] == "serious" and refused["patient"] is None
    assert threshold_change["detail"]["setting"] == "threshold" and switch["detail"]["enabled"] == "false"
    assert off["hook_instance"] == body["hookInstance"] and off["patient"] == row["patient_id"]
    assert export["detail"]["by"] == "auditor-1" and export["detail"]["count"] == "6"
    for event in events:
        AuditEvent.model_validate(event)
        patients = [e for e in event.get("entity", []) if e.get("what", {}).get("reference", "").startswith("Patient/")]
        assert len(patients) <= 1  # BALP: one patient per event
