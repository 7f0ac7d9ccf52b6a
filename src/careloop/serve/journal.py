"""Group commit: the durable writes of many CDS calls in one transaction, before any of them is answered.

Each scored call writes its `jti` claim (replay refusal across worker processes), the card it shows (repeat
suppression, budgets, feedback) and its audit record (hash-chained). One transaction per call costs one fsync per
call on SQLite and a round trip on PostgreSQL, more than everything else a call does; so a writer thread takes
whatever calls are waiting, writes them all in one transaction, commits once, and only then are they answered.
Nothing is answered before its audit record is durable, and a crash loses only calls that were never answered.

A transaction has a fixed cost (on SQLite about half a millisecond of CPU, and the fsync) that a call's own rows do
not (about a tenth of that); so when more calls are on their way (`expecting()`: calls of this process being
scored), the writer waits up to `linger_s` for them before it commits. Under load that makes batches of several calls
for a little latency; a lone call is written at once.

A call whose `jti` turns out to have been claimed already (a replay that reached another worker process) is not
written as scored: its record becomes an authentication failure and its answer a 401.

A warning card is shown only if the alert policy still allows it when it is written: its rule (repeat window, daily
budget) was checked while scoring, but calls scored at the same moment (two hooks for one patient, two patients of
one unit with one card left in its budget), in this process or another, each saw the other's card not yet written.
So `recheck` runs again inside the write transaction, after every earlier card is in it (transactions that write
cards are serialised: SQLite's write lock; on PostgreSQL the audit chain's advisory lock, taken first); a card it
refuses is not recorded, the call's record says why (`withheld`), and the call is answered without it.
"""

from __future__ import annotations

import queue
import threading
import time
from collections.abc import Callable
from concurrent.futures import Future
from dataclasses import dataclass, field
from datetime import datetime

from sqlalchemy.engine import Connection

from careloop.audit import AuditLog
from careloop.state import StateStore


@dataclass
class Work:
    """One call's writes. `events`: prepared audit records (AuditLog.prepare); `instead`: the records to write if
    its jti was already claimed; `card`: the arguments of StateStore.record_card_in after the connection."""

    events: list[tuple[str, dict]]
    jti: tuple[str, str, datetime] | None = None
    instead: Callable[[], list[tuple[str, dict]]] = list  # made only when needed (rarely)
    card: tuple | None = None
    recheck: Callable[[Connection], str | None] | None = None  # why the card may not be shown now, in the transaction
    unshown: Callable[[str], list[tuple[str, dict]]] = lambda why: []  # the records to write then
    withheld: str | None = None  # set by the journal: why the card was not shown after all
    future: Future = field(default_factory=Future)  # resolves to True (written as is) or False (replay)


class Journal:
    """The writer thread of one process. `submit(work)` returns the work's future."""

    MAX_BATCH = 512

    def __init__(self, store: StateStore, audit: AuditLog, *, linger_s: float = 0.0,
                 expecting: Callable[[], int] = lambda: 0) -> None:
        self.store = store
        self.audit = audit
        self.linger_s = linger_s
        self.expecting = expecting
        self._q: queue.SimpleQueue[Work | None] = queue.SimpleQueue()
        self._start_lock = threading.Lock()
        self._start()

    def _start(self) -> None:
        self._thread = threading.Thread(target=self._run, name="careloop-journal", daemon=True)
        self._thread.start()

    def submit(self, work: Work) -> Future:
        with self._start_lock:
            if not self._thread.is_alive():  # closed by an earlier shutdown (e.g. a test client's lifespan): reopen
                self._start()
        self._q.put(work)
        return work.future

    def write(self, work: Work) -> bool:
        """Submit and wait (for code outside the event loop)."""
        return self.submit(work).result()

    def close(self) -> None:
        """Write what is queued, then stop the thread (idempotent)."""
        if self._thread.is_alive():
            self._q.put(None)
            self._thread.join(timeout=10)

    def _run(self) -> None:
        while True:
            first = self._q.get()
            if first is None:
                return
            batch, stop = self._gather(first)
            self._commit(batch)
            if stop:
                return

    def _gather(self, first: Work) -> tuple[list[Work], bool]:
        """The calls to commit with `first`: those already queued, and those arriving within the linger while more
        are expected. Also whether a stop came."""
        batch = [first]
        wait_until = time.monotonic() + self.linger_s
        while len(batch) < self.MAX_BATCH:
            try:
                nxt = self._q.get_nowait()
            except queue.Empty:
                left = wait_until - time.monotonic()
                if left <= 0 or self.expecting() <= 0:
                    break
                try:
                    nxt = self._q.get(timeout=left)
                except queue.Empty:
                    break
            if nxt is None:
                return batch, True
            batch.append(nxt)
        return batch, False

    def _commit(self, batch: list[Work]) -> None:
        try:
            with self.store.transaction(write=True) as conn:
                # first, before the jti claims: writers in other processes wait here, and two of them can never each
                # hold what the other waits for (a jti row, the lock)
                self.audit.lock_in(conn)
                wins = iter(self.store.claim_jtis_in(conn, [w.jti for w in batch if w.jti is not None]))
                fresh = [True if w.jti is None else next(wins) for w in batch]
                prepared = []
                for w, ok in zip(batch, fresh, strict=True):
                    w.withheld = w.recheck(conn) if ok and w.card is not None and w.recheck is not None else None
                    if w.withheld is not None:
                        prepared += w.unshown(w.withheld)
                        continue
                    if ok and w.card is not None:
                        self.store.record_card_in(conn, *w.card)
                    prepared += w.events if ok else w.instead()
                self.audit.append_prepared(conn, prepared)
        except BaseException as exc:  # the database is down or refused the batch: no call of it is answered as scored
            for w in batch:
                if not w.future.done():
                    w.future.set_exception(exc)
            if not isinstance(exc, Exception):
                raise
            return
        for w, ok in zip(batch, fresh, strict=True):
            w.future.set_result(ok)


__all__ = ["Journal", "Work"]
