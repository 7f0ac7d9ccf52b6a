"""Functions run in child processes by the cross-process race tests. Each puts ("ok", result) or ("error", text)
on ``out``, so that a failing worker fails the test at once instead of leaving the parent waiting."""

from __future__ import annotations

import traceback
from datetime import UTC, datetime, timedelta


def claim_many(url: str, jtis: list[str], barrier, out) -> None:
    """Claim every jti once, after all processes are ready; report the jtis this process won."""
    try:
        from careloop.state import StateStore

        store = StateStore(url)
        try:
            exp = datetime.now(UTC) + timedelta(minutes=5)
            barrier.wait(timeout=60)
            out.put(("ok", [j for j in jtis if store.claim_jti("https://ehr.example", j, exp)]))
        finally:
            store.close()
    except BaseException:
        out.put(("error", traceback.format_exc()))


def append_many(url: str, n: int, tag: str, barrier, out) -> None:
    """Append n audit events one by one, after all processes are ready; report the seqs obtained."""
    try:
        from careloop.audit import AuditLog, audit_event

        log = AuditLog.open(url)
        try:
            barrier.wait(timeout=60)
            seqs = [
                log.append(audit_event(kind="cds-call", outcome="success", client=tag, patient=f"{tag}-{i}"))["seq"]
                for i in range(n)
            ]
            out.put(("ok", seqs))
        finally:
            log.close()
    except BaseException:
        out.put(("error", traceback.format_exc()))


def set_thresholds(url: str, n: int, value: float, barrier, out) -> None:
    """Set the same model's threshold to `value` n times, after all processes are ready; report the versions."""
    try:
        from careloop.state import StateStore

        store = StateStore(url)
        try:
            barrier.wait(timeout=60)
            out.put(("ok", [store.set_threshold("model-race", value, by=f"admin-{value}") for _ in range(n)]))
        finally:
            store.close()
    except BaseException:
        out.put(("error", traceback.format_exc()))


def take_many(url: str, n: int, barrier, out) -> None:
    """Try to take n tokens from one shared bucket (burst 30, no refill to speak of); report how many were had."""
    try:
        from careloop.state import StateStore

        store = StateStore(url)
        try:
            barrier.wait(timeout=60)
            out.put(("ok", [sum(store.take_token("feedback|race", per_s=1e-6, burst=30) == 0 for _ in range(n))]))
        finally:
            store.close()
    except BaseException:
        out.put(("error", traceback.format_exc()))


def collect(out, workers) -> list:
    """Every worker's result, flattened; raises AssertionError with the first worker's traceback on error."""
    results = []
    for _ in workers:
        status, value = out.get(timeout=120)
        assert status == "ok", value
        results.extend(value)
    for w in workers:
        w.join(timeout=30)
        assert w.exitcode == 0
    return results
