"""A lab value is read in its code's canonical unit, or not at all: one in a unit careloop cannot convert keeps its
number as sent (`original_value`) but gives no `numeric_value`, so no feature reads a creatinine in µmol/mol as if it
were mg/dL. Units as feeds write them ("mg/dl", "µmol/L") are read as the UCUM codes they mean."""

from __future__ import annotations

import math

import orjson
import pytest
from hypothesis import given
from hypothesis import strategies as st

from careloop.ingest.mapping import _CONVERT, CANONICAL_UNITS, UNIT_ALIASES, Batch, Context, decode, map_resource
from careloop.ingest.runner import ingest
from careloop.store import EventStore

# independent of the mapping's tables: value in the canonical unit for each (LOINC, unit as sent)
EXPECTED = [
    ("2160-0", 1.3, "mg/dL", 1.3),
    ("2160-0", 1.3, "mg/dl", 1.3),
    ("2160-0", 114.946, "umol/L", 1.3),
    ("2160-0", 114.946, "µmol/L", 1.3),  # micro sign
    ("2160-0", 114.946, "μmol/L", 1.3),  # Greek mu
    ("2160-0", 114.946, "umol/l", 1.3),
    ("2345-7", 5.5, "mmol/L", 5.5 * 18.016),
    ("2345-7", 5550.0, "µmol/L", 100.0),  # glucose in umol/L: glucose's molar mass, not creatinine's factor
    ("3094-0", 7140.0, "umol/L", 20.0),  # urea nitrogen
    ("2345-7", 99.0, "mg/dl", 99.0),
    ("718-7", 135.0, "g/L", 13.5),
    ("718-7", 135.0, "g/l", 13.5),
    ("8310-5", 98.6, "[degF]", 37.0),
    ("8310-5", 98.6, "°F", 37.0),
    ("8310-5", 37.2, "°C", 37.2),
    ("29463-7", 176.37, "[lb_av]", 80.0),
    ("29463-7", 176.37, "lbs", 80.0),
    ("2951-2", 140.0, "mEq/L", 140.0),
    ("2951-2", 140.0, "meq/l", 140.0),
    ("2160-0", 1.3, None, 1.3),  # no unit: taken to be the canonical one
]
NOT_CONVERTIBLE = [("2160-0", 9.0, "mmol/mol"), ("2160-0", 1.3, "mg/L"), ("29463-7", 12.0, "[stone_av]"),
                   ("718-7", 8.4, "mmol/L"), ("8310-5", 310.0, "K")]


def _obs(loinc: str, value: float, unit: str | None, *, code: bool = False, comparator: str | None = None) -> dict:
    q = {"value": value} | ({"comparator": comparator} if comparator else {}) | ({"unit": unit} if unit else {}) | (
        {"system": "http://unitsofmeasure.org", "code": unit} if code and unit else {})
    return {"resourceType": "Observation", "id": "o1", "status": "final",
            "code": {"coding": [{"system": "http://loinc.org", "code": loinc}]},
            "subject": {"reference": "Patient/p1"}, "effectiveDateTime": "2021-03-04T05:06:07Z", "valueQuantity": q}


def _event(res: dict) -> tuple[Batch, dict]:
    b = Batch()
    map_resource(decode(orjson.dumps(res)), Context(), b)
    return b, {k: v[0] for k, v in b.event_columns().items()}


@pytest.mark.parametrize(("loinc", "value", "unit", "canonical"), EXPECTED)
def test_a_convertible_unit_is_read_in_the_canonical_unit(loinc, value, unit, canonical):
    b, ev = _event(_obs(loinc, value, unit))
    assert ev["numeric_value"] == pytest.approx(canonical, rel=1e-3)
    assert ev["unit"] == (CANONICAL_UNITS[loinc] if unit else None)
    assert (ev["original_value"], ev["original_unit"]) == (value, unit)
    assert not b.unconverted


