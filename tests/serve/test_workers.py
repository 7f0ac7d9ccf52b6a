"""`careloop serve --workers 2`: two processes on one port and one state store, as a 2-core deployment runs."""

from __future__ import annotations

import subprocess
import sys
import uuid
from concurrent.futures import ThreadPoolExecutor

import httpx
import psutil
import pytest

from careloop.audit import AuditLog
from careloop.serve.demo import _pick
from tests.fhir_server.harness import make_rsa_key

from .harness import bearer, free_port, hook_request, patient_resources, prefetch_of, wait_for_service, write_config


@pytest.fixture(scope="module")
def two_workers(trained_bundle, tmp_path_factory):
    folder = tmp_path_factory.mktemp("workers")
    pem, jwk = make_rsa_key()
    port = free_port()
    state = f"sqlite:///{folder / 'state.db'}"
    cfg = write_config(folder, state=state, jwks={"keys": [jwk]}, port=port)
    log = (folder / "server.log").open("w")
    proc = subprocess.Popen([sys.executable, "-m", "careloop.cli", "serve", "--model", str(trained_bundle),
                             "--config", str(cfg), "--port", str(port), "--workers", "2"], stdout=log,
                            stderr=subprocess.STDOUT)
    try:
        wait_for_service(f"http://127.0.0.1:{port}", attempts=600, pause=0.1)
        yield f"http://127.0.0.1:{port}", (pem, jwk["kid"]), state, proc
    finally:
        proc.terminate()
        proc.wait(timeout=30)
        log.close()


def test_two_workers_share_the_load_the_jti_claims_and_one_audit_chain(two_workers, trained_bundle, hospital_store,
                                                                       hospital):
    url, (pem, kid), state, proc = two_workers
    workers = psutil.Process(proc.pid).children(recursive=True)
    assert len([p for p in workers if "python" in p.name()]) >= 2
    stays, _ = _pick(trained_bundle, hospital_store[0])
    res = patient_resources(hospital / "ndjson", {s["patient_id"] for s in stays})
    aud = f"{url}/cds-services/readmission-risk"
    calls = []
    for i in range(40):
        s = stays[i % len(stays)]
        body = hook_request(s["patient_id"], s["encounter_id"], prefetch_of(res[s["patient_id"]]))
        body["hookInstance"] = str(uuid.uuid4())
        calls.append((body, bearer(pem, kid, aud)))
    with ThreadPoolExecutor(8) as pool:
        answers = list(pool.map(lambda c: httpx.post(aud, json=c[0], headers=c[1], timeout=60), calls))
    assert [r.status_code for r in answers] == [200] * len(calls)
    # every token used once more, at whichever worker answers: each is refused, from memory or by the store's claim
    with ThreadPoolExecutor(8) as pool:
        replays = list(pool.map(lambda c: httpx.post(aud, json=c[0], headers=c[1], timeout=60), calls[:10]))
    assert [r.status_code for r in replays] == [401] * 10
    with AuditLog.open(state) as audit:
        assert audit.verify().ok
        assert len(audit.records(kind="cds-call")) == len(calls)
        assert len(audit.records(kind="auth-failure")) == 10
