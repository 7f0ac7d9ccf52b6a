"""Alert burden from the service's audit log and feedback store: the figures, and the alerts they raise."""

from __future__ import annotations

import datetime as dt
import json
import uuid
from pathlib import Path

import numpy as np
import pytest

from careloop.monitor._burden import Stays, burden
from careloop.monitor._config import BurdenConfig
from careloop.monitor._periods import periods, utc
from careloop.monitor.cli import run_monitor

SERVICE = "readmission-risk"
EHR = "https://ehr.example.org"


def _record(seq: int, t: dt.datetime, patient: str, *, alert: bool, note: str | None = None) -> dict:
    cards = [f"{uuid.UUID(int=seq)}|warning"] if alert else []
    return {"seq": seq, "recorded": t, "patient": patient, "score": 0.5 if alert else 0.1, "cards": cards,
            "detail": {"note": note} if note else {}, "deferral_reason": None}


def test_burden_figures_per_period() -> None:
    t0 = utc("2023-01-02")
    day = dt.timedelta(days=1)
    stays = Stays.build([f"p{i}" for i in range(10)],
                        np.array([int((t0 + i * day).timestamp() * 1e6) for i in range(10)]),
                        [True, False, True, None, False, False, False, False, False, False])
    recs = [_record(i + 1, t0 + i * day + dt.timedelta(hours=1), f"p{i}", alert=i < 4) for i in range(10)]
    recs.append(_record(11, t0 + 2 * day + dt.timedelta(hours=5), "p2", alert=True))  # a repeat within 7 days
    recs.append(_record(12, t0 + 3 * day + dt.timedelta(hours=6), "p3", alert=False, note="repeat suppressed"))
    actions = {str(uuid.UUID(int=1)): "overridden", str(uuid.UUID(int=2)): "accepted",
               str(uuid.UUID(int=3)): "overridden"}
    ps = periods(utc("2023-01-01"), utc("2023-03-01"), "month")
    out = burden(recs, actions, ps, [10, 0], stays, BurdenConfig())
    jan, feb = out
    assert jan["calls"] == 12 and jan["alerts"] == 5 and jan["discharges"] == 10
    assert jan["alerts_per_100"] == pytest.approx(50.0)
    # alerts linked to labelled stays: p0 (1), p1 (0), p2 (1, twice), p3 (unlabelled)
    assert jan["labelled"] == 4 and jan["true_positives"] == 3 and jan["ppv"] == pytest.approx(0.75)
    assert jan["nne"] == pytest.approx(1 / 0.75)
    assert jan["feedback"] == 3 and jan["override_rate"] == pytest.approx(2 / 3)
    assert jan["repeats"] == 1 and jan["repeat_share"] == pytest.approx(0.2)
    assert jan["suppressed_repeats"] == 1
    assert feb["calls"] == 0 and feb["alerts"] == 0 and feb["alerts_per_100"] is None
    # the rate's exact Poisson interval, 5 alerts over 10 discharges (chi-square quantiles / 2, per 100)
    from scipy.stats import chi2

    lo, hi = chi2.ppf(0.025, 10) / 2 / 10 * 100, chi2.ppf(0.975, 12) / 2 / 10 * 100
    assert jan["alerts_per_100_ci"] == pytest.approx([lo, hi]) and lo == pytest.approx(16.23, abs=0.01)


def test_more_alerts_than_discharges_is_a_rate_with_an_interval_not_a_crash() -> None:
    """A patient-view card during a stay and a warning at its discharge: two alerts for one discharge. The Wilson
    interval of a proportion failed here (math domain error); the rate's interval is finite."""
    t0 = utc("2023-01-02")
    stays = Stays.build(["p0"], np.array([int(t0.timestamp() * 1e6)]), [True])
    recs = [_record(1, t0 + dt.timedelta(hours=1), "p0", alert=True), _record(2, t0, "p0", alert=True),
            _record(3, t0 + dt.timedelta(hours=2), "p0", alert=True)]
    (jan,) = burden(recs, {}, periods(utc("2023-01-01"), utc("2023-02-01"), "month"), [1], stays, BurdenConfig())
    assert jan["alerts"] == 3 and jan["alerts_per_100"] == pytest.approx(300.0)
    lo, hi = jan["alerts_per_100_ci"]
    assert 0 < lo < 300 < hi < float("inf")


