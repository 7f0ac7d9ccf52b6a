"""Ingest of real material written by others and of the synthetic hospital: counts reconcile, and events agree
with the source JSON read independently."""

from __future__ import annotations

import base64
import datetime as dt
import gzip
import json
import random
from collections import Counter
from pathlib import Path

import pytest

from careloop.contracts import subject_id
from careloop.store import EventStore
from tests.conftest import FIXTURES, read_ndjson


def _count_bulk(folder: Path) -> Counter:
    counts: Counter = Counter()
    for p in folder.glob("*.ndjson.gz"):
        if p.name.startswith("log."):
            continue
        for r in read_ndjson(p):
            counts[r["resourceType"]] += 1
    return counts


def _count_bundles(folder: Path) -> Counter:
    counts: Counter = Counter()
    for p in folder.glob("*.json.gz"):
        for e in json.loads(gzip.decompress(p.read_bytes()))["entry"]:
            counts[e["resource"]["resourceType"]] += 1
    return counts


def _utc(s: str) -> dt.datetime:
    d = dt.datetime.fromisoformat(s.replace("Z", "+00:00"))
    return d if d.tzinfo else d.replace(tzinfo=dt.UTC)


def test_shared_fixtures_reconcile_exactly(synthea_store):
    _, report = synthea_store
    expected = _count_bulk(FIXTURES / "synthea-bulk-ndjson") + _count_bundles(FIXTURES / "synthea-r4-bundles")
    got = {t: v["input"] for t, v in report.by_type.items()}
    assert got == dict(expected)
    assert report.reconciled
    d = report.to_json()
    assert d["input"] == d["loaded"] + d["quarantined"] + d["skipped"] == sum(expected.values())
    assert report.by_type["Claim"]["skipped"] == expected["Claim"]  # a declared rule, counted
    assert report.by_type["Observation"]["loaded"] == expected["Observation"]


def test_events_match_the_source_json(synthea_store):
    """A sample of Observations, Conditions and MedicationRequests, read with json, against the events."""
    store, _ = synthea_store
    con = EventStore.open(store).connect()
    bundles = sorted((FIXTURES / "synthea-r4-bundles").glob("*.json.gz"))
    resources = [e["resource"] for p in bundles for e in json.loads(gzip.decompress(p.read_bytes()))["entry"]]
    rng = random.Random(0)
    for rtype in ("Observation", "Condition", "MedicationRequest", "Procedure"):
        sample = rng.sample([r for r in resources if r["resourceType"] == rtype], 25)
        for r in sample:
            rows = con.execute("SELECT subject_id, time, code, numeric_value, unit FROM events "
                               "WHERE source_resource = ? AND source_id = ? ORDER BY code", [rtype, r["id"]]).fetchall()
            assert rows, (rtype, r["id"])
            pid = r["subject"]["reference"].removeprefix("urn:uuid:")
            assert {row[0] for row in rows} == {subject_id(pid)}
            if rtype == "Observation":
                when = _utc(r["effectiveDateTime"])  # known when issued, if that is later (Synthea: 0.5 s later)
                if "issued" in r:
                    when = max(when, _utc(r["issued"]))
                if "component" in r:
                    want = sorted(f"LOINC/{c['code']['coding'][0]['code']}" for c in r["component"])
                    assert sorted(row[2] for row in rows) == want
                else:
                    assert rows[0][2] == f"LOINC/{r['code']['coding'][0]['code']}"
                    if "valueQuantity" in r and r["valueQuantity"].get("code") == rows[0][4]:
                        assert rows[0][3] == pytest.approx(r["valueQuantity"]["value"])
                assert all(row[1] == when for row in rows)
            elif rtype == "Condition":
                assert rows[0][2] == f"SNOMED/{r['code']['coding'][0]['code']}"
            elif rtype == "MedicationRequest":
                assert rows[0][2] == f"RXNORM/{r['medicationCodeableConcept']['coding'][0]['code']}"
                assert rows[0][1] == _utc(r["authoredOn"])


def test_bulk_notes_keep_their_text(synthea_store):
    store, _ = synthea_store
    con = EventStore.open(store).connect()
    docs = read_ndjson(FIXTURES / "synthea-bulk-ndjson" / "DocumentReference.000.ndjson.gz")
    for d in random.Random(1).sample(docs, 20):
        text = base64.b64decode(d["content"][0]["attachment"]["data"]).decode()
        got = con.execute("SELECT text, time FROM notes WHERE note_id = ?", [d["id"]]).fetchone()
        assert got[0] == text
        assert got[1] == _utc(d["date"])


def test_synthetic_hospital_export_reconciles_with_its_manifest(hospital: Path, hospital_store):
    _, report = hospital_store
    manifest = json.loads((hospital / "ndjson" / "manifest.json").read_text())
    assert {t: v["input"] for t, v in report.by_type.items()} == {o["type"]: o["count"] for o in manifest["output"]}
    assert report.total("loaded") == report.total("input")


