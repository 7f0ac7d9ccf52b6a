"""Every dashboard page in a real browser (Debian chromium via Playwright): it loads without console errors, shows
its charts and tables, and each role reaches only its pages (a clinician gets the 403 page for governance).
Screenshots are kept in pytest's temporary folder and copied to bench-out/screenshots/dashboard/."""

from __future__ import annotations

import base64
import contextlib
import csv
import io
import json

import httpx
import pytest

from careloop.web import monitoring as MON

from .conftest import USERS
from .monitor_fixture import DRIFTED, INJECTION

pytestmark = pytest.mark.slow


def no_errors(v) -> None:
    assert v.errors == [], v.errors


def test_sign_in_page_loads_and_a_wrong_password_is_refused(visitor, dash):
    v = visitor()
    resp = v.goto("/dashboard/worklist")
    assert v.page.url.startswith(f"{dash.url}/dashboard/sign-in?next=")  # sent to sign in first
    assert resp.status == 200 and v.page.locator("#username").is_visible()
    no_errors(v)
    v.shot("00-sign-in")
    v.page.fill("#username", "clinician")
    v.page.fill("#password", "not-the-password")
    with v.page.expect_navigation() as nav:
        v.page.click("#sign-in")
    assert nav.value.status == 401
    assert "wrong password" in v.page.locator("#sign-in-error").text_content()
    assert not [c for c in v.context.cookies() if c["name"] == "careloop_dashboard"]
    v.errors.clear()  # the 401 itself is reported by the browser as a failed resource
    v.page.fill("#username", "clinician")
    v.page.fill("#password", "careloop-demo")
    with v.page.expect_navigation():
        v.page.click("#sign-in")
    assert v.page.url == f"{dash.url}/dashboard/worklist"  # back to the page asked for
    no_errors(v)


def test_session_cookie_is_signed_http_only_and_same_site_strict(visitor):
    v = visitor("clinician")
    (cookie,) = [c for c in v.context.cookies() if c["name"] == "careloop_dashboard"]
    assert cookie["httpOnly"] and cookie["sameSite"] == "Strict" and cookie["path"] == "/dashboard"
    assert v.page.evaluate("document.cookie") == ""  # invisible to scripts


def test_clinician_worklist_ranks_inpatients_with_reasons_and_card_state(visitor, dash):
    v = visitor("clinician")
    resp = v.goto("/dashboard/worklist")
    assert resp.status == 200
    no_errors(v)
    rows = v.page.locator("table.worklist tbody tr")
    assert rows.count() >= 3
    for table in ("current", "recent"):
        risks = [float(t.rstrip("%")) for t in v.page.locator(f"#worklist-{table} tbody td:nth-child(7) b")
                 .all_text_contents()]
        assert risks == sorted(risks, reverse=True)  # ranked by risk
    assert v.page.locator("ul.reasons li").count() >= 3  # each scored stay has its reasons
    for eid, state in dash.seeded.items():
        row = v.page.locator(f'tr[data-encounter="{eid}"]')
        assert row.locator(f".pill.card-{state}").count() == 1, (eid, state)
    assert "Follow-up already arranged" in v.page.content()
    assert v.page.locator('nav a[href="/dashboard/governance"]').count() == 0  # not offered to a clinician
    v.shot("01-worklist-clinician")


def test_patient_page_shows_risk_over_the_stay_reasons_and_the_data(visitor, dash):
    v = visitor("clinician")
    v.goto("/dashboard/worklist")
    first = v.page.locator("table.worklist tbody tr").first
    eid = first.get_attribute("data-encounter")
    with v.page.expect_navigation():
        first.locator("a").first.click()
    assert v.page.url.endswith(f"/dashboard/patient/{eid}")
    no_errors(v)
    chart = v.page.locator("#risk-chart svg")
    assert chart.count() == 1 and chart.bounding_box()["height"] > 100
    assert v.page.locator('#risk-chart [id="risk-series-1"]').count() == 1  # the risk line
    points = v.page.locator("#risk-table tbody tr").count()
    assert points >= 1
    assert v.page.locator("#inputs tbody tr").count() == len(dash.service.model.columns)
    assert v.page.locator("#reasons").count() == 1
    assert v.page.locator("#stay-facts").text_content().count(eid) == 1
    v.shot("02-patient-clinician")
    resp = v.goto("/dashboard/patient/no-such-stay")
    assert resp.status == 404


