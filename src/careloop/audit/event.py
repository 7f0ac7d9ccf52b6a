"""FHIR R4 AuditEvents for the CDS Hooks service, shaped after IHE BALP, holding identifiers and never content.

:func:`audit_event` builds one event; :func:`summarize` reads the fields careloop records back out of an event
(for the audit report, ONC (d)(3)). What may go in: the client's ``iss`` and network address, a user reference,
a patient id, correlation ids (hookInstance, jti, X-Request-Id), the model bundle hash, an input digest, the score,
card uuids and indicators, a deferral reason and short coded details. What may not: tokens (a JWT-looking or Bearer
value anywhere raises :class:`AuditContentError`), names, notes and free text (unknown text fields are dropped, ids
that are not ids are refused).
"""

from __future__ import annotations

import math
import re
from datetime import datetime
from typing import Any

from careloop.errors import CareloopError
from careloop.state._db import canonical_json, iso_z, now_utc, parse_instant

CARELOOP_FHIR = "https://careloop.example/fhir"  # base of careloop's own code systems and identifier systems
KIND_SYSTEM = f"{CARELOOP_FHIR}/CodeSystem/audit-event-kind"
ENTITY_SYSTEM = f"{CARELOOP_FHIR}/CodeSystem/audit-entity-type"
ISS_SYSTEM = f"{CARELOOP_FHIR}/sid/jwt-iss"
SERVICE_SYSTEM = f"{CARELOOP_FHIR}/sid/cds-service"
HOOK_INSTANCE_SYSTEM = f"{CARELOOP_FHIR}/sid/hook-instance"
JTI_SYSTEM = f"{CARELOOP_FHIR}/sid/jwt-jti"
MODEL_SYSTEM = f"{CARELOOP_FHIR}/sid/model-bundle-sha256"
USER_SYSTEM = f"{CARELOOP_FHIR}/sid/user"

AUDIT_EVENT_TYPE = "http://terminology.hl7.org/CodeSystem/audit-event-type"
DCM = "http://dicom.nema.org/resources/ontology/DCM"
PARTICIPATION = "http://terminology.hl7.org/CodeSystem/v3-ParticipationType"
SOURCE_TYPE = "http://terminology.hl7.org/CodeSystem/security-source-type"
ENTITY_TYPE = "http://terminology.hl7.org/CodeSystem/audit-entity-type"
OBJECT_ROLE = "http://terminology.hl7.org/CodeSystem/object-role"
BALP_ENTITY = "https://profiles.ihe.net/ITI/BALP/CodeSystem/BasicAuditEntityType"
ACT_REASON = "http://terminology.hl7.org/CodeSystem/v3-ActReason"

# kind: (display, FHIR action)
KINDS: dict[str, tuple[str, str]] = {
    "cds-call": ("CDS Hooks service call", "E"),
    "auth-failure": ("Authentication or authorisation failure", "E"),
    "feedback": ("CDS Hooks feedback", "C"),
    "admin-change": ("Administrative change", "U"),
    "kill-switch": ("Model kill switch", "U"),
    "timeout": ("Deadline exceeded", "E"),
    "export": ("Data export", "R"),
    "access": ("Patient data viewed", "R"),
}
OUTCOMES = {"success": "0", "minor": "4", "serious": "8", "major": "12"}
OUTCOME_NAMES = {v: k for k, v in OUTCOMES.items()}
TREATMENT_KINDS = ("cds-call", "feedback", "timeout")  # purposeOfEvent TREAT

