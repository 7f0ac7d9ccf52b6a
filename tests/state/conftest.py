"""State store fixtures: ``db_url`` runs each test on SQLite and on a throwaway PostgreSQL server (tests/pg.py)."""

from tests.pg import database_url_fixture, postgres_server_fixture

pg_server = postgres_server_fixture()
db_url = database_url_fixture()
