"""StateStore on SQLite and PostgreSQL: jti replay cache, cards, feedback, kill switches, settings."""

from __future__ import annotations

import json
import multiprocessing as mp
import threading
from concurrent.futures import ThreadPoolExecutor
from datetime import UTC, datetime, timedelta, timezone
from pathlib import Path

import pytest

from careloop.state import StateError, StateStore, normalize_url
from careloop.state._db import masked

FIXTURES = Path(__file__).resolve().parents[3] / "shared" / "fixtures" / "cds-hooks-spec-examples"
ISS = "https://ehr.example.org"
NOW = datetime(2025, 6, 1, 12, 0, tzinfo=UTC)
# fork starts a worker in milliseconds (spawn re-imports everything: ~1.5 s); each worker opens its own store
START_METHOD = "fork" if "fork" in mp.get_all_start_methods() else "spawn"


@pytest.fixture
def store(db_url):
    s = StateStore(db_url)
    yield s
    s.close()


def spec_feedback(name: str) -> dict:
    return json.loads((FIXTURES / name).read_text())["feedback"][0]


# ------------------------------------------------------------------ jti
def test_jti_first_claim_wins_and_replay_is_refused(store):
    exp = NOW + timedelta(minutes=5)
    assert store.claim_jti(ISS, "a", exp, now=NOW) is True
    assert store.claim_jti(ISS, "a", exp, now=NOW) is False
    assert store.claim_jti(ISS, "a", exp, now=NOW + timedelta(minutes=4)) is False
    assert store.claim_jti("https://other.example", "a", exp, now=NOW) is True  # jti is scoped by iss
    assert store.claim_jti(ISS, "b", exp, now=NOW) is True


def test_jti_expired_entry_can_be_claimed_again_and_is_purged(store):
    assert store.claim_jti(ISS, "a", NOW + timedelta(minutes=5), now=NOW)
    later = NOW + timedelta(minutes=6)
    assert store.claim_jti(ISS, "a", later + timedelta(minutes=5), now=later) is True  # expired: reclaimed
    assert store.claim_jti(ISS, "a", later + timedelta(minutes=5), now=later) is False  # and now held again
    assert store.claim_jti(ISS, "b", NOW + timedelta(minutes=1), now=NOW)
    assert store.purge_expired_jti(now=NOW + timedelta(minutes=2)) == 1  # b expired; a (renewed) kept
    assert store.claim_jti(ISS, "a", later + timedelta(minutes=5), now=later) is False


def test_jti_claims_in_one_statement_agree_with_one_at_a_time(store):
    """The group commit's batch claim: fresh pairs win, a pair already held loses, a pair repeated within the batch
    wins once, and an expired pair can be claimed again; the table holds the same rows as one-at-a-time claims."""
    exp = NOW + timedelta(minutes=5)
    assert store.claim_jti(ISS, "held", exp, now=NOW)
    assert store.claim_jti(ISS, "old", NOW - timedelta(minutes=1), now=NOW - timedelta(minutes=2))
    batch = [(ISS, "n1", exp), (ISS, "held", exp), (ISS, "n2", exp), (ISS, "n1", exp), ("https://other", "n1", exp),
             (ISS, "old", exp)]
    with store.transaction(write=True) as conn:
        wins = store.claim_jtis_in(conn, batch, now=NOW)
    assert wins == [True, False, True, False, True, True]
    with store.transaction(write=True) as conn:
        assert store.claim_jtis_in(conn, batch, now=NOW) == [False] * len(batch)
        assert store.claim_jtis_in(conn, [], now=NOW) == []
    for iss, jti, _ in batch:
        assert store.claim_jti(iss, jti, exp, now=NOW) is False


def test_jti_real_clock_and_validation(store):
    now = datetime.now(UTC)
    assert store.claim_jti(ISS, "x", now + timedelta(minutes=5))
    assert not store.claim_jti(ISS, "x", now + timedelta(minutes=5))
    assert store.claim_jti(ISS, "y", now.astimezone(timezone(timedelta(hours=-5))) + timedelta(minutes=5))
    with pytest.raises(StateError, match="timezone-aware"):
        store.claim_jti(ISS, "z", datetime(2030, 1, 1))
    with pytest.raises(StateError, match="jti"):
        store.claim_jti(ISS, "", now)
    with pytest.raises(StateError, match="jti"):
        store.claim_jti(ISS, "x" * 2000, now)


def test_jti_concurrent_threads_exactly_one_claim_wins(store):
    threads, jtis = 8, [f"j{i}" for i in range(60)]
    exp = datetime.now(UTC) + timedelta(minutes=5)
    barrier = threading.Barrier(threads)

    def worker(_: int) -> list[str]:
        barrier.wait()
        return [j for j in jtis if store.claim_jti(ISS, j, exp)]

    with ThreadPoolExecutor(threads) as pool:
        wins = [j for won in pool.map(worker, range(threads)) for j in won]
    assert sorted(wins) == sorted(jtis)  # every jti won exactly once: no double win, no lost claim


