"""Map FHIR R4 resources to careloop's tables (see `careloop.contracts`), or reject them with a reason.

Pure functions of one resource and its reference context: no I/O, so every engine and every source (Bulk
NDJSON, Bundles, REST pages) maps identically. A resource is either mapped (rows appended to a `Batch`),
rejected (`Reject`: it goes to quarantine with its reason and raw text), or skipped by a declared rule.
"""

from __future__ import annotations

import base64
import binascii
import codecs
import datetime as dt
import math
from collections import Counter
from collections.abc import MutableMapping
from dataclasses import dataclass, field

import msgspec

from careloop.contracts import subject_id
from careloop.ingest import model as M

# Code systems careloop knows, with the prefix their codes carry in events.
SYSTEMS = {
    "http://loinc.org": "LOINC",
    "http://snomed.info/sct": "SNOMED",
    "http://hl7.org/fhir/sid/icd-10-cm": "ICD10CM",
    "http://hl7.org/fhir/sid/icd-10": "ICD10",
    "http://hl7.org/fhir/sid/icd-9-cm": "ICD9CM",
    "http://www.nlm.nih.gov/research/umls/rxnorm": "RXNORM",
    "http://hl7.org/fhir/sid/cvx": "CVX",
    "http://hl7.org/fhir/sid/ndc": "NDC",
    "http://www.ama-assn.org/go/cpt": "CPT",
    "http://unitsofmeasure.org": "UCUM",
    "https://nahdo.org/sopt": "SOPT",
}
# The same systems named by their HL7 OIDs, as CDA-derived and older feeds write them. Kept apart from SYSTEMS,
# which names each system by its one canonical URL (the bedside's prefetch searches are written with it).
SYSTEM_OIDS = {
    "urn:oid:2.16.840.1.113883.6.1": "LOINC",
    "urn:oid:2.16.840.1.113883.6.96": "SNOMED",
    "urn:oid:2.16.840.1.113883.6.90": "ICD10CM",
    "urn:oid:2.16.840.1.113883.6.88": "RXNORM",
    "urn:oid:2.16.840.1.113883.6.69": "NDC",
    "urn:oid:2.16.840.1.113883.12.292": "CVX",
    "urn:oid:2.16.840.1.113883.6.12": "CPT",
    "urn:oid:2.16.840.1.113883.6.8": "UCUM",
}
_PREFIX_OF = SYSTEMS | SYSTEM_OIDS  # coding.system -> prefix, as codes are read

# Resource types not mapped to events, each with the declared rule that skips it.
SKIP_RULES = {
    "Claim": "billing resource (claims are not clinical events)",
    "ExplanationOfBenefit": "billing resource (claims are not clinical events)",
    "Provenance": "provenance metadata",
    "Device": "device record",
    "PractitionerRole": "directory detail not used",
    "ImagingStudy": "imaging metadata",
    "CarePlan": "care plan",
    "CareTeam": "care team",
    "Goal": "care goal",
    "DiagnosticReport": "report grouping of Observations already loaded",
    "SupplyDelivery": "supply logistics",
    "MedicationAdministration": "administration record",
    "OperationOutcome": "server message, not patient data",
    "Bundle": "nested bundle",
}

# Canonical UCUM unit per LOINC code, and conversions from units feeds are known to send.
CANONICAL_UNITS: dict[str, str] = {
    "2160-0": "mg/dL", "38483-4": "mg/dL", "2345-7": "mg/dL", "2339-0": "mg/dL", "718-7": "g/dL", "1751-7": "g/dL",
    "3094-0": "mg/dL", "6299-2": "mg/dL", "29463-7": "kg", "8310-5": "Cel", "8331-1": "Cel", "8302-2": "cm",
    "2951-2": "mmol/L", "2947-0": "mmol/L", "2823-3": "mmol/L", "6298-4": "mmol/L", "4548-4": "%",
}
_CONVERT: dict[tuple[str, str], tuple[float, float]] = {  # value_canonical = value * a + b
    ("g/dL", "g/L"): (0.1, 0.0),
    ("kg", "[lb_av]"): (1 / 2.20462, 0.0),
    ("kg", "g"): (0.001, 0.0),
    ("Cel", "[degF]"): (5 / 9, -32 * 5 / 9),
    ("cm", "[in_i]"): (2.54, 0.0),
    ("cm", "m"): (100.0, 0.0),
    ("mmol/L", "meq/L"): (1.0, 0.0),
    ("mmol/L", "mEq/L"): (1.0, 0.0),
}
_MOLAR = {"2345-7": 18.016, "2339-0": 18.016, "3094-0": 2.801, "6299-2": 2.801}  # mmol/L -> mg/dL
# umol/L -> mg/dL, by code: a molar unit's factor is the substance's (creatinine's 1/88.42 would misread a glucose)
_MICROMOLAR = {"2160-0": 1 / 88.42, "38483-4": 1 / 88.42, **{code: f / 1000 for code, f in _MOLAR.items()}}
# Units as feeds write them in `unit` (display text) for the UCUM code they mean: UCUM is case-sensitive and has no
# micro sign, but a feed that sends no `code` often writes "mg/dl" or "µmol/L".
UNIT_ALIASES = {
    "mg/dl": "mg/dL", "g/dl": "g/dL", "g/l": "g/L", "mmol/l": "mmol/L", "umol/l": "umol/L", "µmol/L": "umol/L",
    "μmol/L": "umol/L", "µmol/l": "umol/L", "μmol/l": "umol/L", "meq/l": "mEq/L", "mEq/l": "mEq/L",
    "°C": "Cel", "degC": "Cel", "C": "Cel", "°F": "[degF]", "degF": "[degF]", "F": "[degF]", "lb": "[lb_av]",
    "lbs": "[lb_av]", "in": "[in_i]", "KG": "kg", "Kg": "kg", "CM": "cm",
}


