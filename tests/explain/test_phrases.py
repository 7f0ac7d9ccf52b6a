"""phrase(): one exact clinical phrase per feature kind, aggregation, window and value."""

from __future__ import annotations

import math
from decimal import Decimal

import numpy as np
import pandas as pd
import pytest

from careloop.explain import ColumnInfo, column_infos, column_infos_for_table, format_number, phrase, window_phrase
from careloop.explain._phrases import specific_phrase


def col(kind: str, feature: str, *, window: str | None = None, agg: str | None = None, code: str | None = None,
        description: str = "a feature", units: dict | None = None) -> ColumnInfo:
    """A ColumnInfo built the way the platform builds them: from a FeatureSet.describe() row."""
    column = f"{feature}_{agg}" if kind == "measurement" else feature
    row = {"column": column, "feature": feature, "description": description, "kind": kind, "window": window,
           "aggregation": agg, "code": code}
    return column_infos([row], units)[0]


SODIUM = {"code": "LOINC/2951-2", "window": "stay"}
HGB = {"code": "LOINC/718-7", "window": "stay"}
CREAT = {"code": "LOINC/2160-0", "window": "stay"}
K = {"code": "LOINC/2823-3", "window": "stay"}

CASES = [
    # age
    (col("age", "age"), 78.9, "age 78"),
    (col("age", "age"), 0.4, "age under 1 year"),
    (col("age", "age"), None, "age not recorded"),
    # static and latest codes, through the vocabularies
    (col("static", "sex", code="GENDER/"), "female", "female"),
    (col("static", "sex", code="GENDER/"), "male", "male"),
    (col("static", "race", code="RACE/"), "2054-5", "race: Black or African American"),
    (col("static", "ethnicity", code="ETHNICITY/"), "2135-2", "ethnicity: Hispanic or Latino"),
    (col("static", "language", code="LANGUAGE/"), "ht", "preferred language: Haitian Creole"),
    (col("latest_code", "payer", code="SOPT/", window="all"), "2", "payer: Medicaid"),
    (col("latest_code", "payer", code="SOPT/", window="all"), "81", "payer: Self-pay"),
    (col("latest_code", "discharge_disposition", code="DISCHARGE/", window="stay"), "snf",
     "discharged to a skilled nursing facility"),
    (col("latest_code", "discharge_disposition", code="DISCHARGE/", window="stay"), "home", "discharged home"),
    (col("latest_code", "discharge_disposition", code="DISCHARGE/", window="stay"), "aadvice",
     "left against medical advice"),
    (col("latest_code", "discharge_disposition", code="DISCHARGE/", window="stay"), "06",
     "discharged home with home health care"),
    (col("latest_code", "discharge_disposition", code="DISCHARGE/", window="stay"), None,
     "discharge disposition not recorded"),
    (col("admit_source", "admit_source"), "emd", "admitted from the emergency department"),
    (col("admit_source", "admit_source"), "hosp-trans", "transferred from another hospital"),
    (col("admit_source", "admit_source"), "nursing", "admitted from a nursing home"),
    (col("principal_diagnosis", "principal_diagnosis"), "ICD10CM/I50.23", "admitted for heart failure (I50.23)"),
    (col("principal_diagnosis", "principal_diagnosis"), "ICD10CM/K92.2",
     "admitted for gastrointestinal bleed (K92.2)"),
    (col("principal_diagnosis", "principal_diagnosis"), "ICD10CM/I99.8",
     "principal diagnosis I99.8 (circulatory disease)"),
    (col("principal_diagnosis", "principal_diagnosis"), None, "principal diagnosis not recorded"),
    # housing (LOINC 71802-3 answers, AHC HRSN and PRAPARE)
    (col("latest_text", "housing", code="LOINC/71802-3", window="all"), "LOINC/LA31995-6", "no stable housing"),
    (col("latest_text", "housing", code="LOINC/71802-3", window="all"), "LOINC/LA30190-5", "no stable housing"),
    (col("latest_text", "housing", code="LOINC/71802-3", window="all"), "LOINC/LA31994-9",
     "worried about losing housing"),
    (col("latest_text", "housing", code="LOINC/71802-3", window="all"), "LOINC/LA31993-1", "stable housing"),
    (col("latest_text", "housing", code="LOINC/71802-3", window="all"), None, "housing status not recorded"),
    # stay facts
    (col("length_of_stay", "los_days"), 7.425671, "7-day stay"),
    (col("length_of_stay", "los_days"), 13.6, "14-day stay"),
    (col("length_of_stay", "los_days"), 0.25, "stay of less than a day"),
    (col("emergent", "emergent_admission"), True, "emergency admission"),
    (col("emergent", "emergent_admission"), np.bool_(False), "elective admission"),
    (col("emergent", "emergent_admission"), 1.0, "emergency admission"),
    (col("emergent", "emergent_admission"), pd.NA, "admission priority not recorded"),
    # counts: plurals and windows
    (col("encounter_count", "admissions_180d", window="180d"), 3.0, "3 admissions in the past 6 months"),
    (col("encounter_count", "admissions_180d", window="180d"), 1.0, "1 admission in the past 6 months"),
    (col("encounter_count", "admissions_180d", window="180d"), 0.0, "no admissions in the past 6 months"),
    (col("encounter_count", "admissions_365d", window="365d"), 2, "2 admissions in the past year"),
    (col("encounter_count", "ed_visits_180d", window="180d"), 1, "1 ED visit in the past 6 months"),
    (col("encounter_count", "ed_visits_30d", window="30d"), 4, "4 ED visits in the past 30 days"),
    (col("encounter_count", "ed_visits_180d", window="180d"), None, "ED visits in the past 6 months not recorded"),
    (col("distinct_codes", "medications_in_stay", window="stay"), 6.0, "6 different medications during the stay"),
    (col("distinct_codes", "medications_in_stay", window="stay"), 1.0, "1 medication during the stay"),
    (col("distinct_codes", "diagnoses", window="all"), 1.0, "1 diagnosis"),
    (col("distinct_codes", "diagnoses", window="all"), 0, "no diagnoses"),
    (col("event_count", "procedures_in_stay", window="stay"), 2.0, "2 procedures during the stay"),
    (col("event_count", "procedures_in_stay", window="stay"), 0.0, "no procedures during the stay"),
    (col("event_count", "procedures_in_stay", window="stay"), 1.0, "1 procedure during the stay"),
    (col("days_since_discharge", "days_since_last_discharge"), 12.3,
     "previous discharge 12 days before this admission"),
    (col("days_since_discharge", "days_since_last_discharge"), 1.2, "previous discharge 1 day before this admission"),
    (col("days_since_discharge", "days_since_last_discharge"), 0.25,
     "previous discharge less than a day before this admission"),
    (col("days_since_discharge", "days_since_last_discharge"), 1142.0,
     "previous discharge 3 years before this admission"),
    (col("days_since_discharge", "days_since_last_discharge"), float("nan"), "no previous discharge"),
    # comorbidity and scores
    (col("comorbidity", "charlson_index", description="Charlson comorbidity index, Quan 2005"), 6.0,
     "Charlson comorbidity index 6"),
    (col("comorbidity", "elixhauser_vw", description="Elixhauser comorbidity as the van Walraven score"), -3.0,
     "Elixhauser comorbidity score -3"),
    (col("score", "lace", description="LACE index (van Walraven 2010)"), 11.0, "LACE index 11"),
    (col("score", "hospital_score", description="HOSPITAL score (Donze 2013)"), 3.0, "HOSPITAL score 3"),
    (col("score", "lace", description="LACE index (van Walraven 2010)"), None, "LACE index not recorded"),
    # measurements: every aggregation, with the lab's reporting precision
    (col("measurement", "sodium", agg="last", **SODIUM), 128.0, "sodium 128 mmol/L at discharge"),
    (col("measurement", "sodium", agg="first", **SODIUM), 131.4, "sodium 131 mmol/L at admission"),
    (col("measurement", "sodium", agg="min", **SODIUM), 127.0, "lowest sodium 127 mmol/L during the stay"),
    (col("measurement", "sodium", agg="max", **SODIUM), 149.0, "highest sodium 149 mmol/L during the stay"),
    (col("measurement", "sodium", agg="mean", **SODIUM), 138.26, "average sodium 138 mmol/L during the stay"),
    (col("measurement", "sodium", agg="trend", **SODIUM), 6.0, "sodium rose by 6 mmol/L during the stay"),
    (col("measurement", "sodium", agg="trend", **SODIUM), -10.0, "sodium fell by 10 mmol/L during the stay"),
    (col("measurement", "sodium", agg="trend", **SODIUM), 0.2, "sodium unchanged during the stay"),
    (col("measurement", "sodium", agg="count", **SODIUM), 4.0, "4 sodium measurements during the stay"),
    (col("measurement", "sodium", agg="count", **SODIUM), 1.0, "1 sodium measurement during the stay"),
    (col("measurement", "sodium", agg="count", **SODIUM), 0.0, "no sodium measured during the stay"),
    # hours_since counts from the window's first measurement (engine.py and rows.py)
    (col("measurement", "sodium", agg="hours_since", **SODIUM), 5.2,
     "sodium first measured 5 hours ago during the stay"),
    (col("measurement", "sodium", agg="hours_since", **SODIUM), 0.5,
     "sodium first measured less than an hour ago during the stay"),
    (col("measurement", "sodium", agg="hours_since", **SODIUM), 1.0,
     "sodium first measured 1 hour ago during the stay"),
    (col("measurement", "sodium", agg="hours_since", **SODIUM), 75.0,
     "sodium first measured 3 days ago during the stay"),
    (col("measurement", "hba1c", agg="hours_since", code="LOINC/4548-4", window="all"), 100.0,
     "HbA1c first measured 4 days ago"),
    (col("measurement", "hemoglobin", agg="min", **HGB), 8.94, "lowest hemoglobin 8.9 g/dL during the stay"),
    (col("measurement", "hemoglobin", agg="trend", **HGB), -1.06, "hemoglobin fell by 1.1 g/dL during the stay"),
    (col("measurement", "creatinine", agg="last", **CREAT), 1.914, "creatinine 1.91 mg/dL at discharge"),
    (col("measurement", "creatinine", agg="trend", **CREAT), -0.067858,
     "creatinine fell by 0.07 mg/dL during the stay"),
    (col("measurement", "potassium", agg="last", **K), 4.0, "potassium 4.0 mmol/L at discharge"),
    (col("measurement", "albumin", agg="last", code="LOINC/1751-7", window="stay"), None,
     "no albumin measured during the stay"),
    (col("measurement", "hba1c", agg="last", code="LOINC/4548-4", window="365d"), 8.14,
     "latest HbA1c 8.1% in the past year"),
    (col("measurement", "hba1c", agg="last", code="LOINC/4548-4", window="365d"), None,
     "no HbA1c measured in the past year"),
    (col("measurement", "weight", agg="last", code="LOINC/29463-7", window="all"), 80.694, "latest weight 80.7 kg"),
    (col("measurement", "weight", agg="last", code="LOINC/29463-7", window="all"), None, "weight not recorded"),
    (col("measurement", "weight", agg="first", code="LOINC/29463-7", window="365d"), 82.0,
     "earliest weight 82.0 kg in the past year"),
    (col("measurement", "heart_rate", agg="max", code="LOINC/8867-4", window="stay"), 118.0,
     "highest heart rate 118/min during the stay"),
    (col("measurement", "systolic_bp", agg="min", code="LOINC/8480-6", window="stay"), 88.0,
     "lowest systolic BP 88 mmHg during the stay"),
    (col("measurement", "spo2", agg="min", code="LOINC/59408-5", window="stay"), 88.0,
     "lowest SpO2 88% during the stay"),
    (col("measurement", "temperature", agg="max", code="LOINC/8310-5", window="stay"), 38.4444,
     "highest temperature 38.4°C during the stay"),
    (col("measurement", "wbc", agg="max", code="LOINC/6690-2", window="stay"), 15.23,
     "highest WBC 15.2 ×10³/µL during the stay"),
    (col("measurement", "household_size", agg="last", code="LOINC/63512-8", window="all"), 1.0, "lives alone"),
    (col("measurement", "household_size", agg="last", code="LOINC/63512-8", window="all"), 3.0,
     "3 people in the household"),
    (col("measurement", "household_size", agg="last", code="LOINC/63512-8", window="all"), None,
     "household size not recorded"),
    # a measurement the tables do not know: label from the name, unit from the caller or the description
    (col("measurement", "ferritin", agg="last", code="LOINC/2276-4", window="stay",
         units={"LOINC/2276-4": "ng/mL"}), 412.7, "ferritin 413 ng/mL at discharge"),
    (col("measurement", "urine_output", agg="mean", code="LOCAL/UO", window="24h",
         description="Urine output (mL/h) in the past day"), 42.26,
     "average urine output 42.3 mL/h in the past 24 hours"),
    (col("measurement", "temperature", agg="max", code="LOINC/8310-5", window="stay",
         units={"LOINC/8310-5": "[degF]"}), 100.4, "highest temperature 100.4°F during the stay"),
    # the store's unit wins over the canonical one, and then the canonical precision no longer applies
    (col("measurement", "creatinine", agg="last", **CREAT, units={"LOINC/2160-0": "umol/L"}), 168.8,
     "creatinine 169 µmol/L at discharge"),
]