def test_burden_by_threshold_version() -> None:
    t0 = utc("2023-01-02")
    day = dt.timedelta(days=1)
    stays = Stays.build([f"p{i}" for i in range(8)],
                        np.array([int((t0 + i * day).timestamp() * 1e6) for i in range(8)]),
                        [True, False, True, False, True, True, False, None])
    recs = []
    for i in range(8):  # p0-p3 under the bundle's threshold (no version), p4-p7 under version 2
        r = _record(i + 1, t0 + i * day + dt.timedelta(hours=1), f"p{i}", alert=i in (0, 1, 4, 5, 6))
        if i >= 4:
            r["detail"]["threshold_version"] = "2"
        recs.append(r)
    deferred = _record(9, t0 + dt.timedelta(hours=3), "p0", alert=False)
    deferred["score"], deferred["deferral_reason"] = None, "patient under 18"
    recs.append(deferred)  # not scored: in no version's count
    (jan,) = burden(recs, {}, periods(utc("2023-01-01"), utc("2023-02-01"), "month"), [8], stays, BurdenConfig(),
                    {0: "bundle", 1: "0.200000", 2: "0.120000"})
    v0, v2 = jan["by_threshold"]
    assert (v0["version"], v0["threshold"], v0["scored"], v0["alerts"], v0["labelled"], v0["true_positives"]) == (
        0, "bundle", 4, 2, 2, 1)
    assert (v2["version"], v2["threshold"], v2["scored"], v2["alerts"], v2["labelled"], v2["true_positives"]) == (
        2, "0.120000", 4, 3, 3, 2)
    assert v2["alerts_per_100_scored"] == pytest.approx(75.0) and v2["ppv"] == pytest.approx(2 / 3)
    assert v2["ppv_ci"][0] < 2 / 3 < v2["ppv_ci"][1]
    (none,) = burden(recs[:4], {}, periods(utc("2023-01-01"), utc("2023-02-01"), "month"), [8], stays,
                     BurdenConfig())
    assert none["by_threshold"] is None  # no administrator's change: nothing to split


def _cohort(drift_site: dict):
    from careloop.engines import DuckDBEngine
    from careloop.tasks.cohort import build_cohort
    from careloop.tasks.spec import Task

    task = Task.from_text((drift_site["bundle"] / "task.yaml").read_text())
    eng = DuckDBEngine(drift_site["store"])
    try:
        return build_cohort(task, eng, dialect=eng.dialect).table
    finally:
        eng.close()


def _write_state(url: str, bundle_id: str, calls: list[tuple[str, dt.datetime, bool, str | None]]) -> None:
    from careloop.audit import AuditLog, audit_event
    from careloop.state import StateStore

    log = AuditLog.open(url)
    store = StateStore(url)
    try:
        for i, (patient, t, alert, fb, *version) in enumerate(calls):
            card = str(uuid.UUID(int=10_000 + i))
            cards = [{"uuid": card, "indicator": "warning"}] if alert else []
            detail = ({} if alert else {"note": "below threshold"}) | (
                {"threshold_version": version[0]} if version else {})
            log.append(audit_event(kind="cds-call", outcome="success", client=EHR, service=SERVICE, patient=patient,
                                   model_hash=bundle_id, score=0.6 if alert else 0.05, cards=cards, recorded=t,
                                   detail=detail or None))
            if alert:
                store.record_card(card, SERVICE, patient, bundle_id, 0.6, "warning", None, t)
            if fb == "overridden":
                store.add_feedback(SERVICE, {"card": card, "outcome": "overridden",
                                             "outcomeTimestamp": (t + dt.timedelta(minutes=5)).isoformat(),
                                             "overrideReason": {"reason": {"code": "already-planned",
                                                                           "system": "https://x.example/cs"}}},
                                   client=EHR)
            elif fb == "accepted":
                store.add_feedback(SERVICE, {"card": card, "outcome": "accepted",
                                             "outcomeTimestamp": (t + dt.timedelta(minutes=5)).isoformat(),
                                             "acceptedSuggestions": [{"id": "refer"}]}, client=EHR)
        if any(len(c) > 4 for c in calls):  # an administrator set the threshold that decided the later calls
            log.append(audit_event(kind="admin-change", outcome="success", model_hash=bundle_id, detail={
                "by": "admin", "setting": "threshold", "old": "bundle", "new": "0.250000", "threshold_version": 1}))
        # another model's calls are not this model's burden
        log.append(audit_event(kind="cds-call", outcome="success", client=EHR, service=SERVICE, patient="other",
                               model_hash="f" * 64, score=0.9, cards=[{"uuid": str(uuid.uuid4()),
                                                                        "indicator": "warning"}],
                               recorded=calls[0][1]))
    finally:
        store.close()
        log.close()