def normalise(loinc: str, value: float, unit: str | None) -> tuple[float | None, str | None]:
    """Value in the code's canonical unit where the conversion is known. For a code with a canonical unit, a value
    in a unit careloop cannot convert gives None (the number stays in the event's `original_value`): read as if it
    were in the canonical unit, a creatinine in µmol/mol or a weight in stones would be a wrong feature. A value
    with no unit is taken to be in the canonical unit; a code with none keeps its value and unit as sent.

    >>> normalise("2160-0", 88.42, "umol/L")
    (1.0, 'mg/dL')
    >>> normalise("8310-5", 98.6, "[degF]")[0].__round__(2)
    37.0
    >>> normalise("2160-0", 1.1, "mg/dl"), normalise("2160-0", 1.1, "mmol/mol")
    ((1.1, 'mg/dL'), (None, 'mmol/mol'))
    """
    canon = CANONICAL_UNITS.get(loinc)
    if canon is None or unit == canon or unit is None:
        return value, unit
    unit = UNIT_ALIASES.get(unit, unit)
    if unit == canon:
        return value, canon
    if unit == "mmol/L" and loinc in _MOLAR:
        return value * _MOLAR[loinc], canon
    if unit == "umol/L" and loinc in _MICROMOLAR:
        return value * _MICROMOLAR[loinc], canon
    conv = _CONVERT.get((canon, unit))
    if conv is None:
        return None, unit
    return value * conv[0] + conv[1], canon


class Reject(Exception):
    """A resource that cannot be loaded; it goes to quarantine with `reason`."""

    def __init__(self, reason: str, detail: str = "", rtype: str | None = None, rid: str | None = None) -> None:
        super().__init__(reason)
        self.reason = reason
        self.detail = detail
        self.rtype = rtype
        self.rid = rid


class Skip(Exception):
    """A resource skipped by a declared rule (e.g. billing resources)."""

    def __init__(self, rule: str, rtype: str) -> None:
        super().__init__(rule)
        self.rule = rule
        self.rtype = rtype


REASONS = (
    "unparseable JSON",
    "not a FHIR resource",
    "missing id",
    "missing subject",
    "unresolvable reference",
    "impossible date",
    "missing time",
    "unknown code system for a required field",
    "invalid value",
)

_MIN_TIME = int(dt.datetime(1850, 1, 1, tzinfo=dt.UTC).timestamp() * 1_000_000)
_MAX_TIME = int(dt.datetime(2100, 1, 1, tzinfo=dt.UTC).timestamp() * 1_000_000)
_EPOCH = dt.datetime(1970, 1, 1, tzinfo=dt.UTC)
_MICROSECOND = dt.timedelta(microseconds=1)


_TIME_CACHE: dict[str, int] = {}


def parse_time(value: str | None, field_name: str) -> int | None:
    """A FHIR date/dateTime/instant as UTC microseconds; partial dates take their first instant."""
    if value is None:
        return None
    hit = _TIME_CACHE.get(value)
    if hit is not None:
        return hit
    us = _parse_time(value, field_name)
    if len(_TIME_CACHE) > 200_000:
        _TIME_CACHE.clear()
    _TIME_CACHE[value] = us
    return us


def _parse_time(value: str, field_name: str, in_range: bool = True) -> int:
    if not isinstance(value, str):
        raise Reject("impossible date", f"{field_name}={value!r}")
    try:
        n = len(value)
        if n == 4:
            d = dt.datetime(int(value), 1, 1, tzinfo=dt.UTC)
        elif n == 7:
            d = dt.datetime(int(value[:4]), int(value[5:7]), 1, tzinfo=dt.UTC)
        elif n == 10:
            d = dt.datetime(int(value[:4]), int(value[5:7]), int(value[8:10]), tzinfo=dt.UTC)
        else:
            leap = n >= 19 and value[10] == "T" and value[16] == ":" and value[17:19] == "60"
            d = dt.datetime.fromisoformat(f"{value[:17]}59{value[19:]}" if leap else value)
            if d.tzinfo is None:
                d = d.replace(tzinfo=dt.UTC)  # FHIR requires a zone on times; assume UTC when a feed omits it
            if leap:  # a leap second (FHIR's time allows :60) is read as the instant after :59, as POSIX time does
                d += dt.timedelta(seconds=1)
        us = (d - _EPOCH) // _MICROSECOND  # exact integer arithmetic, also before 1970
    except (ValueError, OverflowError) as exc:
        raise Reject("impossible date", f"{field_name}={value!r}") from exc
    if in_range and not _MIN_TIME <= us < _MAX_TIME:
        raise Reject("impossible date", f"{field_name}={value!r} is out of range")
    return us


