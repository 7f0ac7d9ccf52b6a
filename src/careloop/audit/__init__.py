"""The service's audit log: FHIR R4 AuditEvents (IHE BALP shape) in an append-only, hash-chained table.

    log = AuditLog(store)                       # or AuditLog.open("sqlite:///state.db")
    log.append(audit_event(kind="cds-call", outcome="success", client=iss, patient="123", ...))
    log.verify()                                # VerifyResult(ok, checked, first_bad, reason)
    log.records(start, end, patient=None, sort="recorded")
    log.export_bundle(start, end)               # FHIR Bundle (collection)

See :mod:`careloop.audit.log` for the chain, the triggers and retention, and :mod:`careloop.audit.event` for
what an event may hold (identifiers; never tokens, names or free text).
"""

from careloop.audit.event import AuditContentError, audit_event, find_secret, summarize
from careloop.audit.log import (
    GENESIS,
    MIN_RETENTION_DAYS,
    AuditError,
    AuditLog,
    VerifyResult,
    entry_hash,
    missing_log,
)

__all__ = [
    "GENESIS",
    "MIN_RETENTION_DAYS",
    "AuditContentError",
    "AuditError",
    "AuditLog",
    "VerifyResult",
    "audit_event",
    "entry_hash",
    "find_secret",
    "missing_log",
    "summarize",
]
