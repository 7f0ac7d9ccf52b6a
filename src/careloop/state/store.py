"""The CDS Hooks service's state: jti replay cache, cards shown, feedback, kill switches and admin settings.

One class, :class:`StateStore`, over SQLAlchemy Core, identical on SQLite and PostgreSQL. Every public method is
one short transaction; the store is safe to share between threads (the service's threadpool) and between
processes (several workers on one database). Correctness under races comes from the database, not from Python:
a unique key plus ``INSERT ... ON CONFLICT`` decides which of two concurrent jti claims or feedback posts wins.

Tables (created if absent, never altered by the app):

``careloop_jti``       (iss, jti) primary key, expires_at: the replay cache
``careloop_card``      id, uuid unique, service, patient, model_hash, risk, indicator, unit, at (indexes are added to
                       a store made before them)
``careloop_feedback``  id, service, card, outcome, outcome_at, override_code ... unique (card, outcome, outcome_at,
                       override_code): idempotent feedback
``careloop_switch``    model_key primary key, enabled, changed_at, changed_by: kill switches
``careloop_setting``   key primary key, value (canonical JSON), changed_at, changed_by
``careloop_card_user`` uuid primary key, user: whom a card was shown to (the hook's userId)
``careloop_card_kind`` uuid primary key, kind: which card an info card is (near the threshold, or a deferral and its
                       reason's digest), so that the same card is not shown again within the repeat window
``careloop_rate``      key primary key, tokens, at: rate limits shared by every worker process (token buckets)
``careloop_signed_out`` sid primary key, expires_at: dashboard sessions signed out before they expire, so that every
                       worker (and the app after a restart) refuses their cookies
"""

from __future__ import annotations

import functools
import json
import re
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager, nullcontext
from datetime import datetime
from typing import Any, NamedTuple

from sqlalchemy import (
    BigInteger,
    Boolean,
    Column,
    Float,
    Index,
    Integer,
    MetaData,
    String,
    Table,
    Text,
    UniqueConstraint,
    bindparam,
    delete,
    func,
    select,
    text,
    update,
)
from sqlalchemy import exc as sa_exc
from sqlalchemy.dialects import postgresql as pg_dialect
from sqlalchemy.dialects import sqlite as sqlite_dialect
from sqlalchemy.engine import Connection, Engine

from careloop.state._db import (
    BEGIN_OPTION,
    StateError,
    UTCDateTime,
    canonical_json,
    create_engine_for,
    finite,
    insert_ignore,
    iso_z,
    masked,
    now_utc,
    parse_instant,
    upsert,
    utc,
)

# pg_advisory_xact_lock keys ("careloop" in ASCII, then +1, +2...): DDL at start-up, audit appends.
PG_LOCK_DDL = 0x636172656C6F6F70
PG_LOCK_AUDIT = PG_LOCK_DDL + 1

_ID = BigInteger().with_variant(Integer, "sqlite")  # SQLite autoincrements only an INTEGER PRIMARY KEY
MAX_KEY = 1024  # longest iss, jti, uuid, patient id... the store accepts (B-tree keys must stay small)
OUTCOMES = ("accepted", "overridden")
INDICATORS = ("info", "warning", "critical")

metadata = MetaData()

jti_table = Table(
    "careloop_jti",
    metadata,
    Column("iss", String, primary_key=True),
    Column("jti", String, primary_key=True),
    Column("expires_at", UTCDateTime, nullable=False),
    Index("careloop_jti_expires", "expires_at"),
)

card_table = Table(
    "careloop_card",
    metadata,
    Column("id", _ID, primary_key=True, autoincrement=True),
    Column("uuid", String, nullable=False, unique=True),
    Column("service", String, nullable=False),
    Column("patient", String, nullable=False),
    Column("model_hash", String, nullable=False),
    Column("risk", Float, nullable=True),
    Column("indicator", String, nullable=False),
    Column("unit", String, nullable=True),
    Column("at", UTCDateTime, nullable=False),
    Index("careloop_card_patient", "service", "patient", "model_hash", "at"),
    Index("careloop_card_unit", "service", "unit", "at"),
    # the alert policy's look-ups across services (a patient's last card from a model; a unit's cards today)
    Index("careloop_card_patient_model", "patient", "model_hash", "at"),
    Index("careloop_card_unit_model", "unit", "model_hash", "at"),
)