def test_an_overwhelmed_quarter_raises_burden_alerts(drift_site: dict, tmp_path: Path) -> None:
    """In 2022-Q3 the service alerts on 40% of discharges and clinicians override 95% of the cards; in 2022-Q4 it
    keeps to its budget of 10 per 100 with few overrides. Only 2022-Q3 raises burden alerts."""
    import pyarrow.compute as pc

    bundle_id = json.loads((drift_site["bundle"] / "MANIFEST.json").read_text())["bundle_id"]
    cohort = _cohort(drift_site)
    rng = np.random.default_rng(3)
    calls = []
    for start, end, rate, override in (("2022-07-01", "2022-10-01", 0.40, 0.95), ("2022-10-01", "2023-01-01", 0.08,
                                                                                  0.1)):
        rows = cohort.filter(pc.and_(pc.greater_equal(cohort.column("index_time"), utc(start)),
                                     pc.less(cohort.column("index_time"), utc(end))))
        for pid, t in zip(rows.column("patient_id").to_pylist(), rows.column("index_time").to_pylist(), strict=True):
            alert = bool(rng.random() < rate)
            fb = None
            if alert and rng.random() < 0.9:
                fb = "overridden" if rng.random() < override else "accepted"
            calls.append((pid, t + dt.timedelta(minutes=10), alert, fb, *((1,) if start == "2022-10-01" else ())))
    db = tmp_path / "state.db"
    _write_state(f"sqlite:///{db}", bundle_id, calls)

    out = tmp_path / "out"
    summary = run_monitor(drift_site["bundle"], drift_site["store"], out, "quarter", None, str(db))
    report = json.loads((out / "monitor.json").read_text())
    q3, q4 = report["periods"][0], report["periods"][1]
    assert q3["burden"]["alerts"] > 40 and q3["burden"]["alerts_per_100"] > 30
    assert q3["burden"]["calls"] == q3["stays"]  # the other model's call is not counted
    assert 0.8 < q3["burden"]["override_rate"] <= 1 and q3["burden"]["labelled"] > 20
    metrics = {a["metric"] for a in q3["alerts"] if a["kind"] == "burden"}
    assert {"alerts_per_100", "override_rate"} <= metrics
    assert all(a["group"] == "all" for a in q3["alerts"] if a["kind"] == "burden")
    assert [a for a in q4["alerts"] if a["kind"] == "burden"] == []
    assert q4["burden"]["alerts_per_100"] < 15
    assert any(n.startswith("The audit log holds 1 calls of other models") for n in report["notes"])
    assert summary["by_kind"].get("burden", 0) >= 2
    # Q4's calls were decided by an administrator's threshold (version 1, 25%): shown apart, Q3's were not
    assert q3["burden"]["by_threshold"] is None
    (v1,) = q4["burden"]["by_threshold"]
    q4_calls = [c for c in calls if len(c) > 4]
    assert (v1["version"], v1["threshold"], v1["scored"], v1["alerts"]) == (
        1, "0.250000", len(q4_calls), sum(c[2] for c in q4_calls))
    assert v1["alerts_per_100_scored"] == pytest.approx(100 * v1["alerts"] / v1["scored"])
    html = (out / "monitor.html").read_text()
    assert 'id="burden-table"' in html and 'data-figure="burden"' in html
    assert 'id="burden-threshold-table"' in html and "<td>25.0%</td>" in html


def _us(t: dt.datetime) -> int:
    return int(t.timestamp() * 1_000_000)


def test_a_card_is_credited_to_the_stay_it_was_shown_for() -> None:
    """Stay A ends at t0 and is readmitted (stay B, from t0 + 24 h to t0 + 10 days, not readmitted). A card shown
    during B is about B, not about A (whose readmission B is)."""
    t0, h = utc("2023-03-05"), dt.timedelta(hours=1)
    discharges = np.array([_us(t0), _us(t0 + 240 * h)])
    admits = np.array([_us(t0 - 96 * h), _us(t0 + 24 * h)])
    stays = Stays.build(["p1", "p1"], discharges, [True, False], admit_us=admits)
    recs = [_record(1, t0 - 2 * h, "p1", alert=True),  # at A's discharge
            _record(2, t0 + 36 * h, "p1", alert=True),  # a chart opened during B
            _record(3, t0 + 240 * h + 10 * dt.timedelta(minutes=1), "p1", alert=True)]  # just after B's discharge
    (row,) = burden(recs, {}, periods(utc("2023-03-01"), utc("2023-04-01"), "month"), [3], stays, BurdenConfig())
    # by hand: card 1 -> A (readmitted), cards 2 and 3 -> B (not readmitted)
    assert (row["linked"], row["labelled"], row["true_positives"]) == (3, 3, 1)
    assert row["ppv"] == pytest.approx(1 / 3)
    window = 48 * 3_600_000_000
    assert stays.link("p1", _us(t0 + 12 * h), window) == (True, 1)  # within a day of A's end, before B began
    # without admission times, a card during B more than the window before B's end links to nothing, not to A
    bare = Stays.build(["p1", "p1"], discharges, [True, False])
    assert bare.link("p1", _us(t0 + 36 * h), window) == (False, None)
    assert bare.link("p1", _us(t0 + 200 * h), window) == (True, 0)


