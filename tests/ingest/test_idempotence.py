"""Ingesting twice adds nothing; new files add only what is new; a run killed with SIGKILL and re-run gives the
same store as one clean run."""

from __future__ import annotations

import contextlib
import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import orjson
import psutil
import pytest

from careloop.ingest.runner import ingest
from careloop.store import EventStore
from tests.conftest import make_hospital

EVENTS = ("SELECT subject_id, time, code, numeric_value, text_value, unit, encounter_id, source_resource, source_id "
          "FROM events ORDER BY ALL")


def _snapshot(store: Path) -> dict[str, list]:
    con = EventStore.open(store).connect()
    out = {"events": con.execute(EVENTS).fetchall()}
    for table, key in (("encounters_raw", "encounter_id"), ("patients", "patient_id"), ("notes", "note_id"),
                       ("quarantine", "source"), ("resources", "resource_key")):
        cols = "resource_key" if table == "resources" else "*"
        out[table] = con.execute(f"SELECT {cols} FROM {table} ORDER BY {key}").fetchall()
    return out


def test_ingesting_twice_adds_nothing(hospital: Path, hospital_store, tmp_path: Path):
    store = tmp_path / "store"
    shutil.copytree(hospital_store[0], store)
    before = _snapshot(store)
    files = sorted(p.name for p in (store / "events").iterdir())
    again = ingest([hospital / "ndjson"], store, workers=2)
    d = again.to_json()
    assert d["loaded"] == 0 and d["quarantined"] == 0
    assert d["skipped"] == d["input"] == hospital_store[1].total("input")
    assert d["reasons"] == {"skipped: already ingested": d["input"]}
    assert sorted(p.name for p in (store / "events").iterdir()) == files
    assert _snapshot(store) == before


def test_new_files_add_only_what_is_new(tmp_path: Path):
    export = tmp_path / "export"
    export.mkdir()
    pat = [{"resourceType": "Patient", "id": f"p{i}", "birthDate": "1950-01-01"} for i in range(5)]
    (export / "Patient.ndjson").write_bytes(b"\n".join(map(orjson.dumps, pat[:3])) + b"\n")
    store = tmp_path / "store"
    assert ingest([export], store, workers=1).total("loaded") == 3
    # a later export repeats two patients and brings two new ones
    (export / "Patient-2.ndjson").write_bytes(b"\n".join(map(orjson.dumps, pat[1:])) + b"\n")
    second = ingest([export], store, workers=1).to_json()
    assert second["loaded"] == 2
    assert second["reasons"]["skipped: already ingested"] == 3
    assert second["reasons"]["skipped: duplicate of a loaded resource (same Type/id, same content)"] == 2
    con = EventStore.open(store).connect()
    assert con.execute("SELECT count(*), count(DISTINCT patient_id) FROM patients").fetchone() == (5, 5)


def test_a_killed_run_resumes_to_the_same_store(hospital: Path, hospital_store, tmp_path: Path):
    store = tmp_path / "store"
    env = {**os.environ, "CARELOOP_INGEST_CHUNK_BYTES": str(2 << 20)}  # many small units
    cmd = [sys.executable, "-m", "careloop.cli", "ingest", str(hospital / "ndjson"), "--store", str(store),
           "--workers", "2", "--json"]
    proc = subprocess.Popen(cmd, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
                            start_new_session=True)
    deadline = time.time() + 120
    while time.time() < deadline:
        done = list((store / "_ledger").glob("*.json")) if (store / "_ledger").exists() else []
        if len(done) >= 8:
            break
        time.sleep(0.02)
    os.killpg(proc.pid, signal.SIGKILL)  # the parent and its workers, mid-way
    proc.wait()
    resumed = subprocess.run(cmd, env=env, capture_output=True, check=True)
    report = orjson.loads(resumed.stdout)
    assert report["reconciled"]
    assert 1 <= report["units_already_done"] < report["units"] + report["units_already_done"]
    assert _snapshot(store) == _snapshot(hospital_store[0])


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="workers die with the parent on Linux only")
def test_workers_die_with_a_killed_parent_and_the_rerun_resumes(tmp_path: Path):
    """SIGKILL of the ingest process alone (the out-of-memory killer), not of its process group: its workers must
    not live on as orphans holding the store's lock; a re-run takes the lock and gives the clean run's store."""
    export = make_hospital(tmp_path / "hospital", patients=300, seed=11, workers=2) / "ndjson"
    store = tmp_path / "store"
    cmd = [sys.executable, "-m", "careloop.cli", "ingest", str(export), "--store", str(store), "--workers", "2",
           "--json"]
    proc = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    workers: set[int] = set()
    try:
        parent = psutil.Process(proc.pid)
        deadline = time.time() + 60
        while time.time() < deadline and proc.poll() is None:  # the pool has started and committed some units
            with contextlib.suppress(psutil.Error):
                workers |= {c.pid for c in parent.children()}
            ledger = list((store / "_ledger").glob("*.json")) if (store / "_ledger").exists() else []
            if len(workers) >= 2 and len(ledger) >= 2:
                break
            time.sleep(0.01)
        assert proc.poll() is None, "the run ended before it could be killed: the test needs a bigger hospital"
        assert len(workers) == 2
        os.kill(proc.pid, signal.SIGKILL)
        proc.wait()

        def alive(pid: int) -> bool:
            try:
                return psutil.Process(pid).status() != psutil.STATUS_ZOMBIE
            except psutil.NoSuchProcess:
                return False

        deadline = time.time() + 5
        while time.time() < deadline and any(map(alive, workers)):
            time.sleep(0.05)
        assert not [pid for pid in workers if alive(pid)], "workers outlived their killed parent"
    finally:
        for pid in workers:  # whatever the outcome, leave no orphan behind
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGKILL)
    resumed = subprocess.run(cmd, capture_output=True)
    assert resumed.returncode == 0, resumed.stderr.decode()
    report = orjson.loads(resumed.stdout)
    assert report["reconciled"]
    assert 1 <= report["units_already_done"] < report["units"] + report["units_already_done"]
    clean = tmp_path / "clean"
    ingest([export], clean, workers=2)
    assert _snapshot(store) == _snapshot(clean)


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="workers die with the parent on Linux only")
@pytest.mark.parametrize(("parent", "status"), [("mine", 0), ("gone", 1)])
def test_a_worker_whose_parent_already_died_exits(parent: str, status: int):
    """The race the death signal cannot cover: the parent died before the worker asked for it."""
    from careloop.ingest.runner import _die_with_parent

    me = os.getpid()
    pid = os.fork()
    if pid == 0:
        try:
            _die_with_parent(me if parent == "mine" else me + 1_000_000)  # not its parent: as if reparented
        finally:
            os._exit(0)
    _, code = os.waitpid(pid, 0)
    assert os.waitstatus_to_exitcode(code) == status


