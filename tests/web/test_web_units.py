"""The dashboard's parts without a browser: password hashes, sessions, the monitor.json reader, the CSV export,
and the risk-over-the-stay scoring, which must equal the training feature code at every index time."""

from __future__ import annotations

import time

import pytest

from careloop.web import DEMO_PASSWORD, DashboardConfigError, demo_users, hash_password, load_users, verify_password
from careloop.web import monitoring as MON
from careloop.web.app import _csv, _safe_next
from careloop.web.auth import DUMMY_HASH, Sessions, Throttle, check_users

from .monitor_fixture import DRIFTED, ONSET, monitor_doc


def test_password_hashes_verify_and_never_hold_the_password():
    for method in ("scrypt", "pbkdf2_sha256"):
        h = hash_password("correct horse", method=method)
        assert h.startswith(method + "$") and "correct" not in h
        assert verify_password("correct horse", h)
        assert not verify_password("correct horsE", h)
        assert not verify_password("", h)
    assert hash_password("x") != hash_password("x")  # salted
    assert not verify_password("anything", DUMMY_HASH)
    with pytest.raises(DashboardConfigError):
        verify_password("x", "md5$abc")
    with pytest.raises(DashboardConfigError):
        hash_password("")


def test_users_are_checked_and_loaded_from_a_file(tmp_path):
    users = demo_users()
    assert {u: d["role"] for u, d in users.items()} == {"clinician": "clinician", "data-scientist": "data_scientist",
                                                        "governance": "governance"}
    assert all(verify_password(DEMO_PASSWORD, d["password_hash"]) for d in users.values())
    assert DEMO_PASSWORD not in str(users)
    with pytest.raises(DashboardConfigError, match="role"):
        check_users({"bob": {"role": "admin", "password_hash": users["clinician"]["password_hash"]}})
    with pytest.raises(DashboardConfigError, match="username"):
        check_users({"bob smith": users["clinician"]})
    with pytest.raises(DashboardConfigError):
        check_users({"bob": {"role": "clinician", "password_hash": "plain-text-password"}})
    import yaml

    path = tmp_path / "users.yaml"
    path.write_text(yaml.safe_dump({"users": users}))
    assert load_users(path) == users


def test_sessions_expire_are_revoked_and_follow_the_users_role():
    s = Sessions(b"k" * 32, lifetime_s=60)
    users = {"ann": {"role": "clinician", "password_hash": DUMMY_HASH}}
    cookie, sess = s.issue("ann", "clinician")
    assert s.read(cookie, users) == sess
    assert s.read(cookie, users, now=time.time() + 61) is None  # expired
    assert s.read(cookie[:-2] + "AA", users) is None  # bad signature
    assert Sessions(b"j" * 32).read(cookie, users) is None  # another secret
    assert s.read(cookie, {"ann": {"role": "governance", "password_hash": DUMMY_HASH}}) is None  # role changed
    assert s.read(cookie, {}) is None  # user removed
    assert s.csrf_ok(sess, s.csrf(sess)) and not s.csrf_ok(sess, "") and not s.csrf_ok(sess, None)
    other = s.issue("ann", "clinician")[1]
    assert not s.csrf_ok(other, s.csrf(sess))  # a token belongs to its session
    s.revoke(sess)
    assert s.read(cookie, users) is None
    with pytest.raises(DashboardConfigError):
        Sessions(b"short")


def test_throttle_blocks_after_repeated_failures():
    t = Throttle(limit=3, window_s=60)
    for _ in range(3):
        assert not t.blocked("user:ann", "ip:1")
        t.fail("user:ann", "ip:1")
    assert t.blocked("user:ann") and t.blocked("ip:1") and not t.blocked("user:bob")
    t.clear("user:ann")
    assert not t.blocked("user:ann") and t.blocked("ip:1")


def test_only_dashboard_paths_are_redirect_targets():
    assert _safe_next("/dashboard/model") == "/dashboard/model"
    for bad in ("https://evil.example", "//evil.example", "/dashboard\\..\\x", "/other", "/dashboard/x\ny", None, ""):
        assert _safe_next(bad) is None, bad


def test_feedback_csv_neutralises_formulas():
    text = _csv([{"action": "overridden", "comment": "=HYPERLINK(\"http://evil\")", "accepted_suggestions": ["a"]},
                 {"action": "accepted", "comment": "+1 call", "override_code": None}])
    lines = text.splitlines()
    assert lines[0].startswith("intervention,card,action")
    assert "'=HYPERLINK" in lines[1] and '["a"]' in lines[1].replace('""', '"')
    assert "'+1 call" in lines[2]


