"""The EHR's bearer JWT (C-03..C-09, C-16) and the administrator credential (C-19), with real keys and signatures."""

from __future__ import annotations

import ast
import base64
import hashlib
import hmac
import json
import logging
import threading
import time
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import httpx
import jwt
import pytest
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec, padding, rsa
from hypothesis import HealthCheck, assume, given, settings
from hypothesis import strategies as st
from jwt.algorithms import ECAlgorithm

from careloop.serve import auth
from careloop.serve.auth import (
    AdminAuth,
    AuthError,
    Claims,
    TokenVerifier,
    hash_admin_token,
    jwks_for,
    new_admin_token,
    sign_request_token,
)
from careloop.serve.config import AdminConfig, TrustedClient
from tests.fhir_server.harness import make_ec_key, make_rsa_key

ISS = "https://ehr.example.org/fhir"
OTHER_ISS = "https://other-ehr.example.net"
BASE = "https://cds.example.org"
AUD = f"{BASE}/cds-services/readmission-risk"
DISCOVERY = f"{BASE}/cds-services"
NOW = 1_750_000_000.0
SKEW = 60
JKU = "https://ehr.example.org/jwks.json"
METADATA = "http://169.254.169.254/latest/meta-data/iam/security-credentials/"

FAST = settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])


# -- keys, clients, a clock and a jti store -------------------------------------------------------------------------


@dataclass(frozen=True)
class Keys:
    rsa_pem: bytes
    rsa_kid: str
    rsa_jwk: dict[str, Any]
    ec_pem: bytes
    ec_kid: str
    ec_jwk: dict[str, Any]
    other_rsa: rsa.RSAPrivateKey  # not the client's: a forger's key
    ec256: ec.EllipticCurvePrivateKey
    rsa: Any  # the loaded keys (loading a PEM checks an RSA key, which takes tens of ms)
    ec: Any

    @property
    def public_pem(self) -> bytes:
        return self.rsa.public_key().public_bytes(
            serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo
        )


@pytest.fixture(scope="module")
def keys() -> Keys:
    rsa_pem, rsa_jwk = make_rsa_key(2048)
    ec_pem, ec_jwk = make_ec_key()
    return Keys(
        rsa_pem,
        rsa_jwk["kid"],
        rsa_jwk,
        ec_pem,
        ec_jwk["kid"],
        ec_jwk,
        rsa.generate_private_key(public_exponent=65537, key_size=2048),
        ec.generate_private_key(ec.SECP256R1()),
        serialization.load_pem_private_key(rsa_pem, None),
        serialization.load_pem_private_key(ec_pem, None),
    )


class Clock:
    def __init__(self, t: float = NOW) -> None:
        self.t = t

    def __call__(self) -> float:
        return self.t


class JtiStore:
    """A thread-safe in-memory `claim_jti`: what the state store does, in a dict."""

    def __init__(self, clock: Clock) -> None:
        self.clock = clock
        self.lock = threading.Lock()
        self.seen: dict[tuple[str, str], datetime] = {}
        self.calls: list[tuple[str, str, datetime]] = []

    def __call__(self, iss: str, jti: str, until: datetime) -> bool:
        with self.lock:
            self.calls.append((iss, jti, until))
            now = datetime.fromtimestamp(self.clock(), UTC)
            self.seen = {k: v for k, v in self.seen.items() if v > now}  # forget the expired
            if (iss, jti) in self.seen:
                return False
            time.sleep(0.001)  # widen the race window
            self.seen[(iss, jti)] = until
            return True


def client(keys: Keys, **kw: Any) -> TrustedClient:
    fields: dict[str, Any] = {"iss": ISS, "jwks": {"keys": [keys.rsa_jwk, keys.ec_jwk]}}
    return TrustedClient.model_validate(fields | kw)


@dataclass
class Env:
    verifier: TokenVerifier
    jti: JtiStore
    clock: Clock
    keys: Keys

    def token(self, *, ec_key: bool = False, **kw: Any) -> str:
        k = self.keys
        key, kid, alg = (k.ec, k.ec_kid, "ES384") if ec_key else (k.rsa, k.rsa_kid, "RS384")
        args: dict[str, Any] = {"alg": alg, "now": self.clock.t} | kw
        return sign_request_token(
            args.pop("key", key), args.pop("kid", kid), args.pop("iss", ISS), args.pop("aud", AUD), **args
        )

    def verify(self, token: str, audience: str = AUD) -> Claims:
        return self.verifier.verify(f"Bearer {token}", audience)

    def refuse(self, token: str, audience: str = AUD, match: str | None = None) -> AuthError:
        before = len(self.jti.calls)
        with pytest.raises(AuthError, match=match) as info:
            self.verify(token, audience)
        if "replayed" not in info.value.reason:
            assert len(self.jti.calls) == before, "a refused token must not consume its jti"
        return info.value


def make_env(keys: Keys, clients: list[TrustedClient] | None = None, **kw: Any) -> Env:
    clock = Clock(kw.pop("now", NOW))
    store = JtiStore(clock)
    verifier = TokenVerifier(clients or [client(keys)], claim_jti=store, skew_s=SKEW, clock=clock, **kw)
    return Env(verifier, store, clock, keys)


@pytest.fixture
def env(keys: Keys) -> Env:
    return make_env(keys)


def b64(data: bytes | dict) -> str:
    raw = json.dumps(data).encode() if isinstance(data, dict) else data
    return base64.urlsafe_b64encode(raw).rstrip(b"=").decode()


def raw_token(header: dict, payload: dict, signer: Any = None) -> str:
    """A compact JWS with any header, signed by `signer(signing_input) -> bytes` (or unsigned)."""
    signing_input = f"{b64(header)}.{b64(payload)}"
    signature = signer(signing_input.encode()) if signer else b""
    return f"{signing_input}.{b64(signature)}"


