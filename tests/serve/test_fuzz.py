"""Schemathesis fuzzing of the CDS Hooks service from its own OpenAPI, over real HTTP on loopback.

FastAPI serves `/openapi.json` with every route and its path parameters, but with no request bodies (the routes read
the raw body themselves, to refuse an oversized one before parsing it and to audit a malformed one) and no
security. `completed` adds what it leaves out: the request bodies as CDS Hooks 2.0 defines them, the optional
`X-Request-ID` header the service audits, the two credentials (the EHR's signed JWT, the administrator's bearer
secret), and one path per real service beside the templated one, so that generated calls reach the routes' logic
and not only their 404s. The prefetch is shaped like the FHIR the service maps, about one real patient of the
session's hospital with codes from their record, so that generated data gets past the patient check into the
ingest mapping, the DuckDB features, the model and its reasons; the patient's real request is the example.

Every operation is fuzzed twice (positive and negative generation; the examples and fuzzing phases, 12 examples by
default, `CARELOOP_FUZZ_EXAMPLES` for more; the coverage phase except on the CDS routes, where it makes ~1,200 cases
per scoring route and ~200 per feedback route, minutes in all): with a fresh JWT signed for the very URL called added
to each request (admin routes: the admin secret), where no answer may be a 5xx and `ignored_auth` probes an
authenticated success without and with a wrong credential; and without valid credentials (none, or what
Schemathesis generates for the Authorization header; the prefetch is then any object, as these calls stop at the
credential check), where no answer may be a 5xx and every CDS call to a real service and every admin call must be
a 401.

The server runs in this process, so a 5xx fails with the exception behind it and where it was raised. The seven
5xx this fuzzing found (`FOUND_5XX`, all fixed) are kept as regression tests, one exact request each.
"""

from __future__ import annotations

import copy
import datetime as dt
import gzip
import json
import os
import threading
import traceback
import uuid
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import httpx
import jsonschema
import orjson
import pytest
import schemathesis
import uvicorn
from fastapi.responses import PlainTextResponse
from hypothesis import HealthCheck, settings
from schemathesis.checks import not_a_server_error
from schemathesis.specs.openapi.checks import ignored_auth

from careloop.serve.app import SERVICES, Service, create_app
from careloop.serve.config import load_config
from careloop.serve.demo import wait_for_service
from careloop.serve.features import PREFETCH
from tests.fhir_server.harness import make_rsa_key

from .harness import ADMIN_SECRET, bearer, free_port, hook_request, patient_resources, prefetch_of, write_config

# 12 examples per operation keep the default run short; CARELOOP_FUZZ_EXAMPLES=200 for a long fuzzing session
EXAMPLES = int(os.environ.get("CARELOOP_FUZZ_EXAMPLES", "12"))
FUZZ = settings(max_examples=EXAMPLES, deadline=None, database=None, suppress_health_check=list(HealthCheck))
CASE_HEADER = "x-schemathesis-testcaseid"  # Schemathesis sends each case's id in it
SCORING_PATHS = [f"/cds-services/{sid}" for sid in SERVICES] + ["/cds-services/{service_id}"]  # with a real example


# -- the 5xx this fuzzing found (all fixed), each with its exact request ---------------------------------------------
@dataclass(frozen=True)
class Found:
    name: str
    was: str  # the exception the server raised, and why
    request: Callable[[str, str, str], tuple[str, dict, Any]]  # (pid, encounter, card) -> (path, headers, body)


def _hook(pid: str, enc: str, **kw: Any) -> dict:
    return hook_request(pid, enc, dict.fromkeys(PREFETCH)) | kw  # every key sent, as null (no data): not a 412


def _feedback(card: str, **item: Any) -> dict:
    return {"feedback": [{"card": card, "outcome": "overridden", "outcomeTimestamp": "2026-11-22T10:00:00Z"} | item]}


