"""Typed views of the FHIR R4 elements careloop maps, decoded with msgspec.

Decoding into these Structs reads only the fields careloop uses and skips the rest without building
dictionaries for them: about three times faster than `orjson.loads` per resource, which is what lets ingest
pass 100,000 resources/s on two cores. A resource whose fields have the wrong JSON types fails to decode
here and is quarantined with msgspec's message, which names the offending path.
"""

from __future__ import annotations

import msgspec
from msgspec import Struct


class Coding(Struct, gc=False, omit_defaults=True):
    system: str | None = None
    code: str | None = None  # (display is not read: skipping it saves a string per coding)


class CodeableConcept(Struct, gc=False, omit_defaults=True):
    coding: list[Coding] = []
    text: str | None = None


class Reference(Struct, gc=False, omit_defaults=True):
    reference: str | None = None


class Quantity(Struct, gc=False, omit_defaults=True):
    value: float | None = None
    comparator: str | None = None  # "<", "<=", ">=", ">": the value is a bound ("<0.01", eGFR ">60")
    unit: str | None = None
    code: str | None = None
    system: str | None = None


class Period(Struct, gc=False, omit_defaults=True):
    start: str | None = None
    end: str | None = None


class Identifier(Struct, gc=False, omit_defaults=True):
    system: str | None = None
    value: str | None = None


class Extension(Struct, gc=False, omit_defaults=True):
    url: str = ""
    extension: list[Extension] = []
    valueCoding: Coding | None = None
    valueCode: str | None = None
    valueString: str | None = None


class Address(Struct, gc=False, omit_defaults=True):
    postalCode: str | None = None
    state: str | None = None


class Communication(Struct, gc=False, omit_defaults=True):
    language: CodeableConcept | None = None
    preferred: bool | None = None


class HumanName(Struct, gc=False, omit_defaults=True):
    family: str | None = None
    given: list[str | None] = []  # null where only `_given` (an extension) says something about that name part


class Meta(Struct, gc=False, omit_defaults=True):
    """Which version of the resource this copy is (`ingest.versions`); loosely typed, since a malformed value
    there is ignored rather than quarantined."""

    versionId: object = None
    lastUpdated: object = None


class _R(Struct, tag_field="resourceType", gc=False, omit_defaults=True):
    id: str | None = None
    meta: Meta | list | str | float | bool | None = None  # not an object: no version (never a reason to quarantine)


class Patient(_R, tag="Patient"):
    birthDate: str | None = None
    gender: str | None = None
    deceasedDateTime: str | None = None
    deceasedBoolean: bool | None = None
    extension: list[Extension] = []
    communication: list[Communication] = []
    address: list[Address] = []
    maritalStatus: CodeableConcept | None = None
    managingOrganization: Reference | None = None


class EncounterLocation(Struct, gc=False, omit_defaults=True):
    location: Reference | None = None


class Hospitalization(Struct, gc=False, omit_defaults=True):
    admitSource: CodeableConcept | None = None
    dischargeDisposition: CodeableConcept | None = None


class EncounterDiagnosis(Struct, gc=False, omit_defaults=True):
    """One of a stay's diagnoses (a Condition), its role (admission, discharge, billing, ...) and its rank."""

    condition: Reference | None = None
    use: CodeableConcept | None = None
    rank: object = None  # a positive integer; anything else is read as unranked, never a reason to quarantine


class Encounter(_R, tag="Encounter"):
    status: str | None = None
    class_: Coding | None = msgspec.field(default=None, name="class")
    type: list[CodeableConcept] = []
    priority: CodeableConcept | None = None
    subject: Reference | None = None
    period: Period | None = None
    reasonCode: list[CodeableConcept] = []
    diagnosis: list[EncounterDiagnosis] = []
    hospitalization: Hospitalization | None = None
    location: list[EncounterLocation] = []
    serviceProvider: Reference | None = None


class Condition(_R, tag="Condition"):
    code: CodeableConcept | None = None
    verificationStatus: CodeableConcept | None = None
    category: list[CodeableConcept] = []
    subject: Reference | None = None
    encounter: Reference | None = None
    onsetDateTime: str | None = None
    onsetPeriod: Period | None = None
    recordedDate: str | None = None


class Range(Struct, gc=False, omit_defaults=True):
    low: Quantity | None = None
    high: Quantity | None = None


class Ratio(Struct, gc=False, omit_defaults=True):
    numerator: Quantity | None = None
    denominator: Quantity | None = None


class SampledData(Struct, gc=False, omit_defaults=True):
    origin: Quantity | None = None
    period: float | None = None
    factor: float | None = None
    dimensions: int | None = None
    data: str | None = None


class Component(Struct, gc=False, omit_defaults=True):
    code: CodeableConcept | None = None
    valueQuantity: Quantity | None = None
    valueCodeableConcept: CodeableConcept | None = None
    valueInteger: int | None = None
    valueString: str | None = None
    valueBoolean: bool | None = None
    # read as text only (`mapping._value_text`): no feature reads them as numbers
    valueRange: Range | None = None
    valueRatio: Ratio | None = None
    valuePeriod: Period | None = None
    valueDateTime: str | None = None
    valueTime: str | None = None
    valueSampledData: SampledData | None = None


