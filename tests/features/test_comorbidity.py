"""Charlson / Elixhauser from ICD-10-CM codes: expected values worked out by hand from Quan 2005's tables."""

from __future__ import annotations

import duckdb
import pytest
from hypothesis import given
from hypothesis import strategies as st

from careloop.features.comorbidity import (
    CHARLSON,
    CHARLSON_HIERARCHY,
    CHARLSON_WEIGHTS,
    ELIXHAUSER,
    ELIXHAUSER_HIERARCHY,
    VAN_WALRAVEN_WEIGHTS,
    category_prefix_table,
    charlson_categories,
    charlson_index,
    elixhauser_categories,
    normalize_code,
    van_walraven_score,
    van_walraven_weights,
)

# One code per Charlson category, in ICD-10-CM form with dots.
CHARLSON_EXAMPLES = {
    "myocardial_infarction": "I25.2",
    "congestive_heart_failure": "I50.9",
    "peripheral_vascular": "I70.209",
    "cerebrovascular": "I63.9",
    "dementia": "F03.90",
    "chronic_pulmonary": "J44.9",
    "rheumatic": "M06.9",
    "peptic_ulcer": "K25.9",
    "mild_liver": "K70.30",
    "diabetes_uncomplicated": "E11.9",
    "diabetes_complicated": "E11.22",
    "hemiplegia_paraplegia": "G81.90",
    "renal": "N18.30",
    "malignancy": "C34.90",
    "severe_liver": "K72.10",
    "metastatic_solid_tumour": "C78.00",
    "hiv_aids": "B20",
}


def test_tables_have_the_published_shape():
    assert len(CHARLSON) == 17 and set(CHARLSON) == set(CHARLSON_WEIGHTS)
    assert len(ELIXHAUSER) == 31 and set(ELIXHAUSER) == set(VAN_WALRAVEN_WEIGHTS)
    assert van_walraven_weights is VAN_WALRAVEN_WEIGHTS
    for table in (CHARLSON, ELIXHAUSER):
        for prefixes in table.values():
            assert all(len(p) >= 3 and "." not in p and p == p.upper() for p in prefixes)
    for high, low in CHARLSON_HIERARCHY:
        assert {high, low} <= set(CHARLSON)
    for high, low in ELIXHAUSER_HIERARCHY:
        assert {high, low} <= set(ELIXHAUSER)


def test_ranges_expand_as_in_the_paper():
    assert CHARLSON["cerebrovascular"] == ("G45", "G46", "H340", *(f"I{n}" for n in range(60, 70)))
    assert CHARLSON["renal"][2:8] == ("N032", "N033", "N034", "N035", "N036", "N037")
    assert ELIXHAUSER["coagulopathy"] == ("D65", "D66", "D67", "D68", "D691", "D693", "D694", "D695", "D696")


def test_original_charlson_weights():
    expected_twos = {"diabetes_complicated", "hemiplegia_paraplegia", "renal", "malignancy"}
    assert {c for c, w in CHARLSON_WEIGHTS.items() if w == 2} == expected_twos
    assert CHARLSON_WEIGHTS["severe_liver"] == 3
    assert CHARLSON_WEIGHTS["metastatic_solid_tumour"] == CHARLSON_WEIGHTS["hiv_aids"] == 6
    assert sum(1 for w in CHARLSON_WEIGHTS.values() if w == 1) == 10


@pytest.mark.parametrize(("category", "code"), CHARLSON_EXAMPLES.items())
def test_each_charlson_category_matches_with_and_without_dot(category, code):
    for form in (code, code.replace(".", ""), code.lower(), f"ICD10CM/{code}", f"  {code} "):
        assert charlson_categories([form]) == {category}, form
        assert charlson_index([form]) == CHARLSON_WEIGHTS[category]


def test_normalize_code_skips_other_vocabularies_and_blanks():
    assert normalize_code("ICD10/I50.9") == "I509"
    assert normalize_code("SNOMED/84114007") is None
    assert normalize_code("  ") is None
    assert charlson_index(["LOINC/2951-2", "", "RXNORM/197361"]) == 0


def test_no_false_prefix_matches():
    assert charlson_categories(["I25.10"]) == set()  # chronic IHD, not old MI (I25.2)
    assert charlson_categories(["E11.65"]) == {"diabetes_uncomplicated"}  # E11.6 is "without chronic" in Quan
    assert elixhauser_categories(["E11.65"]) == {"diabetes_complicated"}  # ... but complicated for Elixhauser
    assert charlson_categories(["K25.0"]) == {"peptic_ulcer"}
    assert elixhauser_categories(["K25.0"]) == set()  # Elixhauser excludes bleeding ulcers
    assert charlson_categories(["C7A.010", "E08.22"]) == set()  # ICD-10-CM-only codes Quan does not list


