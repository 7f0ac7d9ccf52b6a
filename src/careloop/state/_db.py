"""Engine plumbing shared by the state store and the audit log: URLs, SQLite transaction modes, UTC times, upserts.

SQLite: pysqlite's own transaction handling is switched off (``isolation_level = None``) and careloop issues
``BEGIN`` itself, ``BEGIN IMMEDIATE`` for every write, so that a write transaction takes the database's write
lock up front (no deferred-to-write upgrade that fails with SQLITE_BUSY) and writers from other threads and
processes queue on ``busy_timeout``. Files use WAL; ``sqlite://`` (memory) is one shared connection behind a lock.

PostgreSQL: ``postgresql://`` URLs are mapped to the psycopg 3 driver (the only PostgreSQL driver careloop installs);
READ COMMITTED; a connection pool.
"""

from __future__ import annotations

import json
import math
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from sqlalchemy import DateTime, Table, event
from sqlalchemy.dialects import postgresql as pg_dialect
from sqlalchemy.dialects import sqlite as sqlite_dialect
from sqlalchemy.engine import Connection, Engine, make_url
from sqlalchemy.pool import StaticPool
from sqlalchemy.types import TypeDecorator

from careloop.errors import CareloopError


class StateError(CareloopError):
    """The state store cannot do what was asked: a bad URL or argument, or a database that refuses."""


BEGIN_OPTION = "careloop_begin"  # execution option read by the SQLite "begin" listener: "IMMEDIATE" or "DEFERRED"


_SCHEMES = {  # the URL schemes careloop opens, and the driver each one uses (the drivers careloop installs)
    "sqlite": "sqlite",
    "sqlite+pysqlite": "sqlite+pysqlite",
    "postgresql": "postgresql+psycopg",
    "postgres": "postgresql+psycopg",
    "postgresql+psycopg": "postgresql+psycopg",
}
_USE = "use sqlite:///PATH, sqlite:// or postgresql://USER@HOST:PORT/DB"


def normalize_url(url: str) -> str:
    """The URL as SQLAlchemy opens it: ``postgresql://`` and ``postgres://`` use psycopg 3, SQLite URLs pass.

    StateError (naming the URL without its password) for anything else: another database, a driver careloop does
    not install (``+asyncpg``, ``+psycopg2``, ``+pg8000``, ...), a URL that does not parse or a port outside
    1-65535.
    """
    if not isinstance(url, str) or not url:
        raise StateError("state store URL must be a non-empty string such as sqlite:///state.db or postgresql://...")
    scheme, sep, rest = url.partition("://")
    driver = _SCHEMES.get(scheme.lower()) if sep else None
    if driver is None:
        if sep and scheme.lower().split("+", 1)[0] in ("sqlite", "postgresql", "postgres"):
            raise StateError(f"unsupported database driver in state store URL {masked(url)!r}: careloop installs "
                             f"only pysqlite and psycopg 3; {_USE}")
        raise StateError(f"unsupported state store URL {masked(url)!r}: {_USE}")
    given, url = url, f"{driver}://{rest}"
    try:
        port = make_url(url).port
    except Exception:  # SQLAlchemy's ArgumentError, or ValueError from a port that is not a number
        raise StateError(f"state store URL {scheme}://... does not parse: a port must be a number, and a user name "
                         "or password holding @ : / ? # or % must be percent-encoded") from None
    if port is not None and not 0 < port < 65536:
        raise StateError(f"state store URL {masked(given)!r}: port {port} is not between 1 and 65535")
    return url


def is_memory(url: str) -> bool:
    """Whether a state store URL names an in-memory SQLite database (``sqlite://``, ``sqlite:///:memory:``, a
    ``file::memory:`` or ``mode=memory`` URI): one private to a process and gone when it exits."""
    parsed = make_url(normalize_url(url))
    if parsed.get_backend_name() != "sqlite":
        return False
    database = parsed.database or ""
    uri = parsed.query.get("uri") == "true"
    return database in ("", ":memory:") or database.startswith("file::memory:") or (
        uri and parsed.query.get("mode") == "memory")


def masked(url: str) -> str:
    """The URL with its password hidden, for messages and logs."""
    try:
        parsed = make_url(url)
        if "password" in parsed.query:  # libpq also takes the password as a query parameter
            parsed = parsed.update_query_dict({"password": "***"})
        return parsed.render_as_string(hide_password=True)
    except Exception:  # not a URL at all: show only its scheme
        return url.split(":", 1)[0] + ":..."


def create_engine_for(url: str, *, pool_size: int, max_overflow: int, sqlite_synchronous: str) -> Engine:
    from sqlalchemy import create_engine

    url = normalize_url(url)
    parsed = make_url(url)
    if parsed.get_backend_name() == "sqlite":
        database = parsed.database or ""
        memory = is_memory(url)
        if memory:
            engine = create_engine(url, poolclass=StaticPool, connect_args={"check_same_thread": False})
        else:
            Path(database).expanduser().resolve().parent.mkdir(parents=True, exist_ok=True)
            engine = create_engine(
                url,
                pool_size=pool_size,
                max_overflow=max_overflow,
                connect_args={"check_same_thread": False, "timeout": 30},
            )
        _sqlite_listeners(engine, memory=memory, synchronous=sqlite_synchronous)
        return engine
    if parsed.get_backend_name() != "postgresql":
        raise StateError(f"unsupported database {parsed.get_backend_name()!r}: SQLite or PostgreSQL")
    return create_engine(url, pool_size=pool_size, max_overflow=max_overflow, pool_pre_ping=True)


