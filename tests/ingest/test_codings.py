"""A concept coded in several known systems or at several granularities gives one event per known code, each with
the value read for its own code: US Core pulse oximetry sends LOINC 2708-6 and 59408-5 (the feature reads 59408-5),
a weight 3141-9 and 29463-7, a drug NDC and RxNorm (the feature counts RxNorm). A concept with one coding maps to
one event, as it always did."""

from __future__ import annotations

import datetime as dt

import orjson
import pytest

from careloop.ingest.mapping import Batch, Context, Reject, decode, map_resource, observation_codes
from careloop.ingest.runner import ingest
from careloop.store import EventStore

P = {"reference": "Patient/p1"}
LOINC = "http://loinc.org"
RXNORM = "http://www.nlm.nih.gov/research/umls/rxnorm"
NDC = "http://hl7.org/fhir/sid/ndc"


def _obs(codes: list[tuple[str, str]], value: float, unit: str, **over) -> dict:
    return {"resourceType": "Observation", "id": "o1", "status": "final", "subject": P,
            "code": {"coding": [{"system": s, "code": c} for s, c in codes]},
            "effectiveDateTime": "2023-05-03T10:00:00Z",
            "valueQuantity": {"value": value, "unit": unit, "system": "http://unitsofmeasure.org", "code": unit}} | over


def _mr(codes: list[tuple[str, str]], rid: str = "m1") -> dict:
    return {"resourceType": "MedicationRequest", "id": rid, "status": "active", "intent": "order", "subject": P,
            "encounter": {"reference": "Encounter/e1"}, "authoredOn": "2023-05-02T10:00:00Z",
            "medicationCodeableConcept": {"coding": [{"system": s, "code": c} for s, c in codes]}}


def _map(res: dict) -> Batch:
    b = Batch()
    map_resource(decode(orjson.dumps(res)), Context(), b)
    return b


def _events(b: Batch) -> dict[str, tuple]:
    """code -> (numeric_value, unit, original_value, original_unit)"""
    return {e[2]: (e[3], e[5], e[6], e[7]) for e in b.ev}


def test_pulse_oximetry_coded_twice_gives_both_codes():
    b = _map(_obs([(LOINC, "2708-6"), (LOINC, "59408-5")], 91, "%"))
    assert _events(b) == {"LOINC/2708-6": (91.0, "%", 91.0, "%"), "LOINC/59408-5": (91.0, "%", 91.0, "%")}


def test_each_code_reads_the_value_in_its_own_canonical_unit():
    # 29463-7 (body weight) is read in kg; 3141-9 (measured weight) has no canonical unit, so it stays as sent
    b = _map(_obs([(LOINC, "3141-9"), (LOINC, "29463-7")], 176.37, "[lb_av]"))
    ev = _events(b)
    assert ev["LOINC/3141-9"] == (176.37, "[lb_av]", 176.37, "[lb_av]")
    assert ev["LOINC/29463-7"][1:] == ("kg", 176.37, "[lb_av]")
    assert ev["LOINC/29463-7"][0] == pytest.approx(80.0, rel=1e-4)
    assert not b.unconverted


def test_a_value_not_read_is_counted_for_each_code():
    b = _map(_obs([(LOINC, "2160-0"), (LOINC, "38483-4"), (LOINC, "2160-0")], 9.0, "mmol/mol"))
    assert [e[2] for e in b.ev] == ["LOINC/2160-0", "LOINC/38483-4"]  # a repeated coding gives one event
    assert b.unconverted == {("LOINC/2160-0", "mmol/mol"): 1, ("LOINC/38483-4", "mmol/mol"): 1}


def test_unknown_systems_are_passed_over_and_one_coding_maps_as_before():
    local = ("http://example.org/local", "HR")
    b = _map(_obs([local, ("http://snomed.info/sct", "364075005"), (LOINC, "8867-4")], 80, "/min"))
    assert sorted(_events(b)) == ["LOINC/8867-4", "SNOMED/364075005"]
    one = _map(_obs([(LOINC, "8867-4")], 80, "/min"))
    assert one.ev == [(one.ev[0][0], 1683108000000000, "LOINC/8867-4", 80.0, None, "/min", 80.0, "/min", None,
                       "Observation", "o1")]
    with pytest.raises(Reject) as exc:
        _map(_obs([local], 80, "/min"))
    assert exc.value.reason == "unknown code system for a required field"


