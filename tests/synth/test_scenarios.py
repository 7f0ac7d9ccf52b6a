"""The drift and bias switches change what they claim, and nothing else; sites differ for real."""

from __future__ import annotations

import datetime as dt
import gzip
from collections import Counter
from pathlib import Path

import orjson
import pyarrow.parquet as pq
import pytest

from tests.conftest import make_hospital, read_ndjson

DRIFT_DATE = dt.datetime(2023, 1, 1, tzinfo=dt.UTC)
TYPES = ("Patient", "Coverage", "Encounter", "Condition", "Observation", "MedicationRequest", "Procedure",
         "DocumentReference")


def _load(root: Path) -> dict[str, dict[str, dict]]:
    return {t: {r["id"]: r for r in read_ndjson(root / "ndjson" / f"{t}.ndjson.gz")} for t in TYPES}


def _patient_of(r: dict) -> str:
    if r["resourceType"] == "Patient":
        return r["id"]
    ref = (r.get("subject") or r.get("beneficiary"))["reference"]
    return ref.split("/")[1]


def _t(s: str) -> dt.datetime:
    return dt.datetime.fromisoformat(s.replace("Z", "+00:00"))


@pytest.fixture(scope="module")
def pair(tmp_path_factory: pytest.TempPathFactory):
    root = tmp_path_factory.mktemp("scen")
    kw = {"patients": 700, "seed": 21, "workers": 2, "shard_size": 50}
    base = make_hospital(root / "base", **kw)
    drift = make_hospital(root / "drift", scenarios=("drift",), drift_date=DRIFT_DATE.date(), **kw)
    bias = make_hospital(root / "bias", scenarios=("bias",), **kw)
    return base, drift, bias


def test_drift_changes_only_what_it_claims(pair):
    base_dir, drift_dir, _ = pair
    base, drift = _load(base_dir), _load(drift_dir)
    shifted = {row["patient_id"] for row in pq.read_table(drift_dir / "truth" / "patients.parquet").to_pylist()
               if row["case_mix_shifted"]}
    assert shifted, "some patients first arrive after the drift date"
    changed = Counter()
    for t in TYPES:
        for rid, b in base[t].items():
            if _patient_of(b) in shifted:
                continue
            d = drift[t][rid]
            if d == b:
                continue
            changed[t] += 1
            if t == "Observation":
                assert b["code"]["coding"][0]["code"] == "2160-0", "only creatinine moves"
                assert _t(b["effectiveDateTime"]) >= DRIFT_DATE
                assert d["valueQuantity"]["value"] > b["valueQuantity"]["value"]
            elif t == "Condition":
                assert _t(b["recordedDate"]) >= DRIFT_DATE
                assert b["code"]["coding"][0]["code"] in ("I50.9", "E11.9")
                assert d["code"]["coding"][0]["code"] in ("I50.22", "I50.32", "E11.65", "E11.22")
                assert d["code"]["coding"][1] == b["code"]["coding"][1], "SNOMED coding is unchanged"
            else:
                pytest.fail(f"{t}/{rid} changed under --drift")
    assert changed["Observation"] > 20 and changed["Condition"] > 5
    # patients arriving after the drift date are older and sicker than the same draws without drift
    def mean_birth_year(res, ids):
        years = [int(res["Patient"][i]["birthDate"][:4]) for i in ids]
        return sum(years) / len(years)
    assert mean_birth_year(base, shifted) - mean_birth_year(drift, shifted) > 5
    for pid in shifted:  # and have no data before the drift date
        for e in drift["Encounter"].values():
            if _patient_of(e) == pid:
                assert _t(e["period"]["start"]) >= DRIFT_DATE


def test_drift_leaves_everything_before_the_date_identical(pair):
    base_dir, drift_dir, _ = pair
    base, drift = _load(base_dir), _load(drift_dir)
    for rid, e in base["Encounter"].items():
        if _t(e["period"]["start"]) < DRIFT_DATE:
            assert drift["Encounter"].get(rid) == e