def test_monitor_charts_find_metrics_intervals_and_the_alerted_series():
    doc = monitor_doc()
    charts = {c.key: c for c in MON.charts(doc)}
    psi = charts[("input_drift", "psi")]
    assert psi.series[0]["name"] == DRIFTED and psi.series[0]["alerts"] == [ONSET]  # alerted series first
    assert psi.threshold == 0.25 and psi.kind == "heatmap" and len(psi.series) == 10 and psi.hidden == 0
    assert ("input_drift", "missing_reference") not in charts  # a feature's reference value is not a chart
    assert charts[("performance", "auroc")].kind == "lines"  # with its interval
    auroc = charts[("performance", "auroc")]
    assert auroc.series[0]["lo"][0] < auroc.series[0]["values"][0] < auroc.series[0]["hi"][0]  # its CI
    assert auroc.alert_periods == [ONSET + 1]
    groups = {s["name"]: s["alerts"] for s in charts[("subgroups", "auroc")].series}
    assert groups == {"sex=female": [ONSET + 1], "sex=male": []}  # the fairness alert names one group
    assert charts[("input_drift", "missing")].alert_periods == []  # a PSI alert does not mark missingness
    assert charts[("performance", "ppv")].percent
    assert [r["kind"] for r in MON.alert_rows(doc)] == ["input_drift", "performance", "fairness"]
    labels, counts = MON.alert_counts(doc)
    assert labels[0] == "2024-01" and counts["input_drift"][ONSET] == 1


def test_monitor_reader_takes_other_shapes():
    doc = {"periods": [
        {"start": "2024-01-01", "end": "2024-02-01", "auroc": 0.8, "auroc_ci": [0.75, 0.85], "ppv_lo": 0.3,
         "ppv": 0.4, "ppv_hi": 0.5, "drift": {"age": {"psi": 0.01}, "sodium": {"psi": 0.02}},
         "groups": [{"group": "female", "attribute": "sex", "auroc": {"value": 0.79, "lower": 0.7, "upper": 0.85}}],
         "alerts": []},
        {"start": "2024-02-01", "end": "2024-03-01", "auroc": 0.7, "drift": {"age": {"psi": 0.4}},
         "alerts": [{"kind": "input_drift", "feature": "age"}, "not an alert"]},
    ]}
    flat = MON.flatten(doc["periods"][0])
    assert flat[("auroc",)] == (0.8, 0.75, 0.85) and flat[("ppv",)] == (0.4, 0.3, 0.5)
    assert ("ppv_lo",) not in flat and ("auroc_ci",) not in flat
    assert flat[("groups", "sex=female", "auroc")] == (0.79, 0.7, 0.85)
    charts = {c.key: c for c in MON.charts(doc)}
    assert MON.placement(("subgroups", "sex", "groups", "female", "gaps", "auroc")) == (("subgroups", "auroc gap"),
                                                                                      ("sex", "female"))
    assert MON.placement(("output_drift", "mean_risk_reference")) == (("output_drift", "mean_risk"), ("reference",))
    assert MON.placement(("input_drift", "age", "p_value")) is None
    age = next(s for s in charts[("drift", "psi")].series if s["name"] == "age")
    assert age["values"] == [0.01, 0.4] and age["alerts"] == [1]
    sodium = next(s for s in charts[("drift", "psi")].series if s["name"] == "sodium")
    assert sodium["values"] == [0.02, None] and sodium["alerts"] == []
    assert MON.alert_rows(doc)[0]["concerns"] == "age"


def test_monitor_load_explains_what_is_missing(tmp_path):
    assert MON.load(None)[0] is None
    assert "not run" in MON.load(tmp_path)[1]
    (tmp_path / "monitor.json").write_text("{not json")
    assert "unreadable" in MON.load(tmp_path)[1]
    (tmp_path / "monitor.json").write_text('{"periods": 3}')
    assert "periods" in MON.load(tmp_path)[1]


def test_risk_over_the_stay_equals_the_training_features_at_every_time(dash):
    """Each point of a stay's timeline (scored under aliases of its encounter, in one extract) equals `extract` of
    that stay alone at that index time on the store: the same feature code path, to the last digit."""
    from careloop.web import data as D

    wl = D.worklist(dash.service, dash.store_dir)
    picks = [r.encounter_id for r in (wl["current"][:1] + wl["recent"][:1])]
    assert picks
    engine = D.engine_for(dash.store_dir)
    try:
        for eid in picks:
            tl = D.timeline(dash.service, dash.store_dir, eid)
            assert tl is not None and len(tl.times) == tl.features.num_rows >= 1
            st = D.stay(engine, eid)
            for k, t in enumerate(tl.times):
                alone = D.features(dash.service, engine, D.cohort_of(st, [D._us(t)])).to_pylist()[0]
                point = tl.features.slice(k, 1).to_pylist()[0]
                assert point.pop("encounter_id").split("~")[0] == alone.pop("encounter_id") == eid
                assert point == alone, (eid, t)
            last = tl.features.slice(tl.features.num_rows - 1, 1)
            assert tl.assessments[-1].risk == pytest.approx(float(dash.service.model.predict_proba(last)[0]))
            row = next(r for r in wl["current"] + wl["recent"] if r.encounter_id == eid)
            assert row.assessment.risk == pytest.approx(tl.assessments[-1].risk, abs=1e-12)  # worklist agrees
        assert D.stay(engine, "x' OR '1'='1").num_rows == 0  # the id is bound, never spliced into the SQL
    finally:
        engine.close()


