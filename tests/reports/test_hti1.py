"""The 31 HTI-1 predictive source attributes: order, provenance, and the report's numbers in the text."""

from __future__ import annotations

import pytest

from careloop.reports import HTI1_KEYS, Facts, NotAvailable, blank_facts, hti1_source_attributes
from tests.reports.conftest import PRIMARY

# 45 CFR 170.315(b)(11)(iv)(B), in order, keyed as in OpenEMR's dsi_predictive_source_attributes list
EXPECTED_KEYS = [
    "predictive_details_developer", "predictive_details_funding", "predictive_details_output_value",
    "predictive_details_output_type", "predictive_purpose_intended_use", "predictive_purpose_patient_population",
    "predictive_purpose_intended_users", "predictive_purpose_decision_role", "predictive_cautions_inappropriate_use",
    "predictive_cautions_risks", "predictive_development_criteria", "predictive_development_variables",
    "predictive_development_demographics", "predictive_development_relevance", "predictive_fairness_approach",
    "predictive_fairness_bias_mitigation", "predictive_validation_data_source", "predictive_validation_tester",
    "predictive_validation_demographics", "predictive_validation_process",
    "predictive_performance_internal_validity", "predictive_performance_internal_fairness",
    "predictive_performance_external_validity", "predictive_performance_external_fairness",
    "predictive_performance_outcome_evaluation", "predictive_maintenance_validity_monitoring",
    "predictive_maintenance_local_validity", "predictive_maintenance_fairness_monitoring",
    "predictive_maintenance_local_fairness", "predictive_updates_process", "predictive_updates_correction",
]
GROUP_SIZES = [4, 4, 2, 4, 2, 4, 5, 4, 2]
# the only attributes that may say "not available": group 6, #23, #24, #25, #27, #29, group 9
MAY_BE_NOT_AVAILABLE = {17, 18, 19, 20, 23, 24, 25, 27, 29, 30, 31}
COMPUTED = {3, 4, 11, 12, 13, 21, 22}


def test_exactly_the_31_keys_in_order(report: dict, facts: Facts) -> None:
    attrs = hti1_source_attributes(report, facts)
    assert list(HTI1_KEYS) == EXPECTED_KEYS
    assert list(attrs) == EXPECTED_KEYS
    assert [a["number"] for a in attrs.values()] == list(range(1, 32))
    groups = [a["group"] for a in attrs.values()]
    assert [len([g for g in groups if g.startswith(f"({i})")]) for i in range(1, 10)] == GROUP_SIZES
    for a in attrs.values():
        assert set(a) == {"number", "group", "attribute", "value", "source"}
        assert a["value"].strip(), a
        assert a["source"] in {"computed", "supplied", "not_available", "blank"}


@pytest.mark.parametrize("which", ["shipped", "blank"])
def test_not_available_only_for_the_allowed_subset(report: dict, facts: Facts, which: str) -> None:
    attrs = hti1_source_attributes(report, facts if which == "shipped" else Facts())
    for a in attrs.values():
        if a["source"] == "not_available":
            assert a["number"] in MAY_BE_NOT_AVAILABLE, a
            assert a["value"].startswith("Not available: ") and len(a["value"]) > 30


def test_shipped_facts_leave_nothing_blank(report: dict, facts: Facts) -> None:
    attrs = hti1_source_attributes(report, facts)
    sources = {a["number"]: a["source"] for a in attrs.values()}
    assert "blank" not in sources.values()
    assert {n for n, s in sources.items() if s == "computed"} == COMPUTED | {27, 29}  # local_data: true
    assert {n for n, s in sources.items() if s == "not_available"} == {17, 18, 19, 20, 23, 24, 25}
    assert "external validation" in attrs["predictive_validation_tester"]["value"]


def test_internal_validity_quotes_the_numbers_with_cis(report: dict, facts: Facts) -> None:
    text = hti1_source_attributes(report, facts)["predictive_performance_internal_validity"]["value"]
    m = report["scores"][PRIMARY]["metrics"]
    auroc = m["auroc"]
    assert f"AUROC {auroc['estimate']:.3f} (95% CI {auroc['ci'][0]:.3f} to {auroc['ci'][1]:.3f})" in text
    slope = m["calibration_slope"]
    assert f"slope {slope['estimate']:.3f} (95% CI {slope['ci'][0]:.3f} to {slope['ci'][1]:.3f})" in text
    op = report["scores"][PRIMARY]["operating_point"]
    assert f"sensitivity {op['sensitivity']['estimate'] * 100:.1f}% (95% CI" in text
    assert f"{op['alerts_per_100']:.1f} alerts per 100 discharges" in text
    assert "2,000 stays (1,712 patients, 300 with the outcome, prevalence 15.0%)" in text
    assert "AUROC difference from lace: +0.061 (95% CI 0.040 to 0.082)" in text


