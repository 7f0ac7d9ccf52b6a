"""The append-only, hash-chained audit log (ONC (d)(2) "detect alteration", EU AI Act Art. 12), in the state store.

Each record holds ``seq`` (1..n, no gaps), the event's ``recorded`` time, the event as canonical JSON (sorted keys,
no whitespace), ``prev_hash`` and ``entry_hash``::

    entry_hash = sha256_hex(prev_hash + "\\n" + str(seq) + "\\n" + canonical_json)       (UTF-8)
    prev_hash of record 1 = "0" * 64;  prev_hash of record n = entry_hash of record n - 1

so editing, deleting, inserting or reordering a record breaks the chain at a point :meth:`AuditLog.verify` names.
Appends are serialised (SQLite ``BEGIN IMMEDIATE``; PostgreSQL a transaction-level advisory lock), so concurrent
appends from threads and processes never fork the chain; ``seq`` is the primary key besides.

The database enforces append-only: triggers abort UPDATE and DELETE (and TRUNCATE on PostgreSQL) on the audit
tables, so no code path through the app's connection can change a record. An attacker with DBA rights can drop
or disable the triggers; the hash chain then still exposes the change, except a wholesale rewrite of the chain
from some record on, which signed checkpoints (Ed25519, optional: ``signing_key=``) expose as well.

Retention (EU AI Act Arts 19, 26(6): at least six months): :meth:`AuditLog.purge` removes only a *prefix* of the
chain whose records are all older than the minimum (183 days at least), after verifying it, and leaves an anchor
(the last purged seq and entry_hash, append-only too) from which the remaining chain still verifies. The DELETE
trigger lets through only records at or below an anchor and older than 183 days by the database's own clock (so
that a forged anchor cannot free recent records); the newest record is never purged.

Columns beside the event (recorded, kind, outcome, client, patient) exist for the audit report's filters; they
are derived from the event on append and :meth:`verify` checks that they still agree with the hashed event.
"""

from __future__ import annotations

import hashlib
import itertools
import json
import uuid as uuidlib
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass, replace
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

from sqlalchemy import (
    BigInteger,
    Column,
    Index,
    Integer,
    MetaData,
    String,
    Table,
    Text,
    func,
    insert,
    select,
    text,
    type_coerce,
)
from sqlalchemy.engine import Connection
from sqlalchemy.exc import DBAPIError

from careloop.audit.event import FIELDS, AuditContentError, audit_event, find_secret, refuse_secrets, summarize
from careloop.errors import CareloopError, ConfigError
from careloop.state import StateError, StateStore, canonical_json, iso_z
from careloop.state._db import UTCDateTime, now_utc, utc
from careloop.state.store import PG_LOCK_AUDIT

GENESIS = "0" * 64
MIN_RETENTION_DAYS = 183
CHAIN_EXTENSION = "https://careloop.example/fhir/StructureDefinition/audit-chain"
CHECKPOINT_CONTEXT = "careloop-audit-checkpoint/1"
SORT_FIELDS = (*FIELDS, "prev_hash", "entry_hash")
UNCHECKED_COMPLETENESS = (  # verify_bundle's reason for an export that does not say what it should hold
    "whether records were removed from the export cannot be checked: its Bundle meta carries no audit-chain "
    "extension (count, headSeq, headHash), as an export made before careloop wrote one, or one whose meta was removed")

audit_metadata = MetaData()

audit_table = Table(
    "careloop_audit",
    audit_metadata,
    Column("seq", BigInteger, primary_key=True, autoincrement=False),
    Column("recorded", UTCDateTime, nullable=False),
    Column("kind", String, nullable=True),
    Column("outcome", String, nullable=True),
    Column("client", String, nullable=True),
    Column("patient", String, nullable=True),
    Column("event", Text, nullable=False),
    Column("prev_hash", String(64), nullable=False),
    Column("entry_hash", String(64), nullable=False),
    Index("careloop_audit_recorded", "recorded"),
    Index("careloop_audit_patient", "patient", "recorded"),
)

checkpoint_table = Table(
    "careloop_audit_checkpoint",
    audit_metadata,
    Column("id", BigInteger().with_variant(Integer, "sqlite"), primary_key=True, autoincrement=True),
    Column("seq", BigInteger, nullable=False),
    Column("entry_hash", String(64), nullable=False),
    Column("signed_at", UTCDateTime, nullable=False),
    Column("key_id", String, nullable=False),
    Column("signature", String, nullable=False),
    Index("careloop_audit_checkpoint_seq", "seq"),
)

anchor_table = Table(
    "careloop_audit_anchor",
    audit_metadata,
    Column("upto_seq", BigInteger, primary_key=True, autoincrement=False),
    Column("entry_hash", String(64), nullable=False),
    Column("last_recorded", UTCDateTime, nullable=False),
    Column("purged_at", UTCDateTime, nullable=False),
    Column("minimum_days", Integer, nullable=False),
    Column("purged_by", String, nullable=False),
)

APPEND_ONLY_TABLES = ("careloop_audit", "careloop_audit_checkpoint", "careloop_audit_anchor")

