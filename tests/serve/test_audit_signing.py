"""Signed checkpoints of the service's audit log: `careloop audit keygen` makes the Ed25519 pair, the service signs a
checkpoint every `audit.checkpoint_every` records and its head when it stops, and `careloop audit verify
--verify-key` checks them, so that a rewrite or a cut of the chain by someone with database rights shows."""

from __future__ import annotations

import json
import os
import stat

import httpx
import pytest
import yaml
from typer.testing import CliRunner

from careloop.cli import app as cli
from careloop.errors import ConfigError
from careloop.serve.config import load_config

from .harness import Running, bearer, free_port, write_config


def _keygen(path) -> None:
    res = CliRunner().invoke(cli, ["audit", "keygen", "--out", str(path)])
    assert res.exit_code == 0, res.output


def _verify(state: str, *extra: str) -> tuple[int, dict]:
    res = CliRunner().invoke(cli, ["audit", "verify", "--state", state, "--json", *extra])
    return res.exit_code, json.loads(res.output) if res.output.strip().startswith("{") else {"output": res.output}


def test_keygen_writes_a_private_key_only_its_owner_reads_and_never_overwrites(tmp_path):
    key = tmp_path / "keys" / "audit.pem"
    _keygen(key)
    assert stat.S_IMODE(os.stat(key).st_mode) == 0o600
    assert b"PRIVATE KEY" in key.read_bytes() and b"PUBLIC KEY" in (tmp_path / "keys" / "audit.pub.pem").read_bytes()
    res = CliRunner().invoke(cli, ["audit", "keygen", "--out", str(key)])
    assert res.exit_code != 0 and "refusing to overwrite" in res.output


def test_the_service_signs_checkpoints_and_its_head_and_verify_checks_them(trained_bundle, tmp_path):
    from tests.fhir_server.harness import make_rsa_key

    from ..audit.helpers import tampering

    _keygen(tmp_path / "audit.pem")
    _keygen(tmp_path / "other.pem")
    pem, jwk = make_rsa_key()
    port = free_port()
    state = f"sqlite:///{tmp_path / 'state.db'}"
    cfg = write_config(tmp_path, state=state, jwks={"keys": [jwk]}, port=port)
    doc = yaml.safe_load(cfg.read_text()) | {"audit": {"signing_key_file": "audit.pem", "checkpoint_every": 3}}
    cfg.write_text(yaml.safe_dump(doc))  # the key file relative to the config's folder
    running = Running(trained_bundle, cfg, port)
    url = f"{running.url}/cds-services/readmission-risk"
    try:
        for _ in range(7):  # authenticated calls with an empty body: each refused (400) and audited
            assert httpx.post(url, json={}, headers=bearer(pem, jwk["kid"], url), timeout=10).status_code == 400
    finally:
        running.stop()  # signs the head (record 7)
    code, doc = _verify(state, "--verify-key", str(tmp_path / "audit.pub.pem"))
    assert code == 0 and doc["ok"] and doc["checked"] == 7 and doc["signed_checkpoints"] >= 3, doc
    code, doc = _verify(state, "--verify-key", str(tmp_path / "other.pub.pem"))
    assert code == 1 and "signature" in doc["reason"]
    code, doc = _verify(state, "--verify-key", str(tmp_path / "audit.pem"))  # the private key is not what is asked
    assert code != 0
    from sqlalchemy import create_engine, text

    with create_engine(state).connect() as conn:
        assert conn.execute(text("SELECT count(*) FROM careloop_audit_checkpoint")).scalar_one() == 3  # 3, 6, 7 once
    code, doc = _verify(state, "--verify-key", str(tmp_path / "audit.pub.pem"))
    head = doc["head"]
    assert doc["signed_checkpoints"] == 3 and head.startswith("7:")
    assert _verify(state, "--expect", head)[0] == 0
    with tampering(state) as conn:  # a DBA cuts the last record, which the hash chain alone cannot see
        conn.exec_driver_sql("DELETE FROM careloop_audit WHERE seq = 7")
    code, doc = _verify(state, "--verify-key", str(tmp_path / "audit.pub.pem"))
    assert code == 1 and doc["first_bad"] == 7, doc
    with tampering(state) as conn:  # ... and its checkpoint too: only a head kept outside the database shows it
        conn.exec_driver_sql("DELETE FROM careloop_audit_checkpoint WHERE seq = 7")
    assert _verify(state, "--verify-key", str(tmp_path / "audit.pub.pem"))[0] == 0
    code, doc = _verify(state, "--verify-key", str(tmp_path / "audit.pub.pem"), "--expect", head)
    assert code == 1 and doc["first_bad"] == 7 and "gone" in doc["reason"], doc
    with tampering(state) as conn:  # a forged anchor over records that are still there (a purge deletes them)
        seq6 = conn.exec_driver_sql("SELECT entry_hash FROM careloop_audit WHERE seq = 6").scalar_one()
        conn.exec_driver_sql(
            "INSERT INTO careloop_audit_anchor (upto_seq, entry_hash, last_recorded, purged_at, minimum_days, "
            f"purged_by) VALUES (6, '{seq6}', '2020-01-01 00:00:00', '2021-01-01 00:00:00', 183, 'x')")
    code, doc = _verify(state)
    assert code == 1 and doc["first_bad"] == 1 and "not made by a purge" in doc["reason"], doc
    res = CliRunner().invoke(cli, ["audit", "verify", "--state", state, "--expect", "7:nothex"])
    assert res.exit_code != 0 and "SEQ:HASH" in res.output


def test_a_bad_signing_key_file_stops_the_service_at_start_with_its_line(tmp_path):
    from tests.fhir_server.harness import make_rsa_key

    rsa_pem, jwk = make_rsa_key()
    (tmp_path / "rsa.pem").write_bytes(rsa_pem)
    cfg = write_config(tmp_path, state=f"sqlite:///{tmp_path / 's.db'}", jwks={"keys": [jwk]}, port=1)
    for key_file, message in (("missing.pem", "cannot read"), ("rsa.pem", "not an Ed25519 key")):
        doc = yaml.safe_load(cfg.read_text()) | {"audit": {"signing_key_file": key_file}}
        cfg.write_text(yaml.safe_dump(doc))
        with pytest.raises(ConfigError, match=rf"service.yaml:\d+: audit.signing_key_file: .*{message}"):
            load_config(cfg)