# Detail keys whose short string values are kept (coded values and identifiers: the service's decision note such
# as "repeat suppressed", an admin's id in "by", the card uuid of a feedback); any other key keeps only numbers and
# booleans. Every string is scanned for tokens first.
TEXT_DETAIL_KEYS = frozenset({
    "accepted_suggestions", "action", "alg", "anchor_hash", "aud", "band", "by", "card", "code", "count",
    "deadline_ms", "deferral_policy", "elapsed_ms", "enabled", "error", "feature_set", "field", "format", "hook",
    "http_status", "iss", "jku", "kid", "malformed_prefetch", "method", "missing_prefetch", "model", "model_key",
    "new", "note", "old", "outcome", "override_reason", "override_system", "partial_prefetch", "prefetch", "reason",
    "role", "route", "rows", "setting", "stage", "status", "tenant", "threshold", "threshold_version", "upto_seq",
    "value", "version", "void_resources", "widened_prefetch",
})
MAX_DETAIL_TEXT = 512

_JWT = re.compile(r"eyJ[A-Za-z0-9_-]{2,}\.[A-Za-z0-9_-]{2,}\.[A-Za-z0-9_-]*")
_BEARER = re.compile(r"(?i)\bbearer\s+[A-Za-z0-9._~+/=-]{8,}")
_FHIR_ID = re.compile(r"[A-Za-z0-9\-.]{1,64}")
_TOKEN = re.compile(r"[\x21-\x7e]{1,256}")  # visible ASCII without spaces: ids, URLs, uuids, digests
_DETAIL_KEY = re.compile(r"[A-Za-z][A-Za-z0-9_.-]{0,63}")
_REFERENCE = re.compile(r"[A-Z][A-Za-z]{1,63}/[A-Za-z0-9\-.]{1,64}")
_HOST = re.compile(r"[A-Za-z0-9](?:[A-Za-z0-9.-]{0,252}[A-Za-z0-9])?")  # a machine name


class AuditContentError(CareloopError, ValueError):
    """An audit event would have held a token or something that is not an identifier."""


def find_secret(text: str) -> str | None:
    """'a JWT' or 'a Bearer token' when ``text`` contains one, else None."""
    # the literal each pattern needs is looked for first: most text has neither, and a plain `in` is far cheaper
    if "eyJ" in text and _JWT.search(text):
        return "a JWT"
    if "bearer" in text.lower() and _BEARER.search(text):
        return "a Bearer token"
    return None


def refuse_secrets(value: Any, where: str) -> None:
    """Raise AuditContentError if any string in ``value`` (nested lists and dicts, keys included) holds a token."""
    if isinstance(value, str):
        found = find_secret(value)
        if found:
            raise AuditContentError(f"{where} looks like {found}: tokens are never written to the audit log")
    elif isinstance(value, dict):
        for k, v in value.items():
            refuse_secrets(k, where)
            refuse_secrets(v, f"{where}.{k}")
    elif isinstance(value, list | tuple):
        for i, v in enumerate(value):
            refuse_secrets(v, f"{where}[{i}]")


def _ident(value: Any, name: str, pattern: re.Pattern = _TOKEN) -> str | None:
    if value is None:
        return None
    refuse_secrets(value, name)
    if not isinstance(value, str) or not pattern.fullmatch(value):
        raise AuditContentError(f"{name} must be an identifier (no spaces, at most 256 characters), not {value!r:.40}")
    return value


def _network(value: Any) -> dict | None:
    """agent.network of a client's address: an IP address (type 2) or a machine name (type 1), nothing else."""
    import ipaddress

    if value is None:
        return None
    refuse_secrets(value, "network")
    if isinstance(value, str):
        try:
            return {"address": str(ipaddress.ip_address(value)), "type": "2"}
        except ValueError:
            if _HOST.fullmatch(value):
                return {"address": value, "type": "1"}
    raise AuditContentError(f"network must be an IP address or a machine name, not {value!r:.40}")


def _coding(system: str, code: str, display: str | None = None) -> dict:
    out = {"system": system, "code": code}
    if display:
        out["display"] = display
    return out


def _detail(key: str, value: Any) -> dict:
    if isinstance(value, bool):
        text = "true" if value else "false"
    elif isinstance(value, str):
        text = value
    else:
        text = canonical_json(value)
    return {"type": key, "valueString": text}