_DISCHARGE = "/cds-services/readmission-risk"
_AUDIT = "AuditContentError: the audit log refused the call's event, which failed the call: "
FOUND_5XX: list[Found] = [
    Found("audit-request-id", _AUDIT + "an X-Request-ID with a space (even without a valid token)",
          lambda pid, enc, card: (_DISCHARGE, {"X-Request-ID": "pulmonary embolism"}, _hook(pid, enc))),
    Found("audit-hook-instance", _AUDIT + "a hookInstance with a space or a non-ASCII character",
          lambda pid, enc, card: (_DISCHARGE, {}, _hook(pid, enc, hookInstance="not a uuid"))),
    Found("audit-patient-id", _AUDIT + "a context.patientId that is not a FHIR id (space, underscore, non-ASCII, > 64)",
          lambda pid, enc, card: (_DISCHARGE, {}, _hook("a b", enc))),
    Found("audit-token-in-detail", _AUDIT + "the 400's reason quotes the request (here `hook`), and a Bearer-looking "
          "value in it", lambda pid, enc, card: (_DISCHARGE, {}, _hook(pid, enc, hook="Bearer abcdefghijklmnop"))),
    Found("bundle-entry-not-a-list", "TypeError in serve.features._entries: a Bundle `entry` that is not a list",
          lambda pid, enc, card: (_DISCHARGE, {}, hook_request(pid, enc, dict.fromkeys(PREFETCH) | {
              "patient": None, "encounters": {"resourceType": "Bundle", "type": "searchset", "entry": 5}}))),
    Found("integer-beyond-64-bit", "TypeError from orjson.dumps (Prefetched.digest): a JSON integer beyond 64 bits",
          lambda pid, enc, card: (_DISCHARGE, {}, hook_request(pid, enc, dict.fromkeys(PREFETCH) | {
              "patient": {"resourceType": "Patient", "id": pid, "x": 2**64}, "encounters": None}))),
    Found("feedback-state-error", "StateError from StateStore.add_feedback, not turned into a 400: an overrideReason "
          "that is not a Coding (or a code with a space, or not a string)",
          lambda pid, enc, card: ("/cds-services/readmission-risk/feedback", {},
                                  _feedback(card, overrideReason={"reason": "already planned"}))),
]


# -- the service, in this process (so a 5xx has its exception), and one real patient --------------------------------
class Server:
    """uvicorn serving `create_app(Service)` in a thread; `errors` maps a Schemathesis case id to the exception a
    500 came from (an exception handler on the app records it before the 500 is sent)."""

    def __init__(self, bundle, config, port: int) -> None:
        self.service = Service(bundle, load_config(config))
        self.url = f"http://127.0.0.1:{port}"
        self.errors: dict[str, BaseException] = {}
        self.last_error: BaseException | None = None
        app = create_app(self.service)

        async def capture(request, exc: Exception):
            self.errors[request.headers.get(CASE_HEADER, "-")] = exc
            self.last_error = exc
            return PlainTextResponse("Internal Server Error", status_code=500)

        app.add_exception_handler(Exception, capture)
        self.server = uvicorn.Server(uvicorn.Config(app, host="127.0.0.1", port=port, log_level="critical",
                                                    access_log=False))
        self.thread = threading.Thread(target=self.server.run, daemon=True)
        self.thread.start()
        wait_for_service(self.url)

    def stop(self) -> None:
        self.server.should_exit = True
        self.thread.join(timeout=10)
        self.service.store.close()


@pytest.fixture(scope="module")
def keys():
    pem, jwk = make_rsa_key()
    return pem, jwk["kid"], {"keys": [jwk]}


@pytest.fixture(scope="module")
def server(trained_bundle, keys, tmp_path_factory):
    folder = tmp_path_factory.mktemp("fuzzed-service")
    port = free_port()
    cfg = write_config(folder, state=f"sqlite:///{folder / 'state.db'}", jwks=keys[2], port=port)
    s = Server(trained_bundle, cfg, port)
    yield s
    s.stop()


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


@pytest.fixture(scope="module")
def card(server, record) -> str:
    """A card the service has shown this patient (recorded directly), for feedback to name."""
    uid = str(uuid.uuid4())
    server.service.store.record_card(uid, "readmission-risk", record[0], server.service.model_key, 0.5, "warning",
                                     None, dt.datetime.now(dt.UTC))
    return uid


# -- the completed OpenAPI ------------------------------------------------------------------------------------------
def _obj(required: list[str], **props: Any) -> dict:
    """An object with these properties and no others (generating other keys is slow, and the service ignores them)."""
    return {"type": "object", "required": required, "properties": props, "additionalProperties": False}


def _open(schema: dict) -> dict:
    """The same object, other keys allowed: a FHIR resource, whose other elements (meta, identifier...) the real
    example has."""
    return {k: v for k, v in schema.items() if k != "additionalProperties"}