def test_units_are_normalised_and_originals_kept(hospital_store):
    store, _ = hospital_store
    con = EventStore.open(store).connect()
    units = dict(con.execute("SELECT unit, count(*) FROM events WHERE code = 'LOINC/2160-0' GROUP BY 1").fetchall())
    assert set(units) == {"mg/dL"}
    orig = dict(con.execute("SELECT original_unit, count(*) FROM events WHERE code = 'LOINC/2160-0' GROUP BY 1"
                            ).fetchall())
    assert set(orig) == {"mg/dL", "umol/L"}
    bad = con.execute("SELECT count(*) FROM events WHERE code = 'LOINC/2160-0' AND original_unit = 'umol/L' "
                      "AND abs(numeric_value * 88.42 - original_value) > 1e-6").fetchone()[0]
    assert bad == 0
    temps = con.execute("SELECT min(numeric_value), max(numeric_value), count(DISTINCT original_unit) "
                        "FROM events WHERE code = 'LOINC/8310-5'").fetchone()
    assert temps[0] > 34 and temps[1] < 42 and temps[2] == 2  # degF at one site, all in Cel now
    weights = con.execute("SELECT DISTINCT unit FROM events WHERE code = 'LOINC/29463-7'").fetchall()
    assert weights == [("kg",)]


def test_blood_pressure_components_are_separate_events(hospital_store, resources):
    store, _ = hospital_store
    con = EventStore.open(store).connect()
    panels = [o for o in resources("Observation") if o["code"]["coding"][0]["code"] == "85354-9"]
    n = dict(con.execute("SELECT code, count(*) FROM events WHERE code IN ('LOINC/8480-6', 'LOINC/8462-4', "
                         "'LOINC/85354-9') GROUP BY 1").fetchall())
    assert n == {"LOINC/8480-6": len(panels), "LOINC/8462-4": len(panels)}


def test_encounters_carry_class_times_disposition_and_resolved_site(hospital_store, resources):
    store, _ = hospital_store
    con = EventStore.open(store).connect()
    src = {e["id"]: e for e in resources("Encounter")}
    rows = con.execute("SELECT encounter_id, class, start, \"end\", discharge_disposition, admit_source, site_name, "
                       "priority FROM encounters").fetchall()
    assert len(rows) == len(src)
    for eid, cls, start, end, dispo, source, site, prio in rows:
        e = src[eid]
        assert cls == e["class"]["code"]
        assert start == _utc(e["period"]["start"])
        assert (end is None) == ("end" not in e["period"])
        assert site in ("Riverside University Hospital", "Northfield Community Hospital", "Lakeside Medical Center")
        if cls == "IMP" and e["status"] == "finished":
            assert dispo == e["hospitalization"]["dischargeDisposition"]["coding"][0]["code"]
            assert source == e["hospitalization"]["admitSource"]["coding"][0]["code"]
            assert prio in ("EL", "EM")


def test_patients_have_demographics(hospital_store, resources):
    store, _ = hospital_store
    con = EventStore.open(store).connect()
    src = {p["id"]: p for p in resources("Patient")}
    rows = con.execute("SELECT patient_id, subject_id, birth_date, sex, race, language FROM patients").fetchall()
    assert len(rows) == len(src)
    for pid, sid, birth, sex, race, lang in rows[:300]:
        p = src[pid]
        assert sid == subject_id(pid)
        assert birth.isoformat() == p["birthDate"] and sex == p["gender"]
        assert race == p["extension"][0]["extension"][0]["valueCoding"]["code"]
        assert lang == p["communication"][0]["language"]["coding"][0]["code"]


def test_bundles_and_bulk_export_give_the_same_events(hospital_store, hospital_bundle_store):
    """Bundles use urn:uuid and conditional references, the export Type/id: the store must not care."""
    a = EventStore.open(hospital_store[0]).connect()
    b = EventStore.open(hospital_bundle_store[0]).connect()
    q = ("SELECT subject_id, time, code, numeric_value, text_value, encounter_id, source_id FROM events "
         "ORDER BY ALL")
    assert a.execute(f"SELECT count(*) FROM ({q})").fetchone() == b.execute(f"SELECT count(*) FROM ({q})").fetchone()
    rows_a = a.execute(q).fetchall()
    rows_b = b.execute(q).fetchall()
    assert rows_a == rows_b
    sites_a = a.execute("SELECT encounter_id, site_name FROM encounters ORDER BY 1").fetchall()
    sites_b = b.execute("SELECT encounter_id, site_name FROM encounters ORDER BY 1").fetchall()
    assert sites_a == sites_b