_SQLITE_TRIGGERS = [
    "CREATE TRIGGER IF NOT EXISTS careloop_audit_no_update BEFORE UPDATE ON careloop_audit "
    "BEGIN SELECT RAISE(ABORT, 'careloop_audit is append-only: UPDATE refused'); END",
    "CREATE TRIGGER IF NOT EXISTS careloop_audit_no_delete BEFORE DELETE ON careloop_audit "
    "WHEN OLD.seq > (SELECT COALESCE(MAX(upto_seq), 0) FROM careloop_audit_anchor) "
    "BEGIN SELECT RAISE(ABORT, 'careloop_audit is append-only: DELETE refused'); END",
    # an anchor is only a row of another table: the database's own clock keeps every record for the minimum, so that
    # a forged anchor cannot let a recent prefix (or the tail) be deleted (recorded is a fixed-width UTC string)
    "CREATE TRIGGER IF NOT EXISTS careloop_audit_retention BEFORE DELETE ON careloop_audit "
    f"WHEN OLD.recorded > datetime('now', '-{MIN_RETENTION_DAYS} days') "
    f"BEGIN SELECT RAISE(ABORT, 'careloop_audit keeps every record {MIN_RETENTION_DAYS} days: DELETE refused'); END",
    *(
        f"CREATE TRIGGER IF NOT EXISTS {t}_no_{op.lower()} BEFORE {op} ON {t} "
        f"BEGIN SELECT RAISE(ABORT, '{t} is append-only: {op} refused'); END"
        for t in APPEND_ONLY_TABLES[1:]
        for op in ("UPDATE", "DELETE")
    ),
]

_PG_FUNCTION = """
CREATE OR REPLACE FUNCTION careloop_audit_append_only() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
  IF TG_OP = 'DELETE' AND TG_TABLE_NAME = 'careloop_audit' THEN
    IF OLD.seq <= (SELECT COALESCE(MAX(upto_seq), 0) FROM careloop_audit_anchor)
       AND OLD.recorded < now() - interval 'MIN_RETENTION_DAYS days' THEN
      RETURN OLD;  -- a retention purge of an anchored prefix
    END IF;
  END IF;
  RAISE EXCEPTION '% is append-only: % refused', TG_TABLE_NAME, TG_OP;
END
$$
""".replace("MIN_RETENTION_DAYS", str(MIN_RETENTION_DAYS))  # the same minimum as SQLite's trigger and purge()
_PG_FUNCTION_BODY = _PG_FUNCTION.split("$$")[1].strip()  # as pg_proc.prosrc keeps it (compared at each opening)


def entry_hash(prev_hash: str, seq: int, canonical: str) -> str:
    """sha256 of ``prev_hash "\\n" seq "\\n" canonical_json`` (UTF-8), hex."""
    return hashlib.sha256(f"{prev_hash}\n{seq}\n{canonical}".encode()).hexdigest()


@dataclass(frozen=True)
class VerifyResult:
    """Outcome of a chain verification: ``first_bad`` is the seq of the first record that cannot be trusted."""

    ok: bool
    checked: int
    first_bad: int | None = None
    reason: str | None = None
    checkpoints: int = 0  # signed checkpoints that were checked against the chain
    # (an export's check) consecutive records (a, b) with b > a + 1: records between were not exported, or removed
    gaps: tuple[tuple[int, int], ...] = ()

    def __bool__(self) -> bool:
        return self.ok


class _Bad(Exception):
    def __init__(self, seq: int, reason: str) -> None:
        super().__init__(reason)
        self.seq, self.reason = seq, reason


class AuditError(CareloopError):
    """The audit log refused an operation (e.g. a purge inside the retention period, or of a broken chain)."""


def _columns(summary: dict) -> dict:
    return {k: summary[k] for k in ("recorded", "kind", "outcome", "client", "patient")}


# The audit table's columns with `recorded` as the database holds it: on SQLite a text column the DateTime type would
# parse while the rows are read (a record whose text is not a date-time would stop a verification or a report with a
# ValueError instead of being named); PostgreSQL's timestamptz always holds an instant.
_RAW_RECORDED = type_coerce(audit_table.c.recorded, String).label("recorded")
_RAW_COLUMNS = tuple(_RAW_RECORDED if c.name == "recorded" else c for c in audit_table.c)


def _recorded_form(dialect: Any) -> Callable[[datetime | None], Any]:
    """`recorded` exactly as SQLAlchemy writes it on this dialect: on SQLite the one text form of an instant
    (``2025-03-01 08:00:04.000000``), which the report's time bounds compare as text, so that another text of the
    same instant (``20250301T080004``) is a changed column; on PostgreSQL the timestamptz value."""
    process = audit_table.c.recorded.type.dialect_impl(dialect).bind_processor(dialect)
    return process if process is not None else (lambda value: value)


def _stored_instant(value: Any) -> datetime | None:
    """The instant a raw `recorded` value holds (an aware UTC datetime), or None when it holds none."""
    try:
        if isinstance(value, str):
            value = datetime.fromisoformat(value)
        if not isinstance(value, datetime):
            return None
        return value.replace(tzinfo=UTC) if value.tzinfo is None else value.astimezone(UTC)
    except (ValueError, OverflowError):
        return None


def _prepare(event: dict) -> tuple[str, dict]:
    if not isinstance(event, dict) or event.get("resourceType") != "AuditEvent":
        raise AuditContentError("an audit record must be a FHIR AuditEvent (a dict with resourceType AuditEvent)")
    if "id" in event or "meta" in event:
        raise AuditContentError("id and meta of an audit event are assigned by the log on export; leave them out")
    try:
        canonical = canonical_json(event)
    except StateError as exc:
        raise AuditContentError(str(exc)) from None
    found = find_secret(canonical)
    if found:
        raise AuditContentError(f"audit event contains {found}: tokens are never written to the audit log")
    if "\\" in canonical:  # JSON escaped a character ("Bearer\tx..." is written "Bearer\\tx..."): scan the text itself
        refuse_secrets(event, "audit event")  # (seldom: ids and codes hold no character JSON escapes)
    summary = summarize(event)
    if summary["recorded"] is None:
        raise AuditContentError("audit event needs recorded: an instant with a time zone (UTC, Z)")
    return canonical, summary


def _sign_message(seq: int, hash_: str, signed_at: datetime) -> bytes:
    return f"{CHECKPOINT_CONTEXT}\n{seq}\n{hash_}\n{iso_z(signed_at)}".encode()


