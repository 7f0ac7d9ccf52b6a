"""`careloop synth --updates`: two nightly `_since` exports after the Bulk export, and what ingest makes of them
in either order of arrival (the newest version wins; a stale night does not undo a newer one)."""

from __future__ import annotations

import gzip
import hashlib
from pathlib import Path

import orjson
import pytest

from careloop.ingest.runner import ingest
from careloop.store import EventStore
from careloop.synth.world import build_world
from tests.conftest import make_hospital, read_ndjson

SEED = 11


def _tree(root: Path) -> dict[str, str]:
    return {str(p.relative_to(root)): hashlib.sha256(p.read_bytes()).hexdigest()
            for p in sorted(root.rglob("*")) if p.is_file()}


def _night(hospital: Path, day: str, rtype: str) -> list[dict]:
    f = hospital / "updates" / day / f"{rtype}.ndjson.gz"
    return read_ndjson(f) if f.exists() else []


@pytest.fixture(scope="module")
def hospital(tmp_path_factory) -> Path:
    return make_hospital(tmp_path_factory.mktemp("updated"), patients=600, seed=SEED, workers=1, updates=True)


def test_the_nights_leave_the_bulk_export_as_it_was_and_do_not_depend_on_workers(hospital, tmp_path):
    plain = make_hospital(tmp_path / "plain", patients=600, seed=SEED, workers=1)
    two = make_hospital(tmp_path / "two", patients=600, seed=SEED, workers=2, updates=True)
    assert not (plain / "updates").exists()
    assert _tree(plain / "ndjson") == _tree(hospital / "ndjson")
    assert _tree(two / "updates") == _tree(hospital / "updates")
    again = make_hospital(hospital.parent / "again", patients=600, seed=SEED, workers=1, updates=True)
    assert (again / "updates" / "day-1").is_dir()
    make_hospital(again, patients=600, seed=SEED, workers=1)  # written again without: no stale nights left over
    assert not (again / "updates").exists()


def test_each_night_holds_new_versions_and_unchanged_resends(hospital):
    base = {(r["resourceType"], r["id"]): r for t in ("Patient", "Observation")
            for r in read_ndjson(hospital / "ndjson" / f"{t}.ndjson.gz")}
    with gzip.open(hospital / "ndjson" / "Encounter.ndjson.gz") as fh:
        encounter_lines = {line.rstrip(b"\n") for line in fh}
    zips = {s.city: set(s.zips) for s in build_world(SEED).sites}
    moved, again = _night(hospital, "day-1", "Patient"), _night(hospital, "day-2", "Patient")
    withdrawn = _night(hospital, "day-1", "Observation")
    assert moved and again and withdrawn
    for version, night in (("2", moved), ("3", again)):
        for p in night:
            old = base[("Patient", p["id"])]
            assert p["meta"]["versionId"] == version and p["meta"]["lastUpdated"].endswith("Z")
            assert p["meta"]["profile"] == old["meta"]["profile"]
            assert p["address"][0]["line"] != old["address"][0]["line"]
            assert p["address"][0]["postalCode"] in zips[old["address"][0]["city"]]
            assert p["telecom"][0]["value"][:-4] == old["telecom"][0]["value"][:-4]
            assert {k: v for k, v in p.items() if k not in ("meta", "address", "telecom")} == \
                {k: v for k, v in old.items() if k not in ("meta", "address", "telecom")}
    assert {p["id"] for p in again} <= {p["id"] for p in moved}
    assert max(p["meta"]["lastUpdated"] for p in moved) < min(p["meta"]["lastUpdated"] for p in again)
    for o in withdrawn:
        old = base[("Observation", o["id"])]
        assert old["status"] == "final" and old["category"][0]["coding"][0]["code"] == "laboratory"
        assert o["status"] == "entered-in-error" and o["meta"]["versionId"] == "2"
        assert o["valueQuantity"] == old["valueQuantity"]
    resent = [orjson.dumps(r) for d in ("day-1", "day-2") for r in _night(hospital, d, "Encounter")]
    assert resent and all(line in encounter_lines for line in resent)
    told = orjson.loads((hospital / "summary.json").read_bytes())["updates"]
    assert told == {
        "day-1": {"Patient moved (version 2)": len(moved),
                  "lab result withdrawn (version 2, entered-in-error)": len(withdrawn),
                  "Encounter sent again unchanged": len(_night(hospital, "day-1", "Encounter"))},
        "day-2": {"Patient moved again (version 3)": len(again),
                  "Encounter sent again unchanged": len(_night(hospital, "day-2", "Encounter"))}}


def _load(hospital: Path, store: Path, nights: list[str]) -> list[dict]:
    reports = [ingest([hospital / "ndjson"], store, workers=1).to_json()]
    reports += [ingest([hospital / "updates" / n], store, workers=1).to_json() for n in nights]
    assert all(r["reconciled"] for r in reports)
    return reports


def _contents(store: Path) -> dict[str, list]:
    con = EventStore.open(store).connect()
    return {t: con.execute(f"SELECT * FROM {t} ORDER BY ALL").fetchall()
            for t in ("patients", "events", "encounters")}


def test_the_nights_in_either_order_load_the_newest_versions(hospital, tmp_path):
    in_order = _load(hospital, tmp_path / "a", ["day-1", "day-2"])
    late = _load(hospital, tmp_path / "b", ["day-2", "day-1"])
    assert _contents(tmp_path / "a") == _contents(tmp_path / "b")

    moved, again = _night(hospital, "day-1", "Patient"), _night(hospital, "day-2", "Patient")
    withdrawn = {o["id"] for o in _night(hospital, "day-1", "Observation")}
    newest = {p["id"]: p["address"][0]["postalCode"] for p in moved} | {
        p["id"]: p["address"][0]["postalCode"] for p in again}
    con = EventStore.open(tmp_path / "b").connect()
    held = dict(con.execute("SELECT patient_id, postal_code FROM patients").fetchall())
    assert {pid: held[pid] for pid in newest} == newest
    ids = ",".join(f"'{i}'" for i in withdrawn)
    assert con.execute(f"SELECT count(*) FROM events WHERE source_id IN ({ids})").fetchone()[0] == 0
    ingest([hospital / "ndjson"], tmp_path / "plain-store", workers=1)
    plain = EventStore.open(tmp_path / "plain-store").connect()
    assert plain.execute(f"SELECT count(*) FROM events WHERE source_id IN ({ids})").fetchone()[0] >= len(withdrawn)

    resent = [len(_night(hospital, d, "Encounter")) for d in ("day-1", "day-2")]
    update = "loaded: update replacing an earlier version (same Type/id, new content)"
    same = "skipped: duplicate of a loaded resource (same Type/id, same content)"
    stale = "skipped: older than the version already loaded (by meta)"
    day2_first, day1_late = late[1]["reasons"], late[2]["reasons"]
    assert day2_first == {update: len(again), same: resent[1]}
    assert day1_late[stale] == len(again)
    assert day1_late[update] == len(moved) - len(again) + len(withdrawn)
    assert day1_late[same] == resent[0]
    assert in_order[2]["reasons"] == {update: len(again), same: resent[1]}
    assert stale not in in_order[1]["reasons"]