@pytest.mark.parametrize(("info", "value", "expected"), CASES, ids=[f"{c[0].column}={c[1]!r}" for c in CASES])
def test_phrase(info: ColumnInfo, value: object, expected: str) -> None:
    assert phrase(info, value) == expected
    assert specific_phrase(info, value) == expected  # never the generic fallback


def test_numpy_and_decimal_values() -> None:
    adm = col("encounter_count", "admissions_180d", window="180d")
    assert phrase(adm, np.float64(2.0)) == "2 admissions in the past 6 months"
    assert phrase(adm, np.int64(1)) == "1 admission in the past 6 months"
    assert phrase(adm, Decimal("3")) == "3 admissions in the past 6 months"
    assert phrase(adm, "2") == "2 admissions in the past 6 months"
    assert phrase(adm, np.float32("nan")) == "admissions in the past 6 months not recorded"


@pytest.mark.parametrize("value", [pd.NA, pd.NaT, None, float("nan"), np.nan, "", "nan"])
def test_every_kind_of_missing(value: object) -> None:
    info = col("measurement", "albumin", agg="min", code="LOINC/1751-7", window="stay")
    assert phrase(info, value) == "no albumin measured during the stay"


@pytest.mark.parametrize("value", ["abc", object(), [1, 2], {"a": 1}, float("inf"), -5.0, 1e308, b"\xff"])
@pytest.mark.parametrize("kind", ["age", "length_of_stay", "encounter_count", "measurement", "score", "emergent",
                                  "days_since_discharge", "comorbidity", "static", "latest_code", "column", "nope"])