def test_jti_concurrent_processes_exactly_one_claim_wins(db_url):
    from tests.state._workers import claim_many, collect

    StateStore(db_url).close()  # tables exist before the race
    ctx = mp.get_context(START_METHOD)
    procs, jtis = 3, [f"p{i}" for i in range(150)]
    barrier, out = ctx.Barrier(procs), ctx.Queue()
    workers = [ctx.Process(target=claim_many, args=(db_url, jtis, barrier, out)) for _ in range(procs)]
    for w in workers:
        w.start()
    wins = collect(out, workers)
    assert sorted(wins) == sorted(jtis)


# ------------------------------------------------------------------ cards
def test_cards_lookup_last_card_and_daily_budget(store):
    rec = store.record_card
    rec("c1", "readmission-risk", "p1", "m1", 0.31, "warning", "4W", NOW)
    rec("c2", "readmission-risk", "p1", "m1", 0.42, "warning", "4W", NOW + timedelta(hours=2))
    rec("c3", "readmission-risk", "p1", "m2", 0.10, "info", "4W", NOW + timedelta(hours=3))  # other model
    rec("c4", "readmission-risk", "p2", "m1", None, "info", None, NOW + timedelta(hours=1))
    rec("c5", "other-service", "p1", "m1", 0.9, "warning", "4W", NOW + timedelta(hours=5))

    card = store.card("c2")
    assert card == {"uuid": "c2", "service": "readmission-risk", "patient": "p1", "model_hash": "m1", "risk": 0.42,
                    "indicator": "warning", "unit": "4W", "at": NOW + timedelta(hours=2), "user": None}
    rec("c6", "other-service", "p9", "m9", 0.5, "warning", "9N", NOW, "Practitioner/7")
    assert store.card("c6")["user"] == "Practitioner/7"  # whom it was shown to
    assert card["at"].tzinfo is not None
    assert store.card("nope") is None
    assert store.last_card("readmission-risk", "p1", "m1")["uuid"] == "c2"
    assert store.last_card("readmission-risk", "p1", "m2")["uuid"] == "c3"
    assert store.last_card("readmission-risk", "p3", "m1") is None
    assert store.last_card("readmission-risk", "p2", "m1")["risk"] is None

    assert store.cards_since("readmission-risk", "4W", NOW) == 3
    assert store.cards_since("readmission-risk", "4W", NOW + timedelta(minutes=1)) == 2
    assert store.cards_since("readmission-risk", None, NOW) == 1
    assert store.cards_since("other-service", "4W", NOW) == 1
    assert store.cards_since("readmission-risk", "ICU", NOW) == 0


def test_last_card_ties_break_by_recording_order(store):
    store.record_card("first", "s", "p", "m", 0.1, "info", None, NOW)
    store.record_card("second", "s", "p", "m", 0.2, "info", None, NOW)
    assert store.last_card("s", "p", "m")["uuid"] == "second"


def test_record_card_twice(store):
    store.record_card("c1", "s", "p1", "m1", 0.3, "warning", "4W", NOW)
    store.record_card("c1", "s", "p1", "m1", 0.3, "warning", "4W", NOW)  # a retry: no-op
    with pytest.raises(StateError, match="different content"):
        store.record_card("c1", "s", "p2", "m1", 0.3, "warning", "4W", NOW)
    with pytest.raises(StateError, match="indicator"):
        store.record_card("c2", "s", "p1", "m1", 0.3, "urgent", "4W", NOW)
    with pytest.raises(StateError, match="risk"):
        store.record_card("c3", "s", "p1", "m1", float("nan"), "info", "4W", NOW)


# ------------------------------------------------------------------ feedback
def test_feedback_is_idempotent(store):
    accepted = spec_feedback("docs-spec-current.21.feedback.json")
    overridden = spec_feedback("docs-spec-current.22.feedback.json")
    assert store.add_feedback("readmission-risk", accepted, client=ISS) is True
    assert store.add_feedback("readmission-risk", accepted, client=ISS) is False
    assert store.add_feedback("readmission-risk", overridden, client=ISS) is True
    assert store.add_feedback("readmission-risk", overridden, client=ISS) is False
    # the same instant written another way is the same feedback
    same = dict(overridden, outcomeTimestamp="2020-12-11T01:00:00+01:00")
    assert store.add_feedback("readmission-risk", same, client=ISS) is False
    # a later outcome, or another override reason, is new
    assert store.add_feedback("readmission-risk", dict(overridden, outcomeTimestamp="2020-12-12T00:00:00Z"),
                              client=ISS) is True
    other_reason = dict(overridden, overrideReason={"reason": {"code": "not-relevant", "system": "x"}})
    assert store.add_feedback("readmission-risk", other_reason, client=ISS) is True
    no_reason = {k: v for k, v in overridden.items() if k != "overrideReason"}
    assert store.add_feedback("readmission-risk", no_reason, client=ISS) is True
    assert store.add_feedback("readmission-risk", no_reason, client=ISS) is False
    assert len(store.feedback()) == 5


