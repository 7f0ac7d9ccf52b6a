"""`careloop serve --workers 2`: two processes on one port and one state store, as a 2-core deployment runs."""

from __future__ import annotations

import os
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
                             "--config", str(cfg), "--port", str(port), "--workers", "2", "--pin-cpus"], stdout=log,
                            stderr=subprocess.STDOUT)
    try:
        wait_for_service(f"http://127.0.0.1:{port}", attempts=600, pause=0.1)
        yield f"http://127.0.0.1:{port}", (pem, jwk["kid"]), state, proc
    finally:
        proc.terminate()
        proc.wait(timeout=30)
        log.close()


def _workers(proc) -> list[psutil.Process]:
    return [p for p in psutil.Process(proc.pid).children(recursive=True)
            if "python" in p.name() and "resource_tracker" not in " ".join(p.cmdline())]


def test_two_workers_share_the_load_the_jti_claims_and_one_audit_chain(two_workers, trained_bundle, hospital_store,
                                                                       hospital):
    url, (pem, kid), state, proc = two_workers
    assert len(_workers(proc)) == 2
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


def test_pinned_workers_each_hold_a_cpu_of_their_own_with_every_thread(two_workers):
    """Each worker's threads (event loop, scorer, journal) share one affinity: a CPU of its own while CPUs last, and
    on a one-CPU machine the second worker is left to the kernel (every CPU)."""
    *_, proc = two_workers
    cpus = sorted(os.sched_getaffinity(0))
    pinned = []
    for worker in _workers(proc):
        per_thread = {frozenset(os.sched_getaffinity(t.id)) for t in worker.threads()}
        assert len(per_thread) == 1, per_thread
        (affinity,) = per_thread
        if len(affinity) == 1:
            pinned.append(next(iter(affinity)))
        else:
            assert sorted(affinity) == cpus
    assert len(pinned) == len(set(pinned)) == min(2, len(cpus)), pinned


CLAIM = ("import os, sys, time; from careloop.serve.asgi import claim_cpu; "
         "print(claim_cpu(sys.argv[1]), sorted(os.sched_getaffinity(0)), flush=True); time.sleep(60)")


def test_claim_cpu_gives_each_process_a_free_cpu_then_none_and_frees_it_on_exit():
    cpus = sorted(os.sched_getaffinity(0))
    key = f"test-{uuid.uuid4().hex[:8]}"
    procs, seen = [], []
    try:
        for _ in range(len(cpus) + 1):
            p = subprocess.Popen([sys.executable, "-c", CLAIM, key], stdout=subprocess.PIPE, text=True)
            procs.append(p)
            seen.append(p.stdout.readline().split(" ", 1))
        claimed = [int(c) for c, _ in seen[:-1]]
        assert sorted(claimed) == cpus
        assert all(aff.strip() == f"[{c}]" for (_, aff), c in zip(seen[:-1], claimed, strict=True))
        assert seen[-1][0] == "None" and seen[-1][1].strip() == str(cpus)  # more processes than CPUs: not pinned
        procs[0].kill()
        procs[0].wait()
        again = subprocess.Popen([sys.executable, "-c", CLAIM, key], stdout=subprocess.PIPE, text=True)
        procs.append(again)
        assert int(again.stdout.readline().split(" ", 1)[0]) == claimed[0]  # the lock died with its holder
    finally:
        for p in procs:
            p.kill()
            p.wait()
