"""Schemathesis fuzzing of the CDS Hooks service from its own OpenAPI, over real HTTP on loopback.

FastAPI serves `/openapi.json` with every route and its path parameters, but with no request bodies (the routes read
the raw body themselves, to refuse an oversized one before parsing it and to audit a malformed one) and no
security. `completed` adds both to the served document: the bodies as CDS Hooks 2.0 defines them, with a prefetch
shaped like the FHIR the service maps (about one real patient of the session's hospital, with codes from their
record, so that generated data gets past the patient check and into the ingest mapping, the DuckDB features, the
model and its reasons), and the two credentials (the EHR's signed JWT, the administrator's bearer secret). The
service ids and the model key are enumerated so that generated calls reach the routes' logic, not only their 404s.

Every operation is fuzzed twice (positive and negative generation, examples, coverage and fuzzing phases, ~30
examples each): with a fresh JWT signed for the URL called (admin routes: the admin secret), added per request, where
no answer may be a 5xx and `ignored_auth` probes each authenticated success without and with a wrong credential;
and without valid credentials (none, or whatever Schemathesis generates for the Authorization header), where no
answer may be a 5xx and every CDS call to a real service and every admin call must get a 401.
"""

from __future__ import annotations

import gzip
import uuid
from typing import Any

import httpx
import orjson
import pytest
import schemathesis
from hypothesis import HealthCheck, settings
from schemathesis.checks import not_a_server_error
from schemathesis.specs.openapi.checks import ignored_auth

from careloop.serve.app import SERVICES
from careloop.serve.features import PREFETCH
from tests.fhir_server.harness import make_rsa_key

from .harness import (
    ADMIN_SECRET,
    Running,
    bearer,
    free_port,
    hook_request,
    patient_resources,
    prefetch_of,
    write_config,
)

FUZZ = settings(max_examples=30, deadline=None, database=None, suppress_health_check=list(HealthCheck))
PROTECTED = {  # operation path template: the security scheme that guards it
    "/cds-services/{service_id}": "ehr",
    "/cds-services/{service_id}/feedback": "ehr",
    "/admin/models/{model_key}/enabled": "admin",
    "/admin/status": "admin",
}


# -- the running service and one real patient --------------------------------------------------------------------
@pytest.fixture(scope="module")
def keys():
    pem, jwk = make_rsa_key()
    return pem, jwk["kid"], {"keys": [jwk]}


@pytest.fixture(scope="module")
def service(trained_bundle, keys, tmp_path_factory):
    folder = tmp_path_factory.mktemp("fuzzed-service")
    port = free_port()
    cfg = write_config(folder, state=f"sqlite:///{folder / 'state.db'}", jwks=keys[2], port=port)
    running = Running(trained_bundle, cfg, port)
    yield running
    running.stop()


@pytest.fixture(scope="module")
def record(hospital) -> tuple[str, str, dict[str, list[dict]]]:
    """The first patient of the hospital with a finished inpatient stay: (patient, that stay, their resources)."""
    with gzip.open(hospital / "ndjson" / "Encounter.ndjson.gz") as fh:
        for line in fh:
            enc = orjson.loads(line)
            if enc.get("class", {}).get("code") == "IMP" and enc.get("period", {}).get("end"):
                pid = enc["subject"]["reference"].rsplit("/", 1)[-1]
                return pid, enc["id"], patient_resources(hospital / "ndjson", {pid})[pid]
    raise AssertionError("the hospital has no inpatient stay")


# -- the completed OpenAPI ----------------------------------------------------------------------------------------
def _codings(resources: list[dict], field: str, limit: int = 12) -> list[dict]:
    seen: dict[tuple, dict] = {}
    for r in resources:
        for c in (r.get(field) or {}).get("coding") or []:
            seen.setdefault((c.get("system"), c.get("code")), {"system": c.get("system"), "code": c.get("code")})
            for comp in r.get("component") or []:
                for cc in (comp.get("code") or {}).get("coding") or []:
                    seen.setdefault((cc.get("system"), cc.get("code")), {"system": cc.get("system"),
                                                                        "code": cc.get("code")})
    return list(seen.values())[:limit]


