"""The CHAI Applied Model Card v0.2: every required element in schema order, metrics from the report."""

from __future__ import annotations

import json
import xml.etree.ElementTree as ET

import pytest

from careloop.reports import Facts, model_card, model_card_markdown, model_card_xml
from tests.reports.conftest import PRIMARY

NS = "{https://mc.chai.org/v0.2/schema.xsd}"
# coalition-for-health-ai/mc-schema v0.2/schema.xsd, xs:sequence order; "?" marks minOccurs="0"
SCHEMA = {
    "BasicInfo": ["ModelName", "ModelDeveloper", "DeveloperContact"],
    "ReleaseInfo": ["ReleaseStage", "ReleaseDate", "ReleaseVersion", "GlobalAvailability", "EHRCompatibility?",
                    "RegulatoryApproval?"],
    "ModelSummary": ["Summary", "Keywords"],
    "UsesAndDirections": ["IntendedUseAndWorkflow", "PrimaryIntendedUsers", "HowToUse", "TargetedPatientPopulation",
                          "CautionedOutOfScopeSettings"],
    "Warnings": ["KnownRisksAndLimitations", "KnownBiasesOrEthicalConsiderations", "ClinicalRiskLevel"],
    "TrustIngredients": ["AISystemFacts", "TransparencyInformation"],
    "AISystemFacts": ["OutcomesAndOutputs", "ModelType", "FoundationModels?", "InputDataSource",
                      "OutputAndInputDataTypes", "DevelopmentDataCharacterization", "BiasMitigationApproaches",
                      "OngoingMaintenance", "Security?", "Transparency?"],
    "TransparencyInformation": ["FundingSource", "ThirdPartyInformation?", "StakeholdersConsulted"],
    "KeyMetrics": ["UsefulnessUsabilityEfficacy", "FairnessEquity", "SafetyReliability"],
    "KeyMetric": ["MetricGoal", "Results", "Interpretation", "TestType", "TestingDataDescription",
                  "ValidationProcessAndJustification"],
    "Resources": ["EvaluationReferences?", "ClinicalTrial?", "PeerReviewedPublications", "ReimbursementStatus?",
                  "PatientConsentOrDisclosure"],
}
ROOT = ["BasicInfo", "ReleaseInfo", "ModelSummary", "UsesAndDirections", "Warnings", "TrustIngredients", "KeyMetrics",
        "Resources", "Bibliography"]


def check_order(keys: list[str], spec: list[str]) -> None:
    required = [s for s in spec if not s.endswith("?")]
    allowed = [s.rstrip("?") for s in spec]
    assert set(required) <= set(keys), f"missing {set(required) - set(keys)}"
    assert set(keys) <= set(allowed), f"unexpected {set(keys) - set(allowed)}"
    assert keys == [a for a in allowed if a in keys], "not in schema order"


def sections(card: dict) -> list[tuple[str, dict]]:
    ti, km = card["TrustIngredients"], card["KeyMetrics"]
    return [(k, card[k]) for k in ("BasicInfo", "ReleaseInfo", "ModelSummary", "UsesAndDirections", "Warnings",
                                   "TrustIngredients", "KeyMetrics", "Resources")] + [
        ("AISystemFacts", ti["AISystemFacts"]), ("TransparencyInformation", ti["TransparencyInformation"])] + [
        ("KeyMetric", km[k]) for k in SCHEMA["KeyMetrics"]]


def results(card: dict, metric: str) -> dict[str, dict]:
    return {r["Label"]: json.loads(r["ValueJson"]) for r in card["KeyMetrics"][metric]["Results"]}


@pytest.mark.parametrize("which", ["shipped", "blank"])
def test_every_required_field_in_schema_order(report: dict, facts: Facts, which: str) -> None:
    card = model_card(report, facts if which == "shipped" else Facts())
    assert list(card) == ROOT
    for name, block in sections(card):
        check_order(list(block), SCHEMA[name])
        for key, value in block.items():
            assert value not in ("", None, [], {}), (name, key)
    for metric in SCHEMA["KeyMetrics"]:
        assert card["KeyMetrics"][metric]["Results"], metric
    assert isinstance(card["ModelSummary"]["Keywords"], list) and isinstance(card["Bibliography"], str)


def test_blank_human_fields_are_marked_and_optional_ones_left_out(report: dict) -> None:
    card = model_card(report, Facts())
    assert card["BasicInfo"]["ModelDeveloper"] == "Not yet supplied: fill developer_name in the documentation file"
    assert card["TrustIngredients"]["TransparencyInformation"]["FundingSource"].startswith("Not yet supplied")
    assert "RegulatoryApproval" not in card["ReleaseInfo"]
    assert "Security" not in card["TrustIngredients"]["AISystemFacts"]
    assert card["BasicInfo"]["ModelName"] == "readmission-30d"  # computed fields are never blank
    assert "AUROC 0.742" in card["ModelSummary"]["Summary"]


