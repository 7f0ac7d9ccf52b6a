"""`careloop audit verify --state URL`: exit 0 on an intact log; non-zero, naming the first bad record, otherwise."""

from __future__ import annotations

import json

import pytest
import sqlalchemy as sa
from typer.testing import CliRunner

from careloop.audit import AuditLog, audit_event
from careloop.cli import app
from tests.audit.helpers import tampering
from tests.pg import database_url_fixture

db_url = database_url_fixture()  # a fresh SQLite file and a fresh PostgreSQL database for each test


def _log(url: str, n: int = 20) -> None:
    log = AuditLog.open(url)
    for i in range(n):
        log.append(audit_event(kind="cds-call", outcome="success", client="https://ehr.example", patient=f"p{i}",
                               hook_instance=f"h{i}", jti=f"j{i}", request_id=None, model_hash="ab" * 32,
                               input_digest="cd" * 32, score=0.1 * (i % 10), cards=None, deferral_reason=None))


def verify(url: str):
    res = CliRunner().invoke(app, ["audit", "verify", "--state", url, "--json"])
    return res.exit_code, json.loads(res.output)


@pytest.mark.parametrize("attack", ["edit", "delete", "swap"])
def test_altered_log_is_detected_and_named(db_url, attack):
    state_url = db_url
    _log(state_url)
    code, doc = verify(state_url)
    assert code == 0 and doc["ok"] and doc["checked"] == 20
    with tampering(state_url) as con:
        if attack == "edit":
            con.execute(sa.text("UPDATE careloop_audit SET event = replace(event, 'p7', 'p8') WHERE seq = 8"))
        elif attack == "delete":
            con.execute(sa.text("DELETE FROM careloop_audit WHERE seq = 8"))
        else:
            con.execute(sa.text("UPDATE careloop_audit SET seq = -8 WHERE seq = 8"))
            con.execute(sa.text("UPDATE careloop_audit SET seq = 8 WHERE seq = 9"))
            con.execute(sa.text("UPDATE careloop_audit SET seq = 9 WHERE seq = -8"))
    code, doc = verify(state_url)
    assert code == 1 and doc["ok"] is False and doc["first_bad"] in (8, 9), doc
