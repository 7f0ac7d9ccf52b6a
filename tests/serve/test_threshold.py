"""The alert threshold an administrator sets in place of the bundle's operating point (issue: "admin routes (kill
switch, thresholds)"): what it gives on the held-out stays, who may set it, every worker applying it from its next
call, the cards and the audit log saying which threshold decided; on SQLite and PostgreSQL."""

from __future__ import annotations

import datetime as dt
import json
import math

import httpx
import pyarrow.compute as pc
import pyarrow.parquet as pq
import pytest

from careloop.serve.app import HookRequest, Service
from careloop.serve.config import load_config

from .harness import ADMIN_SECRET, bearer, hook_request, picked_stays_service, prefetch_of

ADMIN = {"Authorization": f"Bearer {ADMIN_SECRET}"}


@pytest.fixture(scope="module")
def svc(trained_bundle, hospital_store, hospital, state_url, tmp_path_factory):
    folder = tmp_path_factory.mktemp("threshold")
    with picked_stays_service(trained_bundle, hospital_store[0], hospital, folder, state_url) as (r, stays, res):
        r.config_path = folder / "service.yaml"
        yield r, stays, res


def _held_out(bundle) -> tuple[list[float], list[int]]:
    primary = json.loads((bundle / "report.json").read_text())["primary"]
    t = pq.read_table(bundle / "predictions.parquet")
    t = t.filter(pc.equal(t.column("split"), "test"))
    return t.column(f"score:{primary}").to_pylist(), t.column("label").to_pylist()


def _wilson(k: int, n: int) -> tuple[float, float]:
    z = 1.959963984540054
    centre, half = (k + z * z / 2) / (n + z * z), z * math.sqrt(k * (n - k) / n + z * z / 4) / (n + z * z)
    return centre - half, centre + half


def _calm(service, stays) -> dict:
    """A stay under the bundle's near-threshold band (no card), not the least risky of the held-out stays (so that
    a threshold just under its risk is still inside what was validated)."""
    low = [s for s in stays if s["risk"] < service.band[0] and s["risk"] > service.validation.span[0] + 1e-4]
    return max(low, key=lambda s: s["risk"])


def _request(stay, res) -> HookRequest:
    body = hook_request(stay["patient_id"], stay["encounter_id"], prefetch_of(res[stay["patient_id"]]))
    return HookRequest.decode(json.dumps(body).encode())


def _call(running, stay, res) -> httpx.Response:
    aud = f"{running.url}/cds-services/readmission-risk"
    body = hook_request(stay["patient_id"], stay["encounter_id"], prefetch_of(res[stay["patient_id"]]))
    return httpx.post(aud, json=body, headers=bearer(*running.keys, aud), timeout=60)


def test_what_a_threshold_gives_on_the_held_out_stays_matches_an_independent_count(svc, trained_bundle):
    running, *_ = svc
    url = f"{running.url}/admin/models/{running.service.model_key[:12]}/threshold"
    now = httpx.get(url, headers=ADMIN).json()
    assert now["source"] == "bundle" and now["version"] == 0
    assert now["threshold"] == now["bundle_threshold"] == running.service.threshold
    risks, labels = _held_out(trained_bundle)
    t = now["threshold"]
    warned = [y for r, y in zip(risks, labels, strict=True) if r >= t]
    v = now["validated"]
    assert (v["stays"], v["warned"], v["readmitted"]) == (len(risks), len(warned), sum(labels))
    assert v["alerts_per_100"]["estimate"] == pytest.approx(100 * len(warned) / len(risks), abs=1e-4)
    assert v["ppv"]["estimate"] == pytest.approx(sum(warned) / len(warned), abs=1e-4)
    assert v["sensitivity"]["estimate"] == pytest.approx(sum(warned) / sum(labels), abs=1e-4)
    assert v["ppv"]["ci"] == pytest.approx(list(_wilson(sum(warned), len(warned))), abs=1e-4)
    assert v["nne"] == pytest.approx(1 / v["ppv"]["estimate"], abs=0.01)
    assert v["span"] == [min(risks), max(risks)]