def test_a_component_coded_twice_gives_both_codes_and_the_codes_for_prefiltering_cover_them():
    res = _obs([(LOINC, "85354-9")], 0, "mm[Hg]")
    del res["valueQuantity"]
    res["component"] = [
        {"code": {"coding": [{"system": LOINC, "code": "8480-6"}, {"system": "http://snomed.info/sct",
                                                                    "code": "271649006"}]},
         "valueQuantity": {"value": 120, "unit": "mm[Hg]"}},
        {"code": {"coding": [{"system": LOINC, "code": "8462-4"}]}, "valueQuantity": {"value": 80, "unit": "mm[Hg]"}},
    ]
    b = _map(res)
    assert {e[2]: e[3] for e in b.ev} == {"LOINC/8480-6": 120.0, "SNOMED/271649006": 120.0, "LOINC/8462-4": 80.0}
    assert {e[2] for e in b.ev} <= set(observation_codes(decode(orjson.dumps(res))))


def test_a_rejected_value_leaves_no_row_of_any_code():
    res = _obs([(LOINC, "2708-6"), (LOINC, "59408-5")], 91, "%")
    res["valueQuantity"]["comparator"] = "~"
    res["component"] = [{"code": {"coding": [{"system": LOINC, "code": "8480-6"}]},
                         "valueQuantity": {"value": 120, "unit": "mm[Hg]"}}]
    b = Batch()
    with pytest.raises(Reject):
        map_resource(decode(orjson.dumps(res)), Context(), b)
    assert b.ev == [] and not b.unconverted


def test_a_medication_coded_in_ndc_and_rxnorm_gives_both():
    b = _map(_mr([(NDC, "0093-0058-01"), (RXNORM, "197361")]))
    assert [e[2] for e in b.ev] == ["NDC/0093-0058-01", "RXNORM/197361"]
    assert {e[8] for e in b.ev} == {"e1"}


def test_a_superseded_copy_takes_back_the_values_not_read_of_every_code(tmp_path):
    folder = tmp_path / "x"
    folder.mkdir()
    codes = [(LOINC, "2160-0"), (LOINC, "38483-4")]
    old = _obs(codes, 9.0, "mmol/mol", meta={"lastUpdated": "2023-05-03T11:00:00Z"})
    new = _obs(codes, 1.3, "mg/dL", meta={"lastUpdated": "2023-05-03T12:00:00Z"})
    stale = _obs(codes, 7.0, "K", id="o2", meta={"lastUpdated": "2023-05-03T12:00:00Z"})
    lines = [{"resourceType": "Patient", "id": "p1", "gender": "female", "birthDate": "1950-02-03"}, old, new, stale]
    (folder / "Observation.ndjson").write_bytes(b"".join(orjson.dumps(r) + b"\n" for r in lines))
    report = ingest([folder], tmp_path / "store", workers=1).to_json()
    assert report["reconciled"] and report["loaded"] == 3
    unread = {k: v for k, v in report["reasons"].items() if k.startswith("loaded, value not read")}
    assert unread == {"loaded, value not read: LOINC/2160-0 in 'K', no conversion to mg/dL": 1,
                      "loaded, value not read: LOINC/38483-4 in 'K', no conversion to mg/dL": 1}
    con = EventStore.open(tmp_path / "store").connect()
    rows = con.execute("SELECT source_id, code, numeric_value FROM events WHERE source_resource = 'Observation' "
                       "ORDER BY source_id, code").fetchall()
    assert rows == [("o1", "LOINC/2160-0", 1.3), ("o1", "LOINC/38483-4", 1.3),
                    ("o2", "LOINC/2160-0", None), ("o2", "LOINC/38483-4", None)]


def test_the_bedside_reads_spo2_and_rxnorm_from_resources_coded_twice_or_contained():
    from careloop.features.spec import load_feature_set
    from careloop.serve.features import bedside_features, collect

    fs = load_feature_set("readmission")
    pat = {"resourceType": "Patient", "id": "p1", "birthDate": "1950-01-01", "gender": "male"}
    enc = {"resourceType": "Encounter", "id": "e1", "status": "finished", "subject": P, "class": {"code": "IMP"},
           "period": {"start": "2023-05-01T10:00:00Z", "end": "2023-05-05T10:00:00Z"}}
    spo2 = [_obs([(LOINC, "2708-6"), (LOINC, "59408-5")], v, "%", id=f"ox{i}", effectiveDateTime=t)
            for i, (v, t) in enumerate([(91, "2023-05-03T10:00:00Z"), (95, "2023-05-04T10:00:00Z")])]
    meds = [_mr([(NDC, "0093-0058-01"), (RXNORM, "197361")]), _mr([(RXNORM, "197361"), (NDC, "x")], "m2"),
            _mr([(NDC, "0093-1111-01"), (RXNORM, "308136")], "m3"),
            _by_reference("#m", [MED | {"id": "m", "code": {"coding": [{"system": RXNORM, "code": "314076"}]}}])
            | {"id": "m4"}]

    def bundle(rs: list[dict]) -> dict:
        return {"resourceType": "Bundle", "type": "searchset", "entry": [{"resource": r} for r in rs]}

    pre = collect({"patient": pat, "encounters": bundle([enc]), "observations": bundle(spo2),
                   "medications": bundle(meds)}, "p1")
    row = bedside_features(fs, pre, "p1", "e1", now=dt.datetime(2023, 5, 6, tzinfo=dt.UTC)).row
    assert pre.rejected == []
    assert (row["spo2_last"], row["spo2_min"]) == (95.0, 91.0)
    assert row["medications_in_stay"] == 3.0  # RxNorm 197361, 308136 and (contained) 314076