def _key_id(public_key: Any) -> str:
    from cryptography.hazmat.primitives import serialization

    raw = public_key.public_bytes(serialization.Encoding.Raw, serialization.PublicFormat.Raw)
    return hashlib.sha256(raw).hexdigest()[:16]


def _walk(
    rows: Iterable[Any],
    *,
    start_seq: int,
    start_prev: str,
    recorded_form: Callable[[datetime | None], Any],
    checkpoints: dict[int, str] | None = None,
    columns: bool = True,
) -> VerifyResult:
    """Verify consecutive records from ``start_seq`` (whose predecessor's hash is ``start_prev``); the rows hold
    ``recorded`` as the database does (`_RAW_COLUMNS`), compared with ``recorded_form`` of the hashed event's."""
    checkpoints = checkpoints or {}
    expected, prev, prev_prev = start_seq, start_prev, None
    checked, seen_cp, trusted_upto = 0, 0, start_seq - 1
    try:
        for r in rows:
            seq = r["seq"]
            if not isinstance(seq, int):  # a value of another type written into the column (SQLite allows it)
                raise _Bad(expected, f"record {expected}: a record's seq is not an integer ({str(seq)[:20]!r})")
            if seq != expected:
                if seq > expected:
                    raise _Bad(expected, f"record {expected} is missing (deleted): the next record is {seq}")
                raise _Bad(seq, f"record {seq} appears twice")
            own_ok = entry_hash(r["prev_hash"], seq, r["event"]) == r["entry_hash"]
            if r["prev_hash"] != prev:
                if prev_prev is not None and r["prev_hash"] == prev_prev:
                    raise _Bad(seq - 1, f"record {seq - 1} was inserted: it and record {seq} both follow {seq - 2}")
                if own_ok and seq > start_seq:
                    raise _Bad(seq - 1, f"record {seq - 1} was rewritten: record {seq} is intact but does not "
                               f"chain to it")
                raise _Bad(seq, f"record {seq} does not chain to record {seq - 1} (prev_hash mismatch): records "
                           "reordered, moved or replaced")
            if not own_ok:
                raise _Bad(seq, f"record {seq} does not match its entry_hash: its content was edited")
            if columns:
                try:
                    event = json.loads(r["event"])
                except (TypeError, ValueError):
                    raise _Bad(seq, f"record {seq} is not valid JSON") from None
                try:
                    derived = _columns(summarize(event))
                    derived["recorded"] = recorded_form(derived["recorded"])
                except Exception:  # summarize reads dicts and lists of dicts: anything else in the event breaks it
                    raise _Bad(seq, f"record {seq} is malformed: its event is not an AuditEvent as the log writes "
                               "it") from None
                for name, value in derived.items():
                    if r[name] != value:
                        raise _Bad(seq, f"column {name} of record {seq} was changed: it no longer matches the "
                                   "hashed event")
            if seq in checkpoints:
                seen_cp += 1
                if checkpoints[seq] != r["entry_hash"]:
                    raise _Bad(trusted_upto + 1, f"records {trusted_upto + 1}..{seq} were rewritten: the "
                               f"checkpoint signed at record {seq} holds another hash")
                trusted_upto = seq
            prev_prev, prev = r["prev_hash"], r["entry_hash"]
            expected += 1
            checked += 1
        beyond = [s for s in checkpoints if s >= expected]
        if beyond:
            raise _Bad(expected, f"records from {expected} on are missing: a checkpoint was signed at record "
                       f"{max(beyond)}")
    except _Bad as bad:  # checked: the records before the first bad one, which verified
        return VerifyResult(False, max(0, bad.seq - start_seq), bad.seq, bad.reason, seen_cp)
    return VerifyResult(True, checked, None, None, seen_cp)


# built once: a statement built per call costs more to key for SQLAlchemy's compile cache than to run
_HEAD = select(audit_table.c.seq, audit_table.c.entry_hash).order_by(audit_table.c.seq.desc()).limit(1)


def missing_log(url: str) -> str | None:
    """Why there is no audit log at `url` to verify (no such SQLite file, or no audit table in the database), found
    without creating either (opening an AuditLog creates both, which would make a log that is gone look new)."""
    from urllib.parse import quote

    from sqlalchemy import URL, create_engine, inspect
    from sqlalchemy.engine import make_url
    from sqlalchemy.exc import SQLAlchemyError

    from careloop.state._db import normalize_url

    url = normalize_url(url)
    parsed = make_url(url)
    if parsed.get_backend_name() == "sqlite":
        path = parsed.database or ""
        if path in ("", ":memory:") or not Path(path).is_file():
            return f"no database file at {path or '(memory)'}"
        # read-only, through an SQLite URI: the path percent-encoded (a '#', '?' or '%' in it is the file's name, not
        # a fragment, a query or an escape), and the URL built from parts (a URL string's path is decoded once more)
        url = URL.create("sqlite", database=f"file:{quote(str(Path(path).resolve()))}",
                         query={"mode": "ro", "uri": "true"})
    engine = create_engine(url)
    try:
        with engine.connect() as conn:
            if not inspect(conn).has_table(audit_table.name):
                return f"no audit log in this database (no {audit_table.name} table)"
    except SQLAlchemyError as exc:
        return f"cannot read the database ({type(exc).__name__})"
    finally:
        engine.dispose()
    return None


def _chain_values(meta: Any) -> dict | None:
    """The audit-chain extension's values ({url: value}) in a `meta`, or None when it has none."""
    chain = next((e for e in meta.get("extension") or [] if e.get("url") == CHAIN_EXTENSION), None)
    if chain is None:
        return None
    return {e.get("url"): e.get("valueInteger", e.get("valueString", e.get("valueBoolean")))
            for e in chain.get("extension", [])}


