"""The data contracts between stages, in one module: each stage reads these tables, never another's internals.

Events follow MEDS (subject_id int64, time UTC microseconds, code with a vocabulary prefix, numeric_value,
text_value) with careloop's provenance and unit columns beside them. A `test_contracts` test checks that
join keys and dtypes agree across tables.
"""

from __future__ import annotations

import hashlib
import zlib

import pyarrow as pa

TIME = pa.timestamp("us", tz="UTC")

EVENTS = pa.schema([
    ("subject_id", pa.int64()),
    ("time", TIME),  # null for static facts (sex, race, ...)
    ("code", pa.string()),  # LOINC/2951-2, ICD10CM/I50.9, SNOMED/..., RXNORM/..., ENCOUNTER/IMP, MEDS_BIRTH
    ("numeric_value", pa.float64()),  # in the canonical unit of the code where the conversion is known
    ("text_value", pa.string()),  # a coded or text answer; for a bound ("<0.01"), the comparator and value as sent
    ("unit", pa.string()),  # UCUM unit of numeric_value
    ("original_value", pa.float64()),  # as sent, before unit normalisation
    ("original_unit", pa.string()),
    ("encounter_id", pa.string()),  # FHIR id of the encounter the event belongs to, if any
    ("source_resource", pa.string()),  # FHIR resource type
    ("source_id", pa.string()),  # FHIR resource id
])

ENCOUNTERS = pa.schema([
    ("encounter_id", pa.string()),
    ("subject_id", pa.int64()),
    ("patient_id", pa.string()),
    ("class", pa.string()),  # IMP, EMER, AMB, ...
    ("status", pa.string()),
    ("start", TIME),
    ("end", TIME),
    ("priority", pa.string()),  # EL (elective), EM, UR
    ("type_code", pa.string()),
    ("admit_source", pa.string()),
    ("discharge_disposition", pa.string()),  # HL7 discharge-disposition code
    ("discharge_disposition_nubc", pa.string()),  # NUBC UB-04 patient status, when sent
    ("site_ref", pa.string()),  # Organization/<id> or Organization?identifier=system|value
    ("location_ref", pa.string()),  # the last (discharge) location
    ("reason_code", pa.string()),  # reasonCode's first known code
    ("diagnosis_ref", pa.string()),  # the principal diagnosis in Encounter.diagnosis (Condition/<id>): its code is
    # the Condition's (`features.engine.index_sql`), read before reason_code
])

PATIENTS = pa.schema([
    ("subject_id", pa.int64()),
    ("patient_id", pa.string()),
    ("birth_date", pa.date32()),
    ("sex", pa.string()),
    ("race", pa.string()),  # OMB category code (CDC race and ethnicity code set)
    ("ethnicity", pa.string()),
    ("language", pa.string()),
    ("marital_status", pa.string()),
    ("postal_code", pa.string()),
    ("deceased_time", TIME),
    ("managing_org_ref", pa.string()),
])

NOTES = pa.schema([
    ("note_id", pa.string()),
    ("subject_id", pa.int64()),
    ("time", TIME),
    ("encounter_id", pa.string()),
    ("type_code", pa.string()),
    ("text", pa.string()),
])

# Organizations, Locations and Practitioners, with their identifiers, so conditional references resolve; and
# Medications with their codes, so a MedicationRequest's reference to one resolves to the drug it orders.
DIRECTORY = pa.schema([
    ("resource_type", pa.string()),
    ("resource_id", pa.string()),
    ("name", pa.string()),
    ("identifier_system", pa.string()),
    ("identifier_value", pa.string()),
    ("part_of", pa.string()),
    ("code", pa.string()),  # a Medication's code (PREFIX/code as in events), one row per known code; else null
])

QUARANTINE = pa.schema([
    ("source", pa.string()),  # file and line / entry, or REST page
    ("resource_type", pa.string()),
    ("resource_id", pa.string()),
    ("reason", pa.string()),
    ("detail", pa.string()),
    ("raw", pa.string()),  # the resource exactly as received: nothing is lost
])

# One row per resource loaded: the index that makes re-ingest idempotent.
RESOURCES = pa.schema([
    ("resource_key", pa.string()),  # Type/id
    ("key_hash", pa.int64()),  # key_hash(resource_key), for a fast duplicate check
    ("content_hash", pa.int64()),  # of the resource as received: tells a repeat from an update
    ("source", pa.string()),  # file (with #entry[i] in a Bundle) or REST page
    ("line", pa.int64()),  # line in an NDJSON file
    ("unit", pa.string()),
    ("last_updated", pa.string()),  # meta.lastUpdated and meta.versionId as sent (null if absent): which copy of
    ("version_id", pa.string()),  # a resource loaded twice is the newer (`ingest.versions`)
    ("withdrawn", pa.string()),  # why it gives no events (entered-in-error, ...: `void_reason`), else null
])

TABLES: dict[str, pa.Schema] = {
    "events": EVENTS, "encounters": ENCOUNTERS, "patients": PATIENTS, "notes": NOTES, "directory": DIRECTORY,
    "quarantine": QUARANTINE, "resources": RESOURCES,
}


def key_hash(key: str) -> int:
    """A signed 64-bit hash of a resource key (Type/id): CRC-32 and Adler-32 side by side, cheap enough for
    the ingest hot path; a hit is always confirmed on the key itself, so a collision costs a lookup, not data.

    >>> key_hash("Patient/1") == key_hash("Patient/1") != key_hash("Patient/2")
    True
    """
    b = key.encode()
    v = (zlib.crc32(b) << 32) | zlib.adler32(b)
    return v - (1 << 64) if v >= 1 << 63 else v


def content_hash(raw: bytes) -> int:
    """A signed 64-bit checksum of a resource's bytes (CRC-32 and Adler-32). It only ever compares two versions
    of the same Type/id, so a 64-bit checksum is ample and costs a tenth of a cryptographic digest."""
    v = (zlib.crc32(raw) << 32) | zlib.adler32(raw)
    return v - (1 << 64) if v >= 1 << 63 else v


def subject_id(patient_id: str) -> int:
    """The MEDS subject_id of a FHIR Patient id: a stable 63-bit hash, the same in every run and engine.

    >>> subject_id("example") == subject_id("example") and subject_id("example") > 0
    True
    """
    return int.from_bytes(hashlib.blake2b(patient_id.encode(), digest_size=8).digest(), "big") >> 1