def test_never_raises(kind: str, value: object) -> None:
    info = ColumnInfo("x_last", "x", kind, "stay", "last", "LOINC/2951-2", label="sodium", unit="mmol/L")
    text = phrase(info, value)
    assert isinstance(text, str) and text


def test_generic_fallback_for_unreadable_values() -> None:
    los = col("length_of_stay", "los_days")
    assert specific_phrase(los, "long") is None
    assert phrase(los, "long") == "length of stay: long"
    assert phrase(ColumnInfo("foo", kind="unknown_kind"), 7.425671) == "foo: 7.43"


def test_flat_table_columns() -> None:
    infos = {i.column: i for i in column_infos_for_table(["los_days", "payer", "on_dialysis", "bmi"], {"payer"})}
    assert infos["los_days"].kind == "column" and infos["los_days"].label == "length of stay days"
    assert infos["payer"].aggregation == "categorical"
    assert phrase(infos["payer"], "2") == "payer: Medicaid"
    assert phrase(infos["payer"], 2) == "payer: Medicaid"
    assert phrase(infos["on_dialysis"], True) == "on dialysis"
    assert phrase(infos["on_dialysis"], False) == "no on dialysis"
    assert phrase(infos["bmi"], 31.46) == "BMI 31.5"
    assert phrase(infos["bmi"], None) == "BMI not recorded"


