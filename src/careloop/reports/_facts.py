"""The facts only a person can supply (developer, intended use, risks, monitoring, ...), from a small YAML file.

Every field may be blank: the renderers then say "Not yet supplied: fill <field> in the documentation file" and
`blank_facts` lists what is still missing, so a draft can be rendered and reviewed before it is complete. A few
fields, those HTI-1 lets a developer declare unavailable (external validation, outcome evaluations, local
validation, the update schedule), also accept `{not_available: <reason>}`.
"""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Any, Literal

import yaml
from pydantic import BaseModel, ConfigDict, Field, PlainValidator, field_validator, model_validator

from careloop.errors import CareloopError
from careloop.specfile import find_spec, parse_spec, read_spec

__all__ = ["FACT_FIELDS", "Facts", "FactsError", "NotAvailable", "blank_facts", "is_blank", "load_facts", "missing"]


class FactsError(CareloopError):
    """A documentation file is invalid; the message lists every problem with its file and line."""


class NotAvailable(BaseModel):
    """An explicit "not available", with the reason (written `{not_available: <reason>}` in the YAML)."""

    model_config = ConfigDict(extra="forbid", frozen=True)
    not_available: Annotated[str, Field(min_length=3)]

    @property
    def reason(self) -> str:
        return self.not_available.strip()


_NA_HINT = "expected text, or {not_available: <reason>} when the information does not exist yet"


def _text_or_na(value: Any) -> str | NotAvailable | None:
    if value is None or isinstance(value, str | NotAvailable):
        return value
    if isinstance(value, dict):
        if set(value) != {"not_available"} or not isinstance(value["not_available"], str) or not (
                value["not_available"].strip()):
            raise ValueError(f"{_NA_HINT}; got the keys {sorted(map(str, value))}")
        return NotAvailable(not_available=value["not_available"])
    raise ValueError(f"{_NA_HINT}; got {type(value).__name__}")


def _local(value: Any) -> bool | NotAvailable | None:
    if value is None or value is True or isinstance(value, NotAvailable):
        return value
    if value is False:
        raise ValueError("say why local results are not available: local_data: {not_available: <reason>}")
    if isinstance(value, dict):
        result = _text_or_na(value)
        if isinstance(result, NotAvailable):
            return result
    raise ValueError("expected true (the test split is this hospital's own data) or {not_available: <reason>}")


TextOrNA = Annotated[str | NotAvailable | None, PlainValidator(_text_or_na)]
LocalData = Annotated[bool | NotAvailable | None, PlainValidator(_local)]


def is_blank(value: object) -> bool:
    """True for a fact nobody has filled in: None, empty or whitespace text, an empty list.

    >>> is_blank("  "), is_blank(["x"]), is_blank(NotAvailable(not_available="none was done"))
    (True, False, False)
    """
    if value is None:
        return True
    if isinstance(value, str):
        return not value.strip()
    if isinstance(value, list | tuple):
        return not any(not is_blank(v) for v in value)
    return False


_EXTERNAL = ("data_source", "tester", "demographics", "process", "validity", "fairness")


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class ExternalValidation(_Strict):
    """HTI-1 group 6 and #23/#24: validation on data from another source than the development data."""

    not_available: str | None = None
    data_source: str | None = None
    tester: str | None = None
    demographics: str | None = None
    process: str | None = None
    validity: str | None = None
    fairness: str | None = None

    @model_validator(mode="after")
    def _either(self) -> ExternalValidation:
        given = [k for k in _EXTERNAL if not is_blank(getattr(self, k))]
        if self.not_available is not None and given:
            raise ValueError(f"either not_available (with a reason) or the details ({', '.join(given)}), not both")
        if self.not_available is not None and is_blank(self.not_available):
            raise ValueError("not_available needs the reason")
        return self

    @property
    def na(self) -> NotAvailable | None:
        return None if self.not_available is None else NotAvailable(not_available=self.not_available)


class Facts(_Strict):
    """The person-supplied facts of a model's documentation (`documentation/<task>.yaml`); all optional.

    >>> Facts(developer_name="Mercy General, clinical AI team").developer_name
    'Mercy General, clinical AI team'
    >>> blank_facts(Facts(developer_name="x"))[:2]
    ['developer_contact', 'funding_source']
    """

    developer_name: str | None = None
    developer_contact: str | None = None
    funding_source: str | None = None
    release_stage: str | None = None
    global_availability: str | None = None
    ehr_compatibility: list[str] | None = None
    regulatory_approval: str | None = None
    keywords: list[str] | None = None
    intended_use: str | None = None
    intended_users: str | None = None
    how_to_use: str | None = None
    patient_population: str | None = None
    decision_role: Literal["informs", "augments", "replaces"] | None = None
    out_of_scope: str | None = None
    risks_and_limitations: str | None = None
    biases_and_ethics: str | None = None
    clinical_risk_level: str | None = None
    training_data_relevance: str | None = None
    fairness_approach: str | None = None
    bias_mitigation: str | None = None
    external_validation: ExternalValidation = Field(default_factory=ExternalValidation)
    outcome_evaluations: TextOrNA = None
    local_data: LocalData = None
    validity_monitoring: str | None = None
    fairness_monitoring: str | None = None
    update_process: TextOrNA = None
    correction_frequency: TextOrNA = None
    stakeholders_consulted: str | None = None
    third_party_information: str | None = None
    security: str | None = None
    transparency: str | None = None
    evaluation_references: str | None = None
    clinical_trial: str | None = None
    peer_reviewed_publications: str | None = None
    reimbursement_status: str | None = None
    patient_consent_or_disclosure: str | None = None
    bibliography: str | None = None

    @field_validator("external_validation", mode="before")
    @classmethod
    def _external_blank(cls, v: object) -> object:
        return ExternalValidation() if v is None else v