def test_the_worklist_leaves_out_recent_stays_the_task_excludes(dash):
    """As at the bedside: a recent discharge to hospice (by its HL7 or its NUBC code), to another acute hospital or
    against advice gets no risk and says why; the others are assessed as before. A stay still open is not judged by
    a disposition the replayed store already holds."""
    import pyarrow as pa

    from careloop.web import data as D

    engine = D.engine_for(dash.store_dir)
    try:
        _, rec = D.current_stays(engine, D.data_end(engine))
        rec = rec.slice(0, 8)
        idx = rec.column("end_us").to_pylist()
        feats = D.features(dash.service, engine, D.cohort_of(rec, idx))
        sent = [("hosp", None), (None, "51"), ("other-hcf", "02"), ("aadvice", None)] + [("home", "01")] * 4
        t = rec.set_column(rec.schema.get_field_index("disposition"), "disposition",
                           pa.array([d for d, _ in sent], pa.string()))
        t = t.set_column(t.schema.get_field_index("disposition_nubc"), "disposition_nubc",
                         pa.array([n for _, n in sent], pa.string()))
        before = D._rows(dash.service, rec.drop_columns(["death_us"]).append_column(
            "death_us", pa.nulls(rec.num_rows, pa.int64())), feats, idx, True)
        after = D._rows(dash.service, t, feats, idx, True)
        still_open = D._rows(dash.service, t, feats, idx, False)
    finally:
        engine.close()
    whys = ["discharged to hospice", "discharged to hospice", "transferred to another acute hospital",
            "left against medical advice"]
    for i, why in enumerate(whys):
        assert after[i].assessment.risk is None and after[i].assessment.reason.startswith(why), after[i]
        assert still_open[i].assessment.reason is None or "task excludes" not in still_open[i].assessment.reason
    assert [r.assessment for r in after[4:]] == [r.assessment for r in before[4:]]  # sent home: unchanged


def test_demo_activity_fills_a_fresh_state_store(dash, tmp_path):
    """`make demo`'s cards and feedback: recorded and audited as the service does, the chain intact."""
    from careloop.serve.app import Service
    from careloop.serve.config import load_config
    from careloop.web.demo import seed_activity, sign_in_text
    from tests.fhir_server.harness import make_rsa_key
    from tests.serve.harness import write_config

    _, jwk = make_rsa_key()
    cfg = write_config(tmp_path, state=f"sqlite:///{tmp_path / 'demo.db'}", jwks={"keys": [jwk]}, port=1)
    service = Service(dash.service.bundle.path, load_config(cfg))
    try:
        counts = seed_activity(service, dash.store_dir, seed=1)
        assert counts["cards"] >= 1 and counts["accepted"] + counts["overridden"] == len(service.store.feedback())
        assert len(service.audit.records(kind="cds-call")) == counts["cards"]
        assert service.audit.verify().ok
    finally:
        service.store.close()
    text = sign_in_text("http://127.0.0.1:8080/")
    assert "http://127.0.0.1:8080/dashboard/" in text and DEMO_PASSWORD in text and "data-scientist" in text


def test_the_monitoring_page_reads_real_careloop_monitor_output(trained_bundle, hospital_store, tmp_path):
    """`careloop monitor`'s own monitor.json (on the session's hospital) is read and every chart drawn."""
    import json

    mon = pytest.importorskip("careloop.monitor")
    from careloop.web import charts as CH
    from careloop.web.app import _draw

    doc = json.loads(json.dumps(mon.monitor(str(trained_bundle), str(hospital_store[0]), period="quarter").to_dict(),
                                default=str))
    (tmp_path / "monitor.json").write_text(json.dumps(doc))
    loaded, why = MON.load(tmp_path)
    assert why is None
    charts = MON.charts(loaded)
    assert charts and any(c.key == ("input_drift", "psi") for c in charts)
    for i, c in enumerate(charts):
        assert _draw(c, f"m{i}").startswith("<svg")
    labels, counts = MON.alert_counts(loaded)
    assert len(labels) == len(doc["periods"])
    assert CH.alerts_svg(labels, counts).startswith("<svg")
    assert len(MON.alert_rows(loaded)) == sum(len(p["alerts"]) for p in doc["periods"])
