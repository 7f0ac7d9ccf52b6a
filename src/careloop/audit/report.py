"""The audit report for governance staff (ONC 170.315(d)(3)), apart from its rendering: the records of a time range
as flat rows (`flat`), written as CSV (`write_csv`), and the time bounds as a person types them (`parse_bound`).

`careloop audit report` prints or writes these rows, `careloop audit export` the FHIR Bundle of the AuditEvents
themselves (`AuditLog.export_bundle`), and both append an `export` event saying who read how many records: reading
the audit log is itself audited, and the report never includes its own event.
"""

from __future__ import annotations

import csv
from datetime import UTC, date, datetime
from pathlib import Path
from typing import Any

from careloop.audit.event import FIELDS, audit_event
from careloop.audit.log import AuditError, AuditLog
from careloop.state import iso_z

COLUMNS = (*FIELDS, "prev_hash", "entry_hash")  # every recorded field, the chain's hashes last
SCREEN = ("seq", "recorded", "kind", "outcome", "client", "user", "patient", "score", "cards", "deferral_reason",
          "detail")
SCREEN_WIDTHS = {  # the most characters of each column of the printed table; longer values end in an ellipsis
    "seq": 9, "recorded": 19, "kind": 12, "outcome": 7, "client": 28, "user": 22, "patient": 16, "score": 5,
    "cards": 16, "deferral_reason": 32, "detail": 40}


def parse_bound(text: str, flag: str) -> datetime:
    """`2026-11-01` (midnight UTC) or an ISO 8601 date-time; one without a zone is taken as UTC."""
    try:
        if len(text) == 10:
            d = date.fromisoformat(text)
            return datetime(d.year, d.month, d.day, tzinfo=UTC)
        value = datetime.fromisoformat(text.replace("Z", "+00:00"))
    except ValueError:
        raise AuditError(f"{flag}: {text!r} is not a date (YYYY-MM-DD) or an ISO 8601 date-time") from None
    return value.replace(tzinfo=UTC) if value.tzinfo is None else value.astimezone(UTC)


def _cell(value: Any) -> Any:
    if isinstance(value, datetime):
        return iso_z(value)
    if isinstance(value, list):
        return " ".join(str(v) for v in value)
    if isinstance(value, dict):
        return " ".join(f"{k}={v}" for k, v in sorted(value.items()))
    return value


def flat(record: dict) -> dict[str, Any]:
    """One report row: every recorded field as text or a number (cards space-separated, detail as key=value)."""
    return {c: _cell(record.get(c)) for c in COLUMNS}


def write_csv(records: list[dict], path: Path) -> None:
    with path.open("w", newline="", encoding="utf-8") as f:
        w = csv.DictWriter(f, fieldnames=COLUMNS)
        w.writeheader()
        w.writerows(flat(r) for r in records)


def audit_the_reading(log: AuditLog, action: str, records: list[dict], by: str, fmt: str) -> None:
    """Append the `export` event of a report or an export: who, how many records and patients, in which format."""
    patients = {r["patient"] for r in records if r.get("patient")}
    log.append(audit_event(kind="export", outcome="success", detail={
        "action": action, "by": by, "count": len(records), "patients": len(patients), "format": fmt}))


__all__ = ["COLUMNS", "SCREEN", "SCREEN_WIDTHS", "audit_the_reading", "flat", "parse_bound", "write_csv"]
