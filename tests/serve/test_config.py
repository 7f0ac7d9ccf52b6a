"""The service's YAML configuration: strict fields, every problem with its line, key files checked at load."""

from __future__ import annotations

import json
import textwrap
from pathlib import Path
from typing import Any

import pytest
from cryptography.hazmat.primitives.asymmetric import ec, rsa
from jwt.algorithms import ECAlgorithm, RSAAlgorithm

from careloop.errors import ConfigError
from careloop.serve.auth import AdminAuth, TokenVerifier, hash_admin_token, jwks_for, sign_request_token
from careloop.serve.config import AlertConfig, ServiceConfig, TrustedClient, load_config
from tests.fhir_server.harness import make_ec_key, make_rsa_key

HEX = "ab" * 32


@pytest.fixture(scope="module")
def keys() -> dict[str, Any]:
    rsa_pem, rsa_jwk = make_rsa_key()
    ec_pem, ec_jwk = make_ec_key()
    return {"rsa_pem": rsa_pem, "rsa_jwk": rsa_jwk, "ec_pem": ec_pem, "ec_jwk": ec_jwk}


def write(tmp_path: Path, text: str, name: str = "service.yaml") -> Path:
    path = tmp_path / name
    path.write_text(textwrap.dedent(text).lstrip("\n"))
    return path


def inline(jwk: dict) -> str:
    return json.dumps({"keys": [jwk]})


def problems(tmp_path: Path, text: str) -> str:
    with pytest.raises(ConfigError) as info:
        load_config(write(tmp_path, text))
    return str(info.value).replace(f"{tmp_path}/", "")  # messages start with the file's path


# -- a full configuration ------------------------------------------------------------------------------------------


def test_full_configuration_loads(tmp_path: Path, keys: dict, monkeypatch: pytest.MonkeyPatch) -> None:
    (tmp_path / "keys").mkdir()
    (tmp_path / "keys" / "ehr2.json").write_text(json.dumps({"keys": [keys["ec_jwk"]]}))
    path = write(
        tmp_path,
        f"""
        trusted_clients:
          - iss: https://ehr.example.org
            jwks: {inline(keys["rsa_jwk"])}
            tenant: org-1
          - iss: https://ehr2.example.org
            jwks_file: keys/ehr2.json
            tenant: [org-2, org-3]
            algorithms: [ES384, ES256]
          - iss: https://ehr3.example.org
            jku: https://ehr3.example.org/jwks.json
        admin:
          token_sha256: {HEX.upper()}
        state: postgresql://careloop@db/careloop
        base_url: https://cds.example.org/
        max_token_lifetime_s: 900
        clock_skew_s: 30
        alert: {{repeat_window_h: 48, repeat_delta: 0.2, daily_budget_per_unit: 5, deferral: none}}
        deadline_ms: 800
        """,
    )
    monkeypatch.chdir(tmp_path.parent)  # jwks_file is relative to the configuration file, not the working folder
    config = load_config(path)
    first, second, third = config.trusted_clients
    assert first.tenants == frozenset({"org-1"}) and first.algorithms == ["RS384", "ES384"]
    assert second.jwks_file == tmp_path / "keys" / "ehr2.json" and second.static_jwks() == {"keys": [keys["ec_jwk"]]}
    assert second.tenants == frozenset({"org-2", "org-3"}) and second.algorithms == ["ES384", "ES256"]
    assert third.jku == "https://ehr3.example.org/jwks.json" and third.static_jwks() is None
    assert third.tenants is None
    assert config.admin is not None and config.admin.token_sha256 == HEX and config.admin.name == "admin"
    assert config.state == "postgresql://careloop@db/careloop"
    assert config.base_url == "https://cds.example.org"
    assert config.discovery_url == "https://cds.example.org/cds-services"
    assert config.service_url("readmission-risk") == "https://cds.example.org/cds-services/readmission-risk"
    assert (config.max_token_lifetime_s, config.clock_skew_s, config.deadline_ms) == (900, 30, 800)
    assert config.alert == AlertConfig(repeat_window_h=48, repeat_delta=0.2, daily_budget_per_unit=5, deferral="none")


