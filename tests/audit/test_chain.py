"""The hash chain on SQLite and PostgreSQL: verification, tampering, concurrency, append-only triggers, checkpoints,
retention."""

from __future__ import annotations

import itertools
import json
import multiprocessing as mp
import shutil
import threading
from concurrent.futures import ThreadPoolExecutor
from datetime import UTC, datetime, timedelta

import pytest
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
from sqlalchemy import select

from careloop.audit import GENESIS, AuditError, AuditLog, entry_hash, summarize
from careloop.errors import ConfigError
from careloop.state import StateError, StateStore, canonical_json
from tests.audit.helpers import T0, make_events, tampering
from tests.pg import clone_database, fresh_database
from tests.state.test_store import START_METHOD

N = 1000
EVENTS = make_events(N)


@pytest.fixture
def log(db_url):
    log = AuditLog.open(db_url)
    yield log
    log.close()


_TEMPLATES: dict[str, str] = {}  # backend -> URL of a database holding the N-record chain, built once per session


def _template(db_url: str, tmp_path_factory) -> str:
    backend = db_url.split(":", 1)[0]
    if backend not in _TEMPLATES:
        if backend == "sqlite":
            url = f"sqlite:///{tmp_path_factory.mktemp('audit-template') / 'template.db'}"
        else:
            url = fresh_database(db_url, "audit_template")
        with AuditLog.open(url) as log:
            out = log.append_many(EVENTS)
        assert [r["seq"] for r in out] == list(range(1, N + 1))
        _TEMPLATES[backend] = url
    return _TEMPLATES[backend]


@pytest.fixture
def full_log(db_url, tmp_path_factory):
    """An AuditLog holding the N-record chain: a copy of a template built once per backend."""
    template = _template(db_url, tmp_path_factory)
    if db_url.startswith("sqlite"):
        shutil.copyfile(template.removeprefix("sqlite:///"), db_url.removeprefix("sqlite:///"))
    else:
        clone_database(template, db_url)
    log = AuditLog.open(db_url)
    yield log
    log.close()


def _row(conn, seq: int) -> dict:
    return dict(conn.exec_driver_sql(f"SELECT * FROM careloop_audit WHERE seq = {seq}").mappings().one())


def _move(conn, pairs: list[tuple[int, int]]) -> None:
    """Renumber records (old seq -> new seq) without tripping the primary key midway."""
    for old, _ in pairs:
        conn.exec_driver_sql(f"UPDATE careloop_audit SET seq = {-old} WHERE seq = {old}")
    for old, new in pairs:
        conn.exec_driver_sql(f"UPDATE careloop_audit SET seq = {new} WHERE seq = {-old}")


def test_thousand_appends_verify(full_log):
    res = full_log.verify()
    assert res.ok and res.checked == N and res.first_bad is None and res.reason is None
    assert bool(res)
    recs = full_log.records()
    assert [r["seq"] for r in recs] == list(range(1, N + 1))
    assert recs[0]["prev_hash"] == GENESIS
    for a, b in itertools.pairwise(recs):
        assert b["prev_hash"] == a["entry_hash"]
    r = recs[41]
    assert r["entry_hash"] == entry_hash(r["prev_hash"], 42, canonical_json(EVENTS[41]))
    assert full_log.head() == {"seq": N, "hash": recs[-1]["entry_hash"], "recorded": recs[-1]["recorded"]}


def test_append_returns_seq_hash_prev(log):
    first = log.append(EVENTS[0])
    second = log.append(EVENTS[1])
    assert first == {"seq": 1, "hash": entry_hash(GENESIS, 1, canonical_json(EVENTS[0])), "prev": GENESIS}
    assert second["seq"] == 2 and second["prev"] == first["hash"]
    assert log.append_many([]) == []
    assert log.verify().ok


def test_empty_log_verifies(log):
    assert log.verify() == log.verify().__class__(True, 0)
    assert log.head() == {"seq": 0, "hash": GENESIS, "recorded": None}


# Each tampering, done as a DBA with the triggers disabled, and the seq verify() must name first.
def _edit_field(conn):
    event = json.loads(_row(conn, 500)["event"])
    event["entity"][-1]["detail"][1]["valueString"] = "0.01"  # the score
    conn.exec_driver_sql(f"UPDATE careloop_audit SET event = {_q(canonical_json(event))} WHERE seq = 500")
    return 500


