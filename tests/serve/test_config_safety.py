"""The service configuration refuses what would quietly make the service unsafe: a state store in memory (one
database per worker, the audit chain gone at exit), a state URL careloop cannot open, and credentials written into
URLs (jku, base_url, patient_page); a JWKS URL never reaches the log with a password in it; and `careloop serve`
(and the demo) take only a port from 1 to 65535."""

from __future__ import annotations

import json
import logging
from pathlib import Path

import httpx
import pytest
from typer.testing import CliRunner

from careloop.cli import app as cli
from careloop.errors import ConfigError
from careloop.serve.auth import AuthError, TokenVerifier
from careloop.serve.config import TrustedClient, load_config
from careloop.state import StateStore
from tests.fhir_server.harness import make_rsa_key

PASSWORD = "Secr3tPw"


@pytest.fixture(scope="module")
def jwk() -> dict:
    return make_rsa_key()[1]


def config_text(jwk: dict, **fields: str) -> str:
    client = {"iss": "https://ehr.example.org", "jwks": {"keys": [jwk]}} | fields.pop("client", {})
    return f"trusted_clients:\n  - {json.dumps(client)}\n" + "".join(f"{k}: {json.dumps(v)}\n" for k, v in
                                                                    fields.items())


def problems(tmp_path: Path, text: str) -> str:
    path = tmp_path / "service.yaml"
    path.write_text(text)
    with pytest.raises(ConfigError) as info:
        load_config(path)
    return str(info.value).replace(f"{tmp_path}/", "")


# -- the state store ------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("url", [
    "sqlite://",
    "sqlite:///",
    "sqlite:///:memory:",
    "sqlite+pysqlite://",
    "SQLITE://",
    "sqlite:///file::memory:?cache=shared&uri=true",
    "sqlite:///file:state?mode=memory&uri=true",
])
def test_an_in_memory_state_store_is_refused_with_the_reason(tmp_path: Path, jwk: dict, url: str) -> None:
    said = problems(tmp_path, config_text(jwk, state=url))
    assert said.startswith("service.yaml:3: state: an in-memory SQLite store cannot hold the service's state"), said
    assert "each worker process would keep its own" in said and "sqlite:///PATH" in said


def test_a_state_file_or_server_is_accepted_and_the_library_still_opens_memory_stores(tmp_path: Path,
                                                                                      jwk: dict) -> None:
    for url in (f"sqlite:///{tmp_path / 'state.db'}", "sqlite:///relative/state.db", "postgresql://careloop@db/cl",
                "postgres://careloop@db:5432/cl", "postgresql+psycopg://careloop@db/cl"):
        path = tmp_path / "service.yaml"
        path.write_text(config_text(jwk, state=url))
        assert load_config(path).state == url
    with StateStore("sqlite://") as store:  # unit tests and one-process tools keep their memory store
        assert store.dialect == "sqlite"


@pytest.mark.parametrize(("url", "said"), [
    (f"postgresql://u:{PASSWORD}@db:notaport/cl", "state store URL postgresql://... does not parse"),
    (f"postgresql://u:{PASSWORD}@db:70000/cl", "port 70000 is not between 1 and 65535"),
    (f"postgresql://u:{PASSWORD}@db:0/cl", "port 0 is not between 1 and 65535"),
    (f"postgresql+asyncpg://u:{PASSWORD}@db/cl", "unsupported database driver"),
    (f"postgresql+psycopg2://u:{PASSWORD}@db/cl", "unsupported database driver"),
    (f"postgresql+pg8000://u:{PASSWORD}@db/cl", "unsupported database driver"),
    (f"postgresql+psycopg_async://u:{PASSWORD}@db/cl", "unsupported database driver"),
    ("sqlite+aiosqlite:///state.db", "unsupported database driver"),
    (f"mysql://u:{PASSWORD}@db/cl", "unsupported state store URL"),
    (f"postgresql+psycopg2://u@db/cl?password={PASSWORD}", "unsupported database driver"),  # libpq's query form
])
def test_a_state_url_careloop_cannot_open_is_one_problem_without_the_password(tmp_path: Path, jwk: dict, url: str,
                                                                              said: str) -> None:
    text = problems(tmp_path, config_text(jwk, state=url))
    assert text.startswith("service.yaml:3: state: ") and "\n" not in text, text
    assert said in text
    assert PASSWORD not in text


# -- credentials in URLs --------------------------------------------------------------------------------------------


