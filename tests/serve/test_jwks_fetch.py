"""A client whose keys are fetched from its (allowlisted) JWKS URL: the fetch happens on a thread, never on the event
loop, so a token with an unknown kid (anyone can send one for a known iss) cannot stall the other calls while the
key server is slow."""

from __future__ import annotations

import json
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import httpx
import yaml

from careloop.serve.auth import sign_request_token

from .harness import ISS, Running, free_port, write_config

DELAY_S = 1.5


def _slow_jwks(jwks: dict) -> ThreadingHTTPServer:
    body = json.dumps(jwks).encode()

    class Handler(BaseHTTPRequestHandler):
        def do_GET(self) -> None:
            time.sleep(DELAY_S)
            self.send_response(200)
            self.send_header("Content-Type", "application/json")
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)

        def log_message(self, *args) -> None:
            pass

    server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    threading.Thread(target=server.serve_forever, args=(0.02,), daemon=True).start()
    return server


def test_a_key_fetch_never_stalls_the_event_loop(trained_bundle, tmp_path):
    from tests.fhir_server.harness import make_rsa_key

    pem, jwk = make_rsa_key()
    jwks_server = _slow_jwks({"keys": [jwk]})
    port = free_port()
    cfg = write_config(tmp_path, state=f"sqlite:///{tmp_path / 'state.db'}", jwks={"keys": [jwk]}, port=port)
    doc = yaml.safe_load(cfg.read_text())
    doc["trusted_clients"] = [{"iss": ISS, "jku": f"http://127.0.0.1:{jwks_server.server_address[1]}/jwks.json"}]
    cfg.write_text(yaml.safe_dump(doc))
    running = Running(trained_bundle, cfg, port)
    try:
        url = f"{running.url}/cds-services/readmission-risk"
        unknown = sign_request_token(pem, "a-kid-nobody-has", ISS, url)
        answers: list[int] = []
        caller = threading.Thread(target=lambda: answers.append(
            httpx.post(url, json={}, headers={"Authorization": f"Bearer {unknown}"}, timeout=10).status_code))
        t0 = time.monotonic()
        caller.start()
        time.sleep(0.2)  # the fetch is under way
        waits = []
        for _ in range(5):
            t = time.monotonic()
            assert httpx.get(f"{running.url}/cds-services", timeout=10).status_code == 200
            waits.append(time.monotonic() - t)
        assert time.monotonic() - t0 < DELAY_S  # all answered while the key server was still thinking
        assert max(waits) < 0.5, waits
        caller.join(timeout=10)
        assert answers == [401]
        known = sign_request_token(pem, jwk["kid"], ISS, url)  # fetched by then: verified at once
        r = httpx.post(url, json={}, headers={"Authorization": f"Bearer {known}"}, timeout=10)
        assert r.status_code == 400  # authenticated; the empty body is what is refused
        assert [x["kind"] for x in running.service.audit.records()] == ["auth-failure", "cds-call"]
    finally:
        running.stop()
        jwks_server.shutdown()
        jwks_server.server_close()