feedback_table = Table(
    "careloop_feedback",
    metadata,
    Column("id", _ID, primary_key=True, autoincrement=True),
    Column("service", String, nullable=False),
    Column("card", String, nullable=False),
    Column("outcome", String, nullable=False),
    Column("outcome_at", UTCDateTime, nullable=False),
    # '' when there is no override reason: NULLs would be distinct in the unique key and let duplicates in
    Column("override_code", String, nullable=False, server_default=""),
    Column("override_system", String, nullable=True),
    Column("override_display", String, nullable=True),
    Column("user_comment", Text, nullable=True),
    Column("accepted_suggestions", Text, nullable=False),  # JSON list of suggestion ids
    Column("client", String, nullable=False),
    Column("user", String, nullable=True),
    Column("received_at", UTCDateTime, nullable=False),
    UniqueConstraint("card", "outcome", "outcome_at", "override_code", name="careloop_feedback_once"),
    Index("careloop_feedback_service", "service", "id"),
)

switch_table = Table(
    "careloop_switch",
    metadata,
    Column("model_key", String, primary_key=True),
    Column("enabled", Boolean, nullable=False),
    Column("changed_at", UTCDateTime, nullable=False),
    Column("changed_by", String, nullable=False),
)

threshold_table = Table(  # an administrator's alert threshold for a model, in place of its bundle's operating point
    "careloop_threshold",
    metadata,
    Column("model_key", String, primary_key=True),
    Column("threshold", Float, nullable=True),  # NULL: back to the bundle's operating point
    Column("version", Integer, nullable=False),  # 1, 2, ... with each change (recorded with every scored call)
    Column("changed_at", UTCDateTime, nullable=False),
    Column("changed_by", String, nullable=False),
)

setting_table = Table(
    "careloop_setting",
    metadata,
    Column("key", String, primary_key=True),
    Column("value", Text, nullable=False),
    Column("changed_at", UTCDateTime, nullable=False),
    Column("changed_by", String, nullable=False),
)

card_user_table = Table(  # a table of its own: the card table predates it, and the app never alters a table
    "careloop_card_user",
    metadata,
    Column("uuid", String, primary_key=True),
    Column("user", String, nullable=False),
)

card_kind_table = Table(  # a table of its own, like careloop_card_user: the card table predates it
    "careloop_card_kind",
    metadata,
    Column("uuid", String, primary_key=True),
    Column("kind", String, nullable=False),
)

rate_table = Table(
    "careloop_rate",
    metadata,
    Column("key", String, primary_key=True),
    Column("tokens", Float, nullable=False),
    Column("at", Float, nullable=False),  # seconds since the epoch: the workers may be on several hosts
)

signed_out_table = Table(  # a row lives until its session would have expired anyway
    "careloop_signed_out",
    metadata,
    Column("sid", String, primary_key=True),
    Column("expires_at", UTCDateTime, nullable=False),
    Index("careloop_signed_out_expires", "expires_at"),
)

class ModelPolicy(NamedTuple):
    """What administrators set for a model (`StateStore.policy`)."""

    enabled: bool  # the kill switch: False stops every card
    threshold: float | None  # the alert threshold in place of the bundle's operating point, if any
    threshold_version: int  # 0 before any change; each change (a clear too) counts one


_PRINTABLE = re.compile(r"[\x21-\x7e]+")  # visible ASCII, no spaces: ids, URLs, uuids, hashes


def _key(value: Any, name: str, *, optional: bool = False) -> str | None:
    if value is None and optional:
        return None
    # messages say what is wrong, never the value: it may be a name or a note, and errors reach answers and logs
    if not isinstance(value, str) or not value or len(value) > MAX_KEY:
        got = f"a string of {len(value)} characters" if isinstance(value, str) else type(value).__name__
        raise StateError(f"{name} must be a non-empty string of at most {MAX_KEY} characters, not {got}")
    if not _PRINTABLE.fullmatch(value):
        raise StateError(f"{name} must be visible ASCII without spaces")
    return value


_CONTROL = re.compile(r"[\x00-\x08\x0b\x0c\x0e-\x1f\x7f]")  # controls but tab, line feed, carriage return


def _text(value: Any, name: str, *, limit: int = 4096) -> str | None:
    if value is None:
        return None
    if not isinstance(value, str) or len(value) > limit:
        raise StateError(f"{name} must be a string of at most {limit} characters")
    if _CONTROL.search(value):  # NUL and other controls: PostgreSQL refuses NUL in text, SQLite would keep it
        raise StateError(f"{name} must not contain control characters")
    return value