def test_a_cards_patient_link_opens_the_stays_page(visitor, dash):
    """With the dashboard served, a card's "Patient risk page" link is the stay's page here, and it opens."""
    from careloop.serve import cards as C

    eid = next(iter(dash.seeded))
    ctx = dash.service.card_context("p1", eid)
    card = C.risk_card(ctx, 0.5, 0.2, [], band="high risk", budget_text="see the card")
    links = {link["label"]: link["url"] for link in card["links"]}
    assert links["Patient risk page"] == f"{dash.url}/dashboard/patient/{eid}"
    assert dash.service.card_context("p1", None).patient_page is None  # patient-view: no stay known in advance
    v = visitor("clinician")
    resp = v.page.goto(links["Patient risk page"])
    assert resp.status == 200 and v.page.locator("#stay-facts").text_content().count(eid) == 1
    no_errors(v)


@pytest.mark.parametrize("role", ["clinician", "data_scientist", "governance"])
def test_model_page_shows_card_report_hti1_and_operating_point(visitor, dash, role):
    v = visitor(role)
    resp = v.goto("/dashboard/model")
    assert resp.status == 200
    v.page.wait_for_load_state("networkidle")
    no_errors(v)
    hti1 = json.loads((dash.service.bundle.path / "hti1_source_attributes.json").read_text())
    assert v.page.locator("#hti1 tbody tr").count() == len(hti1)
    assert f"{100 * dash.service.threshold:.1f}%" in v.page.locator("#operating-point").text_content()
    assert v.page.locator("#model-card h1").count() >= 1
    frame = v.page.frame_locator("#report-frame")
    assert frame.locator("h1").first.text_content(timeout=10_000)  # the validation report, in its sandbox
    assert frame.locator("svg").count() >= 1  # with its figures
    if role == "clinician":
        v.shot("03-model")


def test_clinician_cannot_reach_governance_or_monitoring(visitor, dash):
    v = visitor("clinician")
    for path in ("/dashboard/governance", "/dashboard/monitoring", "/dashboard/governance/feedback.csv",
                 "/dashboard/monitoring/report"):
        resp = v.goto(path)
        assert resp.status == 403, path
        assert v.page.locator("section.error h1").text_content().startswith("403")
    v.goto("/dashboard/governance")
    v.shot("04-governance-403-clinician")
    # a forged flip from the clinician's session, even with a valid CSRF token of that session, is refused
    v.goto("/dashboard/worklist")
    token = v.page.locator('form.who input[name="csrf"]').get_attribute("value")
    r = v.page.request.post(f"{dash.url}/dashboard/governance/kill-switch", form={"csrf": token, "enabled": "false"},
                            headers={"Origin": dash.url}, max_redirects=0)
    assert r.status == 403
    assert dash.service.store.enabled(dash.service.model_key)
    r = v.page.request.get(f"{dash.url}/dashboard/api/monitor")
    assert r.status == 403
    assert [e for e in v.errors if "403" not in e] == []  # only the refusals themselves


def test_data_scientist_monitoring_charts_mark_the_alerts(visitor, dash):
    v = visitor("data_scientist")
    assert v.page.url.endswith("/dashboard/monitoring")  # the role's start page
    v.goto("/dashboard/monitoring")
    no_errors(v)
    doc = json.loads((dash.monitor_dir / "monitor.json").read_text())
    expected = MON.charts(doc)
    assert v.page.locator("figure.monitor-chart svg").count() == len(expected)
    assert v.page.locator("#alerts-chart svg").count() == 1
    assert v.page.locator("#alerts tbody tr").count() == sum(len(p["alerts"]) for p in doc["periods"])
    assert DRIFTED in v.page.locator("#alerts").text_content()  # the alert names the drifted feature
    drift = next(i for i, c in enumerate(expected, 1) if c.key == ("input_drift", "psi"))
    box = v.page.locator(f"#chart-{drift}")
    assert box.locator(f'[id="m{drift}-alert-1"]').count() == 1  # the drifted point is ringed
    assert DRIFTED in box.text_content()
    v.page.locator("details summary").click()
    assert INJECTION in v.page.locator("#monitor-summary").text_content()  # shown as text...
    assert v.page.locator("main script, main img").count() == 0  # ...never as markup
    v.shot("05-monitoring-data-scientist")
    with v.context.expect_page() as popup:
        v.page.click("#monitor-report-link")
    assert popup.value.locator("h1").text_content() == "Monitoring report"
    for path in ("/dashboard/governance", "/dashboard/worklist", f"/dashboard/patient/{next(iter(dash.seeded))}"):
        assert v.goto(path).status == 403, path