def claims(**kw: Any) -> dict[str, Any]:
    base = {"iss": ISS, "aud": AUD, "iat": int(NOW), "exp": int(NOW) + 300, "jti": str(uuid.uuid4())}
    return {k: v for k, v in (base | kw).items() if v is not None}


def rs384(key: rsa.RSAPrivateKey):
    return lambda data: key.sign(data, padding.PKCS1v15(), hashes.SHA384())


# -- accepted: RS384, ES384, Epic's shape, aud arrays, discovery ------------------------------------------------------


@pytest.mark.parametrize("ec_key", [False, True], ids=["RS384", "ES384"])
def test_rs384_and_es384_are_accepted(env: Env, ec_key: bool) -> None:
    token = env.token(ec_key=ec_key, jti="call-1")
    got = env.verify(token)
    kid = env.keys.ec_kid if ec_key else env.keys.rsa_kid
    assert got == Claims(
        iss=ISS,
        sub=None,
        jti="call-1",
        exp=datetime.fromtimestamp(NOW + 300, UTC),
        iat=datetime.fromtimestamp(NOW, UTC),
        tenant=None,
        kid=kid,
        alg="ES384" if ec_key else "RS384",
        aud=AUD,
    )
    assert env.jti.calls == [(ISS, "call-1", datetime.fromtimestamp(NOW + 300, UTC))]


@pytest.mark.parametrize("ec_key", [False, True], ids=["RS384", "ES384"])
def test_epic_shaped_token_with_extra_claims_is_accepted(env: Env, ec_key: bool) -> None:
    """Epic sends `sub` (its client id), `nbf` five minutes before `iat`, a 15-minute lifetime; others add more."""
    extra = {"sub": "epic-client-id", "nbf": int(NOW) - 300, "tenant": "org-1", "epic.custom": {"x": [1, 2]}}
    token = env.token(ec_key=ec_key, lifetime_s=900, extra=extra, headers={"jku": None, "x-extra": "ok"})
    got = env.verify(token)
    assert (got.sub, got.tenant, got.exp - got.iat) == ("epic-client-id", "org-1", timedelta(seconds=900))


def test_aud_array_containing_the_endpoint_is_accepted(env: Env) -> None:
    assert env.verify(env.token(aud=["https://elsewhere.example.org/x", AUD])).aud == AUD


def test_discovery_call_with_discovery_aud_is_accepted(env: Env) -> None:
    assert env.verify(env.token(aud=DISCOVERY), DISCOVERY).aud == DISCOVERY


def test_scheme_is_case_insensitive_and_float_times_are_numericdates(env: Env) -> None:
    token = env.token(extra={"iat": NOW + 0.5, "exp": NOW + 100.25})
    assert env.verifier.verify(f"bearer   {token}", AUD).exp == datetime.fromtimestamp(NOW + 100.25, UTC)


def test_typ_is_compared_case_insensitively(env: Env) -> None:
    env.verify(env.token(headers={"typ": "jwt"}))


# -- the Authorization header --------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "header",
    [
        None,
        "",
        "   ",
        "Bearer",
        "Bearer ",
        "Basic dXNlcjpwYXNz",
        "Token abc.def.ghi",
        "Bearer abc.def",
        "Bearer a.b.c.d",
        "Bearer a b.c.d",
        "Bearer " + "a" * 5000 + "." + "b" * 5000 + ".c",
        "Bearer !!!.???.sig",
        "Bearer bm90IGpzb24.e30.c2ln",  # header is not JSON
        "Bearer WzFd.e30.c2ln",  # header is a JSON array
    ],
)
def test_malformed_authorization_headers_are_refused(env: Env, header: str | None) -> None:
    with pytest.raises(AuthError):
        env.verifier.verify(header, AUD)
    assert env.jti.calls == []


def test_payload_that_is_not_a_json_object_is_refused(env: Env) -> None:
    head = {"alg": "RS384", "typ": "JWT", "kid": env.keys.rsa_kid}
    for payload in (b"not json", b"[1,2]", b'"text"'):
        token = f"{b64(head)}.{b64(payload)}.{b64(b'sig')}"
        env.refuse(token, match="payload")


# -- alg (C-04, C-09) ------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("alg", ["none", "None", "NONE", "nOnE"])
@pytest.mark.parametrize("signature", [b"", b"junk"])
def test_alg_none_is_refused(env: Env, alg: str, signature: bytes) -> None:
    token = raw_token({"alg": alg, "typ": "JWT", "kid": env.keys.rsa_kid}, claims(), lambda _: signature)
    env.refuse(token, match="alg")


@pytest.mark.parametrize("alg", ["HS256", "HS384", "HS512"])
def test_hmac_algorithms_are_refused(env: Env, alg: str) -> None:
    token = env.token(key="a-shared-secret-of-decent-length-0123456789", alg=alg)
    assert jwt.get_unverified_header(token)["alg"] == alg
    env.refuse(token, match=f"alg {alg} is refused")


@pytest.mark.parametrize("alg", ["HS256", "HS384", "HS512"])
@pytest.mark.parametrize("secret_form", ["pem", "jwk-json", "der"])
def test_rsa_public_key_as_hmac_secret_is_refused(env: Env, alg: str, secret_form: str) -> None:
    """The alg-confusion attack: HMAC-sign with the client's *public* key, hoping the verifier uses it as a secret."""
    k = env.keys
    secret = {
        "pem": k.public_pem,
        "jwk-json": json.dumps(k.rsa_jwk).encode(),
        "der": k.rsa.public_key().public_bytes(
            serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo
        ),
    }[secret_form]
    digest = {"HS256": hashlib.sha256, "HS384": hashlib.sha384, "HS512": hashlib.sha512}[alg]
    header = {"alg": alg, "typ": "JWT", "kid": k.rsa_kid}
    token = raw_token(header, claims(), lambda data: hmac.new(secret, data, digest).digest())
    env.refuse(token, match="refused")