def test_bias_removes_only_chronic_conditions_of_its_group(pair):
    base_dir, _, bias_dir = pair
    base, bias = _load(base_dir), _load(bias_dir)
    black = {pid for pid, p in base["Patient"].items()
             if p["extension"][0]["extension"][0]["valueCoding"]["code"] == "2054-5"}
    assert len(black) > 30
    for t in TYPES:
        if t == "Condition":
            continue
        assert base[t] == bias[t], t
    missing = set(base["Condition"]) - set(bias["Condition"])
    assert set(bias["Condition"]) <= set(base["Condition"])
    for cid in missing:
        c = base["Condition"][cid]
        assert _patient_of(c) in black
        assert c["category"][0]["coding"][0]["code"] == "problem-list-item"
    group_chronic = [c for c in base["Condition"].values() if _patient_of(c) in black
                     and c["category"][0]["coding"][0]["code"] == "problem-list-item"]
    assert 0.35 <= len(missing) / len(group_chronic) <= 0.65  # the configured rate, 0.5
    # the truth does not change: the group's real risk is the same, its data understates it
    for name in ("stays.parquet",):
        assert pq.read_table(base_dir / "truth" / name).equals(pq.read_table(bias_dir / "truth" / name))
    flags = pq.read_table(bias_dir / "truth" / "patients.parquet").to_pylist()
    assert {r["patient_id"] for r in flags if r["under_recorded"]} <= black


def test_sites_differ_in_units_time_zones_and_recording(resources):
    patients = {p["id"]: p["managingOrganization"]["reference"] for p in resources("Patient")}
    orgs = {f"Organization/{o['id']}": o["name"] for o in resources("Organization")}
    encounters = {e["id"]: orgs[e["serviceProvider"]["reference"]] for e in resources("Encounter")}
    units: dict[str, Counter] = {}
    offsets: dict[str, Counter] = {}
    housing: Counter = Counter()
    for o in resources("Observation"):
        site = encounters[o["encounter"]["reference"].split("/")[1]]
        code = o["code"]["coding"][0]["code"]
        if code == "2160-0":
            units.setdefault(site, Counter())[o["valueQuantity"]["unit"]] += 1
        offsets.setdefault(site, Counter())[o["effectiveDateTime"][19:]] += 1
        if code == "71802-3":
            housing[site] += 1
    assert set(units["Lakeside Medical Center"]) == {"umol/L"}
    assert set(units["Riverside University Hospital"]) == {"mg/dL"}
    assert set(offsets["Northfield Community Hospital"]) == {"-05:00", "-04:00"}  # local time, with DST
    assert set(offsets["Riverside University Hospital"]) == {"Z"}
    assert housing["Northfield Community Hospital"] == 0 and housing["Lakeside Medical Center"] > 0
    assert len(set(patients.values())) == 3


def test_sites_differ_in_case_mix_and_outcomes(hospital: Path):
    import json

    summary = json.loads((hospital / "summary.json").read_text())
    rates = {k: v["readmission_rate_30d"] for k, v in summary["by_site"].items()}
    assert max(rates.values()) - min(rates.values()) > 0.02
    truth = pq.read_table(hospital / "truth" / "stays.parquet").to_pylist()
    dx = {s: Counter(r["principal_diagnosis"] for r in truth if r["site"] == s) for s in rates}
    share = {s: (c["hf_exac"] + c["copd_exac"]) / sum(c.values()) for s, c in dx.items()}
    assert share["NCH"] > share["LMC"]  # the rural hospital sees more heart failure and COPD


def test_scenarios_are_recorded_in_the_mechanism_file(pair):
    _, drift_dir, bias_dir = pair
    d = orjson.loads((drift_dir / "truth" / "mechanism.json").read_bytes())
    b = orjson.loads((bias_dir / "truth" / "mechanism.json").read_bytes())
    assert d["scenarios"]["drift"] == {"on": True, "date": "2023-01-01"}
    assert b["scenarios"]["bias"]["group"] == "race:black"
    assert "readmission_30d" in d and d["readmission_30d"]["coefficients"]["frailty_sd"] > 0
    with gzip.open(drift_dir / "ndjson" / "Patient.ndjson.gz") as f:
        assert f.readline()
