"""Every column of the real readmission feature set reads as a clinical phrase, never the generic fallback."""

from __future__ import annotations

import typing

import pytest

from careloop.explain import ColumnInfo, column_infos, phrase
from careloop.explain._phrases import _KINDS, specific_phrase
from careloop.features.spec import Feature, load_feature_set

# a typical coded value for each vocabulary a feature may speak
TYPICAL_CODE = {"sex": "female", "race": "2054-5", "ethnicity": "2135-2", "language": "es", "payer": "2",
                "discharge_disposition": "snf", "admit_source": "emd", "housing": "LOINC/LA31995-6",
                "diagnosis": "ICD10CM/I50.23"}
CODED = {"static", "latest_code", "latest_text", "admit_source", "principal_diagnosis"}
RAW = ("LOINC/", "SOPT/", "RACE/", "ICD10CM/", "DISCHARGE/", "nan", "None", "<NA>", "_")


@pytest.fixture(scope="module")
def infos() -> list[ColumnInfo]:
    return column_infos(load_feature_set("readmission").describe())


def _typical(info: ColumnInfo) -> object:
    if info.kind in CODED:
        assert info.vocabulary in TYPICAL_CODE, f"{info.column}: no vocabulary for a {info.kind} feature"
        return TYPICAL_CODE[info.vocabulary]
    if info.kind == "emergent":
        return True
    return 3.0


def test_every_feature_kind_has_phrases():
    kinds = set(typing.get_args(Feature.model_fields["kind"].annotation))
    assert kinds <= set(_KINDS), f"no phrases for {sorted(kinds - set(_KINDS))}"


def test_labels_and_units(infos):
    by = {i.column: i for i in infos}
    assert by["sodium_last"].label == "sodium" and by["sodium_last"].unit == "mmol/L"
    assert by["hemoglobin_min"].label == "hemoglobin" and by["hemoglobin_min"].unit == "g/dL"
    assert by["admissions_180d"].label == "admissions"
    assert by["ed_visits_180d"].label == "ED visits"
    assert by["systolic_bp_last"].unit == "mm[Hg]"
    for i in infos:
        if i.kind == "measurement" and i.feature != "household_size":
            assert i.unit, f"{i.column} has no unit"
    store_units = {"LOINC/2160-0": "umol/L"}  # a site reporting creatinine in SI units
    si = {i.column: i for i in column_infos(load_feature_set("readmission").describe(), store_units)}
    assert si["creatinine_last"].unit == "umol/L"
    assert phrase(si["creatinine_last"], 168.8) == "creatinine 169 µmol/L at discharge"


def test_every_column_has_a_specific_phrase(infos):
    assert len(infos) == len(load_feature_set("readmission").columns)
    for info in infos:
        for value in (_typical(info), None, float("nan")):
            text = specific_phrase(info, value)
            assert text, f"{info.column}={value!r} falls back to the generic phrase"
            assert text == phrase(info, value)
            assert not any(r in text for r in RAW), f"{info.column}={value!r}: {text!r}"
            assert ": " not in text or info.kind in CODED, f"{info.column}={value!r}: {text!r}"


def test_missing_values_say_so(infos):
    for info in infos:
        text = phrase(info, None)
        assert "not recorded" in text or text.startswith("no "), f"{info.column}: {text!r}"


def test_real_feature_rows_read_cleanly(infos, hospital_store):
    """300 stays of the session's synthetic hospital, with the values the feature SQL really produces."""
    from careloop.engines import DuckDBEngine
    from careloop.features.engine import extract
    from careloop.tasks.cohort import build_cohort
    from careloop.tasks.spec import load_task

    eng = DuckDBEngine(hospital_store[0])
    cohort = build_cohort(load_task("readmission-30d"), eng).table.slice(0, 300)
    t = extract(load_feature_set("readmission"), cohort, eng).table
    eng.close()
    rows = t.slice(0, 300).to_pylist()
    for info in infos:
        if info.column not in t.column_names:
            continue
        for row in rows:
            text = specific_phrase(info, row[info.column])
            assert text, f"{info.column}={row[info.column]!r}"
            assert not any(r in text for r in RAW), f"{info.column}={row[info.column]!r}: {text!r}"