# ------------------------------------------------------------------ rate limits
def test_a_token_bucket_allows_its_burst_then_the_rate_and_says_how_long_to_wait(store):
    take = store.take_token
    assert [take("feedback|a", per_s=2, burst=3, now=100.0) for _ in range(3)] == [0, 0, 0]
    assert take("feedback|a", per_s=2, burst=3, now=100.0) == pytest.approx(0.5)  # empty: one token in 0.5 s
    assert take("feedback|a", per_s=2, burst=3, now=100.25) == pytest.approx(0.25)  # a refusal takes nothing
    assert take("feedback|a", per_s=2, burst=3, now=100.5) == 0
    assert take("feedback|b", per_s=2, burst=3, now=100.5) == 0  # another client's bucket is its own
    assert [take("feedback|a", per_s=2, burst=3, now=200.0) for _ in range(4)][-1] > 0  # refilled to burst only
    with pytest.raises(StateError):
        take("feedback|a", per_s=0, burst=3)


def test_a_token_bucket_is_shared_by_processes_and_never_overdrawn(db_url):
    from tests.state._workers import collect, take_many

    StateStore(db_url).close()
    ctx = mp.get_context(START_METHOD)
    procs = 3
    barrier, out = ctx.Barrier(procs), ctx.Queue()
    workers = [ctx.Process(target=take_many, args=(db_url, 20, barrier, out)) for _ in range(procs)]
    for w in workers:
        w.start()
    assert sum(collect(out, workers)) == 30  # 60 tries by 3 processes: exactly the burst, not 3 times it


def test_threshold_changes_by_two_processes_at_once_each_get_their_own_version(db_url):
    """Every scored call records the threshold version that decided it, so two administrators' changes made at once
    (two workers) must never share a version; the versions are 1..N with none lost, and the last one is in force."""
    from tests.state._workers import collect, set_thresholds

    StateStore(db_url).close()
    ctx = mp.get_context(START_METHOD)
    barrier, out = ctx.Barrier(2), ctx.Queue()
    workers = [ctx.Process(target=set_thresholds, args=(db_url, 25, v, barrier, out)) for v in (0.2, 0.7)]
    for w in workers:
        w.start()
    versions = collect(out, workers)
    assert sorted(versions) == list(range(1, 51))
    store = StateStore(db_url)
    try:
        assert store.policy("model-race").threshold_version == 50
        assert store.policy("never-set") == store.policy("never-set-either")
        assert store.policy("never-set").threshold is None and store.policy("never-set").threshold_version == 0
    finally:
        store.close()


def test_feedback_concurrent_duplicates_store_once(store):
    item = spec_feedback("docs-spec-current.22.feedback.json")
    barrier = threading.Barrier(6)

    def post(_: int) -> bool:
        barrier.wait()
        return store.add_feedback("readmission-risk", item, client=ISS)

    with ThreadPoolExecutor(6) as pool:
        results = list(pool.map(post, range(6)))
    assert results.count(True) == 1
    assert len(store.feedback()) == 1


def test_feedback_export(store):
    overridden = spec_feedback("docs-spec-current.22.feedback.json")
    store.record_card(overridden["card"], "readmission-risk", "p1", "m1", 0.4, "warning", "4W", NOW)
    store.add_feedback("readmission-risk", overridden, client=ISS, user="Practitioner/7",
                       received_at=NOW + timedelta(minutes=1))
    store.add_feedback("other", spec_feedback("docs-spec-current.21.feedback.json"), client="https://b.example")
    rows = store.feedback("readmission-risk")
    assert rows == [{
        "intervention": "readmission-risk",
        "card": "9368d37b-283f-44a0-93ea-547cebab93ed",
        "action": "overridden",
        "accepted_suggestions": [],
        "override_code": "d7ecf885",
        "override_system": "https://example.com/cds-hooks/override-reason-system",
        "override_display": None,
        "comment": "A comment entered by the clinician.",
        "user": "Practitioner/7",
        "client": ISS,
        "date": "2020-12-11T00:00:00.000000Z",
        "received": "2025-06-01T12:01:00.000000Z",
        "location": "4W",
        "model_hash": "m1",
    }]
    both = store.feedback()
    assert [r["intervention"] for r in both] == ["readmission-risk", "other"]
    assert both[1]["accepted_suggestions"] == ["e56e1945-20b3-4393-8503-a1a20fd73152"]
    assert both[1]["location"] is None  # no card recorded for it


