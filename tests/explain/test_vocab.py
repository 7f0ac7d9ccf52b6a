"""display(): public vocabularies, prefixes and fallbacks."""

from __future__ import annotations

import numpy as np
import pytest

from careloop.explain import display

CASES = [
    # FHIR administrative gender (and HL7 v2 letters)
    ("sex", "female", "Female"), ("sex", "male", "Male"), ("sex", "other", "Other"), ("sex", "unknown", "Unknown"),
    ("gender", "F", "Female"),
    # CDC race & ethnicity (OMB categories) and null flavors
    ("race", "1002-5", "American Indian or Alaska Native"), ("race", "2028-9", "Asian"),
    ("race", "2054-5", "Black or African American"), ("race", "2076-8", "Native Hawaiian or Other Pacific Islander"),
    ("race", "2106-3", "White"), ("race", "2131-1", "Other Race"), ("race", "ASKU", "Asked but unknown"),
    ("race", "RACE/2054-5", "Black or African American"),
    ("ethnicity", "2135-2", "Hispanic or Latino"), ("ethnicity", "2186-5", "Not Hispanic or Latino"),
    ("ethnicity", "UNK", "Unknown"),
    # ISO 639 / BCP 47
    ("language", "en", "English"), ("language", "es", "Spanish"), ("language", "zh", "Chinese"),
    ("language", "vi", "Vietnamese"), ("language", "ht", "Haitian Creole"), ("language", "pt", "Portuguese"),
    ("language", "ru", "Russian"), ("language", "es-US", "Spanish"), ("language", "zh-Hant-TW", "Chinese"),
    ("language", "EN", "English"), ("language", "kea", "Cape Verdean Creole"),
    # SOPT: top-level codes, subcategories, hierarchy for unlisted codes
    ("payer", "1", "Medicare"), ("payer", "2", "Medicaid"), ("payer", "3", "Other government"),
    ("payer", "5", "Private health insurance"), ("payer", "6", "Blue Cross/Blue Shield"), ("payer", "81", "Self-pay"),
    ("payer", "82", "No charge"), ("payer", "95", "Workers' compensation"), ("payer", "311", "TRICARE (CHAMPUS)"),
    ("payer", "32", "Department of Veterans Affairs"), ("payer", "1199", "Medicare managed care, other"),
    ("payer", "SOPT/121", "Medicare FFS"), ("payer", 2, "Medicaid"), ("payer", 5.0, "Private health insurance"),
    # HL7 discharge disposition, and NUBC patient status
    ("discharge_disposition", "home", "Home"), ("discharge_disposition", "alt-home", "Alternative home"),
    ("discharge_disposition", "other-hcf", "Other healthcare facility"), ("discharge_disposition", "hosp", "Hospice"),
    ("discharge_disposition", "long", "Long-term care"), ("discharge_disposition", "aadvice", "Left against advice"),
    ("discharge_disposition", "exp", "Expired"), ("discharge_disposition", "psy", "Psychiatric hospital"),
    ("discharge_disposition", "rehab", "Rehabilitation"), ("discharge_disposition", "snf", "Skilled nursing facility"),
    ("discharge_disposition", "oth", "Other"), ("discharge_disposition", "DISCHARGE/snf", "Skilled nursing facility"),
    ("discharge_disposition", "03", "Skilled nursing facility"), ("discharge_disposition", "6", "Home health service"),
    # HL7 admit source
    ("admit_source", "hosp-trans", "Transferred from other hospital"),
    ("admit_source", "emd", "From accident/emergency department"),
    ("admit_source", "outp", "From outpatient department"),
    ("admit_source", "born", "Born in hospital"), ("admit_source", "gp", "General practitioner referral"),
    ("admit_source", "mp", "Medical practitioner/physician referral"), ("admit_source", "nursing", "From nursing home"),
    ("admit_source", "psych", "From psychiatric hospital"), ("admit_source", "rehab", "From rehabilitation facility"),
    ("admit_source", "other", "Other"),
    # LOINC 71802-3 housing answers (AHC HRSN, PRAPARE)
    ("housing", "LOINC/LA31993-1", "I have a steady place to live"),
    ("housing", "LA31994-9", "I have a place to live today, but I am worried about losing it in the future"),
    ("housing", "LA30189-7", "I have housing"),
    # ICD-10-CM
    ("principal_diagnosis", "ICD10CM/I50.23", "Heart failure (I50.23)"),
    ("principal_diagnosis", "ICD10CM/J44.1", "COPD (J44.1)"),
    ("principal_diagnosis", "ICD10CM/H25.9", "Eye disease (H25.9)"),
    # code-system URLs and prefixes name the vocabulary too
    ("https://nahdo.org/sopt", "2", "Medicaid"), ("urn:oid:2.16.840.1.113883.6.238", "2106-3", "White"),
    ("http://terminology.hl7.org/CodeSystem/discharge-disposition", "snf", "Skilled nursing facility"),
    ("SOPT/", "81", "Self-pay"), (None, "RACE/2028-9", "Asian"),
    ("anything", "LOINC/LA31993-1", "I have a steady place to live"),
]


@pytest.mark.parametrize(("attribute", "code", "expected"), CASES, ids=[f"{a}:{c}" for a, c, _ in CASES])
def test_display(attribute: str | None, code: object, expected: str) -> None:
    assert display(attribute, code) == expected


def test_housing_answers_say_what_they_mean() -> None:
    # the answers meaning "no housing" must read so: LA31995-6 (AHC) and LA30190-5 (PRAPARE)
    assert display("housing", "LA31995-6").startswith("I do not have a steady place to live")
    assert display("housing", "LA30190-5").startswith("I do not have housing")


@pytest.mark.parametrize(("attribute", "code", "expected"), [
    ("race", "9999-9", "9999-9"), ("language", "xx", "xx"), ("payer", "ZZ", "ZZ"), ("payer", "0", "0"),
    ("discharge_disposition", "hh", "hh"), ("admit_source", "walk-in", "walk-in"),
    ("housing", "LA99999-9", "LA99999-9"),
    ("site", "B7", "B7"), ("unknown_attribute", "abc", "abc"), ("principal_diagnosis", "SNOMED/84114007", "84114007"),
    ("race", None, "Unknown"), ("race", float("nan"), "Unknown"), ("sex", "", "Unknown"),
    ("payer", np.int64(81), "Self-pay"), (None, None, "Unknown"),
])
def test_unknown_codes_fall_back_to_the_code(attribute: str | None, code: object, expected: str) -> None:
    assert display(attribute, code) == expected


@pytest.mark.parametrize("code", [object(), [1], {"a": 1}, b"\xff\xfe", float("inf"), -1, True])
def test_display_never_raises(code: object) -> None:
    assert isinstance(display("race", code), str)
