"""The export is FHIR R4 that validates, whose references all resolve, with a Bulk Data manifest."""

from __future__ import annotations

import gzip
import json
import random
from collections import Counter
from pathlib import Path

import msgspec
import pytest
from fhir.resources.R4B import get_fhir_model_class

TYPES = ("Organization", "Location", "Practitioner", "Patient", "Coverage", "Encounter", "Condition", "Observation",
         "MedicationRequest", "Procedure", "DocumentReference")


@pytest.mark.parametrize("rtype", TYPES)
def test_a_sample_of_every_type_validates_with_fhir_resources(resources, rtype: str):
    rows = resources(rtype)
    assert rows, f"no {rtype} written"
    model = get_fhir_model_class(rtype)
    for res in random.Random(rtype).sample(rows, min(150, len(rows))):
        model.model_validate(res)


def test_manifest_is_shaped_like_a_bulk_data_export_and_counts_match(hospital: Path):
    manifest = json.loads((hospital / "ndjson" / "manifest.json").read_text())
    assert set(manifest) >= {"transactionTime", "request", "requiresAccessToken", "output", "error"}
    assert {o["type"] for o in manifest["output"]} == set(TYPES)
    for out in manifest["output"]:
        path = hospital / "ndjson" / out["url"]
        with gzip.open(path, "rb") as f:
            lines = [_HEAD.decode(x) for x in f]  # each line's type and id only (the whole files are large)
        assert len(lines) == out["count"]
        assert {r.resourceType for r in lines} == {out["type"]}
        assert len({r.id for r in lines}) == len(lines), "ids are unique within a type"


class _Head(msgspec.Struct):
    resourceType: str
    id: str


_HEAD = msgspec.json.Decoder(_Head)


def _references(node, found: list[str]) -> list[str]:
    if isinstance(node, dict):
        for k, v in node.items():
            if k == "reference" and isinstance(v, str):
                found.append(v)
            else:
                _references(v, found)
    elif isinstance(node, list):
        for v in node:
            _references(v, found)
    return found


def test_every_reference_in_the_export_resolves(resources):
    known = {f"{t}/{r['id']}" for t in TYPES for r in resources(t)}
    refs = Counter()
    for t in TYPES:
        for r in resources(t):
            for ref in _references(r, []):
                assert ref in known, f"{t}/{r['id']} points at missing {ref}"
                refs[ref.split("/")[0]] += 1
    assert set(refs) >= {"Patient", "Encounter", "Condition", "Practitioner", "Organization", "Location"}


def test_bundles_are_transactions_whose_references_resolve(hospital: Path):
    info = {}
    for name in ("hospitalInformation", "practitionerInformation"):
        bundle = json.loads(gzip.decompress((hospital / "bundles" / f"{name}.json.gz").read_bytes()))
        for e in bundle["entry"]:
            r = e["resource"]
            for ident in r.get("identifier", []):
                info[f"{r['resourceType']}?identifier={ident['system']}|{ident['value']}"] = r
    files = sorted(p for p in (hospital / "bundles").glob("*.json.gz") if "Information" not in p.name)
    assert len(files) == 5000
    Bundle = get_fhir_model_class("Bundle")
    for path in random.Random(1).sample(files, 40):
        bundle = json.loads(gzip.decompress(path.read_bytes()))
        Bundle.model_validate(bundle)
        assert bundle["type"] == "transaction"
        full = {e["fullUrl"] for e in bundle["entry"]}
        assert path.name.startswith(bundle["entry"][0]["resource"]["id"])
        assert bundle["entry"][0]["request"]["ifNoneExist"].startswith("identifier=")
        for e in bundle["entry"]:
            assert e["request"] == {"method": "POST", "url": e["resource"]["resourceType"],
                                    **({"ifNoneExist": e["request"]["ifNoneExist"]} if "ifNoneExist" in e["request"]
                                       else {})}
            for ref in _references(e["resource"], []):
                if ref.startswith("urn:uuid:"):
                    assert ref in full, f"{path.name}: dangling {ref}"
                else:
                    assert "?identifier=" in ref and ref in info, f"{path.name}: unresolved {ref}"