def _obj(required: list[str], **props: Any) -> dict:
    return {"type": "object", "required": required, "properties": props}


def _concept(codings: list[dict]) -> dict:
    """A CodeableConcept: mostly codes from the real record, sometimes any string."""
    coding = {"anyOf": [{"enum": codings}, _obj(["system", "code"], system={"type": "string"},
                                                code={"type": "string"})]} if codings else {"type": "object"}
    return _obj(["coding"], coding={"type": "array", "minItems": 1, "maxItems": 2, "items": coding},
                text={"type": "string"})


def _bundle(resource: dict) -> dict:
    bundle = _obj(["resourceType", "entry"], resourceType={"const": "Bundle"}, type={"const": "searchset"},
                  entry={"type": "array", "maxItems": 6, "items": _obj(["resource"], resource=resource)})
    outcome = _obj(["resourceType"], resourceType={"const": "OperationOutcome"}, issue={"type": "array"})
    return {"anyOf": [bundle, {"type": "null"}, outcome]}


def prefetch_schema(pid: str, encounter: str, res: dict[str, list[dict]]) -> dict:
    """The service's prefetch, about patient `pid`: each key a Bundle of that resource type, null, or an outcome."""
    when = {"anyOf": [{"type": "string", "format": "date-time"}, {"type": "string", "format": "date"},
                      {"type": "string"}]}
    ref = _obj(["reference"], reference={"enum": [f"Patient/{pid}"]})
    enc_ref = _obj(["reference"], reference={"enum": [f"Encounter/{encounter}", "Encounter/other"]})
    ident = {"type": "string", "minLength": 1, "maxLength": 12}
    units = sorted({(o.get("valueQuantity") or {}).get("unit") for o in res.get("observations", [])} - {None})
    quantity = _obj(["value"], value={"type": "number"}, unit={"anyOf": [{"enum": units or ["1"]},
                                                                         {"type": "string"}]},
                    system={"const": "http://unitsofmeasure.org"})
    patient = _obj(["resourceType", "id"], resourceType={"const": "Patient"}, id={"enum": [pid]},
                   gender={"enum": ["male", "female", "other", "unknown"]}, birthDate=when, deceasedDateTime=when)
    resources = {
        "encounters": _obj(["resourceType", "id", "subject", "class", "period"],
                           resourceType={"const": "Encounter"}, id={"enum": [encounter, "enc-2", "enc-3"]},
                           status={"enum": ["finished", "in-progress", "cancelled", "entered-in-error"]},
                           subject=ref, period=_obj([], start=when, end=when),
                           **{"class": _obj(["code"], system={
                               "const": "http://terminology.hl7.org/CodeSystem/v3-ActCode"},
                                            code={"enum": ["IMP", "AMB", "EMER", "OBSENC"]})}),
        "conditions": _obj(["resourceType", "id", "subject", "code"], resourceType={"const": "Condition"}, id=ident,
                           subject=ref, encounter=enc_ref, code=_concept(_codings(res.get("conditions", []), "code")),
                           onsetDateTime=when, recordedDate=when),
        "observations": _obj(["resourceType", "id", "subject", "code"], resourceType={"const": "Observation"},
                             id=ident, status={"enum": ["final", "amended", "entered-in-error"]}, subject=ref,
                             encounter=enc_ref, effectiveDateTime=when, valueQuantity=quantity,
                             code=_concept(_codings(res.get("observations", []), "code")),
                             component={"type": "array", "maxItems": 2, "items": _obj(
                                 ["code"], code=_concept(_codings(res.get("observations", []), "code")),
                                 valueQuantity=quantity)}),
        "medications": _obj(["resourceType", "id", "subject"], resourceType={"const": "MedicationRequest"}, id=ident,
                            status={"enum": ["active", "completed", "stopped"]}, intent={"const": "order"},
                            subject=ref, encounter=enc_ref, authoredOn=when, medicationCodeableConcept=_concept(
                                _codings(res.get("medications", []), "medicationCodeableConcept"))),
        "procedures": _obj(["resourceType", "id", "subject", "code"], resourceType={"const": "Procedure"}, id=ident,
                           status={"const": "completed"}, subject=ref, encounter=enc_ref, performedDateTime=when,
                           code=_concept(_codings(res.get("procedures", []), "code"))),
        "coverage": _obj(["resourceType", "id", "beneficiary"], resourceType={"const": "Coverage"}, id=ident,
                         status={"const": "active"}, beneficiary=ref, period=_obj([], start=when, end=when),
                         type=_concept(_codings(res.get("coverage", []), "type"))),
    }
    props = {"patient": {"anyOf": [patient, {"type": "null"}]}} | {k: _bundle(v) for k, v in resources.items()}
    assert set(props) == set(PREFETCH)
    return {"type": "object", "properties": props}