def parse_end(value: str | None, field_name: str) -> int | None:
    """The end of a Period (UTC microseconds). FHIR: an end of partial precision includes all of its day, month or
    year, so "2023-05-01" ends at its last instant (2023-05-01T23:59:59.999999Z), not at its first, which would
    cut a stay short or put a same-day end before its start."""
    if value is None:
        return None
    us = parse_time(value, field_name)
    n = len(value)
    if n not in (4, 7, 10):
        return us
    y, m, d = _calendar(value)
    if n == 4:
        after = dt.datetime(y + 1, 1, 1, tzinfo=dt.UTC)
    elif n == 7:
        after = dt.datetime(y + m // 12, m % 12 + 1, 1, tzinfo=dt.UTC)
    else:
        after = dt.datetime(y, m, d, tzinfo=dt.UTC) + dt.timedelta(days=1)
    return (after - _EPOCH) // _MICROSECOND - 1


def _precision(value: str) -> int:
    """1 year, 2 month, 3 day, 4 a time of day."""
    return {4: 1, 7: 2, 10: 3}.get(len(value), 4)


def _calendar(value: str) -> tuple[int, int, int]:
    """(year, month, day) of a date or dateTime as written (a dateTime's own date in its own zone); a partial date's
    missing parts are 1. `value` has been read by `parse_time`."""
    n = len(value)
    if n in (4, 7, 10):
        return int(value[:4]), int(value[5:7]) if n > 4 else 1, int(value[8:10]) if n > 7 else 1
    d = dt.datetime.fromisoformat(value)
    return d.year, d.month, d.day


def ends_before(end: str, end_us: int, start: str, start_us: int) -> bool:
    """Is `end` certainly before `start` (both read by `parse_time`)? Two dateTimes are compared as instants; else
    at the coarser precision of the two, each date as written: a death in "2023-05" is not before a birth on
    2023-05-10, nor one at 2023-05-10T02:00+05:30 (a date has no zone), nor an end "2023-05-01" before a start at
    10:00 that day."""
    p = min(_precision(end), _precision(start))
    if p == 4:
        return end_us < start_us
    return _calendar(end)[:p] < _calendar(start)[:p]


def parse_date(value: str | None, field_name: str) -> int | None:
    """A FHIR date as days since 1970-01-01 (Arrow date32)."""
    us = parse_time(value, field_name)
    return None if us is None else us // 86_400_000_000


@dataclass
class Context:
    """What references can resolve against: the enclosing Bundle's fullUrls and identifiers."""

    full_urls: dict[str, tuple[str, str]] = field(default_factory=dict)  # urn:uuid:x -> (type, id)
    conditional: dict[str, tuple[str, str]] = field(default_factory=dict)  # Type?identifier=s|v -> (type, id)
    patients: dict[str, str] = field(default_factory=dict)  # resolved subject references (a cache)
    encounters: dict[str, str | None] = field(default_factory=dict)  # resolved encounter references (a cache)
    medications: MutableMapping[str, tuple[str, ...]] = field(default_factory=dict)  # Medication id -> its known codes
    # (`medication_codes`): the Medications of the same Bundle, and at ingest those already in the store


_LOCAL_TYPES = frozenset({"Patient", "Encounter", "Condition", "Observation", "Practitioner", "Organization",
                          "Location", "MedicationRequest", "Procedure", "DocumentReference", "Coverage", "Medication"})


def resolve(ref: str | None, ctx: Context) -> tuple[str, str] | None:
    """(type, id) of a reference in any style: Type/id, absolute URL, urn:uuid:, or Type?identifier=s|v."""
    if not ref:
        return None
    head, sep, tail = ref.partition("/")
    if sep and tail and head in _LOCAL_TYPES and "/" not in tail:  # the common Type/id form, fast
        return head, tail
    if ref.startswith("urn:uuid:") or ref.startswith("urn:oid:"):
        return ctx.full_urls.get(ref)
    if "?" in ref:
        return ctx.conditional.get(ref)
    parts = ref.split("/")
    if len(parts) >= 4 and parts[-2] == "_history":
        parts = parts[:-2]
    if len(parts) >= 2 and parts[-2][:1].isupper() and parts[-1]:  # "Patient/" names no one
        return parts[-2], parts[-1]
    return None


def keep_reference(ref: str | None, ctx: Context) -> str | None:
    """A reference to a shared resource, normalised to Type/id when it resolves, else kept as written
    (a conditional reference resolves later against the directory table)."""
    if not ref:
        return None
    hit = resolve(ref, ctx)
    return f"{hit[0]}/{hit[1]}" if hit else ref


EVENT_COLUMNS = ("subject_id", "time", "code", "numeric_value", "text_value", "unit", "original_value",
                 "original_unit", "encounter_id", "source_resource", "source_id")


def append_row(cols: dict[str, list], **values: object) -> None:
    """Append one row to a table held as column lists; every column must be given (KeyError otherwise)."""
    for name, col in cols.items():
        col.append(values[name])


class Batch:
    """Column buffers for every table of one unit of work."""

    __slots__ = ("_subjects", "dir", "enc", "ev", "notes", "pat", "unconverted", "void", "voided")

    def __init__(self) -> None:
        self.ev: list[tuple] = []
        self.void: Counter = Counter()  # resources loaded without events, by why (see `void_reason`)
        self.voided: dict[tuple[str, str], str] = {}  # which: (type, id) -> why (a copy replaced later is uncounted)
        self.unconverted: Counter = Counter()  # values whose unit has no conversion to their code's, by code and unit
        self.enc: dict[str, list] = {k: [] for k in (
            "encounter_id", "subject_id", "patient_id", "class", "status", "start", "end", "priority", "type_code",
            "admit_source", "discharge_disposition", "discharge_disposition_nubc", "site_ref", "location_ref",
            "reason_code", "diagnosis_ref")}
        self.pat: dict[str, list] = {k: [] for k in (
            "subject_id", "patient_id", "birth_date", "sex", "race", "ethnicity", "language", "marital_status",
            "postal_code", "deceased_time", "managing_org_ref")}
        self.notes: dict[str, list] = {k: [] for k in ("note_id", "subject_id", "time", "encounter_id", "type_code",
                                                       "text")}
        self.dir: dict[str, list] = {k: [] for k in ("resource_type", "resource_id", "name", "identifier_system",
                                                     "identifier_value", "part_of", "code")}
        self._subjects: dict[str, int] = {}

    def subject(self, patient_id: str) -> int:
        sid = self._subjects.get(patient_id)
        if sid is None:
            sid = self._subjects[patient_id] = subject_id(patient_id)
        return sid

    def event(self, sid: int, time: int | None, code: str, num: float | None, text: str | None, unit: str | None,
              orig: float | None, orig_unit: str | None, enc: str | None, rtype: str, rid: str) -> None:
        # one tuple per event, transposed to columns once per unit (cheaper than eleven appends)
        self.ev.append((sid, time, code, num, text, unit, orig, orig_unit, enc, rtype, rid))

    def event_columns(self) -> dict[str, list]:
        names = EVENT_COLUMNS
        if not self.ev:
            return {k: [] for k in names}
        return dict(zip(names, (list(c) for c in zip(*self.ev, strict=True)), strict=True))


# --- helpers over FHIR structures ---------------------------------------------------------------


def _codes(concept: M.CodeableConcept | None) -> list[str]:
    """Prefixed codes of a CodeableConcept's codings whose system careloop knows, in order, each once (a coding
    repeated would give its event twice)."""
    if concept is None:
        return []
    out = []
    for c in concept.coding:
        prefix = _PREFIX_OF.get(c.system)
        if prefix and c.code:
            code = f"{prefix}/{c.code}"
            if code not in out:
                out.append(code)
    return out


def _known_codes(concept: M.CodeableConcept | None, what: str) -> list[str]:
    """Every known code of a required concept (`_codes`), each mapped to its own event: a feed codes one thing in
    several systems or at several granularities (US Core pulse oximetry: LOINC 2708-6 and 59408-5; a drug: NDC and
    RxNorm), and a feature may read any of them. Rejected when none is known."""
    codes = _codes(concept)
    if not codes:
        _first_code(concept, what)  # raises, naming the systems sent
    return codes


def _first_code(concept: M.CodeableConcept | None, what: str) -> str:
    if concept is not None:
        for c in concept.coding:
            prefix = _PREFIX_OF.get(c.system)
            if prefix and c.code:
                return f"{prefix}/{c.code}"
    systems = [c.system for c in concept.coding] if concept else []
    raise Reject("unknown code system for a required field", f"{what}: systems {systems}")


def _plain_code(concept: M.CodeableConcept | None) -> str | None:
    """The first coding's bare code (for HL7 code systems such as discharge disposition)."""
    if concept is None:
        return None
    for c in concept.coding:
        if c.code:
            return c.code
    return None


def _code_in(concept: M.CodeableConcept | None, system: str) -> str | None:
    if concept is not None:
        for c in concept.coding:
            if c.system == system:
                return c.code
    return None


def _encounter_id(ref: M.Reference | None, ctx: Context) -> str | None:
    if ref is None or not ref.reference:
        return None
    text = ref.reference
    eid = ctx.encounters.get(text, "")  # cached per unit, like subjects ("" = not cached yet)
    if eid != "":
        return eid
    hit = resolve(text, ctx)
    eid = hit[1] if hit and hit[0] == "Encounter" else None
    ctx.encounters[text] = eid
    return eid


def _subject(ref: M.Reference | None, ctx: Context, key: str = "subject") -> str:
    if ref is None or not ref.reference:
        raise Reject("missing subject", f"no {key}.reference")
    text = ref.reference
    pid = ctx.patients.get(text)  # the same few patients are referenced over and over within a unit
    if pid is not None:
        return pid
    hit = resolve(text, ctx)
    if hit is None or hit[0] != "Patient":
        raise Reject("unresolvable reference", f"{key}={text!r}")
    ctx.patients[text] = hit[1]
    return hit[1]


def _number(value: float | None, what: str) -> float:
    if value is None or not math.isfinite(value):
        raise Reject("invalid value", f"{what}={value!r}")
    return float(value)


def _ref(ref: M.Reference | None) -> str | None:
    return ref.reference if ref is not None else None


# --- the mappers ---------------------------------------------------------------------------------


def map_patient(res: M.Patient, rid: str, ctx: Context, b: Batch) -> None:
    sid = b.subject(rid)
    born, died = res.birthDate, res.deceasedDateTime
    birth = parse_time(born, "birthDate")
    # a death known to its day (or month, year) only is stored at the last instant of it, as a Period's end: a death
    # "2023-01-05" is not before a discharge home at 10:00 that day (at its first instant it would be, making the
    # stay an in-hospital death), nor visible to a prediction made earlier that day; one on an earlier day still is
    death = parse_end(died, "deceasedDateTime")
    if birth is not None and death is not None and death < birth:
        if ends_before(str(died), death, str(born), birth):
            raise Reject("impossible date", "deceasedDateTime before birthDate")
        death = birth  # the same day or month, written at another precision: no death before the birth
    race = eth = None
    for ext in res.extension:
        url = ext.url
        is_race = url.endswith("us-core-race")
        if is_race or url.endswith("us-core-ethnicity"):
            for sub in ext.extension:
                if sub.url == "ombCategory" and sub.valueCoding is not None:
                    if is_race:
                        race = race or sub.valueCoding.code
                    else:
                        eth = eth or sub.valueCoding.code
    lang = None
    for comm in res.communication:
        code = _plain_code(comm.language)
        if code and (lang is None or comm.preferred):
            lang = code
    zip_code = res.address[0].postalCode if res.address else None
    org = keep_reference(_ref(res.managingOrganization), ctx)
    sex = res.gender
    append_row(b.pat, subject_id=sid, patient_id=rid, birth_date=None if birth is None else birth // 86_400_000_000,
               sex=sex, race=race, ethnicity=eth, language=lang, marital_status=_plain_code(res.maritalStatus),
               postal_code=zip_code, deceased_time=death, managing_org_ref=org)
    if birth is not None:
        b.event(sid, birth, "MEDS_BIRTH", None, None, None, None, None, None, "Patient", rid)
    for code in (f"GENDER/{sex}" if sex else None, f"RACE/{race}" if race else None,
                 f"ETHNICITY/{eth}" if eth else None, f"LANGUAGE/{lang}" if lang else None):
        if code:
            b.event(sid, None, code, None, None, None, None, None, None, "Patient", rid)
    if death is not None:
        b.event(sid, death, "MEDS_DEATH", None, None, None, None, None, None, "Patient", rid)


# v3 ActEncounterCode specialisations read as the class they specialise: an inpatient stay coded "inpatient acute"
# or "inpatient non-acute" is an inpatient stay (IMP) to every task and feature
CLASS_PARENT = {"ACUTE": "IMP", "NONAC": "IMP"}


PRINCIPAL_USES = frozenset({"DD", "billing"})  # diagnosis-role: discharge diagnosis, billing
_OTHER_USES = frozenset({"AD", "CC", "CM", "pre-op", "post-op"})  # admission, chief complaint, comorbidity, ...


def principal_diagnosis_ref(res: M.Encounter, ctx: Context) -> str | None:
    """The Condition that Encounter.diagnosis names as the stay's principal diagnosis (`Condition/<id>`), or None:
    among the diagnoses with a Condition reference whose role is a discharge or billing diagnosis, or not given, the
    one of the lowest rank (unranked last), the first listed on a tie. An admission diagnosis, a chief complaint or
    a comorbidity is not the principal diagnosis."""
    best: tuple[tuple[int, int], str] | None = None
    for i, d in enumerate(res.diagnosis):
        hit = resolve(_ref(d.condition), ctx)
        if hit is None or hit[0] != "Condition":
            continue
        uses = {c.code for c in d.use.coding} if d.use is not None else set()
        if uses and not uses & PRINCIPAL_USES and uses & _OTHER_USES:
            continue
        rank = d.rank if type(d.rank) is int and d.rank > 0 else 1 << 31
        if best is None or (rank, i) < best[0]:
            best = ((rank, i), hit[1])
    return None if best is None else f"Condition/{best[1]}"


def map_encounter(res: M.Encounter, rid: str, ctx: Context, b: Batch) -> None:
    pid = _subject(res.subject, ctx)
    sid = b.subject(pid)
    period = res.period or M.Period()
    start = parse_time(period.start, "period.start")
    end = parse_end(period.end, "period.end")
    if start is None:
        raise Reject("missing time", "Encounter without period.start")
    if end is not None and end < start:
        if ends_before(str(period.end), end, str(period.start), start):
            raise Reject("impossible date", "period.end before period.start")
        end = start  # an end of the start's day written as a date, in a zone where the start is already the next
    cls = (res.class_.code if res.class_ is not None else None) or "UNK"
    cls = CLASS_PARENT.get(cls, cls)
    hosp = res.hospitalization or M.Hospitalization()
    dispo = hosp.dischargeDisposition
    loc = None
    if res.location:
        loc = keep_reference(_ref(res.location[-1].location), ctx)
    type_code = None
    if res.type:
        type_code = (_codes(res.type[0]) or [_plain_code(res.type[0])])[0]
    hl7_dispo = _code_in(dispo, "http://terminology.hl7.org/CodeSystem/discharge-disposition") or _plain_code(dispo)
    append_row(b.enc, encounter_id=rid, subject_id=sid, patient_id=pid, status=res.status, start=start, end=end,
               priority=_plain_code(res.priority), type_code=type_code, admit_source=_plain_code(hosp.admitSource),
               discharge_disposition=hl7_dispo,
               discharge_disposition_nubc=_code_in(dispo, "https://www.nubc.org/CodeSystem/PatDischargeStatus"),
               site_ref=keep_reference(_ref(res.serviceProvider), ctx), location_ref=loc,
               reason_code=(_codes(res.reasonCode[0]) or [None])[0] if res.reasonCode else None,
               diagnosis_ref=principal_diagnosis_ref(res, ctx), **{"class": cls})  # a Python keyword
    b.event(sid, start, f"ENCOUNTER/{cls}", None, None, None, None, None, rid, "Encounter", rid)
    if end is not None and res.status == "finished":
        d = _plain_code(dispo)
        b.event(sid, end, f"DISCHARGE/{d}" if d else f"ENCOUNTER_END/{cls}", None, None, None, None, None, rid,
                "Encounter", rid)


def map_condition(res: M.Condition, rid: str, ctx: Context, b: Batch) -> None:
    pid = _subject(res.subject, ctx)
    codes = _known_codes(res.code, "Condition.code")
    # the time the fact became known, so features never see a back-dated onset early
    t = parse_time(res.recordedDate, "recordedDate")
    onset = parse_time(res.onsetDateTime, "onsetDateTime")
    if onset is None and res.onsetPeriod is not None:  # an onset known as a period began at its start
        onset = parse_time(res.onsetPeriod.start, "onsetPeriod.start")
    if t is None:
        t = onset
    if t is None:
        raise Reject("missing time", "Condition without recordedDate, onsetDateTime or onsetPeriod.start")
    sid = b.subject(pid)
    enc = _encounter_id(res.encounter, ctx)
    cat = _plain_code(res.category[0]) if res.category else None
    for code in codes:
        b.event(sid, t, code, None, cat, None, None, None, enc, "Condition", rid)


COMPARATORS = frozenset({"<", "<=", ">=", ">"})  # FHIR R4 QuantityComparator (required binding)


def _bound(comparator: str | None, value: float, what: str) -> str | None:
    """A result reported as a bound ("<0.01", eGFR ">60"), as its text: the number stays the bound itself, the usual
    reading of a value at a detection or reporting limit, and the text says it was one. An unknown comparator is
    refused: the value could not be read as meant."""
    if comparator is None:
        return None
    if comparator not in COMPARATORS:
        raise Reject("invalid value", f"{what}.valueQuantity.comparator={comparator[:20]!r}")
    return f"{comparator}{value:.15g}"


def _value(res: M.Observation | M.Component, loinc: str | None, what: str
           ) -> tuple[float | None, str | None, str | None, float | None, str | None]:
    """(numeric, text, unit, original value, original unit) of an Observation or a component."""
    q = res.valueQuantity
    if q is not None:
        v = _number(q.value, f"{what}.valueQuantity.value")
        unit = q.code or q.unit
        bound = _bound(q.comparator, v, what)
        if loinc:
            nv, nu = normalise(loinc, v, unit)
            return nv, bound, nu, v, unit
        return v, bound, unit, v, unit
    vc = res.valueCodeableConcept
    if vc is not None:
        codes = _codes(vc)
        return None, codes[0] if codes else (vc.text or _plain_code(vc)), None, None, None
    if res.valueInteger is not None:
        v = float(res.valueInteger)
        return v, None, None, v, None
    if res.valueString is not None:
        return None, res.valueString, None, None, None
    if res.valueBoolean is not None:
        return float(res.valueBoolean), None, None, None, None
    return None, _value_text(res), None, None, None


def _num(q: M.Quantity | None) -> str:
    """A Quantity as text: its comparator, value and unit as sent ("" when absent)."""
    if q is None or q.value is None:
        return ""
    unit = q.unit or q.code
    return f"{q.comparator or ''}{q.value:.15g}" + (f" {unit}" if unit else "")


def _value_text(res: M.Observation | M.Component) -> str | None:
    """The value[x] kinds careloop does not read as numbers, kept readable in `text_value` rather than loaded as
    no value at all: a dateTime or time as sent, a range "1-2 mg/dL" (">=1", "<=2" when open), a ratio "1/64",
    a period "start/end" (ISO 8601 interval), sampled data with its origin, period, factor and samples as sent."""
    if res.valueDateTime is not None:
        return res.valueDateTime
    if res.valueTime is not None:
        return res.valueTime
    r = res.valueRange
    if r is not None:
        low, high = _num(r.low), _num(r.high)
        lq, hq = r.low or M.Quantity(), r.high or M.Quantity()
        if low and high and (lq.unit, lq.code) == (hq.unit, hq.code):  # the unit once: "1-2 mg/dL"
            low = f"{lq.value:.15g}"
        return f"{low}-{high}" if low and high else f">={low}" if low else f"<={high}" if high else None
    q = res.valueRatio
    if q is not None:
        return f"{_num(q.numerator)}/{_num(q.denominator)}" if q.numerator or q.denominator else None
    p = res.valuePeriod
    if p is not None:
        return f"{p.start or ''}/{p.end or ''}" if p.start or p.end else None
    sd = res.valueSampledData
    if sd is not None:
        return (f"SampledData origin {_num(sd.origin) or '?'}, period {sd.period:.15g} ms, factor "
                f"{sd.factor if sd.factor is not None else 1:.15g}, dimensions {sd.dimensions}: {sd.data or ''}"
                if sd.period is not None else None)
    return None


def observation_time(res: M.Observation) -> int | None:
    """When an Observation's result was known, the time its events carry (UTC microseconds), which every feature's
    point-in-time cut reads: `issued` when later than the time the result describes (a lab drawn at 09:30 and
    resulted at 16:00 is not known at a 10:00 discharge, and at the bedside it is not in the record yet), else that
    time: effectiveDateTime, or effectivePeriod's end (a 24-hour urine is known once collected), else its start;
    `issued` alone when there is neither. An `issued` that cannot be read beside a valid effective time is
    ignored (the result is not lost for it). A time of partial precision (a date: "2023-05-03") is known by its
    last instant, not its first: a result dated on the discharge day is not known at a 10:00 discharge, since it
    may have come at 16:00 (as a date-only death is read)."""
    t = parse_end(res.effectiveDateTime, "effectiveDateTime")
    period = res.effectivePeriod
    if t is None and period is not None:
        t = parse_end(period.end, "effectivePeriod.end") if period.end is not None else \
            parse_end(period.start, "effectivePeriod.start")
    if t is None:
        return parse_end(res.issued, "issued")
    if res.issued is not None:
        try:
            issued = parse_end(res.issued, "issued")
        except Reject:
            return t
        if issued is not None and issued > t:
            return issued
    return t


def observation_codes(res: M.Observation) -> list[str]:
    """Every prefixed code an Observation's events could carry (its code's and its components' known codings):
    a superset of the codes `map_observation` writes."""
    out = _codes(res.code)
    for comp in res.component:
        out += _codes(comp.code)
    return out


def map_observation(res: M.Observation, rid: str, ctx: Context, b: Batch) -> None:
    pid = _subject(res.subject, ctx)
    codes = _known_codes(res.code, "Observation.code")
    t = observation_time(res)
    if t is None:
        raise Reject("missing time", "Observation without effective[x] or issued")
    sid = b.subject(pid)
    enc = _encounter_id(res.encounter, ctx)
    rows = []  # every value is read before any row is written, so a rejected resource leaves nothing behind
    for comp in res.component:
        for ccode in _known_codes(comp.code, "Observation.component.code"):
            rows.append((ccode, *_value(comp, ccode[6:] if ccode.startswith("LOINC/") else None, "component")))
    if not res.component or res.valueQuantity is not None or res.valueCodeableConcept is not None \
            or res.valueInteger is not None or res.valueString is not None or res.valueBoolean is not None \
            or _value_text(res) is not None:
        for code in codes:  # each code's value in that code's canonical unit
            rows.append((code, *_value(res, code[6:] if code.startswith("LOINC/") else None, "Observation")))
    for code, num, text, unit, orig, ounit in rows:
        b.event(sid, t, code, num, text, unit, orig, ounit, enc, "Observation", rid)
        if num is None and orig is not None:  # per event: a replaced copy's are taken back per event (units.py)
            b.unconverted[(code, unit)] += 1


def medication_codes(res: M.MedicationRequest, ctx: Context) -> list[str]:
    """The known codes of the drug a MedicationRequest orders: its medicationCodeableConcept, or the code of the
    Medication its medicationReference names, contained in the request ("#id"), in the same Bundle (a search with
    `_include=MedicationRequest:medication`, a transaction), or (at ingest) loaded into the store before. Reject
    "unresolvable reference" when that Medication is none of these; ingest and the bedside read the same."""
    concept = res.medicationCodeableConcept
    if concept is not None:
        return _known_codes(concept, "MedicationRequest.medicationCodeableConcept")
    ref = _ref(res.medicationReference)
    if ref is None:
        raise Reject("unknown code system for a required field", "MedicationRequest without medication[x]")
    if ref.startswith("#"):
        for c in res.contained:
            if c.resourceType == "Medication" and c.id == ref[1:]:
                if c.code is None:
                    raise Reject("unknown code system for a required field", f"contained Medication {ref} has no code")
                try:
                    concept = msgspec.convert(c.code, M.CodeableConcept)
                except msgspec.ValidationError as exc:
                    raise Reject("invalid value", f"contained Medication {ref}.code: {exc}"[:200]) from None
                return _known_codes(concept, "MedicationRequest.contained Medication.code")
        raise Reject("unresolvable reference", f"medicationReference {ref!r} names no contained Medication"[:200])
    hit = resolve(ref, ctx)
    codes = ctx.medications.get(hit[1]) if hit is not None and hit[0] == "Medication" else None
    if codes is None:
        raise Reject("unresolvable reference", f"medicationReference {ref!r} names no Medication in the request, its "
                                               "Bundle or the store"[:200])
    if not codes:
        raise Reject("unknown code system for a required field", f"Medication/{hit[1]}.code has no code in a known "
                                                                 "system")
    return list(codes)


def medication_definition(res: M.Medication) -> tuple[str, ...]:
    """The known codes of a Medication (`_codes`), as requests naming it read them; empty when none is known."""
    return tuple(_codes(res.code))


def map_medication(res: M.Medication, rid: str, ctx: Context, b: Batch) -> None:
    """A medication definition: in the directory, one row per known code (one with no code when it has none), so
    that requests naming it from elsewhere (another file of a Bulk export, a later run) read its code; and in the
    context, for the requests after it."""
    codes = ctx.medications[rid] = medication_definition(res)
    name = res.code.text if res.code is not None else None
    for code in codes or [None]:
        append_row(b.dir, resource_type="Medication", resource_id=rid, name=name, identifier_system=None,
                   identifier_value=None, part_of=None, code=code)


def map_medication_request(res: M.MedicationRequest, rid: str, ctx: Context, b: Batch) -> None:
    pid = _subject(res.subject, ctx)
    codes = medication_codes(res, ctx)
    t = parse_time(res.authoredOn, "authoredOn")
    if t is None:
        raise Reject("missing time", "MedicationRequest without authoredOn")
    cat = _plain_code(res.category[0]) if res.category else None
    sid, enc = b.subject(pid), _encounter_id(res.encounter, ctx)
    for code in codes:
        b.event(sid, t, code, None, cat, None, None, None, enc, "MedicationRequest", rid)


def map_procedure(res: M.Procedure, rid: str, ctx: Context, b: Batch) -> None:
    pid = _subject(res.subject, ctx)
    code = _first_code(res.code, "Procedure.code")
    t = parse_time(res.performedDateTime, "performedDateTime")
    if t is None and res.performedPeriod is not None:  # its start, else (only the end recorded) its end
        t = parse_time(res.performedPeriod.start, "performedPeriod.start")
        if t is None:
            t = parse_end(res.performedPeriod.end, "performedPeriod.end")
    if t is None:
        raise Reject("missing time", "Procedure without performed[x]")
    b.event(b.subject(pid), t, code, None, None, None, None, None, _encounter_id(res.encounter, ctx), "Procedure",
            rid)


def _charset(content_type: str) -> str:
    """The charset a MIME type names (`text/plain; charset=ISO-8859-1`), UTF-8 when it names none."""
    for param in content_type.split(";")[1:]:
        key, _, value = param.partition("=")
        if key.strip().lower() == "charset" and value.strip():
            return value.strip().strip('"')
    return "utf-8"


def _note_text(res: M.DocumentReference) -> str | None:
    """The text of the first text attachment, decoded in the charset its contentType names (notes from older
    systems are often ISO-8859-1 or windows-1252), UTF-8 when it names none."""
    for content in res.content:
        att = content.attachment
        kind = att.contentType or "text/plain" if att is not None else ""
        if att is not None and att.data and kind.startswith("text/"):
            charset = _charset(kind)
            try:
                codecs.lookup(charset)
            except LookupError:
                raise Reject("invalid value", f"attachment.contentType names an unknown charset {charset[:40]!r}") \
                    from None
            try:
                return base64.b64decode(att.data, validate=True).decode(charset)
            except (binascii.Error, UnicodeDecodeError) as exc:
                raise Reject("invalid value", f"attachment.data is not base64 text in {charset[:40]}") from exc
    return None


def map_document_reference(res: M.DocumentReference, rid: str, ctx: Context, b: Batch) -> None:
    pid = _subject(res.subject, ctx)
    t = parse_time(res.date, "date")
    if t is None and res.context is not None and res.context.period is not None:
        t = parse_end(res.context.period.end, "context.period.end")  # a note is known once its period is over
    if t is None:
        raise Reject("missing time", "DocumentReference without date")
    codes = _codes(res.type)
    code = codes[0] if codes else "NOTE/unknown"
    sid = b.subject(pid)
    enc = _encounter_id(res.context.encounter[0], ctx) if res.context and res.context.encounter else None
    text = _note_text(res)
    append_row(b.notes, note_id=rid, subject_id=sid, time=t, encounter_id=enc, type_code=code, text=text)
    b.event(sid, t, code, None, rid, None, None, None, enc, "DocumentReference", rid)


def map_coverage(res: M.Coverage, rid: str, ctx: Context, b: Batch) -> None:
    pid = _subject(res.beneficiary, ctx, "beneficiary")
    period = res.period or M.Period()
    t = parse_time(period.start, "period.start")
    if period.end is not None:  # kept as text only: checked to be a date, but "9999-12-31" (open-ended) is fine
        _parse_time(period.end, "period.end", in_range=False)
    codes = _codes(res.type)
    code = codes[0] if codes else f"PAYER/{_plain_code(res.type) or 'unknown'}"
    b.event(b.subject(pid), t, code, None, period.end, None, None, None, None, "Coverage", rid)


def map_immunization(res: M.Immunization, rid: str, ctx: Context, b: Batch) -> None:
    pid = _subject(res.patient, ctx, "patient")
    code = _first_code(res.vaccineCode, "Immunization.vaccineCode")
    t = parse_time(res.occurrenceDateTime, "occurrenceDateTime")
    if t is None:
        raise Reject("missing time", "Immunization without occurrenceDateTime")
    b.event(b.subject(pid), t, code, None, None, None, None, None, _encounter_id(res.encounter, ctx),
            "Immunization", rid)


def map_allergy(res: M.AllergyIntolerance, rid: str, ctx: Context, b: Batch) -> None:
    pid = _subject(res.patient, ctx, "patient")
    code = _first_code(res.code, "AllergyIntolerance.code")
    t = parse_time(res.recordedDate, "recordedDate") or parse_time(res.onsetDateTime, "onsetDateTime")
    if t is None:
        raise Reject("missing time", "AllergyIntolerance without recordedDate")
    b.event(b.subject(pid), t, code, None, "allergy", None, None, None, None, "AllergyIntolerance", rid)


def map_directory(res: M.Organization | M.Location | M.Practitioner, rid: str, ctx: Context, b: Batch) -> None:
    if isinstance(res, M.Practitioner):
        hn = res.name[0] if res.name else M.HumanName()
        name = " ".join([*(g for g in hn.given if g), hn.family or ""]).strip() or None
        part_of = None
        rtype = "Practitioner"
    elif isinstance(res, M.Organization):
        name, part_of, rtype = res.name, keep_reference(_ref(res.partOf), ctx), "Organization"
    else:
        name, part_of, rtype = res.name, keep_reference(_ref(res.managingOrganization), ctx), "Location"
    for ident in res.identifier or [M.Identifier()]:
        append_row(b.dir, resource_type=rtype, resource_id=rid, name=name, identifier_system=ident.system,
                   identifier_value=ident.value, part_of=part_of, code=None)


MAPPERS = {
    M.Patient: map_patient, M.Encounter: map_encounter, M.Condition: map_condition, M.Observation: map_observation,
    M.MedicationRequest: map_medication_request, M.Procedure: map_procedure,
    M.DocumentReference: map_document_reference, M.Coverage: map_coverage, M.Immunization: map_immunization,
    M.AllergyIntolerance: map_allergy, M.Organization: map_directory, M.Location: map_directory,
    M.Practitioner: map_directory, M.Medication: map_medication,
}


def decode(raw: bytes) -> M.Resource:
    """Decode one resource's JSON, or raise Reject / Skip saying why it will not be mapped."""
    try:
        return M.decoder.decode(raw)
    except msgspec.ValidationError as exc:
        error = str(exc)
    except msgspec.DecodeError as exc:
        raise Reject("unparseable JSON", str(exc)[:200]) from None
    try:
        head = M.head_decoder.decode(raw)
    except msgspec.DecodeError as exc:  # e.g. a JSON array or a bare string
        raise Reject("not a FHIR resource", str(exc)[:200]) from None
    rtype = head.resourceType
    if not isinstance(rtype, str):
        raise Reject("not a FHIR resource", "no resourceType")
    if rtype in SKIP_RULES:
        raise Skip(SKIP_RULES[rtype], rtype)
    if rtype not in M.MAPPED_TYPES:
        raise Skip(f"no mapping for {rtype}", rtype)
    rid = head.id if isinstance(head.id, str) else None
    raise Reject("invalid value", error, rtype, rid)


# Statuses by which a record says that it was a mistake or that the thing never happened (FHIR R4's required value
# sets). Such a resource is loaded, so that it replaces an earlier version of itself (a result first sent as final,
# then marked entered-in-error), but it gives no events: no feature, in training or at the bedside, reads a refuted
# diagnosis, a cancelled order or a lab value withdrawn as a mistake. Statuses that record something real
# (preliminary, amended, stopped, superseded, a resolved condition) keep their events.
VOID_STATUS: dict[type, frozenset[str]] = {
    M.Encounter: frozenset({"cancelled", "entered-in-error"}),
    M.Observation: frozenset({"cancelled", "entered-in-error"}),
    M.MedicationRequest: frozenset({"cancelled", "entered-in-error"}),
    M.Procedure: frozenset({"not-done", "entered-in-error"}),
    M.Immunization: frozenset({"not-done", "entered-in-error"}),
    M.DocumentReference: frozenset({"entered-in-error"}),
    M.Coverage: frozenset({"entered-in-error"}),
}
VOID_VERIFICATION = frozenset({"refuted", "entered-in-error"})  # Condition and AllergyIntolerance.verificationStatus
_VERIFIED = (M.Condition, M.AllergyIntolerance)


def void_reason(res: M.Resource) -> str | None:
    """Why `res` gives no events ("Observation entered-in-error"), or None when it records something real."""
    rtype = type(res)
    if rtype in _VERIFIED:
        concept = res.verificationStatus
        if concept is not None:
            for c in concept.coding:
                if c.code in VOID_VERIFICATION:
                    return f"{rtype.__name__} {c.code}"
        return None
    void = VOID_STATUS.get(rtype)
    if void is None or res.status not in void:
        return None
    return f"{rtype.__name__} {res.status}"


def map_resource(res: M.Resource, ctx: Context, b: Batch, fallback_id: str | None = None) -> tuple[str, str]:
    """Map one decoded resource into `b`; returns (type, id). Raises Reject. A resource whose status voids it
    (`void_reason`) is counted in `b.void` and maps to nothing."""
    cls = type(res)
    rtype = cls.__name__
    rid = res.id or fallback_id
    if not rid:
        raise Reject("missing id", f"{rtype} without id")
    void = VOID_STATUS.get(cls)  # inline first test: `void_reason` is called only for a likely hit (a hot path)
    if (res.status in void) if void is not None else (cls in _VERIFIED and res.verificationStatus is not None):
        why = void_reason(res)
        if why is not None:
            b.void[why] += 1
            b.voided[(rtype, rid)] = why
            return rtype, rid
    MAPPERS[cls](res, rid, ctx, b)
    return rtype, rid