def test_internal_fairness_names_flags_gaps_and_suppressed_groups(report: dict, facts: Facts) -> None:
    text = hti1_source_attributes(report, facts)["predictive_performance_internal_fairness"]["value"]
    assert "2 disparities flagged" in text
    assert "race Black or African American, AUROC gap -0.081 (95% CI -0.111 to -0.051)" in text
    assert "observed/expected ratio gap +0.260 log ratio" in text
    assert "2028-9 (n=60, fewer than 10 positives)" in text
    assert "White (n=1,210)" in text


def test_no_flags_says_so(report_no_flags: dict, facts: Facts) -> None:
    text = hti1_source_attributes(report_no_flags, facts)["predictive_performance_internal_fairness"]["value"]
    assert "No disparity beyond tolerance." in text and "flagged:" not in text


def test_development_attributes_come_from_the_report(report: dict, facts: Facts) -> None:
    attrs = hti1_source_attributes(report, facts)
    criteria = attrs["predictive_development_criteria"]["value"]
    assert "died_in_stay: 412 stays" in criteria and "transfer_out: 133 stays" in criteria
    assert "Index times from 2019-01-04 to 2024-11-30" in criteria
    variables = attrs["predictive_development_variables"]["value"]
    for used in ("Race: used (race)", "Ethnicity: used (ethnicity)", "Language: used (language)",
                 "Sex: used (sex)", "Date of birth (as age): used (age)",
                 "Social determinants of health: used (household_size_last, housing)"):
        assert used in variables
    for unused in ("Sexual orientation: not used", "Gender identity: not used", "Health status assessments: not used"):
        assert unused in variables
    assert "Payer" in variables and "(payer)" in variables
    demographics = attrs["predictive_development_demographics"]["value"]
    assert "White 1,210 (60.5%)" in demographics and "2028-9: 60 (3.0%)" in demographics
    assert "Language" in demographics  # an input with no distribution in the report is named
    output = attrs["predictive_details_output_value"]["value"]
    assert "LightGBM" in output and "sigmoid" in output and "25.0%" in output
    assert attrs["predictive_details_output_type"]["value"].startswith("Prediction")


def test_a_blank_fact_is_marked_and_listed(report: dict, facts: Facts) -> None:
    partial = facts.model_copy(update={"funding_source": None, "developer_contact": ""})
    attrs = hti1_source_attributes(report, partial)
    funding = attrs["predictive_details_funding"]
    assert funding["source"] == "blank"
    assert funding["value"] == "Not yet supplied: fill funding_source in the documentation file"
    developer = attrs["predictive_details_developer"]
    assert developer["source"] == "blank" and "fill developer_contact" in developer["value"]
    assert "careloop project" in developer["value"]  # what was supplied is kept
    assert blank_facts(partial) == ["developer_contact", "funding_source"]


def test_local_results_follow_local_data(report: dict, facts: Facts) -> None:
    local = hti1_source_attributes(report, facts)["predictive_maintenance_local_validity"]
    assert local["source"] == "computed" and "AUROC 0.742" in local["value"]
    elsewhere = facts.model_copy(update={"local_data": NotAvailable(not_available="trained at another hospital")})
    attrs = hti1_source_attributes(report, elsewhere)
    assert attrs["predictive_maintenance_local_validity"] == {
        **attrs["predictive_maintenance_local_validity"], "source": "not_available",
        "value": "Not available: trained at another hospital"}
    assert attrs["predictive_maintenance_local_fairness"]["source"] == "not_available"
    unknown = hti1_source_attributes(report, facts.model_copy(update={"local_data": None}))
    assert unknown["predictive_maintenance_local_fairness"]["source"] == "blank"
    assert "local_data" in unknown["predictive_maintenance_local_fairness"]["value"]


def test_a_scores_report_still_gives_31_non_empty_attributes(report_scores: dict) -> None:
    attrs = hti1_source_attributes(report_scores, Facts())
    assert list(attrs) == EXPECTED_KEYS and all(a["value"].strip() for a in attrs.values())
    assert "points score" in attrs["predictive_details_output_value"]["value"]