def test_unsupported_algs_are_refused_without_echoing_them(env: Env) -> None:
    token = raw_token({"alg": "EdDSA-or-whatever", "typ": "JWT", "kid": env.keys.rsa_kid}, claims(), lambda d: d)
    err = env.refuse(token, match="unsupported alg")
    assert "whatever" not in err.reason


@pytest.mark.parametrize(("alg", "ec_key"), [("RS256", False), ("RS512", False), ("PS384", False)])
def test_other_asymmetric_algs_need_the_client_to_opt_in(keys: Keys, alg: str, ec_key: bool) -> None:
    jwks = jwks_for({"r": keys.rsa_pem, "p256": keys.ec256})  # no `alg` on these keys
    default = make_env(keys, [client(keys, jwks=jwks)])
    default.refuse(default.token(key=keys.rsa, kid="r", alg=alg), match=f"alg {alg} is not enabled")
    opted = make_env(keys, [client(keys, jwks=jwks, algorithms=["RS384", alg])])
    assert opted.verify(opted.token(key=keys.rsa, kid="r", alg=alg)).alg == alg


def test_es256_opt_in(keys: Keys) -> None:
    jwks = jwks_for({"p256": keys.ec256})
    env = make_env(keys, [client(keys, jwks=jwks, algorithms=["ES256"])])
    assert env.verify(env.token(key=keys.ec256, kid="p256", alg="ES256")).alg == "ES256"
    env.refuse(env.token(ec_key=True, kid="p256"), match="alg ES384 is not enabled")


def test_key_must_fit_the_alg(keys: Keys) -> None:
    """An RS384 header naming an EC key, ES384 naming a P-256 key, or a JWK pinned to another alg: refused."""
    jwks = {"keys": [keys.rsa_jwk, keys.ec_jwk, *jwks_for({"p256": keys.ec256})["keys"]]}
    env = make_env(keys, [client(keys, jwks=jwks, algorithms=["RS384", "ES384", "ES256", "RS512"])])
    env.refuse(env.token(kid=keys.ec_kid), match="cannot verify alg RS384")
    es384_by_p256 = ECAlgorithm(ECAlgorithm.SHA384)  # PyJWT's own signer refuses the mismatch
    header = {"alg": "ES384", "typ": "JWT", "kid": "p256"}
    env.refuse(raw_token(header, claims(), lambda d: es384_by_p256.sign(d, keys.ec256)), match="cannot verify alg")
    env.refuse(env.token(ec_key=True, kid=keys.rsa_kid), match="cannot verify")
    env.refuse(env.token(alg="RS512"), match="cannot verify alg RS512")  # the JWK says alg RS384


# -- header members (C-08) -------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("headers", "match"),
    [
        ({"typ": None}, "typ"),
        ({"typ": "at+jwt"}, "typ"),
        ({"typ": 1}, "typ"),
        ({"kid": None}, "kid"),
        ({"kid": ""}, "kid"),
        ({"kid": 7}, "kid"),
        ({"kid": "no-such-kid"}, "unknown kid"),
        ({"crit": ["exp"]}, "crit"),
    ],
)
def test_header_faults_are_refused(env: Env, headers: dict, match: str) -> None:
    env.refuse(env.token(headers=headers), match=match)


def test_missing_alg_is_refused(env: Env) -> None:
    token = raw_token({"typ": "JWT", "kid": env.keys.rsa_kid}, claims(), rs384(env.keys.rsa))
    env.refuse(token, match="alg")


# -- iss, aud (C-05, C-06) -------------------------------------------------------------------------------------------


def test_unknown_or_missing_iss_is_refused(env: Env) -> None:
    env.refuse(env.token(iss=OTHER_ISS), match="iss")
    env.refuse(env.token(iss=ISS + "/"), match="iss")
    env.refuse(env.token(extra={"iss": None}), match="iss")
    env.refuse(env.token(extra={"iss": [ISS]}), match="iss")


@pytest.mark.parametrize(
    "aud",
    [
        f"{BASE}/cds-services/another-service",  # wrong service path
        DISCOVERY,  # the discovery URL is not a service URL
        AUD + "/",  # trailing slash
        AUD.replace("https://", "http://"),
        AUD.upper(),
        f"{BASE}/cds-services/readmission-risk/feedback",
        [DISCOVERY, AUD + "/"],
        [],
        7,
        {"aud": AUD},
    ],
)
def test_aud_must_equal_the_endpoint(env: Env, aud: Any) -> None:
    env.refuse(env.token(aud=aud), match="aud")


def test_missing_aud_and_service_aud_on_discovery_are_refused(env: Env) -> None:
    env.refuse(env.token(extra={"aud": None}), match="aud")
    env.refuse(env.token(), DISCOVERY, match="aud")


# -- exp, nbf, iat (C-03, C-08) --------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("extra", "match"),
    [
        ({"exp": int(NOW) - 1}, "expired"),  # C-03: exp = now - 1
        ({"exp": int(NOW)}, "expired"),
        ({"exp": None}, "exp"),
        ({"exp": "tomorrow"}, "exp"),
        ({"exp": True}, "exp"),
        ({"exp": float("inf")}, "exp"),
        ({"nbf": int(NOW) + SKEW + 1}, "nbf"),
        ({"nbf": "now"}, "nbf"),
        ({"iat": int(NOW) + SKEW + 1, "exp": int(NOW) + SKEW + 100}, "iat"),
        ({"iat": None}, "iat"),
        ({"iat": "2025-06-15"}, "iat"),
        ({"iat": int(NOW), "exp": int(NOW) + 3601}, "longer than 3600"),
        ({"iat": int(NOW) - 3500, "exp": int(NOW) + 101}, "longer than 3600"),
        ({"iat": int(NOW) + 30, "exp": int(NOW) + 30}, "exp is not after iat"),
    ],
)
def test_time_claim_faults_are_refused(env: Env, extra: dict, match: str) -> None:
    env.refuse(env.token(extra=extra), match=match)