def test_governance_page_verifies_the_audit_log_flips_the_switch_and_exports_feedback(visitor, dash):
    v = visitor("governance")
    assert v.page.url.endswith("/dashboard/governance")
    no_errors(v)
    assert "chain verified" in v.page.locator("#audit-status").text_content()
    assert v.page.locator("#audit-recent tbody tr").count() >= 3
    assert v.page.locator("#feedback-chart svg").count() == 1
    assert v.page.locator("#override-reasons tbody tr").count() == 1
    v.shot("06-governance")
    key = dash.service.model_key
    assert dash.service.store.enabled(key)
    with v.page.expect_navigation():
        v.page.click("#flip-switch")
    assert "switched off" in v.page.locator("#changed").text_content()
    assert not dash.service.store.enabled(key)
    assert v.page.locator("#switched-off").is_visible()  # the banner on every page
    changes = dash.service.audit.records(kind="admin-change")
    assert changes[-1]["detail"]["by"] == "dashboard:governance" and changes[-1]["detail"]["enabled"] == "false"
    v.shot("07-governance-switched-off")
    with v.page.expect_navigation():
        v.page.click("#flip-switch")
    assert dash.service.store.enabled(key)
    with v.page.expect_download() as dl:
        v.page.click("#feedback-export")
    text = dl.value.path().read_text(encoding="utf-8")
    rows = list(csv.DictReader(io.StringIO(text)))
    assert len(rows) == len(dash.service.store.feedback()) == 2
    assert {r["action"] for r in rows} == {"accepted", "overridden"}
    assert all(not r["comment"].startswith("=") for r in rows)  # no spreadsheet formulas
    assert dash.service.audit.records(kind="export")[-1]["detail"]["format"] == "csv"
    assert dash.service.audit.verify().ok
    assert v.goto("/dashboard/monitoring").status == 200  # governance reads the monitoring too
    assert v.goto("/dashboard/worklist").status == 403  # but not the patients
    v.errors.clear()


def test_sign_out_ends_the_session(visitor, dash):
    v = visitor("governance")
    cookie = next(c for c in v.context.cookies() if c["name"] == "careloop_dashboard")["value"]
    with v.page.expect_navigation():
        v.page.click("#sign-out")
    assert v.page.url.startswith(f"{dash.url}/dashboard/sign-in")
    v.goto("/dashboard/governance")
    assert "/dashboard/sign-in" in v.page.url
    # the old cookie, replayed, is no longer a session
    r = httpx.get(f"{dash.url}/dashboard/governance", cookies={"careloop_dashboard": cookie})
    assert r.status_code == 303 and "/dashboard/sign-in" in r.headers["location"]
    no_errors(v)


@contextlib.contextmanager
def _session(dash, role: str):
    with httpx.Client(base_url=dash.url, follow_redirects=False) as c:
        page = c.get("/dashboard/sign-in").text
        token = page.split('name="token" value="', 1)[1].split('"', 1)[0]
        r = c.post("/dashboard/sign-in", data={"token": token, "username": USERS[role], "password": "careloop-demo",
                                                "next": ""}, headers={"Origin": dash.url})
        assert r.status_code == 303, r.text
        yield c


def test_governance_tries_an_alert_threshold_sets_it_and_goes_back(visitor, dash):
    svc, key = dash.service, dash.service.model_key
    lo, hi = svc.validation.span
    pct = round(100 * svc.threshold - 5, 1)  # five points under the bundle's operating point
    assert lo < pct / 100 < hi
    v = visitor("governance")
    v.page.fill("#threshold-preview", str(pct))
    with v.page.expect_navigation():
        v.page.click("#threshold-try")
    tried = " ".join(v.page.locator("#threshold-tried").text_content().split())
    expected = svc.validation.at(pct / 100)
    assert f"{expected['alerts_per_100']['estimate']:.1f}" in tried and f"{100 * expected['ppv']['estimate']:.1f}%" \
        in tried, tried
    assert svc.store.policy(key).threshold is None  # trying sets nothing
    v.shot("08-governance-threshold-tried")
    with v.page.expect_navigation():
        v.page.click("#threshold-set")
    assert "alert threshold was changed" in v.page.locator("#changed").text_content()
    policy = svc.store.policy(key)
    assert policy.threshold == pytest.approx(pct / 100) and policy.threshold_version >= 1
    assert "set by an administrator" in v.page.locator("#threshold-now").text_content()
    change = svc.audit.records(kind="admin-change")[-1]["detail"]
    assert (change["by"], change["setting"], change["new"], change["route"]) == (
        "dashboard:governance", "threshold", f"{pct / 100:.6f}", "dashboard")
    assert v.goto("/dashboard/model").status == 200
    assert "set by an administrator" in v.page.locator("#operating-point").text_content()
    assert v.goto("/dashboard/governance?preview=99.9").status == 200
    assert "outside the risks of the held-out stays" in v.page.locator("#threshold-refused").text_content()
    assert v.page.locator("#threshold-set").count() == 0
    with v.page.expect_navigation():
        v.page.click("#threshold-reset")
    assert svc.store.policy(key).threshold is None
    assert "the bundle's validated operating point" in v.page.locator("#threshold-now").text_content()
    no_errors(v)


