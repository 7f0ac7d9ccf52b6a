"""Helpers for the audit tests: events to append, and tampering as an attacker with DBA rights."""

from collections.abc import Iterator
from contextlib import contextmanager
from datetime import UTC, datetime, timedelta

import sqlalchemy as sa

from careloop.audit import audit_event
from careloop.state import normalize_url

T0 = datetime(2025, 3, 1, 8, 0, tzinfo=UTC)
AUDIT_TABLES = ("careloop_audit", "careloop_audit_checkpoint", "careloop_audit_anchor")


def make_events(n: int, t0: datetime = T0, *, patients: int = 10) -> list[dict]:
    """n cds-call events one second apart, cycling over ``patients`` patients, with varied scores and outcomes."""
    out = []
    for i in range(n):
        out.append(audit_event(
            kind="cds-call" if i % 7 else "feedback",
            outcome="success" if i % 11 else "serious",
            client=f"https://ehr{i % 3}.example/iss",
            patient=f"p{i % patients}",
            hook_instance=f"hook-{i}",
            jti=f"jti-{i}",
            request_id=f"req-{i}",
            model_hash="b" * 64,
            input_digest=f"sha256:{i:064x}",
            score=round((i * 37 % 100) / 100, 2),
            cards=[{"uuid": f"card-{i}", "indicator": "warning" if i % 2 else "info"}],
            deferral_reason=None if i % 5 else "missing-inputs",
            service="readmission-risk",
            user=f"Practitioner/{i % 4}" if i % 3 else None,
            recorded=t0 + timedelta(seconds=i),
        ))
    return out


@contextmanager
def tampering(url: str) -> Iterator[sa.Connection]:
    """A connection to the audit database with the append-only triggers out of the way, committed on exit.

    The app cannot do this through its own code paths: the triggers abort UPDATE and DELETE. A DBA (or anyone
    with write access to the SQLite file) can drop or disable them, which is what these tests simulate; the hash
    chain must then still expose the change. SQLite: the triggers are dropped (the next AuditLog() recreates
    them). PostgreSQL: ALTER TABLE ... DISABLE TRIGGER USER (table owner or superuser), re-enabled on exit."""
    engine = sa.create_engine(normalize_url(url))
    try:
        with engine.begin() as conn:
            if engine.dialect.name == "sqlite":
                for (name,) in conn.exec_driver_sql(
                    "SELECT name FROM sqlite_master WHERE type = 'trigger' AND tbl_name LIKE 'careloop_audit%'"
                ).all():
                    conn.exec_driver_sql(f"DROP TRIGGER {name}")
            else:
                for t in AUDIT_TABLES:
                    conn.exec_driver_sql(f"ALTER TABLE {t} DISABLE TRIGGER USER")
            yield conn
            if engine.dialect.name == "postgresql":
                for t in AUDIT_TABLES:
                    conn.exec_driver_sql(f"ALTER TABLE {t} ENABLE TRIGGER USER")
    finally:
        engine.dispose()