def _codings(resources: list[dict], field: str, limit: int = 12) -> list[dict]:
    seen: dict[tuple, dict] = {}
    for r in resources:
        concepts = [r.get(field) or {}] + [c.get("code") or {} for c in r.get("component") or []]
        for concept in concepts:
            for c in concept.get("coding") or []:
                seen.setdefault((c.get("system"), c.get("code")), {"system": c.get("system"), "code": c.get("code")})
    return list(seen.values())[:limit]


def _concept(codings: list[dict]) -> dict:
    """A CodeableConcept: a code from the real record, or any."""
    anything = _obj(["code"], system={"type": "string"}, code={"type": "string"}, display={"type": "string"})
    coding = {"anyOf": [_obj([], system={"enum": sorted({c["system"] for c in codings})},
                             code={"enum": sorted({c["code"] for c in codings})}, display={"type": "string"}),
                        anything]} if codings else anything
    return _obj(["coding"], coding={"type": "array", "minItems": 1, "items": coding}, text={"type": "string"})


def _bundle(resource: dict, *, first: dict | None = None, alternatives: tuple = ()) -> dict:
    """A searchset Bundle of `resource` entries (the first one `first` when given), or one of `alternatives`."""
    entry = {"type": "array", "items": _open(_obj(["resource"], resource=_open(resource)))}
    if first:
        entry |= {"minItems": 1, "prefixItems": [_open(_obj(["resource"], resource=_open(first)))]}
    bundle = _obj(["resourceType", "entry"], resourceType={"const": "Bundle"}, type={"const": "searchset"},
                  entry=entry)
    return {"anyOf": [bundle, *alternatives]} if alternatives else bundle


def prefetch_schema(pid: str, encounter: str, res: dict[str, list[dict]]) -> dict:
    """The service's prefetch about patient `pid` at stay `encounter`: each key a Bundle of its resource type with
    codes and units from the patient's record (the patient's real prefetch is valid against it)."""
    instant = {"type": "string", "pattern": "^20[0-2][0-9]-(0[1-9]|1[0-2])-(0[1-9]|[12][0-9]|3[01])"
                                            "T([01][0-9]|2[0-3]):[0-5][0-9]:[0-5][0-9](Z|[+-]0[0-9]:00)$"}
    when = {"anyOf": [instant, {"type": "string", "format": "date-time"}, {"type": "string"}]}  # or impossible
    ref = _obj(["reference"], reference={"anyOf": [{"enum": [f"Patient/{pid}"]}, {"type": "string"}]},
               display={"type": "string"})
    enc_ids = sorted({e["id"] for e in res.get("encounters", [])}) or ["e"]
    enc_ref = _obj(["reference"], reference={"anyOf": [{"enum": [f"Encounter/{e}" for e in enc_ids]},
                                                       {"type": "string"}]}, display={"type": "string"})
    ident = {"type": "string", "minLength": 1}
    units = sorted({(o.get("valueQuantity") or {}).get("unit") for o in res.get("observations", [])} - {None})
    quantity = _obj(["value"], value={"type": "number"}, unit={"anyOf": [{"enum": units or ["1"]}, {"type": "string"}]},
                    system={"type": "string"}, code={"type": "string"})
    obs_codes = _codings(res.get("observations", []), "code")
    patient = _obj(["resourceType", "id", "birthDate"], resourceType={"const": "Patient"}, id={"enum": [pid]},
                   gender={"anyOf": [{"enum": ["male", "female", "other", "unknown"]}, {"type": "string"}]},
                   birthDate={"type": "string", "pattern": "^19[2-9][0-9]-(0[1-9]|1[0-2])-(0[1-9]|[12][0-9]|3[01])$"},
                   deceasedDateTime=instant)
    resources = {
        "encounters": _obj(["resourceType", "id", "subject", "class", "period"], resourceType={"const": "Encounter"},
                           id={"anyOf": [{"enum": enc_ids}, ident]}, status={"type": "string"}, subject=ref,
                           period=_obj([], start=when, end=when),
                           **{"class": _obj(["code"], system={"type": "string"}, display={"type": "string"}, code={
                               "anyOf": [{"enum": ["IMP", "AMB", "EMER", "OBSENC"]}, {"type": "string"}]})}),
        "conditions": _obj(["resourceType", "id", "subject", "code"], resourceType={"const": "Condition"}, id=ident,
                           subject=ref, encounter=enc_ref, code=_concept(_codings(res.get("conditions", []), "code")),
                           onsetDateTime=when, recordedDate=when),
        "observations": _obj(["resourceType", "id", "subject", "code"], resourceType={"const": "Observation"},
                             id=ident, status={"type": "string"}, subject=ref, encounter=enc_ref,
                             effectiveDateTime=when, valueQuantity=quantity, code=_concept(obs_codes),
                             component={"type": "array", "items": _obj(["code"], code=_concept(obs_codes),
                                                                       valueQuantity=quantity)}),
        "medications": _obj(["resourceType", "id", "subject"], resourceType={"const": "MedicationRequest"}, id=ident,
                            status={"type": "string"}, intent={"type": "string"}, subject=ref, encounter=enc_ref,
                            authoredOn=when, medicationCodeableConcept=_concept(
                                _codings(res.get("medications", []), "medicationCodeableConcept"))),
        "procedures": _obj(["resourceType", "id", "subject", "code"], resourceType={"const": "Procedure"}, id=ident,
                           status={"type": "string"}, subject=ref, encounter=enc_ref, performedDateTime=when,
                           code=_concept(_codings(res.get("procedures", []), "code"))),
        "coverage": _obj(["resourceType", "id", "beneficiary"], resourceType={"const": "Coverage"}, id=ident,
                         status={"type": "string"}, beneficiary=ref, period=_obj([], start=when, end=when),
                         type=_concept(_codings(res.get("coverage", []), "type"))),
    }
    # the index stay comes first in `encounters` (with the patient's reference and a well-formed period); a key may be
    # null or an OperationOutcome (the service defers on an outcome, so more would keep most calls from scoring)
    index = resources["encounters"] | {"properties": resources["encounters"]["properties"] | {
        "id": {"const": encounter}, "period": _obj(["start"], start=instant, end=instant),
        "subject": _obj(["reference"], reference={"const": f"Patient/{pid}"}, display={"type": "string"})}}
    outcome = _obj(["resourceType"], resourceType={"const": "OperationOutcome"}, issue={"type": "array"})
    props = {"patient": _open(patient), "encounters": _bundle(resources.pop("encounters"), first=index)}
    props |= {k: _bundle(v, alternatives=({"type": "null"},)) for k, v in resources.items()}
    props["coverage"]["anyOf"].append(outcome)
    assert set(props) == set(PREFETCH)
    return {"type": "object", "properties": props, "required": list(props)}  # other keys are allowed (and ignored)