@pytest.mark.parametrize(("oid", "code", "prefix"), [
    ("2.16.840.1.113883.6.1", "2951-2", "LOINC"), ("2.16.840.1.113883.6.96", "271649006", "SNOMED"),
])
def test_a_system_written_as_its_oid_maps_as_that_system(oid, code, prefix):
    b = _map(_obs([(f"urn:oid:{oid}", code)], 140, "mmol/L"))
    assert [(e[2], e[3]) for e in b.ev] == [(f"{prefix}/{code}", 140.0)]


def test_condition_and_medication_systems_written_as_oids():
    cond = {"resourceType": "Condition", "id": "c1", "subject": P, "recordedDate": "2022-01-01",
            "code": {"coding": [{"system": "urn:oid:2.16.840.1.113883.6.90", "code": "I50.9"},
                                {"system": "urn:oid:2.16.840.1.113883.6.96", "code": "84114007"}]}}
    assert [e[2] for e in _map(cond).ev] == ["ICD10CM/I50.9", "SNOMED/84114007"]
    mr = _mr([("urn:oid:2.16.840.1.113883.6.88", "197361")])
    assert [e[2] for e in _map(mr).ev] == ["RXNORM/197361"]


def _by_reference(ref: str, contained: list[dict]) -> dict:
    res = _mr([]) | {"medicationReference": {"reference": ref, "display": "amlodipine 5 mg"}, "contained": contained}
    del res["medicationCodeableConcept"]
    return res


MED = {"resourceType": "Medication", "id": "med1",
       "code": {"coding": [{"system": NDC, "code": "0093-0058-01", "display": "amlodipine"},
                           {"system": RXNORM, "code": "197361"}]}}


def test_a_medication_reference_to_a_contained_medication_reads_its_codes():
    other = {"resourceType": "Organization", "id": "med0", "code": "not a concept"}  # any other contained resource
    b = _map(_by_reference("#med1", [other, MED]))
    assert [e[2] for e in b.ev] == ["NDC/0093-0058-01", "RXNORM/197361"]


@pytest.mark.parametrize(("ref", "contained", "reason"), [
    ("Medication/med1", [], "unresolvable reference"),  # not contained, and not in the Bundle or the store
    ("#med2", [MED], "unresolvable reference"),
    ("#med1", [{"resourceType": "Substance", "id": "med1"}], "unresolvable reference"),
    ("#med1", [{"resourceType": "Medication", "id": "med1"}], "unknown code system for a required field"),
    ("#med1", [{"resourceType": "Medication", "id": "med1", "code": "197361"}], "invalid value"),
    ("#med1", [MED | {"code": {"coding": [{"system": "http://example.org/formulary", "code": "A1"}]}}],
     "unknown code system for a required field"),
])
def test_a_medication_reference_that_does_not_resolve_says_why(ref, contained, reason):
    with pytest.raises(Reject) as exc:
        _map(_by_reference(ref, contained))
    assert exc.value.reason == reason


def test_each_prefix_has_one_canonical_system_url():
    """The bedside writes its prefetch searches with the URL of each prefix (`SYSTEMS` inverted): an OID must not
    replace http://loinc.org there."""
    from careloop.ingest.mapping import SYSTEMS

    assert len(set(SYSTEMS.values())) == len(SYSTEMS)
    assert not [url for url in SYSTEMS if url.startswith("urn:")]


@pytest.mark.parametrize(("sent", "read"), [("ACUTE", "IMP"), ("NONAC", "IMP"), ("IMP", "IMP"), ("EMER", "EMER")])
def test_an_inpatient_class_specialisation_is_an_inpatient_stay(sent, read):
    """v3 ActCode: ACUTE and NONAC specialise IMP; a task looking for inpatient stays must find them."""
    enc = {"resourceType": "Encounter", "id": "e1", "status": "finished", "subject": P,
           "class": {"system": "http://terminology.hl7.org/CodeSystem/v3-ActCode", "code": sent},
           "period": {"start": "2023-05-01T10:00:00Z", "end": "2023-05-04T10:00:00Z"}}
    assert _map(enc).enc["class"] == [read]