def test_defaults(tmp_path: Path, keys: dict) -> None:
    config = load_config(write(tmp_path, f"trusted_clients: [{{iss: https://ehr, jwks: {inline(keys['rsa_jwk'])}}}]"))
    assert config.admin is None
    assert config.state == "sqlite:///careloop-state.db"
    assert config.base_url == "http://127.0.0.1:8080"
    assert (config.max_token_lifetime_s, config.clock_skew_s, config.deadline_ms) == (3600, 60, 1500)
    assert config.alert == AlertConfig(
        repeat_window_h=72, repeat_delta=0.10, daily_budget_per_unit=None, deferral="card"
    )


def test_loaded_configuration_drives_the_verifier_and_admin(tmp_path: Path, keys: dict) -> None:
    (tmp_path / "jwks.json").write_text(json.dumps({"keys": [keys["rsa_jwk"]]}))
    path = write(
        tmp_path,
        f"""
        trusted_clients:
          - iss: https://ehr.example.org
            jwks_file: jwks.json
        admin: {{token_sha256: {hash_admin_token("letmein-please-0123456789")}, name: ops}}
        base_url: https://cds.example.org
        max_token_lifetime_s: 900
        """,
    )
    config = load_config(path)
    verifier = TokenVerifier(
        config.trusted_clients,
        claim_jti=lambda iss, jti, exp: True,
        max_lifetime_s=config.max_token_lifetime_s,
        skew_s=config.clock_skew_s,
    )
    aud = config.service_url("readmission-risk")
    token = sign_request_token(keys["rsa_pem"], keys["rsa_jwk"]["kid"], "https://ehr.example.org", aud)
    assert verifier.verify(f"Bearer {token}", aud).iss == "https://ehr.example.org"
    assert AdminAuth(config.admin).check("Bearer letmein-please-0123456789") == "ops"


# -- every problem with its line ------------------------------------------------------------------------------------


def test_unknown_keys_are_errors_naming_their_line(tmp_path: Path, keys: dict) -> None:
    text = f"""
        trusted_clients:
          - iss: https://ehr.example.org
            jwks: {inline(keys["rsa_jwk"])}
            jwks_url: https://ehr.example.org/jwks
        base_url: https://cds.example.org
        colour: blue
        alert:
          repeat_window_h: 12
          snooze: 3
        """
    msg = problems(tmp_path, text)
    assert "service.yaml:4: trusted_clients.0.jwks_url: unknown field 'jwks_url'" in msg
    assert "service.yaml:6: colour: unknown field 'colour'" in msg
    assert "service.yaml:9: alert.snooze: unknown field 'snooze'" in msg


@pytest.mark.parametrize(
    ("sources", "what"),
    [
        ("", "got none"),
        ("jwks: {JWKS}\n    jku: https://ehr.example.org/jwks.json", "got jwks and jku"),
        ("jwks: {JWKS}\n    jwks_file: k.json", "got jwks and jwks_file"),
        ("jwks: {JWKS}\n    jwks_file: k.json\n    jku: https://e/j", "got jwks and jwks_file and jku"),
    ],
)
def test_a_client_needs_exactly_one_key_source(tmp_path: Path, keys: dict, sources: str, what: str) -> None:
    body = sources.replace("{JWKS}", inline(keys["rsa_jwk"]))
    msg = problems(
        tmp_path, f"trusted_clients:\n  - iss: https://ehr.example.org\n    {body}\n".replace("\n    \n", "\n")
    )
    assert msg.startswith("service.yaml:2: trusted_clients.0: give exactly one of jwks, jwks_file or jku")
    assert what in msg