def _clean_details(detail: dict | None) -> list[dict]:
    """Detail entries to keep: tokens raise; unknown keys keep numbers and booleans only; known keys keep short
    strings (lists and objects as canonical JSON); bad keys, NaN and long text are dropped."""
    if not detail:
        return []
    if not isinstance(detail, dict):
        raise AuditContentError("detail must be a dict of short coded values")
    refuse_secrets(detail, "detail")
    out = []
    for key, value in detail.items():
        if not isinstance(key, str) or not _DETAIL_KEY.fullmatch(key) or value is None:
            continue
        if isinstance(value, bool) or (isinstance(value, int | float) and math.isfinite(value)):
            out.append(_detail(key, value))
            continue
        if key not in TEXT_DETAIL_KEYS:
            continue  # unknown free text (or structure) is dropped, never stored
        if isinstance(value, list | dict):
            try:
                value = canonical_json(value)
            except Exception:
                continue
        if isinstance(value, str) and len(value) <= MAX_DETAIL_TEXT:
            out.append(_detail(key, value))
    return out


def audit_event(
    *,
    kind: str,
    outcome: str,
    client: str | None = None,
    patient: str | None = None,
    hook_instance: str | None = None,
    jti: str | None = None,
    request_id: str | None = None,
    model_hash: str | None = None,
    input_digest: str | None = None,
    score: float | None = None,
    cards: list[dict] | None = None,
    deferral_reason: str | None = None,
    detail: dict | None = None,
    service: str | None = None,
    user: str | None = None,
    recorded: datetime | None = None,
    network: str | None = None,
    encounter: str | None = None,
) -> dict:
    """A FHIR R4 AuditEvent for one careloop event (one patient at most: BALP's one event per patient).

    ``kind``: cds-call, auth-failure, feedback, admin-change, kill-switch, timeout or export (the subtype, in
    careloop's code system; ``type`` is audit-event-type#rest). ``outcome``: success, minor, serious or major
    (FHIR 0/4/8/12). ``client`` is the JWT ``iss``; ``user`` a reference such as ``Practitioner/123`` (the
    requestor when present, else the client is). ``patient`` is a FHIR id (``Patient/`` prefix optional).
    ``cards`` keep only each card's uuid and indicator. ``recorded`` defaults to now, in UTC with a ``Z``.
    ``network`` is the client's address (an IP address or machine name: BALP's agent[client].network, ASTM E2147's
    source of access). ``encounter`` is the stay the event is about (a FHIR id, ``Encounter/`` prefix optional): the
    stay a risk was computed for, so that monitoring links an alert to its stay by id, not by time.
    """
    if kind not in KINDS:
        raise AuditContentError(f"kind must be one of {', '.join(KINDS)}, not {kind!r:.40}")
    code = OUTCOMES.get(outcome, outcome if outcome in OUTCOME_NAMES else None)
    if code is None:
        raise AuditContentError(f"outcome must be one of {', '.join(OUTCOMES)}, not {outcome!r:.40}")
    if recorded is None:
        recorded = now_utc()
    elif not isinstance(recorded, datetime) or recorded.tzinfo is None or recorded.utcoffset() is None:
        raise AuditContentError("recorded must be a timezone-aware datetime")
    client = _ident(client, "client")
    client_network = _network(network)
    service = _ident(service, "service", _FHIR_ID)
    if isinstance(patient, str) and patient.startswith("Patient/"):
        patient = patient[len("Patient/") :]
    patient = _ident(patient, "patient", _FHIR_ID)
    if isinstance(encounter, str) and encounter.startswith("Encounter/"):
        encounter = encounter[len("Encounter/") :]
    encounter = _ident(encounter, "encounter", _FHIR_ID)
    user = _ident(user, "user")
    hook_instance = _ident(hook_instance, "hook_instance")
    jti = _ident(jti, "jti")
    request_id = _ident(request_id, "request_id")
    model_hash = _ident(model_hash, "model_hash")
    input_digest = _ident(input_digest, "input_digest")
    bad_score = isinstance(score, bool) or not isinstance(score, int | float) or not math.isfinite(score)
    if score is not None and bad_score:
        raise AuditContentError(f"score must be a finite number, not {score!r:.40}")
    if deferral_reason is not None:
        refuse_secrets(deferral_reason, "deferral_reason")
        if not isinstance(deferral_reason, str) or len(deferral_reason) > MAX_DETAIL_TEXT:
            raise AuditContentError(f"deferral_reason must be a short string (at most {MAX_DETAIL_TEXT} characters)")

    display, action = KINDS[kind]
    event: dict[str, Any] = {
        "resourceType": "AuditEvent",
        "type": _coding(AUDIT_EVENT_TYPE, "rest", "Restful Operation"),
        "subtype": [_coding(KIND_SYSTEM, kind, display)],
        "action": action,
        "recorded": iso_z(recorded),
        "outcome": code,
    }
    if kind in TREATMENT_KINDS:
        event["purposeOfEvent"] = [{"coding": [_coding(ACT_REASON, "TREAT", "treatment")]}]

    client_who: dict[str, Any] = (
        {"identifier": {"system": ISS_SYSTEM, "value": client}} if client else {"display": "unidentified client"}
    )
    agents: list[dict[str, Any]] = [
        {
            "type": {"coding": [_coding(DCM, "110153", "Source Role ID")]},
            "who": client_who,
            "requestor": user is None,
            **({"network": client_network} if client_network else {}),
        },
        {
            "type": {"coding": [_coding(DCM, "110152", "Destination Role ID")]},
            "who": (
                {"identifier": {"system": SERVICE_SYSTEM, "value": service}, "display": "careloop"}
                if service
                else {"display": "careloop"}
            ),
            "requestor": False,
        },
    ]
    if user is not None:
        ref = _REFERENCE.fullmatch(user)
        who: dict[str, Any] = {"reference": user} if ref else {"identifier": {"system": USER_SYSTEM, "value": user}}
        user_type = {"coding": [_coding(PARTICIPATION, "IRCP", "information recipient")]}
        agents.append({"type": user_type, "who": who, "requestor": True})
    event["agent"] = agents
    event["source"] = {"observer": {"display": "careloop"}, "type": [_coding(SOURCE_TYPE, "4", "Application Server")]}

    entities: list[dict[str, Any]] = []
    if patient is not None:
        entities.append({
            "what": {"reference": f"Patient/{patient}"},
            "type": _coding(ENTITY_TYPE, "1", "Person"),
            "role": _coding(OBJECT_ROLE, "1", "Patient"),
        })
    if encounter is not None:
        entities.append({
            "what": {"reference": f"Encounter/{encounter}"},
            "type": _coding(ENTITY_TYPE, "2", "System Object"),
            "role": _coding(OBJECT_ROLE, "4", "Domain Resource"),
        })
    if request_id is not None:
        entities.append({"what": {"identifier": {"value": request_id}}, "type": _coding(BALP_ENTITY, "XrequestId")})
    if hook_instance is not None:
        entities.append({
            "what": {"identifier": {"system": HOOK_INSTANCE_SYSTEM, "value": hook_instance}},
            "type": _coding(ENTITY_SYSTEM, "hookInstance", "CDS Hooks hookInstance"),
        })
    if jti is not None:
        entities.append({
            "what": {"identifier": {"system": JTI_SYSTEM, "value": jti}},
            "type": _coding(ENTITY_SYSTEM, "jti", "JWT ID"),
        })
    details: list[dict] = []
    if input_digest is not None:
        details.append(_detail("input_digest", input_digest))
    if score is not None:
        details.append(_detail("score", float(score)))
    for card in cards or []:
        if not isinstance(card, dict):
            raise AuditContentError("cards must be a list of dicts (only uuid and indicator are kept)")
        uuid = _ident(card.get("uuid"), "card uuid")
        indicator = card.get("indicator")
        if uuid is not None:
            text = uuid if indicator not in ("info", "warning", "critical") else f"{uuid}|{indicator}"
            details.append(_detail("card", text))
    if deferral_reason is not None:
        details.append(_detail("deferral_reason", deferral_reason))
    details.extend(_clean_details(detail))
    if model_hash is not None or details:
        model: dict[str, Any] = {"type": _coding(ENTITY_TYPE, "2", "System Object")}
        if model_hash is not None:
            model["what"] = {"identifier": {"system": MODEL_SYSTEM, "value": model_hash}}
        model["role"] = _coding(OBJECT_ROLE, "4", "Domain Resource")
        if details:
            model["detail"] = details
        entities.append(model)
    if entities:
        event["entity"] = entities
    return event


