"""The audit report for governance staff (ONC 170.315(d)(3)), apart from its rendering: the records of a time range
as flat rows (`flat`), written as CSV (`write_csv`), and the time bounds as a person types them (`parse_bound`).

`careloop audit report` prints or writes these rows, `careloop audit export` the FHIR Bundle of the AuditEvents
themselves (`AuditLog.export_bundle`), and both append an `export` event saying who read how many records: reading
the audit log is itself audited, and the report never includes its own event.
"""

from __future__ import annotations

import contextlib
import csv
import errno
import io
import os
import tempfile
from datetime import UTC, date, datetime
from pathlib import Path
from typing import IO, Any

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
    try:
        return value.replace(tzinfo=UTC) if value.tzinfo is None else value.astimezone(UTC)
    except OverflowError:  # 0001-01-01T00:00:00+01:00 is before the first instant Python holds in UTC
        raise AuditError(f"{flag}: {text!r} is out of range once converted to UTC (years 1 to 9999)") from None


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


class WholeFile:
    """A file that appears at `path` whole or not at all: `file` is a temporary file beside it, which `commit` moves
    into place (over an existing file only when `overwrite`) and `discard` (or leaving the `with` block uncommitted)
    deletes. OSError, nothing left behind, when the folder is missing or not writable or `path` is a folder."""

    def __init__(self, path: Path, *, overwrite: bool) -> None:
        if path.is_dir():
            raise IsADirectoryError(errno.EISDIR, os.strerror(errno.EISDIR), str(path))
        self.path, self.overwrite = path, overwrite
        fd, self._tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".part")
        self.file: IO[bytes] = os.fdopen(fd, "wb")
        mask = os.umask(0o077)
        os.umask(mask)
        os.chmod(self._tmp, 0o666 & ~mask)  # the mode a plain open() would have given (mkstemp's is 600)

    def commit(self) -> None:
        self.file.close()
        if self.overwrite:
            os.replace(self._tmp, self.path)
            return
        try:
            os.link(self._tmp, self.path)  # never over a file made meanwhile: FileExistsError
        except FileExistsError:
            raise
        except OSError:  # a file system without hard links
            if self.path.exists():
                raise FileExistsError(errno.EEXIST, os.strerror(errno.EEXIST), str(self.path)) from None
            os.replace(self._tmp, self.path)
        self.discard()

    def discard(self) -> None:
        self.file.close()
        with contextlib.suppress(FileNotFoundError):
            os.unlink(self._tmp)

    def __enter__(self) -> WholeFile:
        return self

    def __exit__(self, *exc: object) -> None:
        self.discard()


def write_csv(records: list[dict], out: Path | IO[bytes]) -> None:
    """The report rows as UTF-8 CSV, to a binary file or to a path (written whole or not at all)."""
    if isinstance(out, Path):
        with WholeFile(out, overwrite=True) as whole:
            write_csv(records, whole.file)
            whole.commit()
        return
    text = io.TextIOWrapper(out, encoding="utf-8", newline="")
    w = csv.DictWriter(text, fieldnames=COLUMNS)
    w.writeheader()
    w.writerows(flat(r) for r in records)
    text.flush()
    text.detach()  # the caller's file stays open


def audit_the_reading(log: AuditLog, action: str, records: list[dict], by: str, fmt: str) -> None:
    """Append the `export` event of a report or an export: who, how many records and patients, in which format."""
    patients = {r["patient"] for r in records if r.get("patient")}
    log.append(audit_event(kind="export", outcome="success", detail={
        "action": action, "by": by, "count": len(records), "patients": len(patients), "format": fmt}))


__all__ = ["COLUMNS", "SCREEN", "SCREEN_WIDTHS", "WholeFile", "audit_the_reading", "flat", "parse_bound", "write_csv"]
