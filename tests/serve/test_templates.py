"""The prefetch templates ask for the data the features read and no more: the Observation search names the codes the
feature set reads (`combo-code`, so a component's code counts), or whole code systems a feature reads by prefix, and
falls back to every Observation when a feature may read any. What the EHR sends for them gives the training features
of every stay (the 200-stay test in test_app.py runs on them too)."""

from __future__ import annotations

from pathlib import Path

import yaml

from careloop.features.spec import FeatureSet, load_feature_set
from careloop.ingest.mapping import SYSTEMS
from careloop.serve.demo import token_search
from careloop.serve.features import PREFETCH, observation_tokens, prefetch_templates

from .harness import prefetch_of

FEATURES = Path(__file__).resolve().parents[2] / "features" / "readmission.yaml"


def feature_set(*features: dict) -> FeatureSet:
    return FeatureSet.from_text(yaml.safe_dump({"name": "t", "description": "test set", "features": list(features)}))


def obs(rid: str, *codings: tuple[str, str], components: tuple[tuple[str, str], ...] = ()) -> dict:
    def concept(*cs):
        return {"coding": [{"system": s, "code": c} for s, c in cs]}

    return {"resourceType": "Observation", "id": rid, "code": concept(*codings),
            "component": [{"code": concept(c)} for c in components]}


def test_the_readmission_templates_name_exactly_the_codes_its_features_read():
    """Computed apart from careloop's code: from the YAML, the LOINC codes of measurements and latest texts, and the
    code systems read by prefix (payer SOPT/, medications RXNORM/, comorbidity ICD-10-CM)."""
    spec = yaml.safe_load(FEATURES.read_text())["features"]
    loinc = {f["code"].split("/", 1)[1] for f in spec if f["kind"] in ("measurement", "latest_text")}
    assert all(f["code"].startswith("LOINC/") for f in spec if f["kind"] in ("measurement", "latest_text"))
    expected = {f"http://loinc.org|{c}" for c in loinc} | {
        "https://nahdo.org/sopt|", "http://www.nlm.nih.gov/research/umls/rxnorm|", "http://hl7.org/fhir/sid/icd-10-cm|"}
    templates = prefetch_templates(load_feature_set("readmission"))
    base, _, search = templates["observations"].partition("&combo-code=")
    assert base == PREFETCH["observations"]
    assert set(search.split(",")) == expected and len(search.split(",")) == len(expected)
    assert {k: v for k, v in templates.items() if k != "observations"} == {
        k: v for k, v in PREFETCH.items() if k != "observations"}


def test_a_feature_that_may_read_any_observation_keeps_the_whole_search():
    measure = {"name": "na", "kind": "measurement", "code": "LOINC/2951-2", "window": "stay", "aggs": ["last"],
               "description": "sodium"}
    assert observation_tokens(feature_set(measure)) == ["http://loinc.org|2951-2"]
    by_source = {"name": "n_obs", "kind": "event_count", "source": "Observation", "window": "stay",
                 "description": "observations in the stay"}
    assert observation_tokens(feature_set(measure, by_source)) is None
    assert prefetch_templates(feature_set(measure, by_source))["observations"] == PREFETCH["observations"]
    several_systems = {"name": "icd", "kind": "distinct_codes", "prefix": "ICD", "window": "all",
                       "description": "any ICD code"}  # ICD10CM/, ICD10/ and ICD9CM/ codes all start with it
    assert observation_tokens(feature_set(measure, several_systems)) is None


def test_a_prefix_asks_for_its_whole_system_and_a_prefix_no_observation_carries_asks_for_nothing():
    measure = {"name": "na", "kind": "measurement", "code": "LOINC/2951-2", "window": "stay", "aggs": ["last"],
               "description": "sodium"}
    panel = {"name": "panels", "kind": "distinct_codes", "prefix": "LOINC/85", "window": "stay",
             "description": "LOINC codes starting 85"}
    sex = {"name": "sex", "kind": "static", "prefix": "GENDER/", "description": "administrative sex"}
    custom = {"name": "x", "kind": "measurement", "code": "LOCAL/123", "window": "stay", "aggs": ["last"],
              "description": "a local code no FHIR system maps to"}
    assert observation_tokens(feature_set(measure, panel)) == ["http://loinc.org|"]  # the exact code is inside it
    assert observation_tokens(feature_set(measure, sex, custom)) == ["http://loinc.org|2951-2"]
    assert observation_tokens(feature_set(sex)) == []
    assert "observations" not in prefetch_templates(feature_set(sex))  # no empty combo-code search
    assert set(SYSTEMS.values()) >= {"LOINC", "SOPT", "RXNORM", "ICD10CM"}


def test_the_ehr_emulation_keeps_what_a_fhir_server_would():
    """`token_search` (what `prefetch_of` applies, playing the EHR's FHIR server) matches a resource's code or a
    component's, `system|code` exactly and `system|` for the whole system; other parameters are not filters."""
    loinc, snomed, sopt = "http://loinc.org", "http://snomed.info/sct", "https://nahdo.org/sopt"
    keep = token_search(f"Observation?patient=x&combo-code={loinc}|8480-6,{loinc}|2951-2,{sopt}|")
    assert keep(obs("a", (loinc, "2951-2")))
    assert keep(obs("b", (snomed, "1"), (loinc, "2951-2")))  # any coding of the code
    assert keep(obs("c", (loinc, "85354-9"), components=((loinc, "8462-4"), (loinc, "8480-6"))))  # a component
    assert keep(obs("d", (sopt, "81")))
    assert not keep(obs("e", (loinc, "72166-2")))
    assert not keep(obs("f", (snomed, "2951-2")))  # the same code in another system
    assert not keep(obs("g", ("http://loinc.org/", "2951-2")))
    assert token_search("Observation?patient={{context.patientId}}")(obs("h", (loinc, "1")))
    resources = {"patient": [{"resourceType": "Patient", "id": "p"}],
                 "observations": [obs("a", (loinc, "2951-2")), obs("e", (loinc, "72166-2"))]}
    templates = prefetch_templates(load_feature_set("readmission"))
    assert [e["resource"]["id"] for e in prefetch_of(resources, templates)["observations"]["entry"]] == ["a"]
    assert [e["resource"]["id"] for e in prefetch_of(resources)["observations"]["entry"]] == ["a", "e"]