def _edit_column(conn):  # hide a record from a patient's report by editing the indexed column only
    conn.exec_driver_sql("UPDATE careloop_audit SET patient = 'someone-else' WHERE seq = 321")
    return 321


def _edit_with_rehash(conn):  # edit record 700 and recompute its own hash: record 701 no longer chains to it
    row = _row(conn, 700)
    event = json.loads(row["event"])
    event["outcome"] = "12"
    text = canonical_json(event)
    conn.exec_driver_sql(
        f"UPDATE careloop_audit SET event = {_q(text)}, entry_hash = '{entry_hash(row['prev_hash'], 700, text)}' "
        "WHERE seq = 700"
    )
    return 700


def _delete(conn):
    conn.exec_driver_sql("DELETE FROM careloop_audit WHERE seq = 250")
    return 250


def _delete_and_renumber(conn):
    conn.exec_driver_sql("DELETE FROM careloop_audit WHERE seq = 250")
    _move(conn, [(s, s - 1) for s in range(251, N + 1)])
    return 250


def _swap(conn):
    _move(conn, [(300, 600), (600, 300)])
    return 300


def _swap_adjacent(conn):
    _move(conn, [(10, 11), (11, 10)])
    return 10


def _insert_forged_end(conn):
    conn.exec_driver_sql(
        "INSERT INTO careloop_audit (seq, recorded, kind, outcome, client, patient, event, prev_hash, entry_hash) "
        f"VALUES ({N + 1}, '2025-03-02 00:00:00', 'cds-call', 'success', 'x', 'p1', '{{}}', '{'1' * 64}', "
        f"'{'2' * 64}')"
    )
    return N + 1


def _insert_forged_middle(conn):
    """A well-formed forgery: records 400.. moved up one, and a record 400 whose hashes are computed correctly."""
    prev = _row(conn, 399)["entry_hash"]
    _move(conn, [(s, s + 1) for s in range(N, 399, -1)])
    text = canonical_json(make_events(1, T0 + timedelta(seconds=399))[0])
    conn.exec_driver_sql(
        "INSERT INTO careloop_audit (seq, recorded, kind, outcome, client, patient, event, prev_hash, entry_hash) "
        f"VALUES (400, '2025-03-01 08:06:39', 'cds-call', 'success', 'https://ehr0.example/iss', 'p0', {_q(text)}, "
        f"'{prev}', '{entry_hash(prev, 400, text)}')"
    )
    return 400


def _q(text: str) -> str:
    return "'" + text.replace("'", "''") + "'"


TAMPERINGS = {
    "edit-field": _edit_field,
    "edit-column": _edit_column,
    "edit-and-rehash": _edit_with_rehash,
    "delete": _delete,
    "delete-and-renumber": _delete_and_renumber,
    "swap": _swap,
    "swap-adjacent": _swap_adjacent,
    "insert-forged-at-end": _insert_forged_end,
    "insert-forged-in-middle": _insert_forged_middle,
}


@pytest.mark.parametrize("how", list(TAMPERINGS))
def test_tampering_is_detected_at_the_first_bad_record(full_log, db_url, how):
    assert full_log.verify().ok
    with tampering(db_url) as conn:
        expected = TAMPERINGS[how](conn.execution_options(no_parameters=True))
    res = full_log.verify()
    assert not res.ok
    assert res.first_bad == expected, res.reason
    assert res.checked == expected - 1
    assert res.reason and str(expected) in res.reason


@pytest.mark.parametrize("seq", [0, -1, -7])
def test_a_record_inserted_before_the_first_is_detected(full_log, seq):
    """INSERT is what the service's role may do: a well-formed record slipped in below seq 1 (hashes computed, a
    feedback on a patient) would otherwise escape the walk, which starts at 1, and still show in the audit report."""
    assert full_log.verify().ok
    text = canonical_json(make_events(1, T0)[0])
    with full_log.store.transaction(write=True) as conn:
        conn.execution_options(no_parameters=True).exec_driver_sql(
            "INSERT INTO careloop_audit (seq, recorded, kind, outcome, client, patient, event, prev_hash, entry_hash) "
            f"VALUES ({seq}, '2025-03-01 08:00:00', 'feedback', 'success', 'x', 'victim', {_q(text)}, "
            f"'{GENESIS}', '{entry_hash(GENESIS, seq, text)}')")
    assert any(r["seq"] == seq for r in full_log.records())  # the report would show it
    res = full_log.verify()
    assert not res.ok and res.first_bad == seq and "before the chain's first record" in res.reason