@pytest.mark.parametrize(
    "extra",
    [
        {"exp": int(NOW) + 1},
        {"nbf": int(NOW) + SKEW},  # a client clock up to the skew ahead of ours
        {"iat": int(NOW) + SKEW, "exp": int(NOW) + SKEW + 300},
        {"iat": int(NOW) - 3000, "exp": int(NOW) + 600},  # exactly the maximum lifetime
    ],
)
def test_time_claims_at_the_edges_are_accepted(env: Env, extra: dict) -> None:
    env.verify(env.token(extra=extra))


def test_expired_token_is_refused_with_the_issuer_for_the_audit(env: Env) -> None:
    token = env.token(extra={"exp": int(NOW) - 1})
    err = env.refuse(token, match="expired")
    assert (err.iss, err.jti) == (ISS, None)


def test_max_lifetime_is_configurable(keys: Keys) -> None:
    env = make_env(keys, max_lifetime_s=900)
    env.verify(env.token(lifetime_s=900))
    env.refuse(env.token(lifetime_s=901), match="longer than 900")


def test_a_token_ages_out_on_the_verifier_clock(env: Env) -> None:
    token = env.token(lifetime_s=120)
    env.clock.t += 120
    env.refuse(token, match="expired")


# -- tenant ----------------------------------------------------------------------------------------------------------


def test_tenant_allowlist(keys: Keys) -> None:
    env = make_env(keys, [client(keys, tenant=["org-1", "org-2"])])
    assert env.verify(env.token(extra={"tenant": "org-2"})).tenant == "org-2"
    env.refuse(env.token(), match="tenant")
    env.refuse(env.token(extra={"tenant": "org-3"}), match="tenant")
    env.refuse(env.token(extra={"tenant": ["org-1"]}), match="tenant")
    single = make_env(keys, [client(keys, tenant="org-1")])
    single.verify(single.token(extra={"tenant": "org-1"}))


def test_any_string_tenant_passes_when_none_is_configured(env: Env) -> None:
    assert env.verify(env.token(extra={"tenant": "whatever"})).tenant == "whatever"
    env.refuse(env.token(extra={"tenant": 12}), match="tenant")


# -- signature (C-08) ------------------------------------------------------------------------------------------------


def test_signature_by_another_key_under_the_clients_kid_is_refused(env: Env) -> None:
    env.refuse(env.token(key=env.keys.other_rsa), match="signature")


def test_payload_swapped_under_a_valid_signature_is_refused(env: Env) -> None:
    a = env.token(jti="a").split(".")
    b = env.token(jti="b", extra={"sub": "x"}).split(".")
    env.refuse(f"{a[0]}.{b[1]}.{a[2]}", match="signature")
    env.refuse(f"{a[0]}.{a[1]}.", match="signature")


def test_processing_order_follows_the_spec(keys: Keys) -> None:
    """iss → aud → exp → nbf/iat → tenant → signature → jti; a failure names the first check that failed."""
    env = make_env(keys, [client(keys, tenant="org-1")])
    bad = {"exp": int(NOW) - 1}
    env.refuse(env.token(iss=OTHER_ISS, aud=DISCOVERY, extra=bad), match="iss")
    env.refuse(env.token(aud=DISCOVERY, extra=bad), match="aud")
    env.refuse(env.token(extra=bad | {"tenant": "org-9"}), match="expired")
    env.refuse(env.token(extra={"nbf": int(NOW) + 999, "tenant": "org-9"}), match="nbf")
    env.refuse(env.token(key=keys.other_rsa, extra={"tenant": "org-9"}), match="tenant")
    good = env.token(jti="once", extra={"tenant": "org-1"})
    env.verify(good)
    env.refuse(env.token(key=keys.other_rsa, jti="once", extra={"tenant": "org-1"}), match="signature")
    env.refuse(good, match="replayed")


# -- Hypothesis: any mutation of a valid token is refused (C-08) ---------------------------------------------------

_NOT_STR = st.one_of(
    st.integers(),
    st.booleans(),
    st.lists(st.integers(), max_size=2),
    st.dictionaries(st.text(max_size=3), st.integers(), max_size=2),
)
_NOT_TIME = st.one_of(
    st.text(max_size=10),
    st.booleans(),
    st.lists(st.integers(), max_size=2),
    st.just(float("nan")),
    st.just(float("inf")),
    st.just(-float("inf")),
)
_BAD_CLAIMS = st.one_of(
    st.tuples(st.just("iss"), st.one_of(st.text().filter(lambda s: s != ISS), _NOT_STR)),
    st.tuples(
        st.just("aud"),
        st.one_of(
            st.text().filter(lambda s: s != AUD), _NOT_STR, st.lists(st.text().filter(lambda s: s != AUD), max_size=3)
        ),
    ),
    st.tuples(
        st.just("exp"),
        st.one_of(
            st.integers(max_value=int(NOW)),
            st.floats(max_value=NOW),
            st.integers(min_value=int(NOW) + 3601, max_value=2**60),
            _NOT_TIME,
        ),
    ),
    st.tuples(
        st.just("iat"),
        st.one_of(
            st.integers(min_value=int(NOW) + SKEW + 1, max_value=2**60),
            st.integers(max_value=int(NOW) + 300 - 3601),
            _NOT_TIME,
        ),
    ),
    st.tuples(st.just("nbf"), st.one_of(st.integers(min_value=int(NOW) + SKEW + 1), _NOT_TIME)),
    st.tuples(st.just("jti"), st.one_of(st.just(""), st.text(min_size=257, max_size=300), _NOT_STR)),
    st.tuples(st.just("tenant"), st.one_of(st.text().filter(lambda s: s != "org-1"), _NOT_STR)),
    st.tuples(st.just("sub"), _NOT_STR),
)
_BAD_HEADERS = st.one_of(
    st.tuples(st.just("typ"), st.one_of(st.text().filter(lambda s: s.upper() != "JWT"), _NOT_STR)),
    st.tuples(st.just("kid"), st.one_of(st.text(max_size=10), _NOT_STR)),  # the real kids have 16 characters
    st.tuples(st.just("jku"), st.one_of(st.text(), st.just(METADATA), _NOT_STR)),
    st.tuples(st.just("crit"), st.lists(st.text(), max_size=2)),
)


