"""The REST source against a real FHIR server (Medplum, tests/fhir_server): paging, auth, retries, errors.

No HTTP mocks: failures are injected by the server itself (``FhirServer.inject_fault``). One server serves the
whole module; every test starts with zeroed stats and no pending faults. Node and npm are required (CI installs
them): without them the fixture errors rather than skipping.
"""

from __future__ import annotations

import json
import math
import socket
import time
from collections import defaultdict
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

import pytest

from careloop.errors import ConfigError
from careloop.ingest.rest import DEFAULT_TYPES, SHARED_TYPES, FhirServerError, Page, RestSource, fetch_pages
from tests.conftest import SHARED
from tests.fhir_server.harness import FhirServer, make_ec_key, make_rsa_key, run_fhir_server

BUNDLES = SHARED / "fixtures" / "synthea-r4-bundles"
STATIC_TOKEN = "static-test-token-4f9c2e"
OBS = "/fhir/R4/Observation"


@dataclass
class World:
    server: FhirServer
    rsa_pem: bytes
    rsa_kid: str
    ec_pem: bytes
    ec_kid: str
    ids: dict[str, set[str]]  # every id the server holds, by type (from the load responses)
    by_patient: dict[str, dict[str, set[str]]]  # patient id -> type -> ids loaded from that patient's bundle


def _locations(result: dict[str, Any]) -> Iterator[tuple[str, str]]:
    for entry in result["entry"]:
        rtype, rid = entry["response"]["location"].split("/")[:2]
        yield rtype, rid


@pytest.fixture(scope="module")
def world() -> Iterator[World]:
    rsa_pem, rsa_jwk = make_rsa_key()
    ec_pem, ec_jwk = make_ec_key()
    clients = [
        {"client_id": "careloop-rs", "jwks": {"keys": [rsa_jwk]}},
        {"client_id": "careloop-es", "jwks": {"keys": [ec_jwk]}},
        {"client_id": "careloop-short", "jwks": {"keys": [rsa_jwk]}, "token_ttl": 2},
    ]
    reference = sorted(BUNDLES.glob("hospitalInformation*")) + sorted(BUNDLES.glob("practitionerInformation*"))
    patients = sorted(p for p in BUNDLES.glob("*.json.gz") if p not in reference)[:3]
    assert len(reference) == 2 and len(patients) == 3, f"Synthea fixtures missing in {BUNDLES}"
    with run_fhir_server(static_token=STATIC_TOKEN, clients=clients) as server:
        ids: dict[str, set[str]] = defaultdict(set)
        by_patient: dict[str, dict[str, set[str]]] = {}
        for path in [*reference, *patients]:
            loaded: dict[str, set[str]] = defaultdict(set)
            for rtype, rid in _locations(server.load_bundle(path)):
                loaded[rtype].add(rid)
                ids[rtype].add(rid)
            if path in patients:
                (pid,) = loaded["Patient"]
                by_patient[pid] = loaded
        yield World(server, rsa_pem, rsa_jwk["kid"], ec_pem, ec_jwk["kid"], ids, by_patient)


@pytest.fixture
def fhir(world: World) -> FhirServer:
    world.server.clear_faults()
    world.server.reset_stats()
    return world.server


def _source(server: FhirServer, **kw: Any) -> RestSource:
    return RestSource(server.base_url, **({"token": STATIC_TOKEN, "backoff": 0.01} | kw))


def _bundle(page: Page) -> dict[str, Any]:
    return json.loads(page.body)


def _ids(pages: list[Page], rtype: str | None = None) -> list[str]:
    return [
        e["resource"]["id"]
        for p in pages
        for e in _bundle(p).get("entry", [])
        if rtype is None or e["resource"]["resourceType"] == rtype
    ]


def _type_of(page: Page) -> str:
    return page.label.split("?")[0]


# -- paging -----------------------------------------------------------------------------------------------------


def test_per_type_paging_returns_exactly_what_the_server_holds(world: World, fhir: FhirServer) -> None:
    pages = list(fetch_pages(_source(fhir, page_size=7)))
    stats = fhir.stats()
    for rtype in DEFAULT_TYPES:
        mine = [p for p in pages if _type_of(p) == rtype]
        ids = _ids(mine)
        assert len(ids) == len(set(ids)), f"{rtype}: a resource came twice"
        assert set(ids) == world.ids.get(rtype, set()), rtype
        assert fhir.request("GET", f"{rtype}?_count=1")["total"] == len(ids)
        assert len(mine) == max(1, math.ceil(len(ids) / 7)) == stats["requests"][f"/fhir/R4/{rtype}"], rtype
        assert [p.label for p in mine] == [f"{rtype}?_count=7 page {n}" for n in range(1, len(mine) + 1)]
    assert len(world.ids["Observation"]) > 100  # so paging really was exercised
    first = pages[0]
    assert first.url == f"{fhir.base_url}/Patient?_count=7"
    assert _bundle(first)["resourceType"] == "Bundle" and _bundle(first)["type"] == "searchset"
    assert {_type_of(p) for p in pages} == set(DEFAULT_TYPES)


