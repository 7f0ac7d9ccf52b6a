"""A running careloop service on loopback for tests and the benchmark: keys, config, prefetch, signed requests."""

from __future__ import annotations

import contextlib
import json
import socket
import threading
import uuid
from pathlib import Path

import uvicorn
import yaml

from careloop.serve.app import Service, create_app
from careloop.serve.auth import hash_admin_token, sign_request_token
from careloop.serve.config import load_config
from careloop.serve.demo import patient_resources, prefetch_of, wait_for_service  # noqa: F401 (re-exported for the tests)

ISS = "https://ehr.careloop-test.example/fhir"
ADMIN_SECRET = "admin-secret-for-tests-only-0123456789"


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def write_config(folder: Path, *, state: str, jwks: dict, port: int, **alert) -> Path:
    doc = {"trusted_clients": [{"iss": ISS, "jwks": jwks}],
           "admin": {"token_sha256": hash_admin_token(ADMIN_SECRET), "name": "test-admin"},
           "state": state, "base_url": f"http://127.0.0.1:{port}", "deadline_ms": alert.pop("deadline_ms", 3000),
           "alert": {"repeat_window_h": 72, "repeat_delta": 0.10, "deferral": "card", **alert}}
    path = folder / "service.yaml"
    path.write_text(yaml.safe_dump(doc))
    return path


class Running:
    """uvicorn serving the app in a thread; `url`, `stop()`."""

    def __init__(self, bundle: Path, config: Path, port: int) -> None:
        self.service = Service(bundle, load_config(config))
        self.port = port
        self.url = f"http://127.0.0.1:{port}"
        self.app = create_app(self.service)
        cfg = uvicorn.Config(self.app, host="127.0.0.1", port=port, log_level="warning",
                             access_log=False)
        self.server = uvicorn.Server(cfg)
        self.thread = threading.Thread(target=self.server.run, daemon=True)
        self.thread.start()
        wait_for_service(self.url)

    def stop(self) -> None:
        self.server.should_exit = True
        self.thread.join(timeout=10)
        self.service.close()


def hook_request(patient: str, encounter: str | None, prefetch: dict | None, hook: str = "encounter-discharge"
                 ) -> dict:
    body = {"hook": hook, "hookInstance": str(uuid.uuid4()),
            "context": {"userId": "Practitioner/example", "patientId": patient}}
    if encounter:
        body["context"]["encounterId"] = encounter
    if prefetch is not None:
        body["prefetch"] = prefetch
    return body


def bearer(key: bytes, kid: str, aud: str, alg: str = "RS384", **kw) -> dict:
    return {"Authorization": f"Bearer {sign_request_token(key, kid, ISS, aud, alg=alg, **kw)}"}


def as_json(path: Path) -> dict:
    return json.loads(path.read_text())


@contextlib.contextmanager
def picked_stays_service(bundle: Path, store: Path, hospital: Path, folder: Path, state: str, **alert):
    """A running service with its own RSA key (`running.keys`), and the stays `make demo` picks (the riskiest two,
    a deferred one, two calm ones) with their patients' resources: (running, stays, resources)."""
    from careloop.serve.demo import _pick
    from tests.fhir_server.harness import make_rsa_key

    stays, _ = _pick(bundle, store)
    res = patient_resources(hospital / "ndjson", {s["patient_id"] for s in stays})
    pem, jwk = make_rsa_key()
    port = free_port()
    running = Running(bundle, write_config(folder, state=state, jwks={"keys": [jwk]}, port=port, **alert), port)
    running.keys = (pem, jwk["kid"])
    try:
        yield running, stays, res
    finally:
        running.stop()


def as_if_recent(prefetch: dict, encounter_id: str, hours_ago: float = 2.0) -> dict:
    """The prefetch with every time moved by one offset, so that the stay `encounter_id` ended `hours_ago` hours
    before now: a chart opened now (patient-view) is about it. Times keep their spacing exactly (dates, which
    cannot, move by the offset rounded to whole days)."""
    import datetime as dt
    import re

    stamp = re.compile(r"\d{4}-\d{2}-\d{2}(T[0-9:.]+(Z|[+-]\d{2}:\d{2}))?")
    end = next(e["resource"]["period"]["end"] for e in prefetch["encounters"]["entry"]
               if e["resource"]["id"] == encounter_id)
    offset = dt.datetime.now(dt.UTC) - dt.timedelta(hours=hours_ago) - dt.datetime.fromisoformat(end)
    days = dt.timedelta(days=round(offset / dt.timedelta(days=1)))

    def move(v):
        if isinstance(v, dict):
            return {k: move(x) for k, x in v.items()}
        if isinstance(v, list):
            return [move(x) for x in v]
        if isinstance(v, str) and stamp.fullmatch(v):
            if "T" in v:
                return (dt.datetime.fromisoformat(v) + offset).isoformat()
            return (dt.date.fromisoformat(v) + days).isoformat()
        return v

    return move(prefetch)


def assert_no_null_or_empty(node, where: str = "response") -> None:
    """CDS Hooks' use of JSON (checklist C-14): no element anywhere in an answer, down into the FHIR resources its
    suggestions carry, is null, an empty string, an empty list or an empty object."""
    assert node is not None, f"{where} is null"
    if isinstance(node, str):
        assert node.strip(), f"{where} is an empty string"
    elif isinstance(node, list):
        assert node, f"{where} is an empty list"
        for i, item in enumerate(node):
            assert_no_null_or_empty(item, f"{where}[{i}]")
    elif isinstance(node, dict):
        assert node, f"{where} is an empty object"
        for key, value in node.items():
            assert_no_null_or_empty(value, f"{where}.{key}")