@pytest.fixture(scope="module")
def tenant_env(keys: Keys) -> Env:
    return make_env(keys, [client(keys, tenant="org-1")])


def _fresh(env: Env) -> Env:
    return make_env(env.keys, list(env.verifier.clients.values()))


@FAST
@given(name=st.sampled_from(["iss", "aud", "exp", "iat", "jti", "tenant"]), ec_key=st.booleans())
def test_deleting_any_required_claim_is_refused(tenant_env: Env, name: str, ec_key: bool) -> None:
    env = _fresh(tenant_env)
    env.refuse(env.token(ec_key=ec_key, extra={"tenant": "org-1", name: None}))


@FAST
@given(mutation=_BAD_CLAIMS, ec_key=st.booleans())
def test_mutating_any_claim_to_an_invalid_value_is_refused(tenant_env: Env, mutation: tuple, ec_key: bool) -> None:
    name, value = mutation
    env = _fresh(tenant_env)
    env.refuse(env.token(ec_key=ec_key, extra={"tenant": "org-1", name: value}))


@FAST
@given(mutation=_BAD_HEADERS, ec_key=st.booleans())
def test_mutating_any_header_member_is_refused(tenant_env: Env, mutation: tuple, ec_key: bool) -> None:
    name, value = mutation
    env = _fresh(tenant_env)
    env.refuse(env.token(ec_key=ec_key, extra={"tenant": "org-1"}, headers={name: value}))


_JSON = st.recursive(
    st.none() | st.booleans() | st.integers() | st.text(max_size=5), lambda c: st.lists(c, max_size=2), max_leaves=4
)


@FAST
@given(
    changes=st.dictionaries(
        st.sampled_from(["iss", "aud", "exp", "iat", "jti", "sub", "nbf", "tenant", "x"]), _JSON, min_size=1, max_size=3
    ),
    ec_key=st.booleans(),
)
def test_any_payload_change_under_the_original_signature_is_refused(
    tenant_env: Env, changes: dict, ec_key: bool
) -> None:
    env = _fresh(tenant_env)
    token = env.token(ec_key=ec_key, extra={"tenant": "org-1", "nbf": int(NOW) - 10})
    head, body, sig = token.split(".")
    payload = json.loads(base64.urlsafe_b64decode(body + "=" * (-len(body) % 4))) | changes
    forged = b64(payload)
    assume(forged != body)
    env.refuse(f"{head}.{forged}.{sig}")


@FAST
@given(data=st.data(), ec_key=st.booleans())
def test_any_signature_change_is_refused(tenant_env: Env, data: st.DataObject, ec_key: bool) -> None:
    env = _fresh(tenant_env)
    head, body, sig = env.token(ec_key=ec_key, extra={"tenant": "org-1"}).split(".")
    i = data.draw(st.integers(0, len(sig) - 2))  # the last character carries padding bits
    alphabet = "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-_"
    c = data.draw(st.sampled_from(alphabet))  # no filter on the signature: ECDSA's differs at each signing, and a
    if c == sig[i]:  # draw that depended on it would make Hypothesis's replay of a case draw differently (flaky)
        c = alphabet[(alphabet.index(c) + 1) % len(alphabet)]
    env.refuse(f"{head}.{body}.{sig[:i]}{c}{sig[i + 1 :]}", match="signature")


# -- jti replay (C-07) -----------------------------------------------------------------------------------------------


def test_same_token_twice_is_a_replay(env: Env) -> None:
    token = env.token(jti="j-1")
    env.verify(token)
    err = env.refuse(token, match="replayed")
    assert (err.iss, err.jti) == (ISS, "j-1")


def test_same_jti_in_another_token_is_a_replay(env: Env) -> None:
    env.verify(env.token(jti="j-2"))
    env.refuse(env.token(jti="j-2", ec_key=True), match="replayed")


def test_after_the_ttl_a_fresh_token_is_accepted(env: Env) -> None:
    first = env.token(jti="j-3", lifetime_s=300)
    env.verify(first)
    env.clock.t += 301
    env.refuse(first, match="expired")  # the old token is dead on its own
    env.verify(env.token())  # a fresh token
    env.verify(env.token(jti="j-3"))  # the store forgot j-3 once it could no longer be accepted
    assert env.jti.calls[0][2] == datetime.fromtimestamp(NOW + 300, UTC)


@pytest.mark.parametrize("threads", [2, 16])
def test_simultaneous_replays_let_exactly_one_through(env: Env, threads: int) -> None:
    token = env.token(jti=f"race-{threads}")
    barrier = threading.Barrier(threads)
    outcomes: list[str] = []
    lock = threading.Lock()

    def call() -> None:
        barrier.wait()
        try:
            env.verify(token)
            result = "ok"
        except AuthError as exc:
            result = exc.reason
        with lock:
            outcomes.append(result)

    workers = [threading.Thread(target=call) for _ in range(threads)]
    for w in workers:
        w.start()
    for w in workers:
        w.join()
    assert outcomes.count("ok") == 1
    assert all("replayed" in r for r in outcomes if r != "ok")