def test_per_patient_mode_returns_only_that_patients_resources(world: World, fhir: FhirServer) -> None:
    chosen = sorted(world.by_patient)[:2]
    pages = list(fetch_pages(_source(fhir, patients=tuple(chosen), page_size=25)))
    labels = [p.label for p in pages]
    for rtype in SHARED_TYPES & set(DEFAULT_TYPES):  # fetched once, not once per patient
        assert sum(label.startswith(f"{rtype}?_count=25 page") for label in labels) >= 1
        assert set(_ids([p for p in pages if _type_of(p) == rtype])) == world.ids.get(rtype, set())
    for pid in chosen:
        assert f"Patient?_id={pid} page 1" in labels
        for rtype in set(DEFAULT_TYPES) - SHARED_TYPES:
            param = "_id" if rtype == "Patient" else "patient"
            mine = [p for p in pages if p.label.startswith(f"{rtype}?{param}={pid} page")]
            assert mine, f"no search for {rtype} of {pid}"
            assert set(_ids(mine)) == world.by_patient[pid].get(rtype, set()), (pid, rtype)
    assert len(_ids([p for p in pages if _type_of(p) == "Observation"])) > 25  # per-patient paging happened too
    other = set(world.by_patient) - set(chosen)
    leaked = {
        rid for pid in other for rtype, ids in world.by_patient[pid].items() if rtype not in SHARED_TYPES for rid in ids
    } & set(_ids(pages))
    assert not leaked


# -- auth -------------------------------------------------------------------------------------------------------


def test_wrong_static_token_fails_without_showing_it(fhir: FhirServer) -> None:
    source = _source(fhir, token="wrong-token-zq81")
    with pytest.raises(FhirServerError, match=r"authorization failed .*401 Missing or invalid bearer token") as exc:
        list(fetch_pages(source))
    assert "wrong-token-zq81" not in str(exc.value) and "wrong-token-zq81" not in repr(exc.value)
    assert "wrong-token-zq81" not in repr(source) and STATIC_TOKEN not in repr(_source(fhir))
    assert fhir.stats()["unauthorized"] == 1  # a static token is not retried


@pytest.mark.parametrize("algorithm", ["RS384", "ES384"])
def test_smart_backend_services(world: World, fhir: FhirServer, algorithm: str) -> None:
    rs = algorithm == "RS384"
    source = RestSource(
        fhir.base_url,
        client_id="careloop-rs" if rs else "careloop-es",
        private_key_pem=world.rsa_pem if rs else world.ec_pem,
        key_id=world.rsa_kid if rs else world.ec_kid,
        algorithm=algorithm,
        token_url=None if rs else fhir.token_url,  # RS384 discovers it from .well-known/smart-configuration
        types=("Patient", "Observation"),
        page_size=100,
    )
    pages = list(fetch_pages(source))
    assert set(_ids(pages, "Observation")) == world.ids["Observation"]
    stats = fhir.stats()
    assert stats["token_grants"] == 1 and stats["token_failures"] == 0 and stats["unauthorized"] == 0
    assert stats["requests"].get("/fhir/R4/.well-known/smart-configuration", 0) == (1 if rs else 0)
    assert "PRIVATE KEY" not in repr(source)


def test_token_expiry_is_refreshed_before_it_runs_out(world: World, fhir: FhirServer) -> None:
    source = RestSource(
        fhir.base_url,
        client_id="careloop-short",
        private_key_pem=world.rsa_pem,
        key_id=world.rsa_kid,
        token_url=fhir.token_url,
        types=("Observation",),
        page_size=50,
    )
    pages = []
    for page in fetch_pages(source):
        pages.append(page)
        if len(pages) == 2:
            time.sleep(2.2)  # the 2 s token has expired by the next request
    assert set(_ids(pages)) == world.ids["Observation"]
    stats = fhir.stats()
    assert stats["token_grants"] == 2 and stats["unauthorized"] == 0  # refreshed proactively, not after a 401