def _export_complete(bundle: dict, rows: list[dict], *, completeness: bool = True) -> VerifyResult:
    """What the export says of itself (`export_bundle`) against the records it holds, sorted by seq. An export made
    before these were written (or whose Bundle meta was removed) says nothing: with `completeness` that is a failure
    (a record removed from it would go unseen), without only its records are checked."""
    try:
        about = _chain_values(bundle.get("meta") or {})
    except (AttributeError, TypeError):
        return VerifyResult(False, 0, None, "the Bundle's meta is malformed")
    if about is None:
        if completeness:
            return VerifyResult(False, len(rows), None, UNCHECKED_COMPLETENESS)
        return VerifyResult(True, len(rows))
    count = about.get("count")
    if count != len(rows):
        return VerifyResult(False, len(rows), None, f"the export held {count} records and {len(rows)} are left: "
                            "entries were removed (or added)")
    if about.get("filtered") is False:
        for n in range(1, len(rows)):
            if rows[n]["seq"] != rows[n - 1]["seq"] + 1:
                return VerifyResult(False, n, rows[n - 1]["seq"] + 1, f"record {rows[n - 1]['seq'] + 1} is missing "
                                    "from an export of the whole log: removed")
        head_seq, head_hash = about.get("headSeq"), about.get("headHash")
        last = (rows[-1]["seq"], rows[-1]["entry_hash"]) if rows else None
        if head_seq and last != (head_seq, head_hash):
            return VerifyResult(False, len(rows), head_seq, f"the export ends at record {last[0] if last else 0}, "
                                f"not at record {head_seq}, the log's head when it was made: its tail was cut")
    return VerifyResult(True, len(rows))


def _export_holds(rows: list[dict], expect: tuple[int, str]) -> VerifyResult | None:
    """None when the export's records hold the head `expect` (seq, entry_hash) kept outside; else why not."""
    seq, hash_ = expect
    if seq == 0:
        return None if hash_ == GENESIS else VerifyResult(False, len(rows), 0, "the head kept outside is record 0 "
                                                          "with a hash that is not the empty log's")
    held = next((r for r in rows if r["seq"] == seq), None)
    if held is None:
        last = rows[-1]["seq"] if rows else 0
        return VerifyResult(False, len(rows), seq, f"record {seq}, the head kept outside, is not in the export (its "
                            f"records end at {last}): its tail was cut, it was filtered, or it was made before")
    if held["entry_hash"] != hash_:
        return VerifyResult(False, len(rows), seq, f"record {seq}, the head kept outside, is not the record the export "
                            "holds (another hash): the export, or the log it was made from, was rewritten")
    return None


def _purge_recorded(conn: Connection, anchor: Any) -> bool:
    """Does a record after the anchor (in the chain the walk checks) say a purge made it: an admin-change event
    `audit-purge` naming its seq and, since purges record it, its hash?"""
    rows = conn.execute(select(audit_table.c.event).where(
        audit_table.c.seq > anchor["upto_seq"], audit_table.c.kind == "admin-change")).scalars()
    for event in rows:
        try:
            detail = summarize(json.loads(event))["detail"]
        except (ValueError, TypeError, KeyError, AttributeError):
            continue  # a malformed record: the walk names it
        if detail.get("action") == "audit-purge" and detail.get("upto_seq") == str(anchor["upto_seq"]) \
                and detail.get("anchor_hash", anchor["entry_hash"]) == anchor["entry_hash"]:
            return True
    return False