@pytest.mark.parametrize("value", ["xyz", "ab" * 31, "ab" * 33, f"sha256:{HEX}", "g" * 64, "12345", "''", "null"])
def test_admin_token_sha256_must_be_64_hex_characters(tmp_path: Path, keys: dict, value: str) -> None:
    text = f"""
        trusted_clients: [{{iss: https://ehr, jwks: {inline(keys["rsa_jwk"])}}}]
        admin:
          token_sha256: {value}
        """
    assert "service.yaml:3: admin.token_sha256:" in problems(tmp_path, text)


def test_admin_needs_its_hash(tmp_path: Path, keys: dict) -> None:
    text = f"trusted_clients: [{{iss: https://ehr, jwks: {inline(keys['rsa_jwk'])}}}]\nadmin: {{name: ops}}\n"
    assert "service.yaml:2: admin.token_sha256: Field required" in problems(tmp_path, text)


def test_all_problems_are_listed_at_once(tmp_path: Path) -> None:
    text = """
        trusted_clients:
          - iss: https://ehr.example.org
        state: mysql://db
        max_token_lifetime_s: 86400
        deadline_ms: 0
        """
    msg = problems(tmp_path, text).splitlines()
    assert [line.split(":")[1] for line in msg] == ["2", "3", "4", "5"]


# -- trusted clients ------------------------------------------------------------------------------------------------


def _private_jwk(kind: str) -> dict:
    if kind == "rsa":
        key = rsa.generate_private_key(public_exponent=65537, key_size=2048)
        return {**RSAAlgorithm.to_jwk(key, as_dict=True), "kid": "k"}
    return {**ECAlgorithm.to_jwk(ec.generate_private_key(ec.SECP384R1()), as_dict=True), "kid": "k"}


@pytest.mark.parametrize(
    ("jwks", "match"),
    [
        ({"keys": []}, "no signing keys"),
        ([], "valid dictionary"),
        ({"keys": "k"}, "JWK Set is a mapping"),
        ({"keys": [{"kty": "oct", "k": "c2VjcmV0", "kid": "s"}]}, "private or symmetric"),
        ({"keys": [{"kty": "OKP", "crv": "Ed25519", "x": "AA", "kid": "ed"}]}, "kty 'OKP'"),
        ({"keys": ["not-a-jwk"]}, "must be an object"),
        ({"keys": [{"kty": "RSA", "n": "AQAB", "e": "AQAB"}]}, "no kid"),
        ({"keys": [{"kty": "RSA", "n": "!!", "e": "AQAB", "kid": "bad"}]}, "not a valid RSA public key"),
        ({"keys": [{"kty": "EC", "crv": "secp256k1", "x": "AA", "y": "AA", "kid": "k1"}]}, "curve"),
    ],
)
def test_bad_inline_jwks_are_refused(jwks: Any, match: str) -> None:
    with pytest.raises(ValueError, match=match):
        TrustedClient(iss="https://ehr", jwks=jwks)


@pytest.mark.parametrize("kind", ["rsa", "ec"])
def test_private_keys_are_refused(kind: str) -> None:
    with pytest.raises(ValueError, match="private or symmetric key material"):
        TrustedClient(iss="https://ehr", jwks={"keys": [_private_jwk(kind)]})


def test_weak_duplicate_and_hmac_keys_are_refused(keys: dict) -> None:
    weak = jwks_for({"weak": rsa.generate_private_key(public_exponent=65537, key_size=1024)})
    with pytest.raises(ValueError, match="1024-bit RSA key"):
        TrustedClient(iss="https://ehr", jwks=weak)
    with pytest.raises(ValueError, match="appears twice"):
        TrustedClient(
            iss="https://ehr", jwks={"keys": [keys["rsa_jwk"], {**keys["ec_jwk"], "kid": keys["rsa_jwk"]["kid"]}]}
        )
    with pytest.raises(ValueError, match="alg 'HS256'"):
        TrustedClient(iss="https://ehr", jwks={"keys": [{**keys["rsa_jwk"], "alg": "HS256"}]})


def test_keys_for_other_uses_are_skipped(keys: dict) -> None:
    client = TrustedClient(iss="https://ehr", jwks={"keys": [{**keys["ec_jwk"], "use": "enc"}, keys["rsa_jwk"]]})
    assert client.static_jwks() is not None