@pytest.mark.parametrize(("window", "expected"), [
    ("180d", "in the past 6 months"), ("365d", "in the past year"), ("730d", "in the past 2 years"),
    ("90d", "in the past 3 months"), ("30d", "in the past 30 days"), ("7d", "in the past week"),
    ("14d", "in the past 2 weeks"), ("2w", "in the past 2 weeks"), ("1d", "in the past day"),
    ("24h", "in the past 24 hours"), ("72h", "in the past 3 days"), ("12h", "in the past 12 hours"),
    ("1h", "in the past hour"),
    ("90m", "in the past 90 minutes"), ("100d", "in the past 100 days"), ("stay", "during the stay"),
    ("all", ""), (None, ""),
])
def test_window_phrase(window: str | None, expected: str) -> None:
    assert window_phrase(window) == expected


@pytest.mark.parametrize(("x", "decimals", "expected"), [
    (7.425671, None, "7.43"), (128.0, None, "128"), (1.914, None, "1.91"), (8.94, None, "8.94"),
    (12.37, None, "12.4"), (439.5904, None, "440"), (0.0042, None, "0.0042"), (-0.0001, 0, "0"),
    (4.0, 1, "4.0"), (8.94, 1, "8.9"), (1.914, 2, "1.91"), (139.6, 0, "140"), (12345.6, None, "12,346"),
    (-3.0, None, "-3"),
])
def test_format_number(x: float, decimals: int | None, expected: str) -> None:
    assert format_number(x, decimals) == expected
    assert not math.isnan(float(expected.replace(",", "")))