@functools.cache
def _claim_statement(dialect: str):
    """INSERT a jti, or take over its expired claim, RETURNING it when won; built once per dialect so that SQLAlchemy
    compiles it once (a statement built per call, with its values inline, was compiled on every group commit). Run
    with a list of rows it becomes one multi-row statement (SQLAlchemy's insertmanyvalues)."""
    insert = pg_dialect.insert if dialect == "postgresql" else sqlite_dialect.insert
    stmt = insert(jti_table)
    stmt = stmt.on_conflict_do_update(index_elements=[jti_table.c.iss, jti_table.c.jti],
                                      set_={"expires_at": stmt.excluded.expires_at},
                                      where=jti_table.c.expires_at <= bindparam("now", type_=UTCDateTime()))
    return stmt.returning(jti_table.c.iss, jti_table.c.jti)


class _FileLock:
    """An exclusive advisory lock on a file (fcntl.flock), re-entrant within a thread through the RLock it is
    always taken under."""

    def __init__(self, path: str) -> None:
        self.path = path
        self._fd: int | None = None
        self._depth = 0

    def __enter__(self) -> None:
        import fcntl
        import os

        if self._depth == 0:
            if self._fd is None:
                try:
                    self._fd = os.open(self.path, os.O_RDWR | os.O_CREAT, 0o600)
                except OSError as exc:  # e.g. the service's user made it (0600) and another user reads the log
                    raise StateError(f"cannot open the state store's writer lock {self.path} "
                                     f"({exc.strerror or type(exc).__name__}): run as the user the service runs as, "
                                     "or give this user read and write access to it") from None
            fcntl.flock(self._fd, fcntl.LOCK_EX)
        self._depth += 1

    def __exit__(self, *exc: object) -> None:
        import fcntl

        self._depth -= 1
        if self._depth == 0 and self._fd is not None:
            fcntl.flock(self._fd, fcntl.LOCK_UN)


class _Both:
    """Enter the in-process lock, then the file lock; leave in reverse."""

    def __init__(self, first: Any, second: Any) -> None:
        self.first, self.second = first, second

    def __enter__(self) -> None:
        self.first.__enter__()
        try:
            self.second.__enter__()
        except BaseException:
            self.first.__exit__(None, None, None)
            raise

    def __exit__(self, *exc: object) -> None:
        try:
            self.second.__exit__(*exc)
        finally:
            self.first.__exit__(*exc)