@pytest.mark.parametrize(("loinc", "value", "unit"), NOT_CONVERTIBLE)
def test_a_unit_without_conversion_keeps_the_number_as_sent_and_gives_no_value(loinc, value, unit):
    for as_code in (False, True):  # in `unit` (display) or as a UCUM `code`
        b, ev = _event(_obs(loinc, value, unit, code=as_code))
        assert ev["numeric_value"] is None
        assert (ev["original_value"], ev["original_unit"], ev["unit"]) == (value, unit, unit)
        assert b.unconverted == {(f"LOINC/{loinc}", unit): 1}


def test_a_code_without_canonical_unit_keeps_value_and_unit_as_sent():
    b, ev = _event(_obs("8867-4", 72.0, "/min"))
    assert (ev["numeric_value"], ev["unit"]) == (72.0, "/min") and not b.unconverted


def test_every_alias_names_a_unit_the_mapping_knows():
    known = set(CANONICAL_UNITS.values()) | {u for _, u in _CONVERT} | {"mmol/L", "umol/L"}  # molar: by code
    assert set(UNIT_ALIASES.values()) <= known


@given(st.sampled_from(sorted(CANONICAL_UNITS)), st.floats(0.01, 1e4), st.text(max_size=12))
def test_any_unit_gives_the_canonical_unit_or_no_value(loinc, value, unit):
    b, ev = _event(_obs(loinc, value, unit or None))
    if ev["numeric_value"] is None:
        assert b.unconverted and ev["original_value"] == value
    else:
        assert math.isfinite(ev["numeric_value"]) and ev["unit"] in (CANONICAL_UNITS[loinc], None)


def test_the_ingest_report_counts_values_not_read(tmp_path):
    folder = tmp_path / "x"
    folder.mkdir()
    patient = {"resourceType": "Patient", "id": "p1", "gender": "female", "birthDate": "1950-02-03"}
    lines = [patient, _obs("2160-0", 9.0, "mmol/mol") | {"id": "a"}, _obs("2160-0", 9.5, "mmol/mol") | {"id": "b"},
             _obs("2160-0", 1.3, "mg/dl") | {"id": "c"}]
    (folder / "x.ndjson").write_bytes(b"".join(orjson.dumps(r) + b"\n" for r in lines))
    report = ingest([folder], tmp_path / "store", workers=1).to_json()
    assert report["reconciled"] and report["loaded"] == 4
    assert report["reasons"] == {"loaded, value not read: LOINC/2160-0 in 'mmol/mol', no conversion to mg/dL": 2}
    con = EventStore.open(tmp_path / "store").connect()
    rows = con.execute("SELECT source_id, numeric_value, original_value FROM events WHERE code = 'LOINC/2160-0' "
                       "ORDER BY source_id").fetchall()
    assert rows == [("a", None, 9.0), ("b", None, 9.5), ("c", 1.3, 1.3)]


def test_a_value_not_read_does_not_name_the_columns_unit(tmp_path):
    """The unit a trained column is shown in (the model card, the card's reasons) is that of the values features
    read: a creatinine sent in kelvin ("K" sorts before "mg/dL") leaves it mg/dL."""
    from careloop.engines import DuckDBEngine
    from careloop.workflows._data import _units

    folder = tmp_path / "x"
    folder.mkdir()
    patient = {"resourceType": "Patient", "id": "p1", "gender": "female", "birthDate": "1950-02-03"}
    lines = [patient, _obs("2160-0", 300.0, "K") | {"id": "a"}, _obs("2160-0", 1.3, "mg/dL") | {"id": "b"}]
    (folder / "x.ndjson").write_bytes(b"".join(orjson.dumps(r) + b"\n" for r in lines))
    ingest([folder], tmp_path / "store", workers=1)
    assert _units(DuckDBEngine(tmp_path / "store"), ["LOINC/2160-0"]) == {"LOINC/2160-0": "mg/dL"}