def _sqlite_listeners(engine: Engine, *, memory: bool, synchronous: str) -> None:
    if synchronous.upper() not in ("OFF", "NORMAL", "FULL", "EXTRA"):
        raise StateError(f"sqlite_synchronous must be OFF, NORMAL, FULL or EXTRA, not {synchronous!r}")

    @event.listens_for(engine, "connect")
    def _on_connect(dbapi_conn: Any, _record: Any) -> None:
        dbapi_conn.isolation_level = None  # autocommit at the driver level: the "begin" listener below opens txns
        cur = dbapi_conn.cursor()
        try:
            cur.execute("PRAGMA busy_timeout = 30000")
            if not memory:
                cur.execute("PRAGMA journal_mode = WAL")
            cur.execute(f"PRAGMA synchronous = {synchronous.upper()}")
            cur.execute("PRAGMA foreign_keys = ON")
        finally:
            cur.close()

    @event.listens_for(engine, "begin")
    def _on_begin(conn: Connection) -> None:
        mode = conn.get_execution_options().get(BEGIN_OPTION, "DEFERRED")
        conn.exec_driver_sql("BEGIN IMMEDIATE" if mode == "IMMEDIATE" else "BEGIN")


class UTCDateTime(TypeDecorator):
    """Aware datetimes in, aware UTC datetimes out. PostgreSQL stores timestamptz; SQLite a naive UTC string
    (fixed width, so that string order is time order)."""

    impl = DateTime(timezone=True)
    cache_ok = True

    def process_bind_param(self, value: datetime | None, dialect: Any) -> datetime | None:
        if value is None:
            return None
        value = value.replace(tzinfo=UTC) if value.tzinfo is None else value.astimezone(UTC)
        return value.replace(tzinfo=None) if dialect.name == "sqlite" else value

    def process_result_value(self, value: datetime | None, dialect: Any) -> datetime | None:
        if value is None:
            return None
        return value.replace(tzinfo=UTC) if value.tzinfo is None else value.astimezone(UTC)


def utc(value: datetime, name: str = "time") -> datetime:
    """An aware datetime converted to UTC; a naive one is refused (its zone would be a guess)."""
    if not isinstance(value, datetime):
        raise StateError(f"{name} must be a datetime, not {type(value).__name__}")
    if value.tzinfo is None or value.tzinfo.utcoffset(value) is None:
        raise StateError(f"{name} must be timezone-aware (e.g. datetime.now(UTC)), got a naive datetime")
    try:
        return value.astimezone(UTC)
    except OverflowError:
        raise StateError(f"{name} is out of range once converted to UTC") from None


def now_utc() -> datetime:
    return datetime.now(UTC)


def iso_z(value: datetime) -> str:
    """ISO 8601 in UTC with a ``Z`` and microseconds: ``2024-05-01T10:00:00.000000Z``."""
    return value.astimezone(UTC).strftime("%Y-%m-%dT%H:%M:%S.%fZ")


def parse_instant(text: str, name: str = "timestamp") -> datetime:
    """An ISO 8601 date-time with a zone (``Z`` or an offset), as an aware UTC datetime."""
    if not isinstance(text, str):
        raise StateError(f"{name} must be an ISO 8601 string, not {type(text).__name__}")
    try:
        value = datetime.fromisoformat(text.strip())
    except ValueError:
        raise StateError(f"{name} is not an ISO 8601 date-time") from None  # (values are never quoted back)
    if value.tzinfo is None:
        raise StateError(f"{name} must carry a time zone (Z or +hh:mm)")
    try:
        return value.astimezone(UTC)
    except OverflowError:  # e.g. 9999-12-31T23:59:59-05:00 is past the last instant Python can hold in UTC
        raise StateError(f"{name} is out of range once converted to UTC") from None


def canonical_json(value: Any) -> str:
    """Sorted keys, no whitespace, UTF-8 text kept as is, NaN and infinities refused."""
    try:
        return json.dumps(value, sort_keys=True, separators=(",", ":"), ensure_ascii=False, allow_nan=False)
    except (TypeError, ValueError) as exc:
        raise StateError(f"value is not JSON (finite numbers, strings, lists, objects): {exc}") from None


def finite(value: float | None, name: str) -> float | None:
    if value is None:
        return None
    if isinstance(value, bool) or not isinstance(value, int | float) or not math.isfinite(value):
        raise StateError(f"{name} must be a finite number or None, not {value!r}")
    return float(value)


def upsert(dialect: str, table: Table, values: dict[str, Any], keys: list[str], update: list[str], where: Any = None):
    """``INSERT ... ON CONFLICT (keys) DO UPDATE SET update... [WHERE where]`` in either dialect."""
    insert = pg_dialect.insert if dialect == "postgresql" else sqlite_dialect.insert
    stmt = insert(table).values(**values)
    stmt = stmt.on_conflict_do_update(
        index_elements=[table.c[k] for k in keys],
        set_={k: stmt.excluded[k] for k in update},
        where=where,
    )
    return stmt.execution_options(preserve_rowcount=True)  # callers read rowcount: 1 inserted/updated, 0 not


def insert_ignore(dialect: str, table: Table, values: dict[str, Any]):
    """``INSERT ... ON CONFLICT DO NOTHING`` in either dialect."""
    insert = pg_dialect.insert if dialect == "postgresql" else sqlite_dialect.insert
    return insert(table).values(**values).on_conflict_do_nothing().execution_options(preserve_rowcount=True)