def test_401_gets_a_new_token_once_then_fails(world: World, fhir: FhirServer) -> None:
    source = RestSource(
        fhir.base_url,
        client_id="careloop-rs",
        private_key_pem=world.rsa_pem,
        key_id=world.rsa_kid,
        token_url=fhir.token_url,
        types=("Observation",),
        page_size=100,
        backoff=0.01,
    )
    fhir.inject_fault(401, path_prefix=OBS, query_contains="_offset=100", operation_outcome="Token revoked")
    assert set(_ids(list(fetch_pages(source)))) == world.ids["Observation"]
    assert fhir.stats()["token_grants"] == 2

    fhir.inject_fault(401, count=2, path_prefix=OBS, operation_outcome="Token revoked")
    with pytest.raises(FhirServerError, match=r"authorization failed for Observation\?_count=100: 401 Token revoked"):
        list(fetch_pages(source))
    assert fhir.stats()["token_grants"] == 4


def test_token_endpoint_errors(world: World, fhir: FhirServer) -> None:
    kw: dict[str, Any] = {"private_key_pem": world.rsa_pem, "key_id": world.rsa_kid, "types": ("Patient",)}
    fhir.inject_fault(503, path_prefix="/auth/token", retry_after=0)
    pages = list(fetch_pages(RestSource(fhir.base_url, client_id="careloop-rs", token_url=fhir.token_url, **kw)))
    assert len(_ids(pages)) == len(world.ids["Patient"])  # retried with a fresh assertion (new jti)
    with pytest.raises(FhirServerError, match=r"SMART token request to .*/auth/token failed: 401 invalid_client"):
        list(fetch_pages(RestSource(fhir.base_url, client_id="stranger", token_url=fhir.token_url, **kw)))


# -- retries ----------------------------------------------------------------------------------------------------


def test_429_with_retry_after_then_success(world: World, fhir: FhirServer) -> None:
    fhir.inject_fault(429, count=2, path_prefix=OBS, query_contains="_offset=100", retry_after=0)
    pages = list(fetch_pages(_source(fhir, types=("Observation",), page_size=100, backoff=5.0)))  # Retry-After wins
    assert set(_ids(pages)) == world.ids["Observation"]
    stats = fhir.stats()
    assert stats["faults_served"] == 2 and stats["requests"][OBS] == len(pages) + 2


def test_503_twice_then_success(world: World, fhir: FhirServer) -> None:
    fhir.inject_fault(503, count=2, path_prefix=OBS)
    pages = list(fetch_pages(_source(fhir, types=("Observation",), page_size=100)))
    assert set(_ids(pages)) == world.ids["Observation"]
    assert fhir.stats()["requests"][OBS] == len(pages) + 2


def test_timeout_is_retried(fhir: FhirServer) -> None:
    fhir.inject_fault(delay_ms=1500, path_prefix="/fhir/R4/Patient")
    pages = list(fetch_pages(_source(fhir, types=("Patient",), timeout=0.3)))
    assert len(pages) == 1 and fhir.stats()["requests"]["/fhir/R4/Patient"] == 2


def test_persistent_500_fails_after_max_retries(fhir: FhirServer) -> None:
    fhir.inject_fault(500, count=3, path_prefix=OBS, operation_outcome="database on fire")
    source = _source(fhir, types=("Observation",), max_retries=2)
    with pytest.raises(FhirServerError, match=r"kept failing Observation\?_count=200: 500 database on fire .*3 att"):
        list(fetch_pages(source))
    assert fhir.stats()["requests"][OBS] == 3


def test_unreachable_server(fhir: FhirServer) -> None:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]  # nothing listens here once the socket is closed
    with pytest.raises(FhirServerError, match=r"kept failing .*Patient\?_count=200: ConnectError \(2 attempts\)"):
        list(fetch_pages(RestSource(f"http://127.0.0.1:{port}/fhir", types=("Patient",), max_retries=1, backoff=0)))


# -- server answers that are not pages --------------------------------------------------------------------------


def test_400_operation_outcome(fhir: FhirServer) -> None:
    fhir.inject_fault(400, path_prefix=OBS, operation_outcome="invalid search parameter 'foo'")
    expected = r"^FHIR server refused Observation\?_count=200: 400 invalid search parameter 'foo' \(OperationOutcome\)$"
    with pytest.raises(FhirServerError, match=expected):
        list(fetch_pages(_source(fhir, types=("Observation",))))
    assert fhir.stats()["requests"][OBS] == 1  # a 400 is not retried