def hook_schema(hooks: list[str], pid: str, encounter: str, res: dict | None, *, encounter_required: bool) -> dict:
    """A CDS Hooks request (with a prefetch about the patient when `res` is given). `hook` and `hookInstance` are
    well formed in positive generation so that most calls get to the scoring; negative generation breaks them."""
    context = _obj(["patientId", "encounterId"] if encounter_required else ["patientId"], userId={"type": "string"},
                   patientId={"const": pid},
                   encounterId={"anyOf": [{"enum": [encounter]}, {"type": "string"}]})
    context["additionalProperties"] = True
    return _obj(["hook", "hookInstance", "context", *(["prefetch"] if res else [])], hook={"enum": hooks},
                hookInstance={"type": "string", "format": "uuid"},
                fhirServer={"type": "string", "format": "uri"},
                fhirAuthorization=_obj(["access_token", "token_type", "expires_in", "scope", "subject"],
                                       access_token={"type": "string", "minLength": 1},
                                       token_type={"const": "Bearer"}, expires_in={"type": "integer"},
                                       scope={"type": "string", "minLength": 1},
                                       subject={"type": "string", "minLength": 1}),
                context=context, prefetch=prefetch_schema(pid, encounter, res) if res else {"type": "object"})


def feedback_schema(card: str) -> dict:
    item = _obj(["card", "outcome", "outcomeTimestamp"],
                card={"anyOf": [{"enum": [card]}, {"type": "string", "format": "uuid"}, {"type": "string"}]},
                outcome={"enum": ["accepted", "overridden"]},
                acceptedSuggestions={"type": "array", "items": _obj(["id"], id={"type": "string"})},
                overrideReason=_obj([], reason=_obj(["code"], code={"type": "string"}, system={"type": "string"}),
                                    userComment={"type": "string"}),
                outcomeTimestamp={"type": "string", "format": "date-time"})
    return {"type": "object", "additionalProperties": False, "required": ["feedback"],
            "properties": {"feedback": {"type": "array", "minItems": 1, "maxItems": 3,
                                        "items": item | {"additionalProperties": False}}}}


def _body(schema: dict, example: Any) -> dict:
    return {"required": True, "content": {"application/json": {"schema": schema, "examples": {"real": {
        "value": example}}}}}