def test_a_failing_jti_store_is_not_an_authentication_failure(keys: Keys) -> None:
    def broken(iss: str, jti: str, exp: datetime) -> bool:
        raise RuntimeError("database is down")

    verifier = TokenVerifier([client(keys)], claim_jti=broken, clock=Clock())
    token = sign_request_token(keys.rsa_pem, keys.rsa_kid, ISS, AUD, now=NOW)
    with pytest.raises(RuntimeError, match="database is down"):
        verifier.verify(f"Bearer {token}", AUD)


# -- jku: allowlist, no SSRF, a real loopback JWKS (C-06) ----------------------------------------------------------


class Counting:
    """An httpx MockTransport that records every request and answers with `respond`."""

    def __init__(self, respond: Any = None) -> None:
        self.requests: list[httpx.Request] = []
        self.respond = respond or (lambda request: httpx.Response(404))

    def __call__(self, request: httpx.Request) -> httpx.Response:
        self.requests.append(request)
        return self.respond(request)

    def client(self) -> httpx.Client:
        return httpx.Client(transport=httpx.MockTransport(self))


@pytest.mark.parametrize("jku", [METADATA, "http://127.0.0.1:1/jwks.json", JKU + "?x=1", JKU.upper(), "", 5])
def test_non_allowlisted_jku_is_refused_without_any_request(keys: Keys, jku: Any) -> None:
    mock = Counting(lambda request: httpx.Response(200, json=jwks_for({keys.rsa_kid: keys.rsa_pem})))
    env = make_env(keys, [client(keys, jwks=None, jku=JKU)], http=mock.client())
    env.refuse(env.token(headers={"jku": jku}), match="jku")
    assert mock.requests == []


def test_jku_on_a_client_with_out_of_band_keys_is_refused_without_any_request(keys: Keys) -> None:
    mock = Counting()
    env = make_env(keys, [client(keys)], http=mock.client())
    env.refuse(env.token(headers={"jku": METADATA}), match="jku")
    env.refuse(env.token(headers={"jku": JKU}), match="jku")
    assert mock.requests == []


def test_another_clients_jku_is_refused_without_any_request(keys: Keys) -> None:
    mock = Counting()
    other = TrustedClient(iss=OTHER_ISS, jku="https://other-ehr.example.net/jwks.json")
    env = make_env(keys, [client(keys, jwks=None, jku=JKU), other], http=mock.client())
    env.refuse(env.token(headers={"jku": other.jku}), match="jku")
    assert mock.requests == []


class JwksServer:
    """A real HTTP server on 127.0.0.1 serving a JWK Set at /jwks.json, counting requests."""

    def __init__(self, jwks: dict) -> None:
        self.jwks = jwks
        self.status = 200
        self.delay = 0.0
        self.hits = 0
        owner = self

        class Handler(BaseHTTPRequestHandler):
            def do_GET(self) -> None:
                owner.hits += 1
                time.sleep(owner.delay)
                body = json.dumps(owner.jwks).encode()
                self.send_response(owner.status if self.path == "/jwks.json" else 404)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                self.wfile.write(body)

            def log_message(self, *args: Any) -> None:
                pass

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}/jwks.json"
        self.thread = threading.Thread(target=self.server.serve_forever, args=(0.02,), daemon=True)

    def __enter__(self) -> JwksServer:
        self.thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.server.shutdown()
        self.server.server_close()


@pytest.fixture
def jwks_server(keys: Keys) -> Iterator[JwksServer]:
    with JwksServer({"keys": [keys.rsa_jwk]}) as server:
        yield server


@pytest.fixture
def jku_env(keys: Keys, jwks_server: JwksServer) -> Iterator[Env]:
    env = make_env(keys, [client(keys, jwks=None, jku=jwks_server.url)])  # the verifier's own httpx client
    yield env
    env.verifier.close()


def test_allowlisted_jku_is_fetched_once_and_cached(jku_env: Env, jwks_server: JwksServer) -> None:
    assert jku_env.verify(jku_env.token(headers={"jku": jwks_server.url})).kid == jku_env.keys.rsa_kid
    jku_env.verify(jku_env.token())  # no jku header: the configured one is used
    jku_env.verify(jku_env.token(headers={"jku": jwks_server.url}))
    assert jwks_server.hits == 1


def test_unknown_kid_refetches_at_most_once_a_minute(keys: Keys, jku_env: Env, jwks_server: JwksServer) -> None:
    jku_env.verify(jku_env.token())
    assert jwks_server.hits == 1
    # the client rotates in an EC key: the first token naming it triggers one refetch (the key is there)
    jwks_server.jwks = {"keys": [keys.rsa_jwk, keys.ec_jwk]}
    jku_env.clock.t += 61
    jku_env.verify(jku_env.token(ec_key=True))
    assert jwks_server.hits == 2
    # a flood of unknown kids right after: at most one fetch per minute
    for i in range(5):
        jku_env.refuse(jku_env.token(kid=f"unknown-{i}"), match="unknown kid")
    assert jwks_server.hits == 2
    jku_env.clock.t += 59
    jku_env.refuse(jku_env.token(kid="unknown-again"), match="unknown kid")
    assert jwks_server.hits == 2
    jku_env.clock.t += 2
    jku_env.refuse(jku_env.token(kid="unknown-later"), match="unknown kid")
    assert jwks_server.hits == 3
    jku_env.verify(jku_env.token())  # known keys keep working from the cache
    assert jwks_server.hits == 3