def test_200_operation_outcome_instead_of_bundle(fhir: FhirServer) -> None:
    outcome = {
        "resourceType": "OperationOutcome",
        "issue": [{"severity": "error", "code": "too-costly", "details": {"text": "Too many matches"}}],
    }
    fhir.inject_fault(200, path_prefix=OBS, body=outcome)
    with pytest.raises(FhirServerError, match=r"refused Observation\?_count=200: 200 Too many matches \(Operation"):
        list(fetch_pages(_source(fhir, types=("Observation",))))


def test_non_json_body(fhir: FhirServer) -> None:
    fhir.inject_fault(200, path_prefix=OBS, body="<html>Sign in</html>", content_type="text/html")
    with pytest.raises(FhirServerError, match=r"Observation\?_count=200 with 200 text/html that is not a JSON .*Sign"):
        list(fetch_pages(_source(fhir, types=("Observation",))))


def test_next_link_loop(fhir: FhirServer) -> None:
    url = f"{fhir.base_url}/Patient?_count=200"
    looping = {"resourceType": "Bundle", "type": "searchset", "link": [{"relation": "next", "url": url}]}
    fhir.inject_fault(200, path_prefix="/fhir/R4/Patient", body=looping)
    with pytest.raises(FhirServerError, match=r"next links for Patient\?_count=200 loop back to Patient\?_count=200"):
        list(fetch_pages(_source(fhir, types=("Patient",))))


def test_next_link_to_another_host_is_not_followed(fhir: FhirServer) -> None:
    away = {
        "resourceType": "Bundle",
        "type": "searchset",
        "link": [{"relation": "next", "url": "http://elsewhere.invalid/fhir/R4/Patient?page=2"}],
    }
    fhir.inject_fault(200, path_prefix="/fhir/R4/Patient", body=away)
    with pytest.raises(FhirServerError, match=r"leaves http://127\.0\.0\.1:\d+ for http://elsewhere\.invalid"):
        list(fetch_pages(_source(fhir, types=("Patient",))))


# -- configuration ----------------------------------------------------------------------------------------------


def test_config_errors(world: World) -> None:
    base = "http://127.0.0.1:1/fhir"
    smart = {"client_id": "c", "private_key_pem": world.rsa_pem}
    with pytest.raises(ConfigError, match=r"algorithm must be one of RS384, ES384, not 'HS256'"):
        RestSource(base, algorithm="HS256", **smart)
    with pytest.raises(ConfigError, match="ES384 needs an EC P-384"):
        RestSource(base, algorithm="ES384", **smart)
    with pytest.raises(ConfigError, match="RS384 needs an RSA"):
        RestSource(base, client_id="c", private_key_pem=world.ec_pem)
    with pytest.raises(ConfigError, match="not an unencrypted PEM private key"):
        RestSource(base, client_id="c", private_key_pem=b"-----BEGIN PRIVATE KEY-----\nnope\n")
    with pytest.raises(ConfigError, match="either a static token or"):
        RestSource(base, token="t", **smart)
    with pytest.raises(ConfigError, match="needs both client_id and private_key_pem"):
        RestSource(base, client_id="c")
    with pytest.raises(ConfigError, match="not FHIR Patient ids"):
        RestSource(base, patients=("Patient/1",))
    with pytest.raises(ConfigError, match="not FHIR resource type names"):
        RestSource(base, types=("Observation?code=1",))
    with pytest.raises(ConfigError, match="FHIR base URL"):
        RestSource("ftp://example.org/fhir")
    assert RestSource(base + "/").base_url == base


def test_outcome_entries_are_passed_on_and_logged(fhir: FhirServer, caplog: pytest.LogCaptureFixture) -> None:
    note = {
        "resourceType": "OperationOutcome",
        "issue": [{"severity": "warning", "code": "not-supported", "diagnostics": "Unknown parameter 'foo' ignored"}],
    }
    page = {
        "resourceType": "Bundle",
        "type": "searchset",
        "entry": [
            {"resource": {"resourceType": "Patient", "id": "p1"}, "search": {"mode": "match"}},
            {"resource": note, "search": {"mode": "outcome"}},
        ],
    }
    fhir.inject_fault(200, path_prefix="/fhir/R4/Patient", body=page)
    with caplog.at_level("WARNING", logger="careloop.ingest.rest"):
        (got,) = fetch_pages(_source(fhir, types=("Patient",)))
    assert _bundle(got) == page  # the raw page, outcome entry included: the pipeline skips it
    assert "FHIR server notes on Patient?_count=200: Unknown parameter 'foo' ignored" in caplog.text