def completed(doc: dict, *, pid: str, encounter: str, res: dict, model_key: str) -> dict:
    """The served OpenAPI with the request bodies and the security it does not describe (see the module docstring)."""
    ids = list(SERVICES)
    hook = _obj(["hook", "hookInstance", "context"],
                hook={"enum": sorted({h for h, _ in SERVICES.values()})},
                hookInstance={"type": "string", "format": "uuid"},
                fhirServer={"type": "string", "format": "uri"},
                fhirAuthorization=_obj(["access_token", "token_type", "expires_in", "scope", "subject"],
                                       access_token={"type": "string"}, token_type={"const": "Bearer"},
                                       expires_in={"type": "integer"}, scope={"type": "string"},
                                       subject={"type": "string"}),
                context=_obj(["patientId"], userId={"type": "string"}, patientId={"enum": [pid]},
                             encounterId={"enum": [encounter, "enc-2", "enc-3"]}),
                prefetch=prefetch_schema(pid, encounter, res))
    example = hook_request(pid, encounter, prefetch_of(res))
    feedback_item = {"type": "object", "additionalProperties": False, "required": ["card", "outcome",
                                                                                  "outcomeTimestamp"],
                     "properties": {"card": {"type": "string", "format": "uuid"},
                                    "outcome": {"enum": ["accepted", "overridden"]},
                                    "acceptedSuggestions": {"type": "array", "items": _obj(["id"], id={
                                        "type": "string"})},
                                    "overrideReason": _obj([], reason=_obj(["code"], code={"type": "string"},
                                                                           system={"type": "string"}),
                                                           userComment={"type": "string"}),
                                    "outcomeTimestamp": {"type": "string", "format": "date-time"}}}
    bodies = {
        ("/cds-services/{service_id}", "post"): (hook, example),
        ("/cds-services/{service_id}/feedback", "post"): (
            {"type": "object", "additionalProperties": False, "required": ["feedback"],
             "properties": {"feedback": {"type": "array", "minItems": 1, "maxItems": 3, "items": feedback_item}}},
            {"feedback": [{"card": str(uuid.uuid4()), "outcome": "overridden", "outcomeTimestamp":
                           "2026-11-22T10:00:00Z", "overrideReason": {"reason": {"code": "already-planned"}}}]}),
        ("/admin/models/{model_key}/enabled", "post"): (
            {"type": "object", "additionalProperties": False, "required": ["enabled"],
             "properties": {"enabled": {"type": "boolean"}}}, {"enabled": True}),
    }
    doc.setdefault("components", {})["securitySchemes"] = {
        "ehr": {"type": "http", "scheme": "bearer", "bearerFormat": "JWT"},
        "admin": {"type": "http", "scheme": "bearer"},
    }
    enums = {"service_id": ids, "model_key": [model_key, model_key[:12]], "key": [model_key[:12], model_key]}
    for path, ops in doc["paths"].items():
        for method, op in ops.items():
            op["security"] = [{PROTECTED[path]: []}] if path in PROTECTED else []
            for p in op.get("parameters", []):
                if p["name"] in enums:
                    p["schema"] = {"type": "string", "enum": enums[p["name"]]}
            if (path, method) in bodies:
                schema, ex = bodies[(path, method)]
                op["requestBody"] = {"required": True, "content": {"application/json": {
                    "schema": schema, "examples": {"real": {"value": ex}}}}}
    return doc