def test_us_core_demographics_and_phi_are_present(resources):
    patients = resources("Patient")
    exts = Counter()
    for p in patients:
        for e in p.get("extension", []):
            exts[e["url"].rsplit("/", 1)[-1]] += 1
        systems = {i["system"] for i in p["identifier"]}
        assert {"http://hl7.org/fhir/sid/us-ssn"} <= systems
        assert p["name"][0]["family"] and p["name"][0]["given"]
        assert p["telecom"][0]["value"].startswith("(")
        assert len(p["address"][0]["postalCode"]) == 5
    assert exts["us-core-race"] == exts["us-core-ethnicity"] == exts["us-core-birthsex"] == len(patients)
    languages = Counter(p["communication"][0]["language"]["coding"][0]["code"] for p in patients)
    assert languages["en"] > languages["es"] > 0
    payers = Counter(c["type"]["coding"][0]["display"] for c in resources("Coverage"))
    assert {"MEDICARE", "MEDICAID", "PRIVATE HEALTH INSURANCE", "Self-pay"} <= set(payers)
    assert sum("deceasedDateTime" in p for p in patients) > 0


def test_encounters_cover_classes_dispositions_and_admission_sources(resources):
    enc = resources("Encounter")
    classes = Counter(e["class"]["code"] for e in enc)
    assert classes["AMB"] > classes["EMER"] > classes["IMP"] > 0
    imp = [e for e in enc if e["class"]["code"] == "IMP"]
    dispo = Counter(e["hospitalization"]["dischargeDisposition"]["coding"][0]["code"] for e in imp
                    if "dischargeDisposition" in e["hospitalization"])
    assert {"home", "snf", "aadvice", "hosp", "exp", "other-hcf"} <= set(dispo)
    nubc = {c["code"] for e in imp if "dischargeDisposition" in e["hospitalization"]
            for c in e["hospitalization"]["dischargeDisposition"]["coding"]}
    assert {"01", "06", "03", "07", "50", "20", "02"} <= nubc  # home health is told apart from home
    sources = Counter(e["hospitalization"]["admitSource"]["coding"][0]["code"] for e in imp)
    assert {"emd", "mp"} <= set(sources)
    priorities = Counter(e["priority"]["coding"][0]["code"] for e in imp)
    assert priorities["EL"] > 0 and priorities["EM"] > priorities["EL"]
    assert any(e["status"] == "in-progress" for e in imp), "stays still open when the data ends"


def test_observations_use_loinc_and_ucum_with_reference_ranges(resources):
    obs = resources("Observation")
    codes = Counter(o["code"]["coding"][0]["code"] for o in obs)
    for loinc in ("2951-2", "2823-3", "2160-0", "3094-0", "718-7", "6690-2", "2345-7", "1751-7", "4548-4",
                  "8867-4", "85354-9", "9279-1", "59408-5", "8310-5", "29463-7", "72166-2", "63512-8", "71802-3"):
        assert codes[loinc] > 0, loinc
    labs = [o for o in obs if o["category"][0]["coding"][0]["code"] == "laboratory"]
    assert all(o["valueQuantity"]["system"] == "http://unitsofmeasure.org" for o in labs)
    assert all("referenceRange" in o for o in labs)
    bp = next(o for o in obs if o["code"]["coding"][0]["code"] == "85354-9")
    assert [c["code"]["coding"][0]["code"] for c in bp["component"]] == ["8480-6", "8462-4"]


def test_conditions_carry_icd10cm_and_snomed(resources):
    conds = resources("Condition")
    systems = Counter(c["system"] for x in conds for c in x["code"]["coding"])
    assert systems["http://hl7.org/fhir/sid/icd-10-cm"] == systems["http://snomed.info/sct"] == len(conds)
    icd = {x["code"]["coding"][0]["code"] for x in conds}
    for code in ("I50.9", "J44.9", "E11.9", "N18.9", "K74.60", "F03.90", "F32.A"):
        assert code in icd, code
    cats = Counter(x["category"][0]["coding"][0]["code"] for x in conds)
    assert cats["problem-list-item"] > 0 and cats["encounter-diagnosis"] > 0


def test_medications_are_rxnorm_and_procedures_snomed(resources):
    meds = resources("MedicationRequest")
    assert all(m["medicationCodeableConcept"]["coding"][0]["system"] ==
               "http://www.nlm.nih.gov/research/umls/rxnorm" for m in meds)
    cats = Counter(m["category"][0]["coding"][0]["code"] for m in meds)
    assert cats["inpatient"] > 0 and cats["discharge"] > 0
    procs = resources("Procedure")
    assert procs and all(p["code"]["coding"][0]["system"] == "http://snomed.info/sct" for p in procs)


def test_no_ground_truth_leaks_into_the_fhir(hospital: Path):
    for path in (hospital / "ndjson").glob("*.ndjson.gz"):
        text = gzip.decompress(path.read_bytes())
        for word in (b"true_risk", b"frailty", b"clinician_risk", b"readmitted"):
            assert word not in text, (path.name, word)