@pytest.mark.parametrize(
    ("content", "match"),
    [
        (None, "cannot read"),
        ("{not json", "is not JSON"),
        ('{"keys": []}', "no signing keys"),
    ],
)
def test_jwks_file_problems_name_the_line(tmp_path: Path, content: str | None, match: str) -> None:
    if content is not None:
        (tmp_path / "ehr.json").write_text(content)
    text = """
        base_url: https://cds.example.org
        trusted_clients:
          - iss: https://ehr.example.org
            jwks_file: ehr.json
        """
    msg = problems(tmp_path, text)
    assert msg.startswith("service.yaml:4: trusted_clients.0.jwks_file: ")
    assert match in msg and "ehr.json" in msg


def test_private_key_file_is_refused(tmp_path: Path) -> None:
    (tmp_path / "ehr.json").write_text(json.dumps({"keys": [_private_jwk("rsa")]}))
    msg = problems(tmp_path, "trusted_clients:\n  - iss: https://ehr\n    jwks_file: ehr.json\n")
    assert "service.yaml:3: trusted_clients.0.jwks_file:" in msg and "private" in msg


@pytest.mark.parametrize(
    ("jku", "ok"),
    [
        ("https://ehr.example.org/jwks.json", True),
        ("http://127.0.0.1:8765/jwks.json", True),
        ("http://localhost/jwks.json", True),
        ("http://[::1]:9000/jwks.json", True),
        ("http://ehr.example.org/jwks.json", False),
        ("http://169.254.169.254/latest/meta-data/", False),
        ("ftp://ehr.example.org/jwks.json", False),
        ("https:///jwks.json", False),
        ("jwks.json", False),
    ],
)
def test_jku_must_be_https_or_loopback(jku: str, ok: bool) -> None:
    if ok:
        assert TrustedClient(iss="https://ehr", jku=jku).jku == jku
    else:
        with pytest.raises(ValueError, match="jku must be an https:// URL"):
            TrustedClient(iss="https://ehr", jku=jku)


@pytest.mark.parametrize("algs", ["[HS256]", "[none]", "[RS384, HS384]", "[]", "[rs384]", "RS384"])
def test_only_asymmetric_algorithms_can_be_enabled(tmp_path: Path, keys: dict, algs: str) -> None:
    text = f"trusted_clients:\n  - iss: https://ehr\n    jwks: {inline(keys['rsa_jwk'])}\n    algorithms: {algs}\n"
    assert "service.yaml:4: trusted_clients.0.algorithms" in problems(tmp_path, text)


@pytest.mark.parametrize("tenant", ["''", "[]", "['']", "7"])
def test_tenant_must_be_non_empty_strings(tmp_path: Path, keys: dict, tenant: str) -> None:
    text = f"trusted_clients:\n  - iss: https://ehr\n    jwks: {inline(keys['rsa_jwk'])}\n    tenant: {tenant}\n"
    assert "service.yaml:4: trusted_clients.0.tenant" in problems(tmp_path, text)


def test_issuers_are_unique_and_at_least_one_is_trusted(tmp_path: Path, keys: dict) -> None:
    client = f"{{iss: https://ehr, jwks: {inline(keys['rsa_jwk'])}}}"
    assert "listed twice" in problems(tmp_path, f"trusted_clients: [{client}, {client}]\n")
    assert "service.yaml:1: trusted_clients: List should have at least 1 item" in problems(
        tmp_path, "trusted_clients: []\n"
    )
    assert "trusted_clients: Field required" in problems(tmp_path, "base_url: https://cds.example.org\n")
    assert "iss" in problems(tmp_path, "trusted_clients: [{iss: '', jku: 'https://e/j'}]\n")