def test_withdrawn_key_stops_working_after_the_cache_ttl(keys: Keys, jku_env: Env, jwks_server: JwksServer) -> None:
    jku_env.verify(jku_env.token())
    jwks_server.jwks = {"keys": [keys.ec_jwk]}
    jku_env.clock.t += auth.JWKS_TTL_S + 1
    jku_env.refuse(jku_env.token(), match="unknown kid")
    jku_env.verify(jku_env.token(ec_key=True))
    assert jwks_server.hits == 2


def test_stale_keys_survive_a_failed_refresh(jku_env: Env, jwks_server: JwksServer) -> None:
    jku_env.verify(jku_env.token())
    jwks_server.status = 503
    jku_env.clock.t += auth.JWKS_TTL_S + 1
    jku_env.verify(jku_env.token())
    assert jwks_server.hits == 2


def test_concurrent_first_calls_share_one_fetch(jku_env: Env, jwks_server: JwksServer) -> None:
    jwks_server.delay = 0.2
    tokens = [jku_env.token() for _ in range(8)]
    results: list[str] = []

    def call(token: str) -> None:
        try:
            jku_env.verify(token)
            results.append("ok")
        except AuthError as exc:
            results.append(exc.reason)

    workers = [threading.Thread(target=call, args=(t,)) for t in tokens]
    for w in workers:
        w.start()
    for w in workers:
        w.join()
    assert results == ["ok"] * 8
    assert jwks_server.hits == 1


def test_unreachable_jku_is_an_auth_error(keys: Keys) -> None:
    closed = JwksServer({"keys": []})  # never started: its port refuses connections once closed
    url = closed.url
    closed.server.server_close()
    env = make_env(keys, [client(keys, jwks=None, jku=url)])
    env.refuse(env.token(), match="could not be fetched")
    env.verifier.close()


def _huge(request: httpx.Request) -> httpx.Response:
    return httpx.Response(200, content=b'{"keys": [' + b" " * (auth.JWKS_MAX_BYTES + 10) + b"]}")


def _raise(exc: Exception):
    def respond(request: httpx.Request) -> httpx.Response:
        raise exc

    return respond


@pytest.mark.parametrize(
    "respond",
    [
        lambda r: httpx.Response(500, json={"keys": []}),
        lambda r: httpx.Response(404),
        lambda r: httpx.Response(200, content=b"<html>not json</html>"),
        lambda r: httpx.Response(200, json=[1, 2]),
        lambda r: httpx.Response(200, json={"keys": "nope"}),
        lambda r: httpx.Response(200, json={"keys": [{"kty": "oct", "k": "c2VjcmV0", "kid": "x"}]}),
        lambda r: httpx.Response(302, headers={"Location": METADATA}),
        _huge,
        _raise(httpx.ConnectError("refused")),
        _raise(httpx.ReadTimeout("slow")),
        _raise(RuntimeError("a buggy transport")),
    ],
    ids=["500", "404", "html", "list", "keys-str", "oct-only", "redirect", "huge", "connect", "timeout", "bug"],
)
def test_jwks_fetch_failures_are_auth_errors(keys: Keys, respond: Any, caplog: pytest.LogCaptureFixture) -> None:
    mock = Counting(respond)
    env = make_env(keys, [client(keys, jwks=None, jku=JKU)], http=mock.client())
    token = env.token(headers={"jku": JKU})
    with caplog.at_level(logging.DEBUG):
        env.refuse(token, match="could not be fetched")
    assert [str(r.url) for r in mock.requests] == [JKU]  # one request, to the allowlisted URL; no redirect followed
    assert token not in caplog.text


def test_fetched_jwks_skips_unusable_keys_and_ambiguous_kids(keys: Keys) -> None:
    good = dict(keys.rsa_jwk)
    dup = jwks_for({"dup": keys.ec_pem})["keys"][0]
    body = {
        "keys": [
            {"kty": "oct", "k": "c2VjcmV0", "kid": "sym"},
            {"kty": "OKP", "kid": "ed"},
            good,
            dup,
            dup,
            {**keys.ec_jwk, "use": "enc"},
        ]
    }
    mock = Counting(lambda r: httpx.Response(200, json=body))
    env = make_env(keys, [client(keys, jwks=None, jku=JKU)], http=mock.client())
    env.verify(env.token())
    env.refuse(env.token(ec_key=True, kid="dup"), match="unknown kid")


# -- no token in logs or errors (C-16) ------------------------------------------------------------------------------


def test_tokens_never_reach_logs_or_error_messages(
    keys: Keys, jwks_server: JwksServer, caplog: pytest.LogCaptureFixture
) -> None:
    env = make_env(keys, [client(keys), TrustedClient(iss=OTHER_ISS, jku=jwks_server.url)])
    other = Env(env.verifier, env.jti, env.clock, keys)
    jwks_server.status = 500
    tokens = [
        env.token(),
        env.token(extra={"exp": int(NOW) - 1}),
        env.token(aud=DISCOVERY),
        env.token(key=keys.other_rsa),
        env.token(headers={"jku": METADATA}),
        env.token(alg="HS256", key="shared-secret-shared-secret-shared-secret"),
        env.token(kid="nope"),
        other.token(iss=OTHER_ISS),  # the JWKS fetch fails and is logged
        env.token(extra={"iat": "x"}),
    ]
    errors: list[AuthError] = []
    with caplog.at_level(logging.DEBUG):
        env.verify(tokens[0])
        for token in tokens:  # the first is now a replay
            with pytest.raises(AuthError) as info:
                env.verify(token)
            errors.append(info.value)
        with pytest.raises(AuthError) as info:
            env.verifier.verify("Bearer " + tokens[0][:-3], AUD)
        errors.append(info.value)
    assert any("could not be fetched" in r.getMessage() for r in caplog.records)
    logged = caplog.text + "".join(r.getMessage() + repr(r.args) for r in caplog.records)
    for token in tokens:
        for part in [token, *token.split(".")]:
            assert part not in logged
            for err in errors:
                assert part not in str(err) and part not in repr(err) and part not in repr(err.args)
    assert "eyJ" not in logged
    for err in errors:
        assert "eyJ" not in str(err)
        assert (err.__cause__ is None and err.__suppress_context__) or err.__context__ is None