@pytest.mark.parametrize("info, value, at_discharge, during_stay", [
    (col("measurement", "sodium", agg="last", **SODIUM), 128.0, "sodium 128 mmol/L at discharge",
     "latest sodium 128 mmol/L"),
    (col("measurement", "resp_rate", agg="last", code="LOINC/9279-1", window="stay"), 24.0,
     "respiratory rate 24/min at discharge", "latest respiratory rate 24/min"),
    # nothing else depends on whether the stay has ended
    (col("measurement", "sodium", agg="first", **SODIUM), 131.4, "sodium 131 mmol/L at admission",
     "sodium 131 mmol/L at admission"),
    (col("measurement", "sodium", agg="min", **SODIUM), 127.0, "lowest sodium 127 mmol/L during the stay",
     "lowest sodium 127 mmol/L during the stay"),
    (col("measurement", "sodium", agg="last", **SODIUM), None, "no sodium measured during the stay",
     "no sodium measured during the stay"),
    (col("measurement", "hba1c", agg="last", code="LOINC/4548-4", window="365d"), 8.14,
     "latest HbA1c 8.1% in the past year", "latest HbA1c 8.1% in the past year"),
    (col("length_of_stay", "los"), 4.0, "4-day stay", "4-day stay"),
])
def test_a_stay_still_open_has_no_discharge(info: ColumnInfo, value: object, at_discharge: str,
                                            during_stay: str) -> None:
    """A last value over the stay is "at discharge" once the stay has ended (the default), "latest" before."""
    from careloop.explain import column_title

    assert phrase(info, value) == phrase(info, value, ended=True) == at_discharge
    assert phrase(info, value, ended=False) == during_stay
    assert "discharge" not in column_title(info, ended=False)
    if info.aggregation == "last" and info.window == "stay":
        assert column_title(info) == f"{info.label} at discharge"
        assert column_title(info, ended=False) == f"latest {info.label}"


def test_column_titles() -> None:
    from careloop.explain import column_title

    assert column_title(col("measurement", "sodium", agg="min", **SODIUM)) == "lowest sodium"
    assert column_title(col("measurement", "sodium", agg="last", **SODIUM)) == "sodium at discharge"
    assert column_title(col("measurement", "sodium", agg="trend", **SODIUM)) == "change in sodium"
    assert column_title(col("measurement", "sodium", agg="hours_since", **SODIUM)) == "hours since first sodium"
    assert column_title(col("measurement", "hba1c", agg="last", code="LOINC/4548-4", window="365d")) == "latest HbA1c"
    assert column_title(col("encounter_count", "ed_visits_180d", window="180d")) == "ED visits (past 6 months)"
    assert column_title(col("distinct_codes", "medications_in_stay", window="stay")) == "medications during the stay"
    assert column_title(col("score", "lace", description="LACE index")) == "LACE index"