@pytest.fixture(scope="module")
def api_schema(service, record):
    pid, encounter, res = record
    doc = httpx.get(f"{service.url}/openapi.json", timeout=10).json()
    doc = completed(doc, pid=pid, encounter=encounter, res=res, model_key=service.service.model_key)
    config = schemathesis.Config.from_dict({
        "base-url": service.url, "seed": 20261122, "request-timeout": 30,
        "generation": {"mode": "all", "max-examples": 30, "database": "none"},
    })
    return schemathesis.openapi.from_dict(doc, config=config)


schema = schemathesis.pytest.from_fixture("api_schema")


@pytest.fixture(autouse=True)
def _nodeid_for_schemathesis(request):
    """Schemathesis 4.32's lazy schemas read and relabel `node._nodeid`, which pytest 9.2 no longer has (`_id`)."""
    if not hasattr(request.node, "_nodeid"):
        request.node._nodeid = request.node.nodeid


# -- credentials --------------------------------------------------------------------------------------------------
def credentials(case, service: Running, keys) -> dict[str, str]:
    """A fresh credential for this very request: a JWT whose `aud` is the URL called, or the admin secret."""
    kind = PROTECTED.get(case.operation.path)
    if kind == "admin":
        return {"Authorization": f"Bearer {ADMIN_SECRET}"}
    if kind == "ehr":
        return bearer(keys[0], keys[1], f"{service.url}{case.formatted_path}")
    return {}


def _real_target(case) -> bool:
    """The call names a real service or is an admin route (an unknown service id is a 404 before any auth)."""
    params = case.path_parameters or {}
    return params.get("service_id") in SERVICES if "service_id" in params else True


# -- the fuzzing --------------------------------------------------------------------------------------------------
@schema.parametrize()
@FUZZ
def test_no_server_error_with_valid_credentials(case, service, keys):
    if case.operation.path == "/cds-services/{service_id}":
        service.service.store.set_enabled(service.service.model_key, True, by="fuzz")  # the kill switch is fuzzed
    case.call_and_validate(headers=credentials(case, service, keys), checks=[not_a_server_error, ignored_auth])


@schema.parametrize()
@FUZZ
def test_no_server_error_and_401_without_valid_credentials(case, service):
    response = case.call_and_validate(checks=[not_a_server_error])
    if case.operation.path in PROTECTED and _real_target(case):
        sent = response.request.headers.get("Authorization")
        assert response.status_code == 401, (
            f"{case.method} {case.formatted_path} with Authorization={sent!r} answered {response.status_code}: "
            f"{response.text[:300]}")


def test_the_schema_reaches_the_scoring_path(service, keys, record):
    """The example every fuzzed CDS call starts from is a real, scorable stay (so the fuzzing is not all 400s)."""
    pid, encounter, res = record
    url = f"{service.url}/cds-services/readmission-risk"
    r = httpx.post(url, json=hook_request(pid, encounter, prefetch_of(res)), headers=bearer(keys[0], keys[1], url),
                   timeout=30)
    assert r.status_code == 200, r.text
    scored = [e for e in service.service.audit.records(kind="cds-call", patient=pid) if e.get("score") is not None]
    assert scored and scored[-1]["input_digest"]
