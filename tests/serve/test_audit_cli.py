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


def test_a_missing_or_empty_log_is_not_reported_intact_and_nothing_is_created(db_url, tmp_path):
    """A log that is gone (the file, the table) or emptied cannot be vouched for: exit non-zero, say why, and never
    create what is being verified (that would make a deleted log look new)."""
    nowhere = tmp_path / "never" / "state.db"
    res = CliRunner().invoke(app, ["audit", "verify", "--state", f"sqlite:///{nowhere}"])
    assert res.exit_code != 0 and "no database file" in res.output
    assert not nowhere.parent.exists()
    _log(db_url, 3)
    with tampering(db_url) as con:
        con.execute(sa.text("DELETE FROM careloop_audit"))
    res = CliRunner().invoke(app, ["audit", "verify", "--state", db_url])
    assert res.exit_code != 0 and "holds no records" in res.output, res.output
    engine = sa.create_engine(db_url.replace("postgresql://", "postgresql+psycopg://"))
    try:
        with engine.begin() as con:
            con.execute(sa.text("DROP TABLE careloop_audit"))
        res = CliRunner().invoke(app, ["audit", "verify", "--state", db_url])
        assert res.exit_code != 0 and "no audit log in this database" in res.output, res.output
        assert not sa.inspect(engine).has_table("careloop_audit")  # not recreated
    finally:
        engine.dispose()