# every fact, in file order, with what to write (the renderers name a blank one by this key)
FACT_FIELDS: dict[str, str] = {
    "developer_name": "who developed the intervention (organisation, team)",
    "developer_contact": "how to reach the developer (e-mail, address, web form)",
    "funding_source": "who paid for the development of the intervention",
    "release_stage": "e.g. research prototype, silent pilot, limited clinical release, general availability",
    "global_availability": "where the model may be used (countries, health systems, sites)",
    "ehr_compatibility": "EHRs the integration has been tested with (list)",
    "regulatory_approval": "clearances or the regulatory assessment (e.g. non-device CDS under 520(o)(1)(E))",
    "keywords": "a few keywords (list)",
    "intended_use": "the clinical purpose and where in the workflow the output appears",
    "intended_users": "who sees and acts on the output",
    "how_to_use": "how a user should read the output and what to do with it",
    "patient_population": "the patients the model is meant for",
    "decision_role": "informs, augments or replaces clinical management",
    "out_of_scope": "tasks, settings and patients where users are cautioned against using it",
    "risks_and_limitations": "known risks, inappropriate settings and uses, known limitations",
    "biases_and_ethics": "known biases and ethical considerations",
    "clinical_risk_level": "the clinical risk level and why",
    "training_data_relevance": "how the development data relate to the setting where the model is deployed",
    "fairness_approach": "how the developer ensured the output is fair",
    "bias_mitigation": "approaches used to manage, reduce or eliminate bias",
    "external_validation.data_source": "data source or setting of the external validation",
    "external_validation.tester": "who conducted the external validation",
    "external_validation.demographics": "demographic representativeness of the external data",
    "external_validation.process": "how the external validation was done",
    "external_validation.validity": "performance (with CIs) in the external data",
    "external_validation.fairness": "fairness results in the external data",
    "outcome_evaluations": "references to evaluations of the model's effect on patient outcomes",
    "local_data": "true when the test split is this hospital's own data, else {not_available: reason}",
    "validity_monitoring": "process and frequency of monitoring validity over time",
    "fairness_monitoring": "process and frequency of monitoring fairness over time",
    "update_process": "process and frequency of updating the model",
    "correction_frequency": "how fast performance is corrected when validity or fairness risks are found",
    "stakeholders_consulted": "who was consulted (clinicians, patients, governance, ...)",
    "third_party_information": "third-party components, data or code",
    "security": "security and privacy controls",
    "transparency": "how users are told about the model and can give feedback",
    "evaluation_references": "further evaluation reports",
    "clinical_trial": "trial registration, or none",
    "peer_reviewed_publications": "peer-reviewed publications, or none",
    "reimbursement_status": "reimbursement status, or not applicable",
    "patient_consent_or_disclosure": "how patients are informed or consent",
    "bibliography": "references as BibTeX",
}


def fact(facts: Facts, name: str) -> Any:
    """The value of a fact by its FACT_FIELDS key (dotted for external validation)."""
    head, _, tail = name.partition(".")
    value = getattr(facts, head)
    return getattr(value, tail) if tail else value


def blank_facts(facts: Facts) -> list[str]:
    """The FACT_FIELDS keys still blank, in file order (external validation declared unavailable is not blank).

    >>> len(blank_facts(Facts())) == len(FACT_FIELDS)
    True
    """
    external_na = facts.external_validation.not_available is not None
    return [name for name in FACT_FIELDS
            if not (external_na and name.startswith("external_validation.")) and is_blank(fact(facts, name))]


def missing(name: str) -> str:
    """The text that stands in for a blank fact.

    >>> missing("funding_source")
    'Not yet supplied: fill funding_source in the documentation file'
    """
    return f"Not yet supplied: fill {name} in the documentation file"


def load_facts(path: str | Path | None = None) -> Facts:
    """Facts from a documentation YAML file (a path, or a name in `$CARELOOP_DOCUMENTATION` or `documentation/`);
    blank facts when `path` is None. Raises FactsError naming the line of every problem.

    >>> load_facts(None).developer_name is None
    True
    """
    if path is None:
        return Facts()
    found = find_spec(path, "CARELOOP_DOCUMENTATION", "documentation", FactsError, "documentation")
    text, source = read_spec(found, FactsError, "documentation")
    try:
        empty = yaml.safe_load(text) is None  # nothing but comments: a draft with every fact still blank
    except yaml.YAMLError:
        empty = False  # parse_spec reports it with its line
    return Facts() if empty else parse_spec(Facts, text, source, FactsError)