def test_shipped_card_has_no_blank(report: dict, facts: Facts) -> None:
    text = json.dumps(model_card(report, facts))
    assert "Not yet supplied" not in text
    card = model_card(report, facts)
    assert card["ReleaseInfo"]["ReleaseDate"] == "2026-11-03"
    assert card["ReleaseInfo"]["ReleaseVersion"] == "1.0.0 (bundle readmission-30d-3f9a1c2b7d4e)"
    assert "@article{vanwalraven2010lace" in card["Bibliography"]


def test_key_metrics_match_the_report(report: dict, facts: Facts) -> None:
    card = model_card(report, facts)
    m = report["scores"][PRIMARY]["metrics"]
    op = report["scores"][PRIMARY]["operating_point"]
    useful = results(card, "UsefulnessUsabilityEfficacy")
    auroc = useful["AUROC (test split)"]
    assert auroc["kind"] == "estimate_ci" and auroc["level"] == 95
    assert (auroc["estimate"], auroc["lower"], auroc["upper"]) == pytest.approx(
        (m["auroc"]["estimate"], *m["auroc"]["ci"]), abs=1e-4)
    sens = next(v for k, v in useful.items() if k.startswith("Sensitivity at the operating point"))
    assert sens["unit"] == "%" and sens["estimate"] == pytest.approx(op["sensitivity"]["estimate"] * 100, abs=0.01)
    alerts = next(v for k, v in useful.items() if k.startswith("Alerts per 100 discharges"))
    assert alerts == {"kind": "single", "value": op["alerts_per_100"], "unit": "alerts per 100 discharges"}
    diff = useful["AUROC difference from lace (paired bootstrap)"]
    assert diff["estimate"] == pytest.approx(0.061)
    safety = results(card, "SafetyReliability")
    assert safety["Calibration slope"]["estimate"] == pytest.approx(m["calibration_slope"]["estimate"])
    assert safety["Observed/expected ratio"]["upper"] == pytest.approx(m["observed_expected"]["ci"][1])
    fair = results(card, "FairnessEquity")
    assert fair["Disparities flagged beyond tolerance"] == {"kind": "single", "value": 2}
    flagged = fair["race Black or African American: AUROC gap (flagged)"]
    assert (flagged["estimate"], flagged["lower"], flagged["upper"]) == pytest.approx((-0.081, -0.111, -0.051))
    assert "Black or African American" in card["Warnings"]["KnownBiasesOrEthicalConsiderations"]


def test_no_flags_card(report_no_flags: dict, facts: Facts) -> None:
    card = model_card(report_no_flags, facts)
    assert results(card, "FairnessEquity")["Disparities flagged beyond tolerance"]["value"] == 0
    assert "No subgroup gap lies beyond its tolerance" in card["KeyMetrics"]["FairnessEquity"]["Interpretation"]


def test_markdown_has_every_section_and_the_numbers(report: dict, facts: Facts) -> None:
    md = model_card_markdown(model_card(report, facts))
    for title in ("## Basic Info", "## Release Info", "### AI System Facts", "### Usefulness Usability Efficacy",
                  "### Fairness Equity", "### Safety Reliability", "## Resources", "## Bibliography"):
        assert title in md
    assert "| AUROC (test split) | 0.742 (95% CI 0.713 to 0.771) |" in md
    assert "```bibtex" in md


def test_xml_follows_the_schema_order(report: dict, facts: Facts) -> None:
    card = model_card(report, facts)
    root = ET.fromstring(model_card_xml(card).encode())
    assert root.tag == f"{NS}AppliedModelCard"
    assert [c.tag.removeprefix(NS) for c in root] == ROOT
    ai = root.find(f"{NS}TrustIngredients/{NS}AISystemFacts")
    check_order([c.tag.removeprefix(NS) for c in ai], SCHEMA["AISystemFacts"])
    result = root.find(f"{NS}KeyMetrics/{NS}UsefulnessUsabilityEfficacy/{NS}Results/{NS}MetricResult")
    assert [c.tag.removeprefix(NS) for c in result] == ["Label", "ValueJson"]
    assert json.loads(result.find(f"{NS}ValueJson").text)["estimate"] == pytest.approx(0.742)
    keywords = root.findall(f"{NS}ModelSummary/{NS}Keywords/{NS}Keyword")
    assert [k.text for k in keywords] == facts.keywords