def test_only_an_administrator_sets_it_and_a_bad_or_unvalidated_value_is_refused_and_audited(svc):
    running, *_ = svc
    key = running.service.model_key[:12]
    url = f"{running.url}/admin/models/{key}/threshold"
    assert httpx.post(url, json={"threshold": 0.2}, headers=bearer(*running.keys, url)).status_code == 403  # C-19
    assert httpx.post(url, json={"threshold": 0.2}).status_code == 401
    assert httpx.get(url).status_code == 401
    hi = running.service.validation.span[1]
    before = len(running.service.audit.records(kind="admin-change"))
    for body, status, why in [({"threshold": 1.2}, 400, "threshold: Input should be less than 1"),
                              ({"threshold": "high"}, 400, "threshold: Input should be a valid number"),
                              ({}, 400, "threshold: Field required"),
                              ({"threshold": 0.2, "by": "x"}, 400, "(a field not in the schema)"),
                              ({"threshold": hi + (1 - hi) / 2}, 400, "outside the risks of the held-out stays")]:
        r = httpx.post(url, json=body, headers=ADMIN)
        assert r.status_code == status and why in r.json()["issue"][0]["diagnostics"], (body, r.text)
    assert httpx.post(f"{running.url}/admin/models/000000000000/threshold", json={"threshold": 0.2},
                      headers=ADMIN).status_code == 404
    refusals = running.service.audit.records(kind="admin-change")[before:]
    assert len(refusals) == 6 and {r["outcome"] for r in refusals} == {"minor"}
    assert running.service.store.policy(running.service.model_key).threshold_version == 0  # nothing was set


def test_a_new_threshold_applies_from_the_next_call_in_every_worker_and_is_recorded(svc):
    running, stays, res = svc
    service = running.service
    calm = _calm(service, stays)
    url = f"{running.url}/admin/models/{service.model_key[:12]}/threshold"
    assert _call(running, calm, res).json() == {"cards": []}
    lowered = calm["risk"] - 1e-6
    assert lowered >= service.validation.span[0]
    got = httpx.post(url, json={"threshold": lowered}, headers=ADMIN).json()
    assert (got["source"], got["version"], got["threshold"]) == ("administrator", 1, pytest.approx(lowered))
    assert got["validated"]["warned"] > 0

    cards = _call(running, calm, res).json()["cards"]
    assert [c["indicator"] for c in cards] == ["warning"]
    assert f"the alert threshold is {lowered:.0%}" in cards[0]["detail"]
    assert "set by the hospital's administrators in place of the validated" in cards[0]["detail"]
    assert len(cards[0]["summary"]) < 140
    scored = service.audit.records(kind="cds-call")[-1]
    assert scored["detail"]["threshold_version"] == "1" and scored["score"] == pytest.approx(calm["risk"], abs=1e-6)
    change = [r for r in service.audit.records(kind="admin-change") if r["outcome"] == "success"][-1]
    assert (change["detail"]["setting"], change["detail"]["old"], change["detail"]["new"]) == (
        "threshold", "bundle", f"{lowered:.6f}")

    # another worker on the same state store reads the setting on its next call
    other = Service(service.bundle.path, load_config(running.config_path))
    try:
        req = _request(calm, res)
        d = other.handle("readmission-risk", req, dt.datetime.now(dt.UTC))
        assert d.extra.get("threshold_version") == 1
        assert d.note == "repeat suppressed" or d.cards  # the warning just shown is not repeated, but it was decided
        back = httpx.post(url, json={"threshold": None}, headers=ADMIN).json()
        assert (back["source"], back["version"], back["threshold"]) == ("bundle", 2, service.threshold)
        d = other.handle("readmission-risk", req, dt.datetime.now(dt.UTC))
        assert (d.cards, d.note, d.extra.get("threshold_version")) == ([], "below threshold", 2)
    finally:
        other.close()


def test_an_administrators_threshold_has_no_near_threshold_band(svc):
    running, stays, res = svc
    service = running.service
    url = f"{running.url}/admin/models/{service.model_key[:12]}/threshold"
    calm = _calm(service, stays)
    above = calm["risk"] + 0.01  # just above the stay's risk: inside any band of the bundle's width
    assert service.band is not None and above - calm["risk"] < service.band[1] - service.band[0]
    try:
        httpx.post(url, json={"threshold": above}, headers=ADMIN).raise_for_status()
        d = service.handle("readmission-risk", _request(calm, res), dt.datetime.now(dt.UTC))
        assert (d.cards, d.note) == ([], "below threshold")
    finally:
        httpx.post(url, json={"threshold": None}, headers=ADMIN).raise_for_status()