def test_the_module_logs_nothing_about_headers() -> None:
    """The only log call is the JWKS fetch failure, and it names the issuer, the URL and the reason."""
    tree = ast.parse(Path(auth.__file__).read_text())
    calls = [
        node
        for node in ast.walk(tree)
        if isinstance(node, ast.Call)
        and isinstance(node.func, ast.Attribute)
        and isinstance(node.func.value, ast.Name)
        and node.func.value.id in ("log", "logging")
        and node.func.attr != "getLogger"
    ]
    assert len(calls) == 1
    logged = ast.unparse(calls[0]).lower()
    assert "token" not in logged and "header" not in logged and "authorization" not in logged


# -- the administrator credential (C-19) ----------------------------------------------------------------------------


SECRET = "s3cr3t-admin-credential-not-a-jwt"


def test_admin_credential_is_accepted() -> None:
    admin = AdminAuth(AdminConfig(token_sha256=hashlib.sha256(SECRET.encode()).hexdigest()))
    assert admin.check(f"Bearer {SECRET}") == "admin"
    assert admin.check(f"bearer  {SECRET}") == "admin"
    named = AdminAuth(AdminConfig(token_sha256=hash_admin_token(SECRET).upper(), name="ops-oncall"))
    assert named.check(f"Bearer {SECRET}") == "ops-oncall"


@pytest.mark.parametrize(
    "header", [None, "", "Bearer", f"Basic {SECRET}", f"Bearer {SECRET}x", f"Bearer {SECRET[:-1]}", SECRET]
)
def test_wrong_admin_credentials_are_refused(header: str | None) -> None:
    admin = AdminAuth(AdminConfig(token_sha256=hash_admin_token(SECRET)))
    with pytest.raises(AuthError) as info:
        admin.check(header)
    assert SECRET not in str(info.value)


def test_admin_comparison_is_constant_time(monkeypatch: pytest.MonkeyPatch) -> None:
    seen: list[tuple[bytes, bytes]] = []
    real = hmac.compare_digest

    def spy(a: bytes, b: bytes) -> bool:
        seen.append((a, b))
        return real(a, b)

    monkeypatch.setattr(auth.hmac, "compare_digest", spy)
    AdminAuth(AdminConfig(token_sha256=hash_admin_token(SECRET))).check(f"Bearer {SECRET}")
    assert seen == [(hashlib.sha256(SECRET.encode()).digest(),) * 2]


def test_ehr_jwts_never_pass_as_admin(env: Env) -> None:
    token = env.token()
    env.verify(token)  # a perfectly valid EHR token...
    admin = AdminAuth(AdminConfig(token_sha256=hash_admin_token(SECRET)))
    with pytest.raises(AuthError):
        admin.check(f"Bearer {token}")
    # ...even if someone configured the hash of that very JWT as the administrator credential
    pinned = AdminAuth(AdminConfig(token_sha256=hash_admin_token(token)))
    with pytest.raises(AuthError):
        pinned.check(f"Bearer {token}")


@pytest.mark.parametrize("header", [None, f"Bearer {SECRET}", "Bearer anything"])
def test_without_admin_config_every_admin_call_is_refused(header: str | None) -> None:
    with pytest.raises(AuthError, match="no administrator credential"):
        AdminAuth(None).check(header)


def test_new_admin_token_round_trips() -> None:
    secret, digest = new_admin_token()
    assert len(secret) >= 40 and digest == hashlib.sha256(secret.encode()).hexdigest()
    assert AdminAuth(AdminConfig(token_sha256=digest)).check(f"Bearer {secret}") == "admin"


# -- the helpers -----------------------------------------------------------------------------------------------------


def test_jwks_for_publishes_only_public_halves(keys: Keys) -> None:
    pub_pem = keys.rsa.public_key().public_bytes(
        serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo
    )
    jwks = jwks_for({"a": keys.rsa_pem, "b": keys.ec_pem.decode(), "c": keys.ec256, "d": pub_pem, "e": keys.rsa})
    assert [k["kid"] for k in jwks["keys"]] == ["a", "b", "c", "d", "e"]
    assert [k["kty"] for k in jwks["keys"]] == ["RSA", "EC", "EC", "RSA", "RSA"]
    assert all(not {"d", "p", "q"} & k.keys() and k["use"] == "sig" for k in jwks["keys"])
    assert jwks["keys"][0]["n"] == keys.rsa_jwk["n"]
    with pytest.raises(TypeError):
        jwks_for({"x": object()})


def test_sign_request_token_shape(keys: Keys) -> None:
    token = sign_request_token(
        keys.ec_pem,
        "k1",
        ISS,
        AUD,
        alg="ES384",
        lifetime_s=60,
        jti="j",
        now=NOW,
        extra={"tenant": "t", "jti": "j2"},
        headers={"jku": JKU},
    )
    head = jwt.get_unverified_header(token)
    body = jwt.decode(token, options={"verify_signature": False})
    assert head == {"alg": "ES384", "typ": "JWT", "kid": "k1", "jku": JKU}
    assert body == {"iss": ISS, "aud": AUD, "iat": int(NOW), "exp": int(NOW) + 60, "jti": "j2", "tenant": "t"}
    fresh = jwt.decode(sign_request_token(keys.rsa_pem, "k", ISS, AUD), options={"verify_signature": False})
    assert uuid.UUID(fresh["jti"]) and abs(fresh["iat"] - time.time()) < 5 and fresh["exp"] - fresh["iat"] == 300
