"""The dashboard through the app itself (Starlette's TestClient, no browser): what it records in the audit log,
its sessions, and its answers when the event store or the audit log fails."""

from __future__ import annotations

import re
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import pytest
from fastapi.testclient import TestClient

from careloop.serve.app import Service, create_app
from careloop.serve.config import load_config
from careloop.web import DEMO_PASSWORD, demo_users, mount
from tests.fhir_server.harness import make_rsa_key
from tests.serve.harness import write_config

SECRET = b"a-secret-shared-by-every-worker-0123456789"
ADDRESS = ("203.0.113.7", 51000)  # the client's address, as the server sees it
SECURED = {"content-security-policy", "x-content-type-options", "x-frame-options", "cache-control"}


@contextmanager
def dashboard(bundle: Path, folder: Path, store_dir: Path, state: str | None = None) -> Iterator[tuple]:
    """(app, service) as `careloop serve --dashboard` mounts it, on `state` (default: a SQLite file in `folder`)."""
    _, jwk = make_rsa_key()
    cfg = write_config(folder, state=state or f"sqlite:///{folder / 'state.db'}", jwks={"keys": [jwk]}, port=1)
    service = Service(bundle, load_config(cfg))
    app = create_app(service)
    mount(app, service, users=demo_users(), store_dir=store_dir, secret=SECRET)
    try:
        yield app, service
    finally:
        service.close()


@pytest.fixture(scope="module")
def app(trained_bundle, hospital_store, tmp_path_factory):
    with dashboard(trained_bundle, tmp_path_factory.mktemp("dash-audit"), hospital_store[0]) as made:
        yield made


def signed_in(app, user: str | None, address: tuple[str, int] = ADDRESS) -> TestClient:
    c = TestClient(app, client=address, follow_redirects=False)
    if user is not None:
        r = sign_in(c, user)
        assert r.status_code == 303, r.text
    return c


def sign_in(c: TestClient, user: str, password: str = DEMO_PASSWORD):
    token = re.search(r'name="token" value="([^"]+)"', c.get("/dashboard/sign-in").text).group(1)
    return c.post("/dashboard/sign-in", data={"username": user, "password": password, "token": token, "next": ""})


def new_records(service, since: int) -> list[dict]:
    return [r for r in service.audit.records() if r["seq"] > since]


def last_seq(service) -> int:
    return service.audit.head()["seq"]


def secured(r) -> bool:
    return set(r.headers) >= SECURED and r.headers["cache-control"] == "no-store"


# -- 5: an unreadable store is a secured 503 ----------------------------------------------------------------
def test_an_unreadable_store_is_a_secured_503_on_every_patient_route(trained_bundle, tmp_path):
    empty = tmp_path / "empty-store"
    empty.mkdir()
    with dashboard(trained_bundle, tmp_path, empty) as (a, service):
        c = signed_in(a, "clinician")
        since = last_seq(service)
        r = c.get("/dashboard/api/worklist")
        assert r.status_code == 503 and secured(r) and r.headers["content-type"] == "application/json"
        assert "could not be scored" in r.json()["error"]
        for path in ("/dashboard/worklist", "/dashboard/patient/abc"):
            r = c.get(path)
            assert r.status_code == 503 and secured(r) and r.headers["content-type"].startswith("text/html"), path
        assert new_records(service, since) == []  # nothing was shown, so no access is recorded