@pytest.mark.parametrize(("loinc", "value", "unit", "comparator", "canonical", "text"), [
    ("33914-3", 60, "mL/min/{1.73_m2}", ">", 60.0, ">60"),  # eGFR above the reporting limit
    ("2160-0", 26.5, "umol/L", "<", 26.5 / 88.42, "<26.5"),  # creatinine below detection, converted
    ("2524-7", 0.5, "mmol/L", "<=", 0.5, "<=0.5"),
    ("2345-7", 600, "mg/dL", ">=", 600.0, ">=600"),  # glucose above the meter's range
])
def test_a_value_reported_as_a_bound_is_read_at_the_bound_and_says_so(loinc, value, unit, comparator, canonical,
                                                                        text):
    _, ev = _event(_obs(loinc, value, unit, comparator=comparator))
    assert ev["numeric_value"] == pytest.approx(canonical, rel=1e-3)
    assert ev["text_value"] == text
    assert (ev["original_value"], ev["original_unit"]) == (value, unit)
    _, plain = _event(_obs(loinc, value, unit))
    assert plain["text_value"] is None and plain["numeric_value"] == ev["numeric_value"]


def test_a_component_reported_as_a_bound_says_so():
    res = _obs("85354-9", 0, None)
    del res["valueQuantity"]
    res["component"] = [
        {"code": {"coding": [{"system": "http://loinc.org", "code": "8480-6"}]},
         "valueQuantity": {"value": 250, "comparator": ">", "unit": "mm[Hg]"}},
        {"code": {"coding": [{"system": "http://loinc.org", "code": "8462-4"}]},
         "valueQuantity": {"value": 90, "unit": "mm[Hg]"}},
    ]
    b = Batch()
    map_resource(decode(orjson.dumps(res)), Context(), b)
    cols = b.event_columns()
    got = dict(zip(cols["code"], zip(cols["numeric_value"], cols["text_value"], strict=True), strict=True))
    assert got == {"LOINC/8480-6": (250.0, ">250"), "LOINC/8462-4": (90.0, None)}


@pytest.mark.parametrize(("value", "text"), [
    ({"valueDateTime": "2023-01-01T08:30:00+01:00"}, "2023-01-01T08:30:00+01:00"),
    ({"valueTime": "10:00:00"}, "10:00:00"),
    ({"valueRange": {"low": {"value": 1, "unit": "mg/dL"}, "high": {"value": 2.5, "unit": "mg/dL"}}}, "1-2.5 mg/dL"),
    ({"valueRange": {"low": {"value": 1, "unit": "g/L"}, "high": {"value": 2, "unit": "mg/dL"}}}, "1 g/L-2 mg/dL"),
    ({"valueRange": {"low": {"value": 10}}}, ">=10"),
    ({"valueRange": {"high": {"value": 0.5, "unit": "%"}}}, "<=0.5 %"),
    ({"valueRatio": {"numerator": {"value": 1}, "denominator": {"value": 64}}}, "1/64"),
    ({"valueRatio": {"numerator": {"value": 5, "unit": "mg"}, "denominator": {"value": 1, "unit": "mL"}}},
     "5 mg/1 mL"),
    ({"valuePeriod": {"start": "2023-01-01", "end": "2023-01-02"}}, "2023-01-01/2023-01-02"),
    ({"valuePeriod": {"start": "2023-01-01"}}, "2023-01-01/"),
    ({"valueSampledData": {"origin": {"value": 0, "unit": "mV"}, "period": 10, "dimensions": 1, "data": "1 2 E"}},
     "SampledData origin 0 mV, period 10 ms, factor 1, dimensions 1: 1 2 E"),
])
def test_a_value_of_a_kind_not_read_as_a_number_is_kept_as_text(value, text):
    res = _obs("8867-4", 0, None)
    del res["valueQuantity"]
    _, ev = _event(res | value)
    assert (ev["numeric_value"], ev["text_value"], ev["original_value"]) == (None, text, None)
    comp = _obs("85354-9", 0, None)
    del comp["valueQuantity"]
    comp["component"] = [{"code": {"coding": [{"system": "http://loinc.org", "code": "8480-6"}]}} | value]
    _, cev = _event(comp)
    assert (cev["code"], cev["text_value"]) == ("LOINC/8480-6", text)