def test_liver_hierarchy_counts_severe_only():
    assert charlson_categories(["K70.30", "K72.10"]) == {"severe_liver"}
    assert charlson_index(["K70.30", "K72.10"]) == 3
    assert charlson_index(["K70.30"]) == 1


def test_diabetes_and_cancer_hierarchies():
    assert charlson_categories(["E11.9", "E11.22"]) == {"diabetes_complicated"}
    assert charlson_index(["E11.9", "E11.22"]) == 2
    assert charlson_categories(["C34.90", "C78.00"]) == {"metastatic_solid_tumour"}
    assert charlson_index(["C34.90", "C78.00"]) == 6
    assert elixhauser_categories(["C34.90", "C78.00"]) == {"metastatic_cancer"}
    assert van_walraven_score(["C34.90", "C78.00"]) == 12
    assert elixhauser_categories(["E11.9", "E11.22"]) == {"diabetes_complicated"}


def test_example_patient_by_hand():
    # Heart failure, type 2 diabetes with CKD, CKD stage 3, COPD, lung cancer, repeated codes.
    codes = ["I50.9", "E11.22", "N18.30", "J44.9", "C34.90", "I50.9", "N1830"]
    assert charlson_categories(codes) == {
        "congestive_heart_failure",
        "diabetes_complicated",
        "renal",
        "chronic_pulmonary",
        "malignancy",
    }
    assert charlson_index(codes) == 1 + 2 + 2 + 1 + 2
    # Elixhauser: CHF 7, complicated DM 0, renal failure 5, chronic pulmonary 3, solid tumour 4.
    assert van_walraven_score(codes) == 7 + 0 + 5 + 3 + 4


def test_one_code_can_hit_several_elixhauser_categories():
    assert elixhauser_categories(["K70.30"]) == {"liver_disease", "alcohol_abuse"}
    assert elixhauser_categories(["F31.5"]) == {"psychoses", "depression"}
    assert van_walraven_score(["K70.30"]) == 11


def test_van_walraven_can_be_negative():
    assert van_walraven_score(["F11.20", "E66.9"]) == -7 - 4
    assert van_walraven_score([]) == charlson_index([]) == 0


def test_every_category_reaches_its_weight_extremes():
    all_codes = [p for ps in CHARLSON.values() for p in ps]
    assert charlson_index(all_codes) == 29  # every category, dominated ones dropped
    positive = [p for c, ps in ELIXHAUSER.items() if VAN_WALRAVEN_WEIGHTS[c] > 0 for p in ps]
    assert van_walraven_score(positive) == 85  # metastatic cancer (12) drops solid tumour (4)
    assert van_walraven_score([p for ps in ELIXHAUSER.values() for p in ps]) == 85 - 19


def test_prefix_table_reproduces_categories_in_sql():
    codes = [*CHARLSON_EXAMPLES.values(), "E11.65", "K70.30", "F31.5", "I11.0", "I10", "Z99.2"]
    con = duckdb.connect()
    con.execute("CREATE TABLE map(idx VARCHAR, category VARCHAR, prefix VARCHAR)")
    con.executemany("INSERT INTO map VALUES (?, ?, ?)", category_prefix_table())
    con.execute("CREATE TABLE dx(code VARCHAR)")
    con.executemany("INSERT INTO dx VALUES (?)", [(c,) for c in codes])
    rows = con.execute(
        "SELECT DISTINCT idx, category FROM dx JOIN map "
        "ON starts_with(upper(replace(code, '.', '')), replace(prefix, '.', ''))"
    ).fetchall()
    for idx, hierarchy, expected in (
        ("charlson", CHARLSON_HIERARCHY, charlson_categories(codes)),
        ("elixhauser", ELIXHAUSER_HIERARCHY, elixhauser_categories(codes)),
    ):
        found = {c for i, c in rows if i == idx}
        assert found - {low for high, low in hierarchy if high in found} == expected


CODE_POOL = [p for ps in CHARLSON.values() for p in ps[:3]] + ["I25.10", "R69", "Z00.00"]


@given(st.lists(st.sampled_from(CODE_POOL), max_size=8), st.lists(st.sampled_from(CODE_POOL), max_size=4))
def test_charlson_never_drops_when_codes_are_added(base, extra):
    # Dominant categories always outweigh the ones they replace, so more codes never lower the index.
    assert charlson_index(base + extra) >= charlson_index(base)
    assert 0 <= charlson_index(base + extra) <= 29


@given(st.lists(st.sampled_from(CODE_POOL), max_size=8))
def test_dotted_and_undotted_codes_agree(codes):
    undotted = [c.replace(".", "") for c in codes]
    assert charlson_categories(codes) == charlson_categories(undotted)
    assert elixhauser_categories(codes) == elixhauser_categories(undotted)