def test_an_updated_resource_replaces_its_earlier_version(tmp_path: Path):
    """A later export with an encounter now finished replaces the in-progress copy, in every table."""
    export = tmp_path / "export"
    export.mkdir()
    pat = {"resourceType": "Patient", "id": "p1", "birthDate": "1950-01-01"}
    enc = {"resourceType": "Encounter", "id": "e1", "status": "in-progress", "class": {"code": "IMP"},
           "subject": {"reference": "Patient/p1"}, "period": {"start": "2024-01-01T10:00:00Z"}}
    (export / "a.ndjson").write_bytes(orjson.dumps(pat) + b"\n" + orjson.dumps(enc) + b"\n")
    store = tmp_path / "store"
    ingest([export], store, workers=1)
    done = enc | {"status": "finished", "period": {"start": "2024-01-01T10:00:00Z", "end": "2024-01-04T12:00:00Z"},
                  "hospitalization": {"dischargeDisposition": {"coding": [{"code": "home"}]}}}
    (export / "b.ndjson").write_bytes(orjson.dumps(done) + b"\n")
    report = ingest([export], store, workers=1).to_json()
    assert report["loaded"] == 1
    assert report["reasons"]["loaded: update replacing an earlier version (same Type/id, new content)"] == 1
    con = EventStore.open(store).connect()
    assert con.execute("SELECT status, discharge_disposition FROM encounters_raw").fetchall() == [("finished", "home")]
    codes = sorted(r[0] for r in con.execute("SELECT code FROM events WHERE source_id = 'e1'").fetchall())
    assert codes == ["DISCHARGE/home", "ENCOUNTER/IMP"]
    assert con.execute("SELECT count(*) FROM resources WHERE resource_key = 'Encounter/e1'").fetchone()[0] == 1
    # the same update again is a repeat, not another update
    other = pat | {"id": "p2"}
    (export / "c.ndjson").write_bytes(orjson.dumps(done) + b"\n" + orjson.dumps(other) + b"\n")
    again = ingest([export], store, workers=1).to_json()
    assert again["loaded"] == 1  # only the new patient
    assert again["reasons"]["skipped: duplicate of a loaded resource (same Type/id, same content)"] == 1


def test_a_promised_removal_is_finished_after_a_crash(tmp_path: Path):
    export = tmp_path / "export"
    export.mkdir()
    pat = {"resourceType": "Patient", "id": "p1", "birthDate": "1950-01-01"}
    (export / "a.ndjson").write_bytes(orjson.dumps(pat) + b"\n")
    store = tmp_path / "store"
    ingest([export], store, workers=1)
    unit = next((store / "resources").glob("part-*.parquet")).stem[5:]
    (store / "_journal" / "crashed-unit.json").write_bytes(orjson.dumps({unit: ["Patient/p1"]}))
    ingest([export], store, workers=1)  # recovery runs first, whatever the sources
    con = EventStore.open(store).connect()
    assert con.execute("SELECT count(*) FROM patients").fetchone()[0] == 0
    assert [p.name for p in (store / "_journal").iterdir()] == ["settled.json"]  # no promise left


def test_a_run_killed_before_settling_is_settled_by_the_next(tmp_path: Path, monkeypatch):
    from careloop.ingest import runner

    export = tmp_path / "export"
    export.mkdir()
    pat = [{"resourceType": "Patient", "id": f"p{i}", "birthDate": "1950-01-01"} for i in range(4)]
    (export / "a.ndjson").write_bytes(b"\n".join(map(orjson.dumps, pat[:3])) + b"\n")
    store = tmp_path / "store"
    ingest([export], store, workers=1)
    (export / "b.ndjson").write_bytes(b"\n".join(map(orjson.dumps, pat[1:])) + b"\n")

    def killed(*args, **kwargs):
        raise KeyboardInterrupt

    monkeypatch.setattr(runner, "settle_duplicates", killed)
    with pytest.raises(KeyboardInterrupt):
        ingest([export], store, workers=1)
    monkeypatch.undo()
    con = EventStore.open(store).connect()
    assert con.execute("SELECT count(*) FROM patients").fetchone()[0] == 6  # both copies of p1 and p2, unsettled
    again = ingest([export], store, workers=1).to_json()
    assert again["loaded"] == 0
    con = EventStore.open(store).connect()
    assert con.execute("SELECT count(*), count(DISTINCT patient_id) FROM patients").fetchone() == (4, 4)