@pytest.fixture(scope="module")
def uncensored(drift_site: dict, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A bundle of the task with `censor_at_data_end: false`: stays whose 30 days run past the end of the data are
    labelled (not readmitted, as far as the data goes) rather than left unlabelled."""
    from tests.monitor.conftest import time_split_task, train_bundle

    task = time_split_task(tmp_path_factory.mktemp("task-uncensored"), drift_site["split"])
    text = task.read_text()
    assert "censor_at_data_end: true" in text
    task.write_text(text.replace("censor_at_data_end: true", "censor_at_data_end: false"))
    return train_bundle(drift_site["store"], tmp_path_factory.mktemp("registry-uncensored"), task)


def test_the_alert_ppv_waits_for_the_outcome_window(drift_site: dict, uncensored: Path, tmp_path: Path) -> None:
    """Every stay of 2023-Q2 is alerted; the PPV counts only the stays whose 30 days had passed by the end of the
    data, as the performance figures do (an open window is no false positive)."""
    from careloop.engines import DuckDBEngine
    from careloop.tasks.cohort import build_cohort
    from careloop.tasks.spec import Task

    task = Task.from_text((uncensored / "task.yaml").read_text())
    eng = DuckDBEngine(drift_site["store"])
    try:
        res = build_cohort(task, eng, dialect=eng.dialect)
    finally:
        eng.close()
    rows = [r for r in res.table.select(["patient_id", "index_time", "label"]).to_pylist()
            if r["index_time"] >= utc("2023-04-01")]
    calls = [(r["patient_id"], r["index_time"] + dt.timedelta(minutes=10), True, None) for r in rows]
    db = tmp_path / "state.db"
    _write_state(f"sqlite:///{db}", json.loads((uncensored / "MANIFEST.json").read_text())["bundle_id"], calls)
    run_monitor(uncensored, drift_site["store"], tmp_path / "out", "quarter", None, str(db), start="2023-04-01")
    (q2,) = json.loads((tmp_path / "out" / "monitor.json").read_text())["periods"]
    # by hand: the stays whose window closed by the data's end, and the readmitted among them
    mature = [r for r in rows if r["index_time"] + task.label.within <= res.data_end]
    assert len(mature) < len(rows)  # some windows were still open, and labelled False by this task
    assert all(r["label"] is not None for r in rows)
    tp = sum(bool(r["label"]) for r in mature)
    b = q2["burden"]
    assert b["alerts"] == len(rows) and (b["labelled"], b["true_positives"]) == (len(mature), tp)
    assert b["ppv"] == pytest.approx(tp / len(mature))
    assert b["labelled"] == q2["performance"]["labelled"]


def test_a_card_naming_its_encounter_is_linked_by_it_not_by_time() -> None:
    """The service records the stay it scored. Two stays of p1 close in time: A (readmitted) ends at t0, B (not
    readmitted) runs t0 + 12 h to t0 + 72 h. A card recorded 6 h after A's end that names B is B's, though by time
    it falls in A's 24-hour grace; one naming a stay outside the cohort is linked to none; a record without an
    encounter (an older careloop's) is still linked by time."""
    t0, h = utc("2023-03-05"), dt.timedelta(hours=1)
    discharges = np.array([_us(t0), _us(t0 + 72 * h)])
    admits = np.array([_us(t0 - 96 * h), _us(t0 + 12 * h)])
    stays = Stays.build(["p1", "p1"], discharges, [True, False], admit_us=admits, encounters=["A", "B"])
    window = 48 * 3_600_000_000
    assert stays.link("p1", _us(t0 + 6 * h), window) == (True, 1)  # by time: A's grace
    assert stays.link("p1", _us(t0 + 6 * h), window, "B") == (True, 0)
    assert stays.link("p1", _us(t0 + 6 * h), window, "X") == (False, None)
    assert stays.link("p2", _us(t0 + 6 * h), window, "B") == (False, None)  # another patient's encounter id
    recs = [_record(1, t0 + 6 * h, "p1", alert=True), _record(2, t0 + 7 * h, "p1", alert=True),
            _record(3, t0 + 8 * h, "p1", alert=True)]
    recs[0]["encounter"], recs[1]["encounter"] = "B", "X"
    (row,) = burden(recs, {}, periods(utc("2023-03-01"), utc("2023-04-01"), "month"), [2], stays, BurdenConfig())
    # card 1 -> B (0), card 2 -> nothing, card 3 (no encounter) -> A by time (1)
    assert (row["linked"], row["labelled"], row["true_positives"]) == (2, 2, 1)
