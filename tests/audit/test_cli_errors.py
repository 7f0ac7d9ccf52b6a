"""`careloop audit ...` on bad input: a state URL that does not parse or names a driver careloop does not install
gets one clear line and exit 2, never a traceback, never the database password."""

from __future__ import annotations

import pytest
from typer.testing import CliRunner

from careloop.cli import app as cli

PASSWORD = "Secr3tPw"
BAD_URLS = [
    (f"postgresql://careloop:{PASSWORD}@db.example.org:notaport/careloop", "does not parse"),
    (f"postgresql://careloop:{PASSWORD}@db.example.org:70000/careloop", "port 70000 is not between 1 and 65535"),
    (f"postgresql+asyncpg://careloop:{PASSWORD}@db.example.org/careloop", "unsupported database driver"),
    (f"postgresql+psycopg2://careloop:{PASSWORD}@db.example.org/careloop", "unsupported database driver"),
    (f"postgresql+pg8000://careloop:{PASSWORD}@db.example.org/careloop", "unsupported database driver"),
    (f"postgres+pg8000://careloop:{PASSWORD}@db.example.org/careloop", "unsupported database driver"),
]


def run(*args: str):
    return CliRunner().invoke(cli, ["audit", *args], env={"COLUMNS": "240"})


def one_error_line(res, why: str) -> None:
    assert res.exit_code == 2, res.output
    assert res.exception is None or isinstance(res.exception, SystemExit), repr(res.exception)
    lines = res.output.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: ") and why in lines[0], res.output


# -- state URLs -----------------------------------------------------------------------------------------------------


@pytest.mark.parametrize(("state", "why"), BAD_URLS)
@pytest.mark.parametrize("command", [
    ["verify"], ["report"], ["export", "--out", "{tmp}/e.json"], ["purge", "--before", "2020-01-01", "--by", "dpo"],
])
def test_a_state_url_that_cannot_be_opened_is_one_line_without_the_password(tmp_path, command, state, why):
    args = [a.replace("{tmp}", str(tmp_path)) for a in command]
    res = run(*args, "--state", state)
    one_error_line(res, why)
    assert PASSWORD not in res.output
    assert not (tmp_path / "e.json").exists()


def test_a_state_url_error_names_no_password_even_when_it_does_not_parse():
    res = run("report", "--state", f"postgresql://careloop:{PASSWORD}@db:5432x/careloop")
    one_error_line(res, "state store URL postgresql://... does not parse")
    assert PASSWORD not in res.output and "careloop:" not in res.output