@pytest.mark.parametrize(
    ("item", "match"),
    [
        ({"outcome": "accepted", "outcomeTimestamp": "2021-01-01T00:00:00Z"}, "card"),
        ({"card": "c", "outcome": "ignored", "outcomeTimestamp": "2021-01-01T00:00:00Z"}, "outcome"),
        ({"card": "c", "outcome": "accepted"}, "outcomeTimestamp"),
        ({"card": "c", "outcome": "accepted", "outcomeTimestamp": "yesterday"}, "ISO 8601"),
        ({"card": "c", "outcome": "accepted", "outcomeTimestamp": "2021-01-01T00:00:00"}, "time zone"),
        ({"card": "c", "outcome": "accepted", "outcomeTimestamp": "2021-01-01T00:00:00Z",
          "acceptedSuggestions": ["x"]}, "acceptedSuggestions"),
    ],
)
def test_feedback_validation(item, match):
    s = StateStore("sqlite://")
    with pytest.raises(StateError, match=match):
        s.add_feedback("svc", item, client=ISS)
    s.close()


# ------------------------------------------------------------------ kill switch and settings
def test_kill_switch_default_and_toggle_seen_by_other_instances(store, db_url):
    other = StateStore(db_url)  # another worker on the same database
    try:
        assert store.enabled("readmission-risk@abc") is True
        store.set_enabled("readmission-risk@abc", False, by="admin")
        assert other.enabled("readmission-risk@abc") is False  # takes effect on the next request anywhere
        assert other.enabled("readmission-risk@def") is True
        other.set_enabled("readmission-risk@abc", True, by="admin2")
        assert store.enabled("readmission-risk@abc") is True
        sw = store.switches()["readmission-risk@abc"]
        assert sw["enabled"] is True and sw["changed_by"] == "admin2" and sw["changed_at"].tzinfo is not None
        with pytest.raises(StateError, match="True or False"):
            store.set_enabled("m", "no", by="admin")  # type: ignore[arg-type]
    finally:
        other.close()


def test_settings_round_trip(store):
    assert store.setting("threshold") is None
    assert store.setting("threshold", 0.25) == 0.25
    value = {"threshold": 0.3, "window_hours": 72, "units": ["4W", "ICU"], "budget": None, "on": True, "name": "é"}
    store.set_setting("alert-policy", value, by="admin")
    assert store.setting("alert-policy") == value
    store.set_setting("alert-policy", 1.5, by="admin")
    assert store.setting("alert-policy") == 1.5
    store.set_setting("empty", [], by="admin")
    assert store.settings() == {"alert-policy": 1.5, "empty": []}
    with pytest.raises(StateError, match="JSON"):
        store.set_setting("bad", float("inf"), by="admin")
    with pytest.raises(StateError, match="JSON"):
        store.set_setting("bad", object(), by="admin")


def test_reopen_keeps_state(db_url):
    s = StateStore(db_url)
    s.set_setting("k", {"v": 1}, by="a")
    s.record_card("c1", "s", "p", "m", 0.5, "info", None, NOW)
    s.close()
    s = StateStore(db_url)  # tables exist: created only if absent
    assert s.setting("k") == {"v": 1}
    assert s.card("c1")["risk"] == 0.5
    s.close()


# ------------------------------------------------------------------ URLs and the memory store
def test_urls():
    assert normalize_url("postgresql://u@h:5432/db") == "postgresql+psycopg://u@h:5432/db"
    assert normalize_url("postgres://u@h/db") == "postgresql+psycopg://u@h/db"
    assert normalize_url("sqlite:///x.db") == "sqlite:///x.db"
    with pytest.raises(StateError, match="unsupported"):
        normalize_url("mysql://u:secret@h/db")
    with pytest.raises(StateError) as info:
        normalize_url("mysql://u:secret@h/db")
    assert "secret" not in str(info.value)
    assert "secret" not in masked("postgresql+psycopg://u:secret@h/db")


def test_sqlite_file_parent_directories_are_created(tmp_path):
    s = StateStore(f"sqlite:///{tmp_path / 'a' / 'b.db'}")
    assert "b.db" in repr(s)
    assert (tmp_path / "a" / "b.db").exists()
    s.close()


def test_memory_store_is_shared_between_threads():
    s = StateStore("sqlite://")
    exp = datetime.now(UTC) + timedelta(minutes=5)
    barrier = threading.Barrier(4)

    def worker(_: int) -> int:
        barrier.wait()
        return sum(s.claim_jti(ISS, f"j{i}", exp) for i in range(100))

    with ThreadPoolExecutor(4) as pool:
        assert sum(pool.map(worker, range(4))) == 100
    s.close()