def completed(doc: dict, *, pid: str, encounter: str, res: dict, model_key: str, card: str, deep: bool = True) -> dict:
    """The served OpenAPI with what it leaves out (see the module docstring); without `deep`, the prefetch is any
    object (enough where calls stop at the credential check, and generated several times faster)."""
    paths = doc["paths"]
    hooks = sorted({h for h, _ in SERVICES.values()})
    request_id = {"name": "X-Request-ID", "in": "header", "required": False,
                  "schema": {"type": "string", "pattern": "^[A-Za-z0-9-]{1,64}$"}}
    real = hook_request(pid, encounter, prefetch_of(res))
    real["prefetch"]["encounters"]["entry"].sort(key=lambda e: e["resource"]["id"] != encounter)  # the stay first
    fb_example = {"feedback": [{"card": card, "outcome": "overridden", "outcomeTimestamp": "2026-11-22T10:00:00Z",
                                "overrideReason": {"reason": {"code": "already-planned"}}}]}
    call, feedback = paths["/cds-services/{service_id}"]["post"], paths["/cds-services/{service_id}/feedback"]["post"]
    for sid, (hook, _) in SERVICES.items():
        for template, suffix, body in (
            (call, "", _body(hook_schema([hook], pid, encounter, res if deep else None,
                                         encounter_required=sid == "readmission-risk"), real | {"hook": hook})),
            (feedback, "/feedback", _body(feedback_schema(card), fb_example)),
        ):
            op = copy.deepcopy(template)
            op["operationId"] = f"{op['operationId']}_{sid}".replace("-", "_")
            op["parameters"] = [request_id]
            op["requestBody"] = body
            paths[f"/cds-services/{sid}{suffix}"] = {"post": op}
    call["parameters"].append(request_id)
    call["requestBody"] = _body(hook_schema(hooks, pid, encounter, None, encounter_required=False), real)
    feedback["parameters"].append(request_id)
    feedback["requestBody"] = _body(feedback_schema(card), fb_example)
    switch = paths["/admin/models/{model_key}/enabled"]["post"]
    switch["parameters"][0]["schema"] = {"anyOf": [{"enum": [model_key, model_key[:12]]}, {"type": "string"}]}
    switch["requestBody"] = _body({"type": "object", "additionalProperties": False, "required": ["enabled"],
                                   "properties": {"enabled": {"type": "boolean"}}}, {"enabled": True})
    paths["/models/{key}/card"]["get"]["parameters"][0]["schema"] = {
        "anyOf": [{"enum": [model_key[:12], model_key]}, {"type": "string"}]}
    doc.setdefault("components", {})["securitySchemes"] = {
        "ehr": {"type": "http", "scheme": "bearer", "bearerFormat": "JWT"},
        "admin": {"type": "http", "scheme": "bearer"},
    }
    for path, ops in paths.items():
        for op in ops.values():
            kind = guard(path)
            op["security"] = [{kind: []}] if kind else []
    return doc


def guard(path: str) -> str | None:
    """The credential an operation needs: 'ehr' (a signed JWT), 'admin' (the admin secret) or none."""
    if path.startswith("/admin/"):
        return "admin"
    return "ehr" if path.startswith("/cds-services/") else None


def _load(server: Server, record, card: str, *, deep: bool):
    pid, encounter, res = record
    doc = httpx.get(f"{server.url}/openapi.json", timeout=10).json()
    doc = completed(doc, pid=pid, encounter=encounter, res=res, model_key=server.service.model_key, card=card,
                    deep=deep)
    for path in SCORING_PATHS:  # the real request is valid, so the examples phase sends it
        body = doc["paths"][path]["post"]["requestBody"]["content"]["application/json"]
        jsonschema.validate(body["examples"]["real"]["value"], body["schema"])
    config = schemathesis.Config.from_dict({
        "base-url": server.url, "seed": 20261122, "request-timeout": 30,
        "generation": {"mode": "all", "max-examples": EXAMPLES, "database": "none"},
        "operations": [{"include-path-regex": "^/cds-services/", "phases": {"coverage": {"enabled": False}}}],
    })
    return schemathesis.openapi.from_dict(doc, config=config)


@pytest.fixture(scope="module")
def api_schema(server, record, card):
    return _load(server, record, card, deep=True)


@pytest.fixture(scope="module")
def api_schema_shallow(server, record, card):
    return _load(server, record, card, deep=False)