class StateStore:
    """The service's state in one SQL database: ``sqlite:///PATH`` (default for the app), ``sqlite://`` (memory,
    one process) or ``postgresql://user@host:port/db`` (psycopg 3). Creates its tables if absent.

    Thread-safe and process-safe; every method is one transaction. Times are aware datetimes (naive ones are
    refused) and come back in UTC.
    """

    JTI_PURGE_INTERVAL = 60.0  # seconds between opportunistic purges of expired jti entries, per process

    def __init__(
        self,
        url: str,
        *,
        pool_size: int = 10,
        max_overflow: int = 30,
        sqlite_synchronous: str = "FULL",
    ) -> None:
        self.url = url
        self.engine: Engine = create_engine_for(
            url, pool_size=pool_size, max_overflow=max_overflow, sqlite_synchronous=sqlite_synchronous
        )
        self.dialect: str = self.engine.dialect.name  # "sqlite" or "postgresql"
        database = self.engine.url.database or ""
        self.memory = self.dialect == "sqlite" and (database in ("", ":memory:") or "memory" in database)
        # SQLite has one writer at a time: in-process writers queue on this lock instead of spinning on
        # busy_timeout (other processes still queue on the file lock). Memory databases share one connection,
        # so every transaction takes the lock.
        self._lock = threading.RLock()
        # ...and writers in other processes (the service's workers) queue on an advisory file lock beside the
        # database: the kernel wakes the next writer the moment the lock is released, where SQLite's own busy
        # handler sleeps and polls (1, 2, 5, ... 100 ms), which under contention makes writes wait far longer
        # than they take
        self._file_lock = _FileLock(database + ".writer-lock") if self.dialect == "sqlite" and not self.memory \
            else None
        self._next_jti_purge = 0.0
        self._reader = threading.local()  # each thread's DBAPI connection for `enabled`
        try:
            with self.transaction(write=True, ddl=True) as conn:
                metadata.create_all(conn)
                for index in card_table.indexes:  # an index added since a store was made (create_all skips them)
                    index.create(conn, checkfirst=True)
        except BaseException:
            self.engine.dispose()
            raise

    # ------------------------------------------------------------------ plumbing
    def __repr__(self) -> str:
        return f"StateStore({masked(self.url)!r})"

    def __enter__(self) -> StateStore:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def close(self) -> None:
        raw = getattr(self._reader, "conn", None)
        if raw is not None:
            self._reader.conn = None
            raw.close()
        self.engine.dispose()
        if self._file_lock is not None and self._file_lock._fd is not None:
            import os

            os.close(self._file_lock._fd)
            self._file_lock._fd = None

    @contextmanager
    def transaction(self, *, write: bool, ddl: bool = False, snapshot: bool = False) -> Iterator[Connection]:
        """One transaction on a pooled connection. ``write=True`` takes the write lock up front on SQLite
        (``BEGIN IMMEDIATE``); ``ddl=True`` also serialises schema creation between PostgreSQL clients;
        ``snapshot=True`` makes every statement see the same snapshot on PostgreSQL (REPEATABLE READ; a SQLite
        transaction always does). Database errors come out as :class:`StateError` (the original chained)."""
        lock = self._lock if (self.memory or (write and self.dialect == "sqlite")) else nullcontext()
        if write and self._file_lock is not None:
            lock = _Both(lock, self._file_lock)
        try:
            with lock, self.engine.connect() as conn:
                if self.dialect == "sqlite":
                    conn.execution_options(**{BEGIN_OPTION: "IMMEDIATE" if write else "DEFERRED"})
                elif snapshot:
                    conn.execution_options(isolation_level="REPEATABLE READ")
                with conn.begin():
                    if ddl and self.dialect == "postgresql":
                        conn.execute(text("SELECT pg_advisory_xact_lock(:k)"), {"k": PG_LOCK_DDL})
                    yield conn
        except sa_exc.DBAPIError as exc:
            orig = exc.orig if exc.orig is not None else exc
            first = str(orig).strip().splitlines()[0] if str(orig).strip() else ""
            raise StateError(f"database error ({type(orig).__name__}): {first[:300]}") from exc

    def ping(self) -> None:
        """A read round trip to the database (the service's readiness probe); StateError when it fails."""
        with self.transaction(write=False) as conn:
            conn.execute(text("SELECT 1")).scalar_one()

    # ------------------------------------------------------------------ jti replay cache
    def claim_jti(self, iss: str, jti: str, expires_at: datetime, *, now: datetime | None = None) -> bool:
        """True the first time (iss, jti) is seen, or when its previous claim has expired; False for a replay.
        Race-safe: of concurrent claims (threads or processes) exactly one returns True."""
        with self.transaction(write=True) as conn:
            return self.claim_jtis_in(conn, [(iss, jti, expires_at)], now=now)[0]

    def claim_jtis_in(self, conn: Connection, claims: list[tuple[str, str, datetime]], *,
                      now: datetime | None = None) -> list[bool]:
        """`claim_jti` for many tokens in one statement (the service's group commit): a list of wins, in order. A
        pair repeated within `claims` wins at most once."""
        now = utc(now, "now") if now is not None else now_utc()
        first: dict[tuple[str, str], int] = {}
        rows = []
        for i, (iss, jti, exp) in enumerate(claims):
            key = (_key(iss, "iss"), _key(jti, "jti"))
            if key not in first:
                first[key] = i
                rows.append({"iss": key[0], "jti": key[1], "expires_at": utc(exp, "expires_at"), "now": now})
        if not rows:
            return []
        won = {(r[0], r[1]) for r in conn.execute(_claim_statement(self.dialect), rows)}
        if time.monotonic() >= self._next_jti_purge:
            self._next_jti_purge = time.monotonic() + self.JTI_PURGE_INTERVAL
            conn.execute(delete(jti_table).where(jti_table.c.expires_at <= now))
        return [first[(iss, jti)] == i and (iss, jti) in won for i, (iss, jti, _) in enumerate(claims)]

    def purge_expired_jti(self, now: datetime | None = None) -> int:
        """Delete expired replay-cache entries now; returns how many."""
        now = utc(now, "now") if now is not None else now_utc()
        with self.transaction(write=True) as conn:
            return conn.execute(delete(jti_table).where(jti_table.c.expires_at <= now)).rowcount

    # ------------------------------------------------------------------ cards
    def record_card(
        self,
        uuid: str,
        service: str,
        patient: str,
        model_hash: str,
        risk: float | None,
        indicator: str,
        unit: str | None,
        at: datetime,
        user: str | None = None,
        kind: str | None = None,
    ) -> None:
        """Remember a card shown (for feedback validation, repeat suppression and the daily budget), to whom
        (`user`: the hook's userId, e.g. Practitioner/123; the feedback export names them) and, for a card that is
        not the model's warning, which card it is (`kind`: visible ASCII, e.g. `near-threshold`). Recording the
        same card twice is a no-op; the same uuid with different content is an error."""
        with self.transaction(write=True) as conn:
            self.record_card_in(conn, uuid, service, patient, model_hash, risk, indicator, unit, at, user, kind)

    def record_card_in(self, conn: Connection, uuid: str, service: str, patient: str, model_hash: str,
                       risk: float | None, indicator: str, unit: str | None, at: datetime,
                       user: str | None = None, kind: str | None = None) -> None:
        """`record_card` inside a write transaction the caller holds (the service's group commit)."""
        if indicator not in INDICATORS:
            raise StateError(f"indicator must be one of {', '.join(INDICATORS)}, not {indicator!r}")
        row = {
            "uuid": _key(uuid, "uuid"),
            "service": _key(service, "service"),
            "patient": _key(patient, "patient"),
            "model_hash": _key(model_hash, "model_hash"),
            "risk": finite(risk, "risk"),
            "indicator": indicator,
            "unit": _key(unit, "unit", optional=True),
            "at": utc(at, "at"),
        }
        user, kind = _key(user, "user", optional=True), _key(kind, "kind", optional=True)
        if conn.execute(insert_ignore(self.dialect, card_table, row)).rowcount == 1:
            if user is not None:
                conn.execute(insert_ignore(self.dialect, card_user_table, {"uuid": row["uuid"], "user": user}))
            if kind is not None:
                conn.execute(insert_ignore(self.dialect, card_kind_table, {"uuid": row["uuid"], "kind": kind}))
            return
        stored = conn.execute(select(card_table).where(card_table.c.uuid == uuid)).mappings().first()
        if stored is None or any(stored[k] != v for k, v in row.items()):
            raise StateError(f"card {uuid} was already recorded with different content")

    @staticmethod
    def _card(row: Any) -> dict | None:
        if row is None:
            return None
        return {k: row[k] for k in ("uuid", "service", "patient", "model_hash", "risk", "indicator", "unit", "at")}

    def card(self, uuid: str) -> dict | None:
        """The card recorded under this uuid: uuid, service, patient, model_hash, risk, indicator, unit, at, and the
        user it was shown to (None when the hook named none)."""
        q = (select(card_table, card_user_table.c.user)
             .select_from(card_table.outerjoin(card_user_table, card_user_table.c.uuid == card_table.c.uuid))
             .where(card_table.c.uuid == uuid))
        with self.transaction(write=False) as conn:
            row = conn.execute(q).mappings().first()
        return None if row is None else {**self._card(row), "user": row["user"]}

    def last_card(self, service: str | None, patient: str, model_hash: str,
                  indicator: str | None = None, *, kind: str | None = None) -> dict | None:
        """The newest card (by ``at``, then by recording order) for this patient from this model, shown by this
        service (any, when None), of this indicator only (when given), of this kind only (when given: see
        `record_card`)."""
        with self.transaction(write=False) as conn:
            return self.last_card_in(conn, service, patient, model_hash, indicator, kind=kind)

    def last_card_in(self, conn: Connection, service: str | None, patient: str, model_hash: str,
                     indicator: str | None = None, *, kind: str | None = None) -> dict | None:
        """`last_card` inside a transaction the caller holds (the group commit checks its alert rule there)."""
        c = card_table.c
        where = [c.patient == patient, c.model_hash == model_hash]
        if service is not None:
            where.append(c.service == service)
        if indicator is not None:
            where.append(c.indicator == indicator)
        q = select(card_table)
        if kind is not None:
            q = q.join(card_kind_table, card_kind_table.c.uuid == c.uuid)
            where.append(card_kind_table.c.kind == kind)
        q = q.where(*where).order_by(c.at.desc(), c.id.desc()).limit(1)
        return self._card(conn.execute(q).mappings().first())

    def cards_since(self, service: str | None, unit: str | None, since: datetime, indicator: str | None = None, *,
                    model_hash: str | None = None) -> int:
        """How many cards were shown in ``unit`` at or after ``since`` by this service (any, when None) and model
        (any, when None), of this indicator only (when given); ``unit=None`` counts the cards recorded without one."""
        with self.transaction(write=False) as conn:
            return self.cards_since_in(conn, service, unit, since, indicator, model_hash=model_hash)

    def cards_since_in(self, conn: Connection, service: str | None, unit: str | None, since: datetime,
                       indicator: str | None = None, *, model_hash: str | None = None) -> int:
        """`cards_since` inside a transaction the caller holds."""
        c = card_table.c
        where = [c.unit.is_(None) if unit is None else c.unit == unit, c.at >= utc(since)]
        if service is not None:
            where.append(c.service == service)
        if model_hash is not None:
            where.append(c.model_hash == model_hash)
        if indicator is not None:
            where.append(c.indicator == indicator)
        return int(conn.execute(select(func.count()).select_from(card_table).where(*where)).scalar_one())

    # ------------------------------------------------------------------ feedback
    def add_feedback(
        self,
        service: str,
        item: dict,
        *,
        client: str,
        user: str | None = None,
        received_at: datetime | None = None,
    ) -> bool:
        """Store one CDS Hooks Feedback object (card, outcome, acceptedSuggestions, overrideReason,
        outcomeTimestamp). True if new; False if the same feedback (card uuid + outcome + outcomeTimestamp
        + override reason code) was stored before, by this or a concurrent call."""
        row = self.feedback_row(service, item, client=client, user=user, received_at=received_at)
        with self.transaction(write=True) as conn:
            return self.add_feedback_rows_in(conn, [row])[0]

    def feedback_row(self, service: str, item: dict, *, client: str, user: str | None = None,
                     received_at: datetime | None = None) -> dict:
        """One Feedback object checked and turned into its row (StateError saying what is wrong), so that a
        batch can be checked whole before any of it is written."""
        if not isinstance(item, dict):
            raise StateError("feedback item must be a JSON object")
        card = _key(item.get("card"), "feedback card")
        outcome = item.get("outcome")
        if outcome not in OUTCOMES:
            raise StateError(f"feedback outcome must be one of {', '.join(OUTCOMES)}")
        outcome_at = parse_instant(item.get("outcomeTimestamp"), "outcomeTimestamp")  # type: ignore[arg-type]
        accepted = item.get("acceptedSuggestions") or []
        if not isinstance(accepted, list) or not all(isinstance(s, dict) for s in accepted):
            raise StateError("acceptedSuggestions must be a list of objects with an id")
        accepted_ids = [_key(s.get("id"), "acceptedSuggestions[].id") for s in accepted]
        override = item.get("overrideReason") or {}
        if not isinstance(override, dict):
            raise StateError("overrideReason must be an object")
        reason = override.get("reason") or {}
        if not isinstance(reason, dict):
            raise StateError("overrideReason.reason must be a Coding")
        return {
            "service": _key(service, "service"),
            "card": card,
            "outcome": outcome,
            "outcome_at": outcome_at,
            "override_code": _key(reason.get("code"), "overrideReason.reason.code", optional=True) or "",
            "override_system": _text(reason.get("system"), "overrideReason.reason.system", limit=MAX_KEY),
            "override_display": _text(reason.get("display"), "overrideReason.reason.display", limit=MAX_KEY),
            "user_comment": _text(override.get("userComment"), "overrideReason.userComment"),
            "accepted_suggestions": canonical_json(accepted_ids),
            "client": _key(client, "client"),
            "user": _key(user, "user", optional=True),
            "received_at": utc(received_at, "received_at") if received_at is not None else now_utc(),
        }

    def add_feedback_rows_in(self, conn: Connection, rows: list[dict]) -> list[bool]:
        """Insert `feedback_row`s inside a write transaction the caller holds; for each, whether it was new."""
        return [conn.execute(insert_ignore(self.dialect, feedback_table, row)).rowcount == 1 for row in rows]

    def feedback(self, service: str | None = None) -> list[dict]:
        """The feedback export (HTI-1 (b)(11)), oldest first: intervention (service), card, action (outcome),
        accepted_suggestions, override_code/system/display, comment, user, client, date (outcomeTimestamp),
        received, location (the card's unit), model_hash. Times are ISO 8601 UTC strings."""
        f, c = feedback_table.c, card_table.c
        q = (
            select(feedback_table, c.unit, c.model_hash)
            .select_from(feedback_table.outerjoin(card_table, c.uuid == f.card))
            .order_by(f.id)
        )
        if service is not None:
            q = q.where(f.service == service)
        with self.transaction(write=False) as conn:
            rows = conn.execute(q).mappings().all()
        return [
            {
                "intervention": r["service"],
                "card": r["card"],
                "action": r["outcome"],
                "accepted_suggestions": json.loads(r["accepted_suggestions"]),
                "override_code": r["override_code"] or None,
                "override_system": r["override_system"],
                "override_display": r["override_display"],
                "comment": r["user_comment"],
                "user": r["user"],
                "client": r["client"],
                "date": iso_z(r["outcome_at"]),
                "received": iso_z(r["received_at"]),
                "location": r["unit"],
                "model_hash": r["model_hash"],
            }
            for r in rows
        ]

    # ------------------------------------------------------------------ kill switch and settings
    def enabled(self, model_key: str) -> bool:
        """Whether the model may produce cards; True unless an administrator switched it off."""
        return self.policy(model_key).enabled

    def policy(self, model_key: str) -> ModelPolicy:
        """The administrators' settings for a model: the kill switch, and the alert threshold set in place of the
        bundle's (None when there is none) with its version.

        Read on every CDS call, so it skips SQLAlchemy's per-transaction work: one indexed query on this thread's
        own autocommit DBAPI connection (a fresh snapshot each time: a change made by any process or worker takes
        effect on the next call)."""
        if self.memory:
            with self.transaction(write=False) as conn:
                on = conn.execute(select(switch_table.c.enabled).where(switch_table.c.model_key == model_key)
                                  ).scalar_one_or_none()
                thr = conn.execute(select(threshold_table.c.threshold, threshold_table.c.version)
                                   .where(threshold_table.c.model_key == model_key)).first()
            return ModelPolicy(True if on is None else bool(on), *(tuple(thr) if thr else (None, 0)))
        raw = getattr(self._reader, "conn", None)
        if raw is None:
            raw = self._reader.conn = self.engine.raw_connection()
            if self.dialect == "postgresql":
                raw.driver_connection.autocommit = True
        mark = "?" if self.dialect == "sqlite" else "%s"
        try:
            cur = raw.cursor()
            cur.execute(f"SELECT (SELECT enabled FROM {switch_table.name} WHERE model_key = {mark}), "
                        f"(SELECT threshold FROM {threshold_table.name} WHERE model_key = {mark}), "
                        f"(SELECT version FROM {threshold_table.name} WHERE model_key = {mark})",
                        (model_key, model_key, model_key))
            on, thr, version = cur.fetchone()
            cur.close()
        except Exception as exc:
            self._reader.conn = None
            raise StateError(f"database error ({type(exc).__name__}): {str(exc).splitlines()[0][:300]}") from exc
        return ModelPolicy(True if on is None else bool(on), None if thr is None else float(thr), version or 0)

    def set_threshold(self, model_key: str, threshold: float | None, *, by: str,
                      at: datetime | None = None) -> int:
        """Set (or, with None, clear) the administrators' alert threshold of a model; its new version."""
        if threshold is not None and not (isinstance(threshold, float) and 0.0 < threshold < 1.0):
            raise StateError(f"a threshold is a risk between 0 and 1, not {threshold!r}")
        c = threshold_table.c
        row = {"model_key": _key(model_key, "model_key"), "threshold": threshold, "version": 0,
               "changed_at": utc(at, "at") if at is not None else now_utc(), "changed_by": _key(by, "by")}
        with self.transaction(write=True) as conn:
            # the row first (version 0 reads as "never set"), then read under its lock: two administrators' changes
            # at once, in two workers, get two versions (on PostgreSQL's READ COMMITTED a plain read let both take
            # the same one, and every scored call records the version that decided it)
            conn.execute(insert_ignore(self.dialect, threshold_table, row))
            version = conn.execute(select(c.version).where(c.model_key == row["model_key"])
                                   .with_for_update()).scalar_one() + 1
            conn.execute(update(threshold_table).where(c.model_key == row["model_key"])
                         .values(threshold=threshold, version=version, changed_at=row["changed_at"],
                                 changed_by=row["changed_by"]))
        return version

    def set_enabled(self, model_key: str, enabled: bool, *, by: str, at: datetime | None = None) -> None:
        if not isinstance(enabled, bool):
            raise StateError(f"enabled must be True or False, not {enabled!r}")
        row = {
            "model_key": _key(model_key, "model_key"),
            "enabled": enabled,
            "changed_at": utc(at, "at") if at is not None else now_utc(),
            "changed_by": _key(by, "by"),
        }
        with self.transaction(write=True) as conn:
            stmt = upsert(self.dialect, switch_table, row, ["model_key"], ["enabled", "changed_at", "changed_by"])
            conn.execute(stmt)

    def take_token(self, key: str, *, per_s: float, burst: int, now: float | None = None) -> float:
        """A token bucket shared by every process on this store (so N workers do not allow N times the rate): 0 when
        a request under `key` may go now (one token is taken), else the seconds until one may. The bucket holds up to
        `burst` tokens and refills at `per_s`. The row is read and written in one write transaction (SQLite's write
        lock, PostgreSQL's row lock), so concurrent requests cannot both take the last token."""
        if not (per_s > 0 and burst >= 1):
            raise StateError("a rate limit needs per_s > 0 and burst >= 1")
        key = _key(key, "rate key")
        now = time.time() if now is None else now
        with self.transaction(write=True) as conn:
            # a full bucket first, if there is none yet (a concurrent first request waits for this one, then finds it)
            conn.execute(insert_ignore(self.dialect, rate_table, {"key": key, "tokens": float(burst), "at": now}))
            row = conn.execute(select(rate_table.c.tokens, rate_table.c.at).where(rate_table.c.key == key)
                               .with_for_update()).one()
            tokens = min(float(burst), row.tokens + max(0.0, now - row.at) * per_s)
            if tokens < 1:  # refused: the bucket is left as it was (it refills with time)
                return (1 - tokens) / per_s
            taken = {"tokens": tokens - 1, "at": max(now, row.at)}  # a clock set back does not refill it twice
            conn.execute(rate_table.update().where(rate_table.c.key == key).values(**taken))
        return 0.0

    # ------------------------------------------------------------------ dashboard sign-outs
    def sign_out(self, sid: str, expires_at: datetime, *, now: datetime | None = None) -> None:
        """Record that dashboard session `sid` was signed out (every worker then refuses it), and forget sign-outs
        whose sessions have expired since (their cookies are refused as expired)."""
        now = utc(now, "now") if now is not None else now_utc()
        row = {"sid": _key(sid, "session id"), "expires_at": utc(expires_at, "expires_at")}
        with self.transaction(write=True) as conn:
            conn.execute(insert_ignore(self.dialect, signed_out_table, row))
            conn.execute(delete(signed_out_table).where(signed_out_table.c.expires_at <= now))

    def signed_out(self, sid: str) -> bool:
        """Whether dashboard session `sid` was signed out (in any worker)."""
        with self.transaction(write=False) as conn:
            found = conn.execute(select(signed_out_table.c.sid).where(signed_out_table.c.sid == _key(sid, "session id"))
                                 ).first()
        return found is not None

    def switches(self) -> dict[str, dict]:
        """Every model_key an administrator has set: {model_key: {enabled, changed_at, changed_by}}."""
        with self.transaction(write=False) as conn:
            rows = conn.execute(select(switch_table).order_by(switch_table.c.model_key)).mappings().all()
        return {r["model_key"]: {k: r[k] for k in ("enabled", "changed_at", "changed_by")} for r in rows}

    def setting(self, key: str, default: Any = None) -> Any:
        with self.transaction(write=False) as conn:
            value = conn.execute(
                select(setting_table.c.value).where(setting_table.c.key == key)
            ).scalar_one_or_none()
        return default if value is None else json.loads(value)

    def set_setting(self, key: str, value: Any, *, by: str, at: datetime | None = None) -> None:
        """Store a JSON value (None, bool, number, string, list, object) under ``key``."""
        row = {
            "key": _key(key, "key"),
            "value": canonical_json(value),
            "changed_at": utc(at, "at") if at is not None else now_utc(),
            "changed_by": _key(by, "by"),
        }
        with self.transaction(write=True) as conn:
            conn.execute(upsert(self.dialect, setting_table, row, ["key"], ["value", "changed_at", "changed_by"]))

    def settings(self) -> dict[str, Any]:
        """Every stored setting: {key: value}."""
        with self.transaction(write=False) as conn:
            rows = conn.execute(select(setting_table.c.key, setting_table.c.value).order_by(setting_table.c.key))
            return {k: json.loads(v) for k, v in rows}