class AuditLog:
    """The audit log in a :class:`~careloop.state.StateStore`'s database (tables created if absent).

    ``signing_key`` (an Ed25519 private key) signs a checkpoint every ``checkpoint_every`` records (default
    1000) and on :meth:`checkpoint`; ``verify_key`` (defaults to the signing key's public key) checks them.
    """

    def __init__(
        self,
        store: StateStore,
        *,
        signing_key: Any = None,
        verify_key: Any = None,
        checkpoint_every: int | None = 1000,
        _owns_store: bool = False,
    ) -> None:
        self.store = store
        self._owns_store = _owns_store
        self.signing_key = signing_key
        self.verify_key = verify_key if verify_key is not None else (
            signing_key.public_key() if signing_key is not None else None
        )
        if checkpoint_every is not None and checkpoint_every < 1:
            raise ConfigError(f"checkpoint_every must be a positive number of records, not {checkpoint_every}")
        self.checkpoint_every = checkpoint_every
        with store.transaction(write=True, ddl=True) as conn:
            audit_metadata.create_all(conn)
            self._create_triggers(conn)

    @classmethod
    def open(cls, url: str, **kw: Any) -> AuditLog:
        """An AuditLog on its own StateStore (closed by :meth:`close`)."""
        return cls(StateStore(url), _owns_store=True, **kw)

    def close(self) -> None:
        if self._owns_store:
            self.store.close()

    def __enter__(self) -> AuditLog:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def _create_triggers(self, conn: Connection) -> None:
        if self.store.dialect == "sqlite":
            for ddl in _SQLITE_TRIGGERS:
                conn.exec_driver_sql(ddl)
            return
        # made (or brought up to date) only when it differs: CREATE OR REPLACE needs the owner's rights, and the
        # service's own role (SELECT and INSERT only, checklist A-04) or an auditor's read-only one must still open it
        body = conn.execute(text(
            "SELECT prosrc FROM pg_proc WHERE proname = 'careloop_audit_append_only' "
            "AND pronamespace = current_schema()::regnamespace")).scalar_one_or_none()
        if body is None or body.strip() != _PG_FUNCTION_BODY:
            try:
                with conn.begin_nested():
                    conn.execution_options(no_parameters=True).exec_driver_sql(_PG_FUNCTION)  # '%' not placeholders
            except DBAPIError as exc:
                raise AuditError("the audit log's append-only trigger function is missing or out of date, and this "
                                 "database role may not create it: open the log once as the tables' owner") from exc
        existing = set(conn.execute(text(
            "SELECT tgname FROM pg_trigger WHERE NOT tgisinternal AND tgrelid = ANY(ARRAY["
            + ", ".join(f"to_regclass('{t}')" for t in APPEND_ONLY_TABLES) + "])"
        )).scalars())
        for t in APPEND_ONLY_TABLES:
            if f"{t}_append_only" not in existing:
                conn.exec_driver_sql(
                    f"CREATE TRIGGER {t}_append_only BEFORE UPDATE OR DELETE ON {t} "
                    "FOR EACH ROW EXECUTE FUNCTION careloop_audit_append_only()"
                )
            if f"{t}_no_truncate" not in existing:
                conn.exec_driver_sql(
                    f"CREATE TRIGGER {t}_no_truncate BEFORE TRUNCATE ON {t} "
                    "FOR EACH STATEMENT EXECUTE FUNCTION careloop_audit_append_only()"
                )

    def grant_app_role(self, role: str) -> None:
        """PostgreSQL: let ``role`` (the service's database role) SELECT and INSERT on the audit tables and nothing
        else (checklist A-04: no UPDATE, DELETE or TRUNCATE privilege, on top of the triggers). Run it as the
        tables' owner; purges then need the owner's role."""
        if self.store.dialect != "postgresql":
            raise AuditError("grant_app_role is for PostgreSQL (SQLite has no roles)")
        if not role.replace("_", "").isalnum():
            raise AuditError(f"role must be a plain identifier, not {role!r}")
        with self.store.transaction(write=True) as conn:
            for t in APPEND_ONLY_TABLES:
                conn.exec_driver_sql(f"REVOKE ALL ON {t} FROM {role}")
                conn.exec_driver_sql(f"GRANT SELECT, INSERT ON {t} TO {role}")

    # ------------------------------------------------------------------ appending
    def lock_in(self, conn: Connection) -> None:
        """Take the append lock in the caller's write transaction now (it is held to its end), so that a caller
        with its own checks to make before appending makes them serialised with other appenders."""
        self._lock(conn)

    def _lock(self, conn: Connection) -> None:
        if self.store.dialect == "postgresql":
            conn.execute(text("SELECT pg_advisory_xact_lock(:k)"), {"k": PG_LOCK_AUDIT})

    @staticmethod
    def _head(conn: Connection) -> tuple[int, str]:
        row = conn.execute(_HEAD).first()
        if row is not None:
            return int(row[0]), row[1]
        anchor = conn.execute(
            select(anchor_table.c.upto_seq, anchor_table.c.entry_hash).order_by(anchor_table.c.upto_seq.desc())
            .limit(1)
        ).first()
        return (int(anchor[0]), anchor[1]) if anchor is not None else (0, GENESIS)

    def append(self, event: dict) -> dict:
        """Append one AuditEvent; returns {"seq", "hash", "prev"}."""
        return self.append_many([event])[0]

    def append_many(self, events: list[dict]) -> list[dict]:
        """Append several AuditEvents in one transaction (e.g. one per patient of a batch), in order."""
        prepared = self.prepare(events)  # validation and serialisation outside the lock
        if not prepared:
            return []
        with self.store.transaction(write=True) as conn:
            return self.append_prepared(conn, prepared)

    @staticmethod
    def prepare(events: list[dict]) -> list[tuple[str, dict]]:
        """Validate and serialise AuditEvents (AuditContentError for one the log refuses), before any lock."""
        return [_prepare(e) for e in events]

    def append_prepared(self, conn: Connection, prepared: list[tuple[str, dict]]) -> list[dict]:
        """Chain and insert prepared events inside a write transaction the caller holds (the service's group
        commit puts the records of many calls in one transaction)."""
        if not prepared:
            return []
        out: list[dict] = []
        self._lock(conn)
        seq, prev = self._head(conn)
        rows = []
        for canonical, summary in prepared:
            seq += 1
            h = entry_hash(prev, seq, canonical)
            rows.append({"seq": seq, **_columns(summary), "event": canonical, "prev_hash": prev, "entry_hash": h})
            out.append({"seq": seq, "hash": h, "prev": prev})
            prev = h
        conn.execute(insert(audit_table), rows)
        if self.signing_key is not None and self.checkpoint_every:
            for rec in out:
                if rec["seq"] % self.checkpoint_every == 0:
                    self._insert_checkpoint(conn, rec["seq"], rec["hash"])
        return out

    def _insert_checkpoint(self, conn: Connection, seq: int, hash_: str) -> dict:
        signed_at = now_utc()
        signature = self.signing_key.sign(_sign_message(seq, hash_, signed_at)).hex()
        row = {
            "seq": seq,
            "entry_hash": hash_,
            "signed_at": signed_at,
            "key_id": _key_id(self.signing_key.public_key()),
            "signature": signature,
        }
        conn.execute(insert(checkpoint_table), [row])
        return row

    def checkpoint(self) -> dict | None:
        """Sign the current head (seq, entry_hash) with the signing key now; None when the log is empty."""
        if self.signing_key is None:
            raise AuditError("checkpoint needs a signing_key (an Ed25519 private key)")
        with self.store.transaction(write=True) as conn:
            self._lock(conn)
            seq, hash_ = self._head(conn)
            if seq == 0:
                return None
            c = checkpoint_table.c
            done = conn.execute(select(checkpoint_table).where(c.seq == seq, c.entry_hash == hash_)).mappings().first()
            return dict(done) if done is not None else self._insert_checkpoint(conn, seq, hash_)

    def checkpoint_count(self) -> int:
        """How many signed checkpoints the log holds."""
        with self.store.transaction(write=False) as conn:
            return int(conn.execute(select(func.count()).select_from(checkpoint_table)).scalar_one())

    def head(self) -> dict:
        """{"seq", "hash", "recorded"} of the newest record (seq 0, the genesis hash and None when empty): what an
        auditor keeps outside the database, to verify later with `expect`."""
        with self.store.transaction(write=False) as conn:
            seq, hash_ = self._head(conn)
            recorded = conn.execute(select(_RAW_RECORDED).where(audit_table.c.seq == seq)).scalar_one_or_none()
        return {"seq": seq, "hash": hash_, "recorded": _stored_instant(recorded)}  # (None if not a time: altered)

    # ------------------------------------------------------------------ verification
    def verify(self, *, verify_key: Any = None, batch: int = 2000,
               expect: tuple[int, str, datetime | None] | None = None) -> VerifyResult:
        """Walk the whole chain (from genesis, or from the last retention anchor) and report the first record that
        was edited, deleted, inserted or reordered; also check signed checkpoints and retention anchors.

        Everything here lives in the database, so someone with its rights (triggers dropped) can cut the tail
        together with its checkpoints, or forge an anchor and delete what it covers. `expect=(seq, entry_hash,
        recorded)`, a head an earlier verification reported and the auditor kept outside the database, closes that:
        the record must still be there with that hash, unless a retention purge removed it, which it may only once
        the record is 183 days old."""
        key = verify_key if verify_key is not None else self.verify_key
        with self.store.transaction(write=False, snapshot=True) as conn:
            anchors = conn.execute(select(anchor_table).order_by(anchor_table.c.upto_seq)).mappings().all()
            cps = conn.execute(select(checkpoint_table).order_by(checkpoint_table.c.seq)).mappings().all()
            start_seq, start_prev = 1, GENESIS
            for a in anchors:
                days = max(a["minimum_days"], MIN_RETENTION_DAYS)
                if a["purged_at"] - a["last_recorded"] < timedelta(days=days):
                    return VerifyResult(False, 0, a["upto_seq"], f"retention anchor at record {a['upto_seq']} "
                                        f"purged records younger than {MIN_RETENTION_DAYS} days")
            if anchors:
                start_seq, start_prev = anchors[-1]["upto_seq"] + 1, anchors[-1]["entry_hash"]
                if expect is not None and 0 < expect[0] < start_seq:
                    seen = expect[2]
                    if seen is None or seen > now_utc() - timedelta(days=MIN_RETENTION_DAYS):
                        return VerifyResult(False, 0, expect[0], f"record {expect[0]}, the head an earlier "
                                            "verification saw, is under a retention anchor, but no purge may remove "
                                            f"a record younger than {MIN_RETENTION_DAYS} days")
                    if expect[0] == start_seq - 1 and expect[1] != start_prev:
                        return VerifyResult(False, 0, expect[0], f"record {expect[0]}, the head an earlier "
                                            "verification saw, is not the record the retention anchor holds")
            left = conn.execute(select(func.min(audit_table.c.seq)).where(
                audit_table.c.seq < start_seq)).scalar_one_or_none()
            if left is not None:  # nothing may lie before where the walk starts, or it escapes it (and not a report)
                return VerifyResult(False, 0, left, (
                    f"record {left} is still there below the retention anchor at record {start_seq - 1}: the anchor "
                    "was not made by a purge") if anchors else (
                    f"record {left} lies before the chain's first record (seq 1): inserted"))
            if anchors and start_seq > 1 and not _purge_recorded(conn, anchors[-1]):  # (one at 0 covers nothing)
                return VerifyResult(False, 0, start_seq - 1, f"the retention anchor at record {start_seq - 1} was "
                                    "not made by a purge: no audit-purge record in the chain names it")
            if expect is not None and expect[:2] != (0, GENESIS) and expect[0] >= start_seq:
                # (the empty log's head always holds; one a purge removed was checked above)
                seq, hash_ = expect[:2]
                row = conn.execute(select(audit_table.c.entry_hash).where(audit_table.c.seq == seq)).first()
                if row is None or row[0] != hash_:
                    return VerifyResult(False, 0, seq, f"record {seq}, the head an earlier verification saw, is "
                                        + ("gone" if row is None else "not the record it saw (another hash)"))
            checkpoints: dict[int, str] = {}
            for cp in cps:
                if key is not None and not self._signature_ok(key, cp):
                    return VerifyResult(False, 0, cp["seq"], f"checkpoint at record {cp['seq']} has an invalid "
                                        "signature (forged or made with another key)")
                if cp["seq"] < start_seq:
                    if anchors and cp["seq"] == start_seq - 1 and cp["entry_hash"] != start_prev:
                        return VerifyResult(False, 0, start_seq, "the retention anchor disagrees with the "
                                            f"checkpoint at record {cp['seq']}")
                    continue
                if checkpoints.get(cp["seq"], cp["entry_hash"]) != cp["entry_hash"]:
                    return VerifyResult(False, 0, cp["seq"], f"two checkpoints at record {cp['seq']} disagree")
                checkpoints[cp["seq"]] = cp["entry_hash"]
            rows = conn.execution_options(stream_results=True, yield_per=batch).execute(
                select(*_RAW_COLUMNS).where(audit_table.c.seq >= start_seq).order_by(audit_table.c.seq)
            ).mappings()
            return _walk(rows, start_seq=start_seq, start_prev=start_prev, checkpoints=checkpoints,
                         recorded_form=_recorded_form(conn.dialect))

    @staticmethod
    def _signature_ok(key: Any, cp: Any) -> bool:
        from cryptography.exceptions import InvalidSignature

        if cp["key_id"] != _key_id(key):
            return False
        try:
            key.verify(bytes.fromhex(cp["signature"]), _sign_message(cp["seq"], cp["entry_hash"], cp["signed_at"]))
        except (InvalidSignature, ValueError):
            return False
        return True

    # ------------------------------------------------------------------ report and export (ONC (d)(3))
    def _select(self, start: datetime | None, end: datetime | None, patient: str | None,
                kind: str | None, client: str | None) -> Iterator[dict]:
        a = audit_table.c
        q = select(*_RAW_COLUMNS).order_by(a.seq)  # (recorded is read from the event)
        if start is not None:
            q = q.where(a.recorded >= utc(start, "start"))
        if end is not None:
            q = q.where(a.recorded < utc(end, "end"))
        if patient is not None:
            q = q.where(a.patient == patient.removeprefix("Patient/"))
        if kind is not None:
            q = q.where(a.kind == kind)
        if client is not None:
            q = q.where(a.client == client)
        with self.store.transaction(write=False) as conn:
            rows = conn.execute(q).mappings().all()
        for r in rows:
            try:
                event = json.loads(r["event"])
                summary = summarize(event)
            except Exception:  # not JSON, or not an AuditEvent as the log writes it: only an altered log holds one
                raise AuditError(f"audit record {r['seq']} is malformed (its event is not an AuditEvent as the log "
                                 "writes it): the log was altered; `careloop audit verify` names the first bad "
                                 "record") from None
            yield {
                **summary,
                "seq": r["seq"],
                "prev_hash": r["prev_hash"],
                "entry_hash": r["entry_hash"],
                "event": event,
            }

    def records(
        self,
        start: datetime | None = None,
        end: datetime | None = None,
        patient: str | None = None,
        sort: str = "seq",
        *,
        kind: str | None = None,
        client: str | None = None,
        limit: int | None = None,
    ) -> list[dict]:
        """The audit report: records with ``start <= recorded < end`` (either bound optional), optionally for one
        patient, kind or client, sorted by any recorded field (``sort="-score"`` for descending; ties by seq;
        missing values last). Each record: seq, recorded, kind, action, outcome, client, network, user, patient,
        service, hook_instance, jti, request_id, model_hash, input_digest, score, cards, deferral_reason, detail,
        prev_hash, entry_hash and the AuditEvent itself (``event``)."""
        field, descending = sort.removeprefix("-"), sort.startswith("-")
        if field not in SORT_FIELDS:
            raise AuditError(f"cannot sort by {field!r}: choose one of {', '.join(SORT_FIELDS)}")
        recs = list(self._select(start, end, patient, kind, client))
        recs.sort(key=lambda r: r["seq"])

        def key(r: dict) -> Any:
            v = r[field]
            return canonical_json(v) if isinstance(v, list | dict) else v

        present = [r for r in recs if r[field] is not None]
        missing = [r for r in recs if r[field] is None]
        present.sort(key=key, reverse=descending)
        out = present + missing
        return out[:limit] if limit is not None else out

    def export_bundle(
        self,
        start: datetime | None = None,
        end: datetime | None = None,
        patient: str | None = None,
        sort: str = "seq",
        *,
        kind: str | None = None,
        client: str | None = None,
    ) -> dict:
        """A FHIR Bundle (type collection) of the selected AuditEvents. Each resource gets ``id`` audit-<seq> and
        a ``meta.extension`` carrying seq, prevHash and entryHash, so that :meth:`verify_bundle` can re-check
        every record (and the links between consecutive ones) away from the database. The Bundle's own
        ``meta.extension`` says how many records it holds, whether a filter selected them, and the log's head when
        it was made: an unfiltered export must run without a gap up to that head, so an entry removed from it (or
        its tail cut) is found too. (A file can still be rewritten whole: keep the head outside, as for `verify`.)"""
        head = self.head()
        filtered = any(x is not None for x in (start, end, patient, kind, client))
        entries = []
        for r in self.records(start, end, patient, sort, kind=kind, client=client):
            if r["seq"] > head["seq"]:
                continue  # appended while the export was made: the next one has it
            resource = {
                "resourceType": "AuditEvent",
                "id": f"audit-{r['seq']}",
                "meta": {"extension": [{
                    "url": CHAIN_EXTENSION,
                    "extension": [
                        {"url": "seq", "valueInteger": r["seq"]},
                        {"url": "prevHash", "valueString": r["prev_hash"]},
                        {"url": "entryHash", "valueString": r["entry_hash"]},
                    ],
                }]},
                **{k: v for k, v in r["event"].items() if k != "resourceType"},
            }
            entries.append({
                "fullUrl": f"urn:uuid:{uuidlib.uuid5(uuidlib.NAMESPACE_URL, CHAIN_EXTENSION + r['entry_hash'])}",
                "resource": resource,
            })
        return {
            "resourceType": "Bundle",
            "id": str(uuidlib.uuid4()),
            "meta": {"extension": [{"url": CHAIN_EXTENSION, "extension": [
                {"url": "count", "valueInteger": len(entries)},
                {"url": "filtered", "valueBoolean": filtered},
                {"url": "headSeq", "valueInteger": head["seq"]},
                {"url": "headHash", "valueString": head["hash"]},
            ]}]},
            "type": "collection",
            "timestamp": iso_z(now_utc()),
            "entry": entries,
        }

    @staticmethod
    def verify_bundle(bundle: dict, *, completeness: bool = True,
                      expect: tuple[int, str] | None = None) -> VerifyResult:
        """Re-check an exported Bundle: every record against its entryHash, and prevHash links between records
        with consecutive seqs (a filtered export has gaps, which are not errors: `gaps` lists them); the count of
        records the export says it holds; and for an unfiltered export, no gap up to the head the log had when it
        was made. An export that does not say those (its Bundle meta has no audit-chain extension) fails unless
        ``completeness=False``. ``expect=(seq, entry_hash)``, a head kept outside the database (as for `verify`): the
        export must hold that record with that hash."""
        if not isinstance(bundle, dict) or bundle.get("resourceType") != "Bundle":
            return VerifyResult(False, 0, None, "not a FHIR Bundle")
        entries = bundle.get("entry") or []
        if not isinstance(entries, list):
            return VerifyResult(False, 0, None, "the Bundle's entry is not a list")
        rows = []
        for i, entry in enumerate(entries):
            try:
                resource = dict(entry.get("resource") or {})
                meta = resource.pop("meta", None) or {}
                resource.pop("id", None)
                values = _chain_values(meta)
            except (AttributeError, TypeError, ValueError):
                return VerifyResult(False, 0, None, f"entry {i} is malformed (not an AuditEvent as exported)")
            if values is None:
                return VerifyResult(False, 0, None, f"entry {i} carries no audit-chain extension")
            rows.append({"seq": values.get("seq"), "prev_hash": values.get("prevHash"),
                         "entry_hash": values.get("entryHash"), "event": canonical_json(resource)})
        rows.sort(key=lambda r: r["seq"] if isinstance(r["seq"], int) else -1)
        last = None
        for n, r in enumerate(rows):
            if not isinstance(r["seq"], int):
                return VerifyResult(False, n, None, "an entry has no integer seq")
            if entry_hash(r["prev_hash"], r["seq"], r["event"]) != r["entry_hash"]:
                return VerifyResult(False, n, r["seq"], f"record {r['seq']} does not match its entryHash: edited")
            if last is not None and last["seq"] == r["seq"]:
                return VerifyResult(False, n, r["seq"], f"record {r['seq']} appears twice")
            if last is not None and last["seq"] == r["seq"] - 1 and last["entry_hash"] != r["prev_hash"]:
                return VerifyResult(False, n, r["seq"], f"record {r['seq']} does not chain to record {last['seq']}")
            last = r
        gaps = tuple((a["seq"], b["seq"]) for a, b in itertools.pairwise(rows) if b["seq"] > a["seq"] + 1)
        result = _export_complete(bundle, rows, completeness=completeness)
        if result.ok and expect is not None:
            held = _export_holds(rows, expect)  # (a VerifyResult is false when it fails: no `or` here)
            result = held if held is not None else result
        return replace(result, gaps=gaps)

    # ------------------------------------------------------------------ retention
    def purge(
        self,
        before: datetime,
        *,
        minimum_days: int = MIN_RETENTION_DAYS,
        by: str = "retention",
        now: datetime | None = None,
    ) -> int:
        """Delete the longest prefix of the chain whose records were all recorded before ``before``, leaving a
        retention anchor. Refuses (AuditError) when ``before`` is less than ``minimum_days`` ago, and a
        ``minimum_days`` below 183 is a configuration error. Never deletes the newest record, nor a prefix that
        does not verify. Returns the number of records deleted; appends an admin-change event saying so."""
        if not isinstance(minimum_days, int) or minimum_days < MIN_RETENTION_DAYS:
            raise ConfigError(f"audit retention minimum_days must be at least {MIN_RETENTION_DAYS} (EU AI Act "
                              f"Arts 19, 26(6): six months), not {minimum_days!r}")
        now = utc(now, "now") if now is not None else now_utc()
        before = utc(before, "before")
        if before > now - timedelta(days=minimum_days):
            raise AuditError(f"refusing to purge audit records younger than {minimum_days} days "
                             f"(before {iso_z(before)} is later than {iso_z(now - timedelta(days=minimum_days))})")
        a = audit_table.c
        with self.store.transaction(write=True) as conn:
            self._lock(conn)
            head, _ = self._head(conn)
            anchor = conn.execute(
                select(anchor_table).order_by(anchor_table.c.upto_seq.desc()).limit(1)
            ).mappings().first()
            start_seq = anchor["upto_seq"] + 1 if anchor else 1
            start_prev = anchor["entry_hash"] if anchor else GENESIS
            first_young = conn.execute(
                select(a.seq).where(a.recorded >= before, a.seq >= start_seq).order_by(a.seq).limit(1)
            ).scalar_one_or_none()
            upto = min(head - 1, (first_young - 1) if first_young is not None else head)
            if upto < start_seq:
                return 0
            rows = conn.execute(
                select(*_RAW_COLUMNS).where(a.seq >= start_seq, a.seq <= upto + 1).order_by(a.seq)
            ).mappings().all()
            check = _walk(rows, start_seq=start_seq, start_prev=start_prev, recorded_form=_recorded_form(conn.dialect))
            if not check.ok:
                raise AuditError(f"refusing to purge: the records to purge do not verify ({check.reason})")
            last = rows[upto - start_seq]
            conn.execute(insert(anchor_table), [{
                "upto_seq": upto,
                "entry_hash": last["entry_hash"],
                "last_recorded": max(_stored_instant(r["recorded"]) for r in rows[: upto - start_seq + 1]),
                "purged_at": now,
                "minimum_days": minimum_days,
                "purged_by": by,
            }])
            deleted = conn.execute(audit_table.delete().where(a.seq <= upto)).rowcount
            # in the same transaction: the chain itself names the anchor (its seq and hash), so an anchor without
            # its record (one inserted to let old records be deleted unseen) fails verify, and a purge is never
            # left unrecorded
            self.append_prepared(conn, self.prepare([audit_event(
                kind="admin-change", outcome="success", user=None, client=None,
                detail={"action": "audit-purge", "upto_seq": upto, "count": deleted, "by": by,
                        "anchor_hash": last["entry_hash"]})]))
        return deleted