@pytest.mark.parametrize(("field", "url"), [
    ("jku", f"https://jwksuser:{PASSWORD}@keys.example.org/jwks.json"),
    ("jku", "https://jwksuser@keys.example.org/jwks.json"),
    ("jku", f"http://u:{PASSWORD}@127.0.0.1:9999/jwks.json"),
    ("base_url", f"https://cds:{PASSWORD}@cds.example.org"),
    ("patient_page", f"https://u:{PASSWORD}@ehr.example.org/chart/{{patient}}"),
])
def test_a_user_name_or_password_in_a_configured_url_is_refused(tmp_path: Path, jwk: dict, field: str,
                                                                 url: str) -> None:
    if field == "jku":
        text = config_text(jwk, client={"jwks": None, "jku": url})
        where = "service.yaml:2: trusted_clients.0.jku"
    else:
        text = config_text(jwk, **{field: url})
        where = f"service.yaml:3: {field}"
    said = problems(tmp_path, text)
    assert said.startswith(f"{where}: {field} must not hold a user name or password"), said
    assert PASSWORD not in said


def test_a_jku_whose_port_is_not_a_number_is_refused(jwk: dict) -> None:
    with pytest.raises(ValueError, match="jku is not a valid URL"):
        TrustedClient(iss="https://ehr.example.org", jku="https://keys.example.org:notaport/jwks.json")


def test_a_failed_jwks_fetch_never_logs_a_password_in_the_url(caplog: pytest.LogCaptureFixture) -> None:
    # the configuration refuses such a URL; a client built around the validation must still not leak it
    jku = f"https://jwksuser:{PASSWORD}@keys.example.org/jwks.json?access_token=t0ken"
    client = TrustedClient.model_construct(iss="https://ehr.example.org", jwks=None, jwks_file=None, jku=jku,
                                           tenant=None, algorithms=["RS384"])
    http = httpx.Client(transport=httpx.MockTransport(lambda request: httpx.Response(503)))
    verifier = TokenVerifier([client], claim_jti=lambda *a: True, http=http)
    with caplog.at_level(logging.WARNING, logger="careloop"), pytest.raises(AuthError) as info:
        verifier._keys[client.iss].get("k1")
    assert "could not be fetched" in caplog.text and "https://***@keys.example.org/jwks.json" in caplog.text
    assert PASSWORD not in caplog.text and "jwksuser" not in caplog.text and "t0ken" not in caplog.text
    assert PASSWORD not in info.value.reason
    http.close()


def test_without_userinfo_masks_credentials_and_query_values() -> None:
    from careloop.serve.config import without_userinfo

    assert without_userinfo(f"https://u:{PASSWORD}@h:8443/j.json?token=abc&x") == "https://***@h:8443/j.json?token=***&x=***"
    assert without_userinfo("https://keys.example.org/jwks.json") == "https://keys.example.org/jwks.json"
    assert without_userinfo(f"http://[::1/{PASSWORD}") == "(a URL that does not parse)"


# -- `careloop serve` -----------------------------------------------------------------------------------------------


def test_serve_refuses_a_memory_store_in_one_line_before_anything_starts(tmp_path: Path, jwk: dict) -> None:
    config = tmp_path / "service.yaml"
    config.write_text(config_text(jwk, state="sqlite://"))
    res = CliRunner().invoke(cli, ["serve", "--model", str(tmp_path / "no-bundle"), "--config", str(config)])
    assert res.exit_code == 2, res.output
    assert "Traceback" not in res.output and "careloop serving" not in res.output
    assert "state: an in-memory SQLite store cannot hold the service's state" in res.output


@pytest.mark.parametrize("url", [f"postgresql://u:{PASSWORD}@db:notaport/cl",
                                 f"postgresql+asyncpg://u:{PASSWORD}@db/cl"])
def test_serve_refuses_a_state_url_it_cannot_open_without_the_password(tmp_path: Path, jwk: dict, url: str) -> None:
    config = tmp_path / "service.yaml"
    config.write_text(config_text(jwk, state=url))
    res = CliRunner().invoke(cli, ["serve", "--model", str(tmp_path / "no-bundle"), "--config", str(config)])
    assert res.exit_code == 2, res.output
    assert res.exception is None or isinstance(res.exception, SystemExit)
    assert "state: " in res.output and PASSWORD not in res.output


@pytest.mark.parametrize("port", ["70000", "65536", "0", "-5"])
def test_serve_takes_only_a_port_from_1_to_65535(tmp_path: Path, port: str) -> None:
    res = CliRunner().invoke(cli, ["serve", "--model", str(tmp_path), "--config", str(tmp_path / "x.yaml"),
                                   f"--port={port}"])
    assert res.exit_code == 2, res.output
    assert "--port" in res.output and "careloop serving" not in res.output


def test_the_demo_takes_only_a_dashboard_port_from_1_to_65535(tmp_path: Path,
                                                              capsys: pytest.CaptureFixture) -> None:
    from careloop.serve.demo import main

    with pytest.raises(SystemExit) as info:
        main(["--model", "m", "--hospital", "h", "--store", "s", "--out", str(tmp_path / "out"),
              "--dashboard-port", "70000"])
    assert info.value.code == 2
    assert "'70000' is not a port number (1 to 65535)" in capsys.readouterr().err
    assert not (tmp_path / "out").exists()