def test_triggers_refuse_update_delete_through_the_app_connection(full_log, db_url):
    store = full_log.store
    for sql in (
        "UPDATE careloop_audit SET patient = 'x' WHERE seq = 5",
        "UPDATE careloop_audit SET event = '{}'",
        "DELETE FROM careloop_audit WHERE seq = 5",
        "DELETE FROM careloop_audit",
    ):
        with pytest.raises(StateError, match="append-only"), store.transaction(write=True) as conn:
            conn.exec_driver_sql(sql)
    if store.dialect == "postgresql":
        with pytest.raises(StateError, match="append-only"), store.transaction(write=True) as conn:
            conn.exec_driver_sql("TRUNCATE careloop_audit")
    with tampering(db_url) as conn:  # the checkpoint and anchor tables are append-only too
        conn.exec_driver_sql(
            "INSERT INTO careloop_audit_anchor (upto_seq, entry_hash, last_recorded, purged_at, minimum_days, "
            f"purged_by) VALUES (0, '{GENESIS}', '2020-01-01 00:00:00', '2021-01-01 00:00:00', 183, 'test')"
        )
    AuditLog(store)  # recreates the SQLite triggers the tampering dropped (as the service does at start)
    for sql in ("UPDATE careloop_audit_anchor SET purged_by = 'x'", "DELETE FROM careloop_audit_anchor"):
        with pytest.raises(StateError, match="append-only"), store.transaction(write=True) as conn:
            conn.exec_driver_sql(sql)
    assert full_log.verify().ok and len(full_log.records()) == N


def test_grant_app_role_leaves_select_and_insert_only(full_log, db_url):
    if full_log.store.dialect != "postgresql":
        with pytest.raises(AuditError, match="PostgreSQL"):
            full_log.grant_app_role("careloop_app")
        return
    with full_log.store.transaction(write=True) as conn:
        conn.exec_driver_sql("DO $$ BEGIN IF NOT EXISTS (SELECT FROM pg_roles WHERE rolname = 'careloop_app') "
                             "THEN CREATE ROLE careloop_app LOGIN; END IF; END $$")
    full_log.grant_app_role("careloop_app")
    with full_log.store.transaction(write=False) as conn:
        grants = conn.exec_driver_sql(
            "SELECT DISTINCT privilege_type FROM information_schema.role_table_grants "
            "WHERE grantee = 'careloop_app' AND table_name = 'careloop_audit'"
        ).scalars().all()
    assert sorted(grants) == ["INSERT", "SELECT"]
    app = StateStore(db_url.replace("postgres@", "careloop_app@"))
    try:
        with app.transaction(write=False) as conn:
            assert conn.exec_driver_sql("SELECT count(*) FROM careloop_audit").scalar_one() == N
        with pytest.raises(StateError, match="permission denied"), app.transaction(write=True) as conn:
            conn.exec_driver_sql("DELETE FROM careloop_audit WHERE seq = 1")
        # the service runs as that role: it opens the log, appends to it, and the chain verifies (opening once
        # re-created the trigger function, which only the owner may do)
        as_app = AuditLog(app)
        assert as_app.append(EVENTS[0])["seq"] == N + 1
        assert as_app.verify().ok and as_app.verify().checked == N + 1
    finally:
        app.close()


def test_concurrent_appends_from_threads_keep_one_chain(log):
    threads, each = 4, 40
    barrier = threading.Barrier(threads)

    def worker(t: int) -> list[int]:
        barrier.wait()
        return [log.append(EVENTS[t * each + i])["seq"] for i in range(each)]

    with ThreadPoolExecutor(threads) as pool:
        seqs = sorted(s for got in pool.map(worker, range(threads)) for s in got)
    assert seqs == list(range(1, threads * each + 1))
    res = log.verify()
    assert res.ok and res.checked == threads * each


def test_concurrent_appends_from_processes_keep_one_chain(log, db_url):
    from tests.state._workers import append_many, collect

    ctx = mp.get_context(START_METHOD)
    procs, each = 3, 40
    barrier, out = ctx.Barrier(procs), ctx.Queue()
    workers = [ctx.Process(target=append_many, args=(db_url, each, f"w{i}", barrier, out)) for i in range(procs)]
    for w in workers:
        w.start()
    seqs = sorted(collect(out, workers))
    assert seqs == list(range(1, procs * each + 1))
    assert log.verify().ok


