"""The service configuration refuses what would quietly make the service unsafe: a state store in memory (one
database per worker, the audit chain gone at exit) and a state URL careloop cannot open."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from typer.testing import CliRunner

from careloop.cli import app as cli
from careloop.errors import ConfigError
from careloop.serve.config import load_config
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