# ---------------------------------------------------------------- reading events back
FIELDS = (
    "seq", "recorded", "kind", "action", "outcome", "client", "network", "user", "patient", "encounter", "service",
    "hook_instance", "jti", "request_id", "model_hash", "input_digest", "score", "cards", "deferral_reason", "detail",
)


def _codes(codings: Any) -> list[tuple[str | None, str | None]]:
    if isinstance(codings, dict):
        codings = codings.get("coding", [codings])
    return [(c.get("system"), c.get("code")) for c in codings or [] if isinstance(c, dict)]


def summarize(event: dict) -> dict:
    """The fields careloop records, read back from an AuditEvent (best effort for events built elsewhere):
    recorded (aware datetime), kind, action, outcome (success/minor/serious/major), client, network (the client's
    address), user, patient, service, hook_instance, jti, request_id, model_hash, input_digest, score, cards (list
    of "uuid|indicator"), deferral_reason, detail (other detail entries as a dict of strings), encounter (the stay)."""
    out: dict[str, Any] = dict.fromkeys(FIELDS[1:])
    out["cards"], out["detail"] = [], {}
    try:
        out["recorded"] = parse_instant(event.get("recorded"), "recorded")
    except Exception:
        out["recorded"] = None
    kind = next((c for s, c in _codes(event.get("subtype")) if s == KIND_SYSTEM), None)
    out["kind"] = kind or next((c for _, c in _codes(event.get("type"))), None)
    out["action"] = event.get("action")
    out["outcome"] = OUTCOME_NAMES.get(event.get("outcome"), event.get("outcome"))
    for agent in event.get("agent") or []:
        codes = {c for _, c in _codes(agent.get("type"))}
        who = agent.get("who") or {}
        value = who.get("reference") or (who.get("identifier") or {}).get("value")
        if "110153" in codes:
            out["client"] = (who.get("identifier") or {}).get("value")
            out["network"] = (agent.get("network") or {}).get("address")
        elif "110152" in codes:
            out["service"] = (who.get("identifier") or {}).get("value")
        elif "IRCP" in codes or agent.get("requestor"):
            out["user"] = value
    for entity in event.get("entity") or []:
        etype = entity.get("type") or {}
        code = etype.get("code")
        what = entity.get("what") or {}
        ident = (what.get("identifier") or {}).get("value")
        ref = what.get("reference") or ""
        if ref.startswith("Patient/"):
            out["patient"] = ref[len("Patient/") :]
        elif ref.startswith("Encounter/"):
            out["encounter"] = ref[len("Encounter/") :]
        elif code == "XrequestId":
            out["request_id"] = ident
        elif code == "hookInstance":
            out["hook_instance"] = ident
        elif code == "jti":
            out["jti"] = ident
        elif (what.get("identifier") or {}).get("system") == MODEL_SYSTEM:
            out["model_hash"] = ident
        for d in entity.get("detail") or []:
            key, value = d.get("type"), d.get("valueString")
            if key == "card":
                out["cards"].append(value)
            elif key == "score":
                try:
                    out["score"] = float(value)
                except (TypeError, ValueError):
                    out["detail"]["score"] = value
            elif key in ("input_digest", "deferral_reason"):
                out[key] = value
            elif isinstance(key, str):
                out["detail"][key] = value
    return out