def test_append_refuses_what_is_not_an_audit_event(log):
    from careloop.audit import AuditContentError

    with pytest.raises(AuditContentError, match="AuditEvent"):
        log.append({"resourceType": "Patient"})
    with pytest.raises(AuditContentError, match="recorded"):
        log.append({"resourceType": "AuditEvent"})
    with pytest.raises(AuditContentError, match="JWT"):  # a hand-made event is scanned for tokens too
        log.append(EVENTS[0] | {"outcomeDesc": "token eyJhbGciOiJSUzM4NCJ9.eyJpc3MiOiJ4In0.c2lnbmF0dXJl"})
    with pytest.raises(AuditContentError, match="id and meta"):
        log.append(EVENTS[0] | {"id": "x"})
    assert log.head()["seq"] == 0


# ------------------------------------------------------------------ signed checkpoints
def _rewrite_from(conn, first: int, last: int) -> None:
    """Edit record ``first`` and recompute every hash after it: a chain consistent with itself again."""
    conn = conn.execution_options(no_parameters=True)
    prev = _row(conn, first - 1)["entry_hash"]
    for seq in range(first, last + 1):
        event = json.loads(_row(conn, seq)["event"])
        event["outcome"] = "12" if seq == first else event["outcome"]
        text = canonical_json(event)
        h = entry_hash(prev, seq, text)
        conn.exec_driver_sql(f"UPDATE careloop_audit SET event = {_q(text)}, prev_hash = '{prev}', "
                             f"entry_hash = '{h}', outcome = '{summarize(event)['outcome']}' WHERE seq = {seq}")
        prev = h


@pytest.mark.parametrize(("first", "expected", "span"), [(220, 201, "201..250"), (150, 101, "101..200")])
def test_signed_checkpoints_expose_a_rewritten_chain(db_url, first, expected, span):
    key = Ed25519PrivateKey.generate()
    log = AuditLog.open(db_url, signing_key=key, checkpoint_every=100)
    try:
        log.append_many(EVENTS[:250])
        cp = log.checkpoint()
        assert cp["seq"] == 250
        assert log.verify().checkpoints == 3
        with tampering(db_url) as conn:
            _rewrite_from(conn, first, 250)
        unsigned = _walk_without_checkpoints(log)
        assert unsigned.ok  # the hash chain alone cannot see a wholesale rewrite...
        res = log.verify()  # ...the signed checkpoints do, from the record after the last good one
        assert not res.ok and res.first_bad == expected and span in res.reason
    finally:
        log.close()


def _walk_without_checkpoints(log: AuditLog):
    from careloop.audit.log import _RAW_COLUMNS, _recorded_form, _walk, audit_table

    with log.store.transaction(write=False) as conn:
        rows = conn.execute(select(*_RAW_COLUMNS).order_by(audit_table.c.seq)).mappings().all()
        form = _recorded_form(conn.dialect)
    return _walk(rows, start_seq=1, start_prev=GENESIS, recorded_form=form)


def test_checkpoints_detect_truncation(db_url):
    key = Ed25519PrivateKey.generate()
    log = AuditLog.open(db_url, signing_key=key, checkpoint_every=100)
    try:
        log.append_many(EVENTS[:120])
        log.checkpoint()
        with tampering(db_url) as conn:
            conn.exec_driver_sql("DELETE FROM careloop_audit WHERE seq > 110")
        res = log.verify()
        assert not res.ok and res.first_bad == 111 and "missing" in res.reason
        assert AuditLog(log.store).verify(verify_key=key.public_key()).first_bad == 111
    finally:
        log.close()


def test_checkpoint_forged_or_other_key(db_url):
    key, other = Ed25519PrivateKey.generate(), Ed25519PrivateKey.generate()
    log = AuditLog.open(db_url, signing_key=key, checkpoint_every=50)
    try:
        log.append_many(EVENTS[:120])
        assert log.verify().ok
        assert not log.verify(verify_key=other.public_key()).ok
        with tampering(db_url) as conn:
            conn.exec_driver_sql(f"UPDATE careloop_audit_checkpoint SET signature = '{'00' * 64}' WHERE seq = 100")
        res = log.verify()
        assert not res.ok and res.first_bad == 100 and "signature" in res.reason
    finally:
        log.close()
    with pytest.raises(AuditError, match="signing_key"):
        AuditLog.open("sqlite://").checkpoint()
    with pytest.raises(ConfigError):
        AuditLog.open("sqlite://", checkpoint_every=0)


