"""The alert policy holds under concurrency and across hooks: at most one warning per patient and model within the
repeat window (whichever hook asked, however many calls at once, in one worker or several), and at most the daily
budget of warnings per unit, the day starting at midnight in the hospital's time zone. Two services on one state
store stand for two worker processes (each has its own store connection pool and group-commit writer)."""

from __future__ import annotations

import datetime as dt
import json
import threading
import uuid

import httpx
import pytest
from jsonschema import validate

from careloop.serve.app import HookRequest, call_detail
from careloop.serve.schema import RESPONSE
from tests.fhir_server.harness import make_rsa_key
from tests.serve.harness import (
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


@pytest.fixture(scope="module")
def keys():
    pem, jwk = make_rsa_key()
    return {"rsa": (pem, jwk["kid"]), "jwks": {"keys": [jwk]}}


@pytest.fixture(scope="module")
def scored(trained_bundle, hospital_store):
    """The test split's stays (patient_id, encounter_id), the model's risk for each (from the training features),
    and the bundle's operating point."""
    import pyarrow.compute as pc

    from careloop.engines import DuckDBEngine
    from careloop.features.engine import extract
    from careloop.features.spec import load_feature_set
    from careloop.registry import verify
    from careloop.tasks.cohort import build_cohort
    from careloop.tasks.spec import load_task

    eng = DuckDBEngine(hospital_store[0])
    cohort = build_cohort(load_task("readmission-30d"), eng).table
    feats = extract(load_feature_set("readmission"), cohort.filter(pc.equal(cohort.column("split"), "test")), eng).table
    bundle = verify(trained_bundle)
    return (feats.select(["patient_id", "encounter_id"]).to_pylist(), bundle.model().predict_proba(feats),
            bundle.metadata["operating_point"])


@pytest.fixture(scope="module")
def high(scored, hospital):
    """Test-split stays the model warns on (risk clear of the threshold's band), with their records."""
    import numpy as np

    rows, risk, op = scored
    above = op["threshold_ci"][1] + 0.03
    picked = []
    for i in np.argsort(-risk)[:100]:  # one stay per patient (a patient's second card is under the repeat rule)
        if risk[i] > above and all(p["patient_id"] != rows[i]["patient_id"] for p in picked):
            picked.append(rows[i])
    assert len(picked) >= 6
    res = patient_resources(hospital / "ndjson", {s["patient_id"] for s in picked})
    return [(s, res[s["patient_id"]]) for s in picked]


def _pair(bundle, keys, folder, state_url, **alert) -> tuple[Running, Running]:
    """Two services on one store. Their deadline is long: these tests are about the alert policy, and a call shed on a
    busy test machine (answered with no card, recorded as a timeout) would pass for one the policy kept quiet."""
    alert.setdefault("deadline_ms", 30_000)
    out = []
    for name in ("a", "b"):
        port = free_port()
        (folder / name).mkdir()
        out.append(Running(bundle, write_config(folder / name, state=state_url, jwks=keys["jwks"], port=port, **alert),
                           port))
    return out[0], out[1]


def _post(running: Running, keys, body: dict, service: str = "readmission-risk") -> dict:
    aud = f"{running.url}/cds-services/{service}"
    r = httpx.post(aud, json=body, headers=bearer(*keys["rsa"], aud), timeout=30)
    assert r.status_code == 200, r.text
    return r.json()


def _indicators(answer: dict) -> list[str]:
    return [c["indicator"] for c in answer["cards"]]


def test_simultaneous_calls_for_one_patient_in_two_workers_give_one_warning(trained_bundle, keys, high,
                                                                             tmp_path, state_url):
    a, b = _pair(trained_bundle, keys, tmp_path, state_url)
    try:
        for stay, res in high[:3]:
            bodies = [hook_request(stay["patient_id"], stay["encounter_id"], prefetch_of(res)) for _ in range(4)]
            answers: list = [None] * 4
            gate = threading.Barrier(4)

            def send(i: int, bodies=bodies, answers=answers, gate=gate) -> None:
                gate.wait()
                answers[i] = _post((a, b)[i % 2], keys, bodies[i])

            threads = [threading.Thread(target=send, args=(i,)) for i in range(4)]
            for t in threads:
                t.start()
            for t in threads:
                t.join(timeout=60)
            assert sorted(len(x["cards"]) for x in answers) == [0, 0, 0, 1], answers
            assert [_indicators(x) for x in answers if x["cards"]] == [["warning"]]
            quiet = [bodies[i]["hookInstance"] for i in range(4) if not answers[i]["cards"]]
            recs = [r for r in a.service.audit.records(kind="cds-call") if r["hook_instance"] in quiet]
            seen = [(r["kind"], r["outcome"], r["detail"]) for r in a.service.audit.records()
                    if r["hook_instance"] in quiet]
            assert len(recs) == 3 and all(json.loads(r["cards"] or "[]") == [] for r in recs), seen
            assert {r["detail"].get("note") for r in recs} == {"repeat suppressed"}, recs
        cards = a.service.store.cards_since(None, None, dt.datetime(2000, 1, 1, tzinfo=dt.UTC))
        warned = [c for c in (a.service.store.last_card(None, s["patient_id"], a.service.model_key, "warning")
                              for s, _ in high[:3]) if c]
        assert len(warned) == 3 and cards == 0  # one card per patient recorded, each with its unit
    finally:
        a.stop()
        b.stop()


def test_a_warning_from_one_hook_is_not_repeated_by_the_other(trained_bundle, keys, high, tmp_path,
                                                              state_url):
    # the two hooks score at different times (the chart view at its own time), so their risks differ a little: a
    # wide repeat_delta keeps this about the window alone
    a, b = _pair(trained_bundle, keys, tmp_path, state_url, repeat_delta=0.5)
    try:
        for stay, res in high[3:]:  # the first the chart view warns on (it also reads deaths after the stay)
            pf = prefetch_of(res)
            for k in ("deceasedDateTime", "deceasedBoolean"):
                pf["patient"].pop(k, None)
            pf = as_if_recent(pf, stay["encounter_id"])  # the chart is opened two hours after the discharge
            view = hook_request(stay["patient_id"], stay["encounter_id"], pf, hook="patient-view")
            first = _post(a, keys, view, service="readmission-risk-patient-view")
            if _indicators(first) == ["warning"]:
                break
        else:
            pytest.fail(f"no stay the chart view warns on: {first}")
        discharge = hook_request(stay["patient_id"], stay["encounter_id"], pf)
        assert _post(b, keys, discharge) == {"cards": []}
    finally:
        a.stop()
        b.stop()


def _call(service, stay, pf, now: dt.datetime) -> tuple[list[dict], dict]:
    """A discharge scored at `now` and written as the service does: the cards shown and the call's audit record."""
    req = HookRequest.decode(json.dumps(hook_request(stay["patient_id"], stay["encounter_id"], pf)).encode())
    decision = service.handle("readmission-risk", req, now, ISS)
    work = service.work("cds-call", "success", claims=None, req=req, decision=decision, service="readmission-risk",
                        request_id=str(uuid.uuid4()), detail=call_detail(decision))
    assert service.journal.write(work)
    (rec,) = [r for r in service.audit.records(kind="cds-call") if r["hook_instance"] == req.hookInstance]
    return ([] if work.withheld else decision.cards), rec


def _record(service, stay, res, now: dt.datetime, location: str | None = None) -> list[str]:
    """Score a discharge at `now` (its ward set to `location`) and write it as the service does; the indicators."""
    pf = prefetch_of(res)
    if location is not None:
        for e in pf["encounters"]["entry"]:
            if e["resource"]["id"] == stay["encounter_id"]:
                e["resource"]["location"] = [{"location": {"reference": f"Location/{location}"}}]
    return [c["indicator"] for c in _call(service, stay, pf, now)[0]]


def test_the_daily_budget_is_per_unit_and_day_in_the_hospitals_time_zone(trained_bundle, keys, high,
                                                                          tmp_path, state_url):
    a, b = _pair(trained_bundle, keys, tmp_path, state_url, daily_budget_per_unit=1, timezone="America/New_York")
    try:
        evening = dt.datetime(2030, 3, 2, 23, 30, tzinfo=dt.UTC)  # 18:30 in New York, 2 March
        assert _record(a.service, *high[0], evening, "ward-4w") == ["warning"]
        assert _record(b.service, *high[1], evening + dt.timedelta(minutes=30), "ward-4w") == []  # 19:00: spent
        assert _record(b.service, *high[2], evening + dt.timedelta(minutes=30), "ward-5e") == ["warning"]  # own unit
        morning = dt.datetime(2030, 3, 3, 5, 30, tzinfo=dt.UTC)  # 00:30 in New York, 3 March: a new day
        assert _record(a.service, *high[3], morning, "ward-4w") == ["warning"]
        units = [a.service.store.last_card(None, s["patient_id"], a.service.model_key) for s, _ in (high[0], high[2])]
        assert [c["unit"] for c in units] == ["Location/ward-4w", "Location/ward-5e"], units
    finally:
        a.stop()
        b.stop()


def test_a_warning_is_repeated_only_when_the_risk_moved_or_the_window_passed(trained_bundle, keys, high, tmp_path,
                                                                             state_url):
    """Checklist H-06 for warnings: within the window (72 h) a warning is not shown again unless the risk moved by
    more than repeat_delta (0.10) since the last one; after the window it is shown again."""
    a, b = _pair(trained_bundle, keys, tmp_path, state_url)
    try:
        t0 = dt.datetime(2030, 6, 1, 9, tzinfo=dt.UTC)
        stay, res = high[4]
        cards, rec = _call(a.service, stay, prefetch_of(res), t0)
        risk = rec["score"]
        assert [c["indicator"] for c in cards] == ["warning"]
        cards, rec = _call(b.service, stay, prefetch_of(res), t0 + dt.timedelta(hours=71))  # same risk, in window
        assert cards == [] and rec["detail"]["note"] == "repeat suppressed"
        assert [c["indicator"] for c in _call(a.service, stay, prefetch_of(res), t0 + dt.timedelta(hours=73))[0]] \
            == ["warning"]  # the window (from the last warning shown, at t0) has passed
        # the last warning shown said a risk 0.15 (then 0.05) lower, two hours ago: moved by more than 0.10 is news
        patient = stay["patient_id"]
        for moved, shown in ((0.15, ["warning"]), (0.05, [])):
            at = t0 + dt.timedelta(days=10 + int(moved * 100))
            a.service.store.record_card(str(uuid.uuid4()), "readmission-risk", patient, a.service.model_key,
                                        risk - moved, "warning", None, at - dt.timedelta(hours=2))
            assert [c["indicator"] for c in _call(b.service, stay, prefetch_of(res), at)[0]] == shown, moved
    finally:
        a.stop()
        b.stop()


# -- info cards are not repeated either (checklist H-06: no identical card within the window) -------------------------


@pytest.fixture(scope="module")
def near(scored, hospital):
    """Test-split stays whose risk is below the threshold but inside its 95% interval (they get the near-threshold
    info card), one per patient, with their records and risks."""
    rows, risk, op = scored
    picked, seen = [], set()
    for i, r in enumerate(risk):  # clear of both edges, so that rounding cannot move a stay out of the band
        if op["threshold_ci"][0] + 0.002 < r < op["threshold"] - 0.002 and rows[i]["patient_id"] not in seen:
            seen.add(rows[i]["patient_id"])
            picked.append((rows[i], float(r)))
    assert len(picked) >= 3, (op, len(picked))
    res = patient_resources(hospital / "ndjson", seen)
    return [(s, res[s["patient_id"]], r) for s, r in picked[:3]]


def test_a_near_threshold_info_card_is_not_repeated_unless_the_risk_moves(trained_bundle, keys, near, tmp_path,
                                                                          state_url):
    a, b = _pair(trained_bundle, keys, tmp_path, state_url)
    try:
        (stay, res, risk), (other, ores, _) = near[0], near[1]
        t0 = dt.datetime(2030, 5, 1, 9, tzinfo=dt.UTC)
        cards, rec = _call(a.service, stay, prefetch_of(res), t0)
        assert [c["indicator"] for c in cards] == ["info"]
        assert "inside the threshold's own 95% interval" in cards[0]["detail"]
        # it states a risk, so it states its basis as a warning does (checklist H-01): reasons, model, intended use
        detail = cards[0]["detail"]
        assert f"{risk:.0%}**" in detail and "Main reasons in this patient's record:" in detail
        assert len([line for line in detail.splitlines() if line.startswith("- ")]) == 3
        assert f"version `{a.service.bundle.bundle_id[:12]}`" in detail
        assert "\nIntended use: " in detail and "\nNot for: " in detail
        validate(instance={"cards": cards}, schema=RESPONSE)
        assert_no_null_or_empty(cards, "cards")
        assert rec["score"] == pytest.approx(risk, abs=1e-9) and rec["detail"]["note"] == "near threshold"
        assert rec["cards"] == [f"{cards[0]['uuid']}|info"]
        # an hour later, in the other worker: the same card is not shown again; the call is scored and audited
        cards, rec = _call(b.service, stay, prefetch_of(res), t0 + dt.timedelta(hours=1))
        assert cards == [] and rec["cards"] == []
        assert rec["detail"]["note"] == "repeat suppressed (near threshold)"
        assert rec["score"] == pytest.approx(risk, abs=1e-9)
        # another patient's near-threshold card is their own
        assert [c["indicator"] for c in _call(a.service, other, prefetch_of(ores), t0 + dt.timedelta(hours=1))[0]] \
            == ["info"]
        # once the window (72 h) has passed, it is shown again
        assert len(_call(a.service, stay, prefetch_of(res), t0 + dt.timedelta(hours=73))[0]) == 1
        # a risk that moved by more than repeat_delta (0.10) since the last such card is news: shown; by less, not
        third = near[2]
        for moved, shown in ((0.15, 1), (0.05, 0)):
            patient = third[0]["patient_id"]
            at = t0 + dt.timedelta(days=30 + int(moved * 100))
            a.service.store.record_card(str(uuid.uuid4()), "readmission-risk", patient, a.service.model_key,
                                        third[2] - moved, "info", None, at - dt.timedelta(hours=2),
                                        kind="near-threshold")
            assert len(_call(a.service, third[0], prefetch_of(third[1]), at)[0]) == shown, moved
    finally:
        a.stop()
        b.stop()


def test_the_same_deferral_is_not_repeated_but_a_new_reason_is_shown(trained_bundle, keys, high, tmp_path,
                                                                     state_url):
    a, b = _pair(trained_bundle, keys, tmp_path, state_url)
    try:
        stay, res = high[0]
        no_encounters = prefetch_of(res) | {"encounters": None}
        t0 = dt.datetime(2030, 6, 1, 9, tzinfo=dt.UTC)
        cards, first = _call(a.service, stay, no_encounters, t0)
        assert [c["indicator"] for c in cards] == ["info"] and "defers to clinical judgement" in cards[0]["summary"]
        cards, again = _call(b.service, stay, no_encounters, t0 + dt.timedelta(minutes=20))
        assert cards == [] and again["detail"]["note"] == "repeat suppressed (deferral)"
        assert again["deferral_reason"] == first["deferral_reason"]  # still audited with its reason
        failed = prefetch_of(res) | {"observations": {"resourceType": "OperationOutcome", "issue": []}}
        cards, _ = _call(a.service, stay, failed, t0 + dt.timedelta(minutes=40))  # another reason: a new card
        assert len(cards) == 1 and "could not supply" in cards[0]["detail"]
        # the scored warning is not held back by the info cards before it
        assert [c["indicator"] for c in _call(b.service, stay, prefetch_of(res), t0 + dt.timedelta(hours=1))[0]] \
            == ["warning"]
        assert len(_call(a.service, stay, no_encounters, t0 + dt.timedelta(hours=80))[0]) == 1  # after the window
    finally:
        a.stop()
        b.stop()
