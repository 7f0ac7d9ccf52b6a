"""The journal's group commit on a real SQLite store: jti claims, cards and audit records of many calls at once."""

from __future__ import annotations

import datetime as dt
import uuid

import pytest

from careloop.audit import AuditLog, audit_event
from careloop.serve.journal import Journal, Work
from careloop.state import StateStore

ISS = "https://ehr.example/fhir"


@pytest.fixture
def journal(tmp_path):
    store = StateStore(f"sqlite:///{tmp_path / 'state.db'}")
    audit = AuditLog(store)
    j = Journal(store, audit)
    yield j
    j.close()
    store.close()


def _work(j: Journal, jti: str, *, card: bool = False) -> Work:
    ev = audit_event(kind="cds-call", outcome="success", client=ISS, service="readmission-risk", patient="p1",
                     hook_instance=str(uuid.uuid4()), jti=jti)
    instead = audit_event(kind="auth-failure", outcome="serious", service="readmission-risk",
                          detail={"reason": "jti replayed: this token was already used"})
    now = dt.datetime.now(dt.UTC)
    row = (str(uuid.uuid4()), "readmission-risk", "p1", "m" * 64, 0.5, "warning", None, now) if card else None
    return Work(j.audit.prepare([ev]), jti=(ISS, jti, now + dt.timedelta(minutes=5)),
                instead=lambda: j.audit.prepare([instead]), card=row)


def test_a_batch_writes_each_call_once_and_turns_a_replay_into_an_auth_failure(journal):
    works = [_work(journal, "a", card=True), _work(journal, "b"), _work(journal, "a", card=True)]
    journal._commit(works)  # one transaction, as the writer thread does with whatever is waiting
    assert [w.future.result() for w in works] == [True, True, False]
    kinds = [r["kind"] for r in journal.audit.records()]
    assert kinds == ["cds-call", "cds-call", "auth-failure"]
    assert journal.store.card(works[0].card[0]) is not None and journal.store.card(works[2].card[0]) is None
    assert journal.audit.verify().ok
    later = _work(journal, "b")
    assert journal.write(later) is False  # claimed by an earlier batch


def test_a_closed_journal_reopens_and_a_failed_batch_fails_every_call(journal, monkeypatch):
    journal.close()
    assert not journal._thread.is_alive()
    assert journal.write(_work(journal, "c")) is True  # reopened
    monkeypatch.setattr(journal.audit, "append_prepared", lambda conn, prepared: (_ for _ in ()).throw(
        RuntimeError("disk full")))
    futures = [journal.submit(_work(journal, f"d{i}")) for i in range(3)]
    for f in futures:
        with pytest.raises(RuntimeError, match="disk full"):
            f.result(timeout=10)
    assert [r["kind"] for r in journal.audit.records()] == ["cds-call"]  # the failed batch left nothing behind


def test_the_writer_lingers_for_calls_being_scored_and_never_for_a_lone_call(tmp_path, monkeypatch):
    """While calls are expected (being scored) a batch waits up to the linger for them; with none expected a call
    is committed at once."""
    import threading
    import time

    store = StateStore(f"sqlite:///{tmp_path / 'state.db'}")
    expected = [0]
    j = Journal(store, AuditLog(store), linger_s=0.5, expecting=lambda: expected[0])
    batches = []
    real = j._commit
    monkeypatch.setattr(j, "_commit", lambda batch: (batches.append(len(batch)), real(batch)))
    try:
        t0 = time.perf_counter()
        assert j.write(_work(j, "lone")) is True
        assert time.perf_counter() - t0 < 0.4 and batches == [1]  # nothing expected: no wait
        expected[0] = 1
        first = j.submit(_work(j, "first"))
        threading.Timer(0.1, lambda: j.submit(_work(j, "second"))).start()  # arrives within the linger
        assert first.result(timeout=5) is True
        assert batches == [1, 2]  # both in one transaction
        expected[0] = 0
    finally:
        j.close()
        store.close()