# ------------------------------------------------------------------ retention
def test_purge_refuses_young_records_and_keeps_the_chain(log, db_url):
    now = datetime(2026, 1, 1, tzinfo=UTC)
    old = make_events(100, now - timedelta(days=400))
    young = make_events(50, now - timedelta(days=30))
    log.append_many(old + young)
    hundredth = log.records()[99]["entry_hash"]
    with pytest.raises(ConfigError, match="183"):
        log.purge(now - timedelta(days=365), minimum_days=90, now=now)
    with pytest.raises(AuditError, match="refusing"):
        log.purge(now - timedelta(days=100), now=now)
    assert log.purge(now - timedelta(days=1000), now=now) == 0  # nothing that old
    assert log.purge(now - timedelta(days=200), now=now) == 100
    res = log.verify()
    assert res.ok and res.checked == 51  # 50 young + the purge's own admin-change event
    recs = log.records()
    assert recs[0]["seq"] == 101 and recs[-1]["kind"] == "admin-change"
    assert recs[-1]["detail"] == {"action": "audit-purge", "count": "100", "upto_seq": "100", "by": "retention",
                                  "anchor_hash": hundredth}
    log.append(EVENTS[0])
    assert log.verify().ok and log.head()["seq"] == 152
    with pytest.raises(StateError, match="append-only"), log.store.transaction(write=True) as conn:
        conn.exec_driver_sql("DELETE FROM careloop_audit WHERE seq = 101")  # not anchored: still refused
    # a forged anchor that 'purges' young records is exposed
    with tampering(db_url) as conn:
        conn.exec_driver_sql(
            "INSERT INTO careloop_audit_anchor (upto_seq, entry_hash, last_recorded, purged_at, minimum_days, "
            f"purged_by) VALUES (120, '{'a' * 64}', '2025-12-01 00:00:00', '2025-12-02 00:00:00', 183, 'x')"
        )
        conn.exec_driver_sql("DELETE FROM careloop_audit WHERE seq <= 120")
    res = log.verify()
    assert not res.ok and res.first_bad == 120 and "younger" in res.reason


def test_a_forged_anchor_with_a_real_hash_cannot_free_recent_records(log, db_url):
    """The anchor table takes inserts through the app's own connection; an anchor copying a real record's hash with
    an old date would make a deleted recent prefix verify. The database's own clock refuses the DELETE (and a cut of
    the tail) for every record younger than the retention minimum, whatever the anchors say."""
    log.append_many(make_events(10, datetime.now(UTC) - timedelta(hours=1)))
    seventh = log.records()[6]["entry_hash"]
    with log.store.transaction(write=True) as conn:
        conn.exec_driver_sql(
            "INSERT INTO careloop_audit_anchor (upto_seq, entry_hash, last_recorded, purged_at, minimum_days, "
            f"purged_by) VALUES (10, '{seventh}', '2020-01-01 00:00:00', '2020-07-01 00:00:00', 183, 'x')")
    for victims in ("seq <= 7", "seq >= 8"):
        with pytest.raises(StateError, match=r"183 days|append-only"), log.store.transaction(write=True) as conn:
            conn.exec_driver_sql(f"DELETE FROM careloop_audit WHERE {victims}")
    assert [r["seq"] for r in log.records()] == list(range(1, 11))


def test_an_anchor_no_purge_made_cannot_hide_a_deletion(log, db_url):
    """Through the app's own connection, triggers in place: an anchor inserted over records old enough to purge lets
    the database delete them, but no audit-purge record in the chain names that anchor, so verify says so. A real
    purge's anchor is named by its record (written in the same transaction), and a later forged one is not."""
    now = datetime.now(UTC)
    log.append_many(make_events(10, now - timedelta(days=400)) + make_events(5, now - timedelta(days=1)))
    fourth = log.records()[3]["entry_hash"]
    with log.store.transaction(write=True) as conn:
        conn.exec_driver_sql(
            "INSERT INTO careloop_audit_anchor (upto_seq, entry_hash, last_recorded, purged_at, minimum_days, "
            f"purged_by) VALUES (4, '{fourth}', '2024-01-01 00:00:00', '2025-01-01 00:00:00', 183, 'x')")
        assert conn.exec_driver_sql("DELETE FROM careloop_audit WHERE seq <= 4").rowcount == 4
    res = log.verify()
    assert not res.ok and res.first_bad == 4 and "not made by a purge" in res.reason


