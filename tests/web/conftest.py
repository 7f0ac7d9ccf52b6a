"""The dashboard on loopback (the CDS service's app with `careloop.web.mount`), on the session's trained bundle and
synthetic hospital, with cards, feedback and audit records seeded, and a Chromium driven by Playwright."""

from __future__ import annotations

import datetime as dt
import os
import shutil
import threading
import time
import uuid
from dataclasses import dataclass
from pathlib import Path

import httpx
import pytest
import uvicorn

from careloop.serve.app import Service, create_app
from careloop.serve.config import load_config
from careloop.web import DEMO_PASSWORD, demo_users, mount
from careloop.web.data import worklist
from tests.browser import CHROMIUM
from tests.fhir_server.harness import make_rsa_key
from tests.serve.harness import ISS, free_port, write_config

from .monitor_fixture import write_monitor

SCREENSHOTS = Path(__file__).resolve().parents[2] / "bench-out" / "screenshots" / "dashboard"
USERS = {"clinician": "clinician", "data_scientist": "data-scientist", "governance": "governance"}


@dataclass
class Dash:
    url: str
    service: Service
    dashboard: object
    monitor_dir: Path
    store_dir: Path
    seeded: dict


def _seed(service: Service, store_dir: Path) -> dict:
    """Cards for the top patients of the worklist (one accepted, one overridden, one left open), and audit records
    the way the service writes them."""
    wl = worklist(service, store_dir)
    rows = [r for r in wl["current"] + wl["recent"] if r.assessment.risk is not None][:3]
    now = dt.datetime.now(dt.UTC)
    seeded = {}
    for i, (r, outcome) in enumerate(zip(rows, ("accepted", "overridden", None), strict=False)):
        card = str(uuid.uuid4())
        sid = "readmission-risk" if r.discharged else "readmission-risk-patient-view"
        service.store.record_card(card, sid, r.patient_id, service.model_key, r.assessment.risk, "warning", None,
                                  now - dt.timedelta(hours=3 - i))
        service.record("cds-call", "success", service=sid, request_id=str(uuid.uuid4()))
        if outcome:
            item = {"card": card, "outcome": outcome, "outcomeTimestamp": (now - dt.timedelta(hours=1)).isoformat()}
            if outcome == "accepted":
                item["acceptedSuggestions"] = [{"id": str(uuid.uuid4())}]
            else:
                item["overrideReason"] = {"reason": {"code": "already-arranged", "system": "https://example.org/r",
                                                     "display": "Follow-up already arranged"},
                                          "userComment": "=HYPERLINK(\"http://evil\")"}
            service.store.add_feedback(sid, item, client=ISS)
            service.record("feedback", "success", service=sid, detail={"card": card, "outcome": outcome})
        seeded[r.encounter_id] = outcome or "shown"
    return seeded


@pytest.fixture(scope="session")
def dash(trained_bundle, hospital_store, tmp_path_factory) -> Dash:
    folder = tmp_path_factory.mktemp("dashboard")
    port = free_port()
    _, jwk = make_rsa_key()
    cfg = write_config(folder, state=f"sqlite:///{folder / 'state.db'}", jwks={"keys": [jwk]}, port=port)
    service = Service(trained_bundle, load_config(cfg))
    monitor_dir = write_monitor(folder / "monitor")
    app = create_app(service)
    d = mount(app, service, users=demo_users(), monitor_dir=monitor_dir, store_dir=hospital_store[0])
    seeded = _seed(service, hospital_store[0])
    server = uvicorn.Server(uvicorn.Config(app, host="127.0.0.1", port=port, log_level="warning", access_log=False))
    thread = threading.Thread(target=server.run, daemon=True)
    thread.start()
    url = f"http://127.0.0.1:{port}"
    for _ in range(200):
        try:
            httpx.get(f"{url}/cds-services", timeout=0.5)
            break
        except httpx.HTTPError:
            time.sleep(0.05)
    yield Dash(url, service, d, monitor_dir, hospital_store[0], seeded)
    server.should_exit = True
    thread.join(timeout=10)
    service.store.close()


@pytest.fixture(scope="session")
def browser():
    sync_api = pytest.importorskip("playwright.sync_api")
    if not Path(CHROMIUM).exists():
        if os.environ.get("CI"):  # CI (.ci/run) installs it: there, a missing browser is a failure
            pytest.fail("Debian chromium is not installed at /usr/bin/chromium", pytrace=False)
        pytest.skip("Debian chromium is not installed at /usr/bin/chromium")
    with sync_api.sync_playwright() as p:
        b = p.chromium.launch(executable_path=CHROMIUM, headless=True)
        yield b
        b.close()


@pytest.fixture(scope="session")
def shots(tmp_path_factory) -> Path:
    return tmp_path_factory.mktemp("screenshots")


class Visitor:
    """One browser context signed in as a role; records console errors, page errors and failed requests."""

    def __init__(self, browser, dash: Dash, shots: Path) -> None:
        self.dash, self.shots = dash, shots
        self.context = browser.new_context(viewport={"width": 1400, "height": 900})
        self.page = self.context.new_page()
        self.errors: list[str] = []
        self.page.on("console", lambda m: self.errors.append(f"console {m.type}: {m.text}")
                     if m.type in ("error", "warning") else None)
        self.page.on("pageerror", lambda e: self.errors.append(f"page error: {e}"))
        self.page.on("requestfailed", lambda r: self.errors.append(f"request failed: {r.url}"))

    def sign_in(self, user: str, password: str = DEMO_PASSWORD):
        self.page.goto(f"{self.dash.url}/dashboard/sign-in")
        self.page.fill("#username", user)
        self.page.fill("#password", password)
        with self.page.expect_navigation():
            self.page.click("#sign-in")
        return self

    def goto(self, path: str):
        resp = self.page.goto(f"{self.dash.url}{path}")
        self.page.wait_for_load_state("load")
        return resp

    def shot(self, name: str) -> Path:
        path = self.shots / f"{name}.png"
        self.page.screenshot(path=str(path), full_page=True)
        SCREENSHOTS.mkdir(parents=True, exist_ok=True)
        shutil.copy(path, SCREENSHOTS / path.name)
        return path

    def close(self) -> None:
        self.context.close()


@pytest.fixture
def visitor(browser, dash, shots):
    opened: list[Visitor] = []

    def make(role: str | None = None) -> Visitor:
        v = Visitor(browser, dash, shots)
        opened.append(v)
        return v.sign_in(USERS[role]) if role else v

    yield make
    for v in opened:
        v.close()