class Observation(_R, tag="Observation"):
    status: str | None = None
    code: CodeableConcept | None = None
    subject: Reference | None = None
    encounter: Reference | None = None
    effectiveDateTime: str | None = None
    effectivePeriod: Period | None = None
    issued: str | None = None
    valueQuantity: Quantity | None = None
    valueCodeableConcept: CodeableConcept | None = None
    valueInteger: int | None = None
    valueString: str | None = None
    valueBoolean: bool | None = None
    valueRange: Range | None = None
    valueRatio: Ratio | None = None
    valuePeriod: Period | None = None
    valueDateTime: str | None = None
    valueTime: str | None = None
    valueSampledData: SampledData | None = None
    component: list[Component] = []


class Contained(Struct, gc=False, omit_defaults=True):
    """A contained resource, loosely typed (it may be of any type): only a Medication's code is read from it,
    through `mapping.medication_codes`."""

    resourceType: object = None
    id: object = None
    code: object = None


class MedicationRequest(_R, tag="MedicationRequest"):
    contained: list[Contained] = []
    status: str | None = None
    subject: Reference | None = None
    encounter: Reference | None = None
    medicationCodeableConcept: CodeableConcept | None = None
    medicationReference: Reference | None = None
    authoredOn: str | None = None
    category: list[CodeableConcept] = []


class Procedure(_R, tag="Procedure"):
    status: str | None = None
    code: CodeableConcept | None = None
    subject: Reference | None = None
    encounter: Reference | None = None
    performedDateTime: str | None = None
    performedPeriod: Period | None = None


class Attachment(Struct, gc=False, omit_defaults=True):
    contentType: str | None = None
    data: str | None = None


class Content(Struct, gc=False, omit_defaults=True):
    attachment: Attachment | None = None


class DocContext(Struct, gc=False, omit_defaults=True):
    encounter: list[Reference] = []
    period: Period | None = None


class DocumentReference(_R, tag="DocumentReference"):
    status: str | None = None
    type: CodeableConcept | None = None
    subject: Reference | None = None
    date: str | None = None
    content: list[Content] = []
    context: DocContext | None = None


class Coverage(_R, tag="Coverage"):
    status: str | None = None
    type: CodeableConcept | None = None
    beneficiary: Reference | None = None
    period: Period | None = None


class Immunization(_R, tag="Immunization"):
    status: str | None = None
    vaccineCode: CodeableConcept | None = None
    patient: Reference | None = None
    encounter: Reference | None = None
    occurrenceDateTime: str | None = None


class AllergyIntolerance(_R, tag="AllergyIntolerance"):
    code: CodeableConcept | None = None
    verificationStatus: CodeableConcept | None = None
    patient: Reference | None = None
    recordedDate: str | None = None
    onsetDateTime: str | None = None


class Organization(_R, tag="Organization"):
    name: str | None = None
    identifier: list[Identifier] = []
    partOf: Reference | None = None


class Location(_R, tag="Location"):
    name: str | None = None
    identifier: list[Identifier] = []
    managingOrganization: Reference | None = None


class Practitioner(_R, tag="Practitioner"):
    name: list[HumanName] = []
    identifier: list[Identifier] = []


class Medication(_R, tag="Medication"):
    """A medication definition, read so that a MedicationRequest's medicationReference to it resolves to its code."""

    code: CodeableConcept | None = None
    identifier: list[Identifier] = []


MAPPED = (Patient, Encounter, Condition, Observation, MedicationRequest, Procedure, DocumentReference, Coverage,
          Immunization, AllergyIntolerance, Organization, Location, Practitioner, Medication)
Resource = (Patient | Encounter | Condition | Observation | MedicationRequest | Procedure | DocumentReference
            | Coverage | Immunization | AllergyIntolerance | Organization | Location | Practitioner | Medication)
MAPPED_TYPES = frozenset(t.__struct_config__.tag for t in MAPPED)

decoder = msgspec.json.Decoder(Resource)


class Entry(Struct, gc=False, omit_defaults=True):
    fullUrl: str | None = None
    resource: msgspec.Raw = msgspec.Raw()  # kept undecoded: decoded later with the typed decoder
    request: dict | None = None
    search: dict | None = None


class Bundle(Struct, gc=False, omit_defaults=True):
    """A Bundle's entries. Its `type` is not read: a file holding one resource is decoded with this first, and an
    Encounter's, a Coverage's or a DocumentReference's own `type` (not a string) must not fail it."""

    resourceType: object = None
    entry: list[Entry] = []


bundle_decoder = msgspec.json.Decoder(Bundle)
entry_decoder = msgspec.json.Decoder(Entry)


class RawBundle(Struct, gc=False, omit_defaults=True):
    """A Bundle whose entries are read one at a time (`entry_decoder`), when one of them is malformed: that entry
    is quarantined, not the whole Bundle."""

    entry: list[msgspec.Raw] = []


raw_bundle_decoder = msgspec.json.Decoder(RawBundle)


class Head(Struct, gc=False, omit_defaults=True):
    """Enough of any resource to route it: its type, id and identifiers (for conditional references)."""

    resourceType: object = None
    id: object = None
    identifier: object = None


head_decoder = msgspec.json.Decoder(Head)


class EntryHead(Struct, gc=False, omit_defaults=True):
    """The type and id of a malformed Bundle entry's resource, for its quarantine row."""

    resource: Head | None = None


entry_head_decoder = msgspec.json.Decoder(EntryHead)
