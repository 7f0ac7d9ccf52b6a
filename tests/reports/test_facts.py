"""The documentation file: strict loading with line numbers, blanks, and the "not available" allowance."""

from __future__ import annotations

from pathlib import Path

import pytest

from careloop.reports import FACT_FIELDS, Facts, FactsError, blank_facts, load_facts
from tests.reports.conftest import DOC


def write(tmp_path: Path, text: str) -> Path:
    path = tmp_path / "documentation.yaml"
    path.write_text(text)
    return path


def test_shipped_documentation_loads_with_no_blanks(facts: Facts) -> None:
    assert blank_facts(facts) == []
    assert facts.developer_name == "careloop project, synthetic demonstration"
    assert facts.decision_role == "informs"
    assert facts.external_validation.na is not None and "external validation" in facts.external_validation.na.reason
    assert facts.local_data is True


def test_shipped_documentation_loads_by_name() -> None:
    assert load_facts("readmission-30d") == load_facts(DOC)


def test_every_fact_field_is_in_the_shipped_file() -> None:
    text = DOC.read_text()
    for name in FACT_FIELDS:
        head = name.split(".")[0]
        assert f"\n{head}:" in text, name


def test_unknown_field_names_its_line(tmp_path: Path) -> None:
    path = write(tmp_path, "developer_name: Mercy General\n# a comment\nfunding: hospital budget\n")
    with pytest.raises(FactsError, match=r"documentation\.yaml:3: funding: unknown field 'funding'"):
        load_facts(path)


def test_every_problem_is_listed_with_its_line(tmp_path: Path) -> None:
    path = write(tmp_path, "decision_role: decides\nkeywords: [a, 3]\nlocal_data: false\n"
                           "external_validation:\n  tester: a lab\n  not_available: none done\n")
    with pytest.raises(FactsError) as info:
        load_facts(path)
    msg = str(info.value)
    assert ":1: decision_role: Input should be 'informs', 'augments' or 'replaces'" in msg
    assert ":2: keywords.1:" in msg
    assert ":3: local_data: say why" in msg
    assert ":4: external_validation: either not_available" in msg


def test_not_available_only_where_hti1_allows_it(tmp_path: Path) -> None:
    allowed = write(tmp_path, "update_process: {not_available: no update schedule agreed yet}\n")
    assert load_facts(allowed).update_process.reason == "no update schedule agreed yet"
    refused = write(tmp_path, "funding_source: {not_available: secret}\n")
    with pytest.raises(FactsError, match=r":1: funding_source: Input should be a valid string"):
        load_facts(refused)


def test_bad_yaml_names_its_line(tmp_path: Path) -> None:
    with pytest.raises(FactsError, match=r"documentation\.yaml:2: not valid YAML"):
        load_facts(write(tmp_path, "developer_name: a\n  bad: [\n"))


def test_missing_file_is_a_clear_error(tmp_path: Path) -> None:
    with pytest.raises(FactsError, match="cannot read documentation file"):
        load_facts(tmp_path / "absent.yaml")


def test_blank_facts_lists_blank_and_whitespace_fields(tmp_path: Path) -> None:
    assert blank_facts(Facts()) == list(FACT_FIELDS)
    facts = load_facts(DOC).model_copy(update={"funding_source": "  ", "keywords": []})
    assert blank_facts(facts) == ["funding_source", "keywords"]
    assert load_facts(None) == Facts()
    assert blank_facts(load_facts(write(tmp_path, "# nothing yet\n"))) == list(FACT_FIELDS)


def test_external_validation_details_count_as_blanks_until_filled(tmp_path: Path) -> None:
    facts = load_facts(write(tmp_path, "external_validation:\n  tester: University lab\n"))
    blanks = blank_facts(facts)
    assert "external_validation.tester" not in blanks
    assert "external_validation.data_source" in blanks and "external_validation.validity" in blanks