schema = schemathesis.pytest.from_fixture("api_schema")
shallow_schema = schemathesis.pytest.from_fixture("api_schema_shallow")


@pytest.fixture(autouse=True)
def _nodeid_for_schemathesis(request):
    """Schemathesis 4.32's lazy schemas read and relabel `node._nodeid`, which pytest 9.2 no longer has (`_id`)."""
    if not hasattr(request.node, "_nodeid"):
        request.node._nodeid = request.node.nodeid


# -- calls and checks -----------------------------------------------------------------------------------------------
def credentials(case, server: Server, keys) -> dict[str, str]:
    """A fresh credential for this very request: a JWT whose `aud` is the URL called, or the admin secret."""
    kind = guard(case.operation.path)
    if kind == "admin":
        return {"Authorization": f"Bearer {ADMIN_SECRET}"}
    if kind == "ehr":
        return bearer(keys[0], keys[1], f"{server.url}{case.formatted_path}")
    return {}


def checked_call(case, server: Server, *, headers: dict | None = None, checks: tuple = ()):
    """Call, then check: a 5xx fails `not_a_server_error` and `server_traceback`, which names the server's exception
    and where it was raised."""
    response = case.call(headers=headers)
    exc = server.errors.get(case.id) if response.status_code >= 500 else None

    def server_traceback(ctx, response, case) -> None:
        if response.status_code >= 500:
            where = "".join(traceback.format_exception(exc)[-12:]) if exc is not None else "(no exception recorded)"
            raise AssertionError(f"{response.status_code} from the server's exception:\n{where}")

    case.validate_response(response, checks=[not_a_server_error, server_traceback, *checks], headers=headers)
    return response


def _real_target(case) -> bool:
    """The call names a real service, or is an admin route (an unknown service id is a 404 before any auth)."""
    sid = (case.path_parameters or {}).get("service_id")
    return sid in SERVICES if "service_id" in (case.path_parameters or {}) else True


# -- the fuzzing ----------------------------------------------------------------------------------------------------
def test_the_real_request_is_scored(server, keys, record):
    """The example the scoring routes' fuzzing starts from is a real stay that is scored (not refused or deferred)."""
    pid, encounter, res = record
    server.service.store.set_enabled(server.service.model_key, True, by="fuzz")
    url = f"{server.url}/cds-services/readmission-risk"
    r = httpx.post(url, json=hook_request(pid, encounter, prefetch_of(res)), headers=bearer(keys[0], keys[1], url),
                   timeout=30)
    assert r.status_code == 200, r.text
    scored = [e for e in server.service.audit.records(kind="cds-call", patient=pid) if e.get("score") is not None]
    assert scored and scored[-1]["input_digest"]


@schema.parametrize()
@FUZZ
def test_no_server_error_with_valid_credentials(case, server, keys):
    if case.operation.path.startswith("/cds-services/"):
        server.service.store.set_enabled(server.service.model_key, True, by="fuzz")  # the kill switch is fuzzed too
    checked_call(case, server, headers=credentials(case, server, keys), checks=(ignored_auth,))


@shallow_schema.parametrize()
@FUZZ
def test_no_server_error_and_401_without_valid_credentials(case, server):
    response = checked_call(case, server)
    if guard(case.operation.path) and case.method.upper() == case.operation.method.upper() and _real_target(case):
        sent = response.request.headers.get("Authorization")
        assert response.status_code == 401, (
            f"{case.method} {case.formatted_path} with Authorization={sent!r} answered {response.status_code}: "
            f"{response.text[:300]}")


# -- the 5xx the fuzzing found, one exact request each: regression tests now that they are fixed ----------------------
@pytest.mark.parametrize("bug", FOUND_5XX, ids=[b.name for b in FOUND_5XX])
def test_found_server_error_stays_fixed(bug: Found, server, keys, record, card):
    path, headers, body = bug.request(record[0], record[1], card)
    url = f"{server.url}{path}"
    auth = {"Authorization": f"Bearer {ADMIN_SECRET}"} if path.startswith("/admin/") else bearer(keys[0], keys[1], url)
    server.last_error = None
    r = httpx.post(url, content=json.dumps(body), headers={"Content-Type": "application/json", **auth, **headers},
                   timeout=30)
    assert r.status_code < 500, (
        f"{bug.name} ({bug.was}) is back: {type(server.last_error).__name__}: {server.last_error}")
    assert r.status_code in (200, 400), r.text  # answered or refused, not turned away at the door (401)