def test_forms_need_the_session_csrf_token_and_this_origin(dash):
    with _session(dash, "governance") as c:
        key = dash.service.model_key
        page = c.get("/dashboard/governance").text
        token = page.split('name="csrf" value="', 1)[1].split('"', 1)[0]
        assert c.post("/dashboard/governance/kill-switch", data={"enabled": "false"},
                      headers={"Origin": dash.url}).status_code == 403
        assert c.post("/dashboard/governance/kill-switch", data={"csrf": "x" * 43, "enabled": "false"},
                      headers={"Origin": dash.url}).status_code == 403
        assert c.post("/dashboard/governance/kill-switch", data={"csrf": token, "enabled": "false"},
                      headers={"Origin": "https://evil.example"}).status_code == 403
        assert dash.service.store.enabled(key)
        r = c.post("/dashboard/governance/kill-switch", data={"csrf": token, "enabled": "false"},
                   headers={"Origin": dash.url})
        assert r.status_code == 303 and not dash.service.store.enabled(key)
        c.post("/dashboard/governance/kill-switch", data={"csrf": token, "enabled": "true"},
               headers={"Origin": dash.url})
        assert dash.service.store.enabled(key)
        version = dash.service.store.policy(key).threshold_version
        assert c.post("/dashboard/governance/threshold", data={"threshold": "0.2"},
                      headers={"Origin": dash.url}).status_code == 403
        assert c.post("/dashboard/governance/threshold", data={"csrf": token, "threshold": "0.2"},
                      headers={"Origin": "https://evil.example"}).status_code == 403
        for bad in ("2", "x", "nan", ""):
            assert c.post("/dashboard/governance/threshold", data={"csrf": token, "threshold": bad},
                          headers={"Origin": dash.url}).status_code == 400, bad
        assert dash.service.store.policy(key).threshold_version == version  # nothing was set
    # the sign-in form itself needs the token bound to its nonce cookie (no login CSRF)
    r = httpx.post(f"{dash.url}/dashboard/sign-in", data={"token": "x", "username": "governance",
                                                           "password": "careloop-demo"})
    assert r.status_code == 400 and "careloop_dashboard" not in r.cookies


def test_tampered_cookie_and_open_redirect_are_refused(dash):
    with _session(dash, "clinician") as c:
        cookie = c.cookies["careloop_dashboard"]
        body, sig = cookie.split(".")
        raw = json.loads(base64.urlsafe_b64decode(body + "=" * (-len(body) % 4)))
        raw["r"] = "governance"
        forged = base64.urlsafe_b64encode(json.dumps(raw).encode()).rstrip(b"=").decode() + "." + sig
        r = httpx.get(f"{dash.url}/dashboard/governance", cookies={"careloop_dashboard": forged})
        assert r.status_code == 303 and "/dashboard/sign-in" in r.headers["location"]
        assert c.get("/dashboard/sign-in", params={"next": "https://evil.example/"}).headers["location"] \
            == "/dashboard/worklist"
        assert c.get("/dashboard/sign-in", params={"next": "//evil.example/x"}).headers["location"] \
            == "/dashboard/worklist"


def test_json_apis_check_the_role(dash):
    assert httpx.get(f"{dash.url}/dashboard/api/worklist").status_code == 401
    with _session(dash, "data_scientist") as c:
        assert c.get("/dashboard/api/worklist").status_code == 403
        assert c.get("/dashboard/api/monitor").json()["periods"]
    with _session(dash, "clinician") as c:
        wl = c.get("/dashboard/api/worklist").json()
        assert wl["model"] == dash.service.model_key
        assert wl["current"] or wl["recent"]
        first = (wl["current"] or wl["recent"])[0]
        assert set(first) >= {"encounter", "patient", "risk", "status", "reasons", "card"}
        assert not {"name", "given", "family", "birth_date"} & set(first)  # pseudonymous ids, no names


def test_dashboard_routes_stay_out_of_the_cds_openapi(dash):
    spec = httpx.get(f"{dash.url}/openapi.json").json()
    assert not [p for p in spec["paths"] if p.startswith("/dashboard")]