def test_a_purge_is_recorded_with_its_anchor_in_the_chain(log):
    now = datetime.now(UTC)
    log.append_many(make_events(10, now - timedelta(days=400)) + make_events(5, now - timedelta(days=1)))
    tenth = log.records()[9]["entry_hash"]
    assert log.purge(now - timedelta(days=200)) == 10
    assert log.verify().ok
    rec = log.records()[-1]
    assert rec["seq"] == 16 and rec["detail"] == {"action": "audit-purge", "upto_seq": "10", "count": "10",
                                                  "by": "retention", "anchor_hash": tenth}


def test_purge_never_removes_the_head(log):
    now = datetime(2026, 1, 1, tzinfo=UTC)
    log.append_many(make_events(10, now - timedelta(days=400)))
    assert log.purge(now - timedelta(days=200), now=now) == 9
    assert log.verify().ok
    assert [r["seq"] for r in log.records()] == [10, 11]


def test_expect_holds_for_an_empty_log_and_a_purged_head_old_enough(log):
    """`verify(expect=...)`: the empty log's head always holds; a head a later purge removed holds when it was old
    enough to purge (183 days), and not when the verifier saw it more recently than that (a forged anchor)."""
    empty = log.head()
    assert empty["seq"] == 0 and log.verify(expect=(0, empty["hash"], None)).ok
    now = datetime(2026, 1, 1, tzinfo=UTC)
    log.append_many(make_events(10, now - timedelta(days=400)))
    old = log.head()
    assert log.verify(expect=(0, empty["hash"], None)).ok
    log.append_many(make_events(5, now - timedelta(days=10)))
    assert log.purge(now - timedelta(days=200), now=now) == 10  # the old head is now under the anchor
    assert log.verify(expect=(old["seq"], old["hash"], old["recorded"])).ok
    res = log.verify(expect=(old["seq"], old["hash"], datetime.now(UTC) - timedelta(days=30)))
    assert not res.ok and res.first_bad == old["seq"] and "younger" in res.reason
    assert not log.verify(expect=(old["seq"], "0" * 64, old["recorded"])).ok


def test_the_head_is_signed_once_however_many_processes_close(db_url):
    key = Ed25519PrivateKey.generate()
    log = AuditLog.open(db_url, signing_key=key)
    try:
        log.append_many(make_events(4))
        first, second = log.checkpoint(), log.checkpoint()
        assert first["seq"] == second["seq"] == 4 and log.checkpoint_count() == 1
    finally:
        log.close()


def test_a_seq_that_is_not_a_number_is_a_bad_record_not_a_crash(full_log, db_url):
    if full_log.store.dialect != "sqlite":
        return  # PostgreSQL's bigint column takes no text
    with tampering(db_url) as conn:
        conn.exec_driver_sql(f"UPDATE careloop_audit SET seq = 'x{N}' WHERE seq = {N}")  # text sorts last
    res = full_log.verify()
    assert not res.ok and res.first_bad == N and "not an integer" in res.reason


def _set_event(conn, seq: int, text: str) -> None:
    """Record `seq`'s event replaced by `text`, its own hash recomputed (the next record then no longer chains)."""
    prev = _row(conn, seq)["prev_hash"]
    conn.exec_driver_sql(f"UPDATE careloop_audit SET event = {_q(text)}, "
                         f"entry_hash = '{entry_hash(prev, seq, text)}' WHERE seq = {seq}")


MALFORMED = {  # how record 5 is made malformed, and what verify must say of it
    "recorded-not-a-time": (
        lambda c: c.exec_driver_sql("UPDATE careloop_audit SET recorded = 'garbage' WHERE seq = 5"),
        "column recorded of record 5 was changed"),
    "event-a-list": (lambda c: _set_event(c, 5, "[]"), "record 5 is malformed"),
    "event-a-number": (lambda c: _set_event(c, 5, "5"), "record 5 is malformed"),
    "agent-a-string": (lambda c: _set_event(
        c, 5, '{"agent":"x","recorded":"2025-03-01T08:00:04Z","resourceType":"AuditEvent"}'), "record 5 is malformed"),
}


