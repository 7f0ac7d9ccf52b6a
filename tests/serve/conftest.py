"""The service's tests run on both state stores: SQLite (the default) and a real PostgreSQL server (tests/pg.py)."""

from __future__ import annotations

import pytest

from tests.pg import drop_database, fresh_database, postgres_server_fixture

pg_server = postgres_server_fixture()


@pytest.fixture(scope="module", params=["sqlite", "postgresql"])
def state_url(request, tmp_path_factory):
    if request.param == "sqlite":
        yield f"sqlite:///{tmp_path_factory.mktemp('state') / 'state.db'}"
        return
    url = fresh_database(request.getfixturevalue("pg_server"), f"serve_{request.module.__name__.rsplit('.', 1)[-1]}")
    try:
        yield url
    finally:
        drop_database(url)