# -- the rest of the service fields ---------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("field", "value", "ok"),
    [
        ("state", "sqlite:///state.db", True),
        ("state", "sqlite://", False),  # in memory: one database per worker, gone at exit (test_config_safety.py)
        ("state", "postgresql+psycopg://u@h/db", True),
        ("state", "mysql://h/db", False),
        ("state", "state.db", False),
        ("base_url", "http://127.0.0.1:8080", True),
        ("base_url", "http://localhost:8080", True),
        ("base_url", "http://cds.example.org", False),  # HTTPS off loopback (CDS Hooks: all exchanges over TLS)
        ("base_url", "https://cds.example.org/prefix", True),
        ("base_url", "cds.example.org", False),
        ("base_url", "https://cds.example.org?x=1", False),
        ("max_token_lifetime_s", "3600", True),
        ("max_token_lifetime_s", "3601", False),
        ("max_token_lifetime_s", "0", False),
        ("clock_skew_s", "0", True),
        ("clock_skew_s", "-1", False),
        ("clock_skew_s", "301", False),
        ("deadline_ms", "1", True),
        ("deadline_ms", "0", False),
        ("alert", "{deferral: maybe}", False),
        ("alert", "{repeat_delta: 1.5}", False),
        ("alert", "{repeat_window_h: 0}", False),
        ("alert", "{daily_budget_per_unit: 0}", False),
        ("alert", "{daily_budget_per_unit: 20, deferral: none}", True),
        ("fhir_connections", "1", True),
        ("fhir_connections", "0", False),
        ("fhir_connections", "257", False),
        ("patient_page", "https://ehr.example.org/chart/{patient}?enc={encounter}", True),
        ("patient_page", "https://ehr.example.org/chart/{encounter}", False),  # no {patient}
        ("patient_page", "https://ehr.example.org/chart/{patient}/{mrn}", False),  # an unknown name
        ("patient_page", "https://ehr.example.org/chart/{patient", False),  # not a template
        ("patient_page", "javascript:alert({patient})", False),
        ("patient_page", "/chart/{patient}", False),  # not absolute
    ],
)
def test_service_fields(tmp_path: Path, keys: dict, field: str, value: str, ok: bool) -> None:
    text = f"trusted_clients: [{{iss: https://ehr, jwks: {inline(keys['rsa_jwk'])}}}]\n{field}: {value}\n"
    if ok:
        load_config(write(tmp_path, text))
    else:
        assert f"service.yaml:2: {field}" in problems(tmp_path, text)


def test_unreadable_or_malformed_files(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="cannot read service configuration file"):
        load_config(tmp_path / "missing.yaml")
    assert problems(tmp_path, "trusted_clients: [\n  {iss: a\n").startswith("service.yaml:")
    assert "not valid YAML" in problems(tmp_path, "trusted_clients: [\n  {iss: a\n")
    assert "expected a mapping" in problems(tmp_path, "- a\n- b\n")


def test_model_can_be_built_in_code(keys: dict) -> None:
    config = ServiceConfig(trusted_clients=[TrustedClient(iss="https://ehr", jwks={"keys": [keys["rsa_jwk"]]})])
    assert config.service_url("x") == "http://127.0.0.1:8080/cds-services/x"


def test_the_patient_page_template_is_filled_with_encoded_ids(tmp_path: Path, keys: dict) -> None:
    text = (f"trusted_clients: [{{iss: https://ehr, jwks: {inline(keys['rsa_jwk'])}}}]\n"
            "patient_page: https://ehr.example.org/chart?patient={patient}&encounter={encounter}\n")
    config = load_config(write(tmp_path, text))
    assert config.patient_page_url("p 1/&x", "e-2") == \
        "https://ehr.example.org/chart?patient=p%201%2F%26x&encounter=e-2"
    assert config.patient_page_url("p1", None) is None  # patient-view: the template needs an encounter
    assert config.patient_page_url(None, "e-2") is None
    only = load_config(write(tmp_path, text.replace("&encounter={encounter}", "")))
    assert only.patient_page_url("p1", None) == "https://ehr.example.org/chart?patient=p1"
    assert load_config(write(tmp_path, text.splitlines()[0])).patient_page_url("p1", "e1") is None  # unset