@pytest.mark.parametrize("how", list(MALFORMED))
def test_a_malformed_record_is_named_not_a_crash(log, db_url, how):
    if how == "recorded-not-a-time" and log.store.dialect != "sqlite":
        return  # PostgreSQL's timestamptz column takes no such text
    log.append_many(make_events(10))
    tamper, why = MALFORMED[how]
    with tampering(db_url) as conn:
        tamper(conn.execution_options(no_parameters=True))
    res = log.verify()
    assert not res.ok and res.first_bad == 5 and res.checked == 4 and why in res.reason, res
    if how == "recorded-not-a-time":
        assert len(log.records()) == 10  # the report reads recorded from the (intact) event
    else:
        with pytest.raises(AuditError, match="audit record 5 is malformed"):
            log.records()


def test_a_head_whose_recorded_is_not_a_time_is_named_not_a_crash(log, db_url):
    if log.store.dialect != "sqlite":
        return  # PostgreSQL's timestamptz column takes no such text
    log.append_many(make_events(10))
    with tampering(db_url) as conn:
        conn.exec_driver_sql("UPDATE careloop_audit SET recorded = 'garbage' WHERE seq = 10")
    res = log.verify()
    assert not res.ok and res.first_bad == 10 and "column recorded" in res.reason
    assert log.head()["seq"] == 10 and log.head()["recorded"] is None


# Other texts of record 5's instant (2025-03-01 08:00:04 UTC) than the one SQLAlchemy writes: each hides the record from
# a time-bounded report (the bounds compare text on SQLite), so verify must call the column changed.
OTHER_TEXTS = ["20250301T080004", "2025-03-01 08:00:04", "2025-03-01T08:00:04.000000", "2025-03-01 08:00:04.000000Z",
               "2025-03-01 10:00:04.000000+02:00", " 2025-03-01 08:00:04.000000"]


@pytest.mark.parametrize("other", OTHER_TEXTS)
def test_another_text_of_the_same_instant_is_a_changed_column(log, db_url, other):
    if log.store.dialect != "sqlite":
        return  # PostgreSQL's timestamptz holds the instant, not a text
    log.append_many(make_events(10))
    day = {"start": datetime(2025, 3, 1, tzinfo=UTC), "end": datetime(2025, 3, 2, tzinfo=UTC)}
    assert [r["seq"] for r in log.records(patient="p4", **day)] == [5]
    with tampering(db_url) as conn:
        conn.exec_driver_sql("UPDATE careloop_audit SET recorded = ? WHERE seq = 5", (other,))
    res = log.verify()
    assert not res.ok and res.first_bad == 5 and "column recorded of record 5 was changed" in res.reason, res


def test_recorded_with_microseconds_and_an_offset_verifies(log):
    """The text verify expects is the one an append writes, on both backends, whatever zone the event gave."""
    from datetime import timezone

    from careloop.audit import audit_event

    zone = timezone(timedelta(hours=-5, minutes=-30))
    log.append_many([audit_event(kind="cds-call", outcome="success", client="https://ehr.example/iss",
                                 patient="p1", recorded=datetime(2025, 12, 31, 20, 59, 59, 123456, tzinfo=zone)),
                     audit_event(kind="cds-call", outcome="success", client="https://ehr.example/iss",
                                 patient="p1", recorded=datetime(2024, 2, 29, 0, 0, 0, 1, tzinfo=UTC))])
    assert log.verify().ok
    assert log.head()["recorded"] == datetime(2024, 2, 29, 0, 0, 0, 1, tzinfo=UTC)


@pytest.mark.parametrize("text", ["Authorization: Bearer\tAbCdEf0123456789", "Authorization: Bearer\nAbCdEf0123456789",
                                  "header\nBearer AbCdEf0123456789", "was\t\"Bearer AbCdEf0123456789\""])
def test_a_token_json_would_escape_is_still_refused(log, text):
    """The token scan reads the event's own text, not its JSON, where a tab or newline is written as two characters
    (`\\t`: no whitespace between Bearer and the token, or no word boundary before Bearer)."""
    from careloop.audit import AuditContentError

    for event in (EVENTS[0] | {"outcomeDesc": text}, EVENTS[0] | {"extension": [{"url": "x", "valueString": text}]},
                  EVENTS[0] | {"extension": [{text: "x"}]}):
        with pytest.raises(AuditContentError, match="Bearer"):
            log.append(event)
    assert log.head()["seq"] == 0
    log.append(EVENTS[0] | {"outcomeDesc": "a\ttab and a \"quote\" but no token"})
    assert log.verify().ok
