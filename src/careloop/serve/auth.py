"""Who may call the service: the EHR's signed JWT bearer on every CDS Hooks call, and the administrator credential.

CDS Hooks 2.0 ("Trusting CDS Clients") and its best practices, checked in the order they give:

1. `Authorization: Bearer <JWS>`, header `typ` JWT, a `kid`, and `alg` RS384 or ES384 (a client entry may opt into
   other RSA/EC algorithms; `none` and every HMAC algorithm are refused outright, so an RSA public key can never
   be used as an HMAC secret);
2. `iss` on the allowlist; a `jku` header, if any, equal to that client's allowlisted `jku` (checked before any
   outbound request, so a token cannot make the service fetch an arbitrary URL);
3. `aud` equal to the endpoint URL (a string, or an array containing it), compared as strings;
4. `exp` not past, `nbf` (Epic sends it) not in the future, `iat` not in the future and `exp - iat` at most the
   maximum lifetime (one hour). The clock skew forgives a client clock running ahead of ours (`nbf`, `iat`);
   `exp` is honoured exactly, so a token is never used after its issuer said it ends (`exp = now - 1` fails);
5. `tenant` on the client's allowlist when it has one;
6. the signature, with the client's key of that `kid` (inline, from a file, or from its `jku`, cached, refetched
   on an unknown `kid` at most once a minute);
7. `jti` never seen: `claim_jti(iss, jti, until)` records it and answers False on a replay.

Every failure is an `AuthError` whose reason is for the audit log; the HTTP answer is a bare 401. Tokens are
never logged, stored or quoted: reasons name the check that failed, never the token or a part of it.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import json
import logging
import math
import re
import secrets
import threading
import time
import uuid
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

import httpx
from jwt.algorithms import ECAlgorithm, RSAAlgorithm, get_default_algorithms

from careloop.errors import CareloopError
from careloop.serve.config import CURVES, AdminConfig, TrustedClient, check_jwk, check_jwks, without_userinfo

log = logging.getLogger(__name__)

ASYMMETRIC = frozenset({"RS256", "RS384", "RS512", "PS256", "PS384", "PS512", "ES256", "ES384", "ES512"})
MAX_TOKEN_CHARS = 8192
JWKS_REFETCH_S = 60.0
"""A `jku` client's JWKS is fetched at most once per this many seconds (on an unknown `kid` or a stale cache)."""
JWKS_TTL_S = 3600.0
"""Fetched keys are refreshed after this long, so that a key the client withdrew stops working."""
JWKS_TIMEOUT_S = 2.0
JWKS_MAX_BYTES = 256 * 1024

_BEARER = re.compile(r"Bearer +(\S+)", re.IGNORECASE)
_ALGORITHMS = get_default_algorithms()  # PyJWT's algorithm objects, by JWS name
_COMPACT = re.compile(r"([A-Za-z0-9_-]+)\.([A-Za-z0-9_-]+)\.([A-Za-z0-9_-]*)")
_NAMED_ALGS = ASYMMETRIC | {"none", "HS256", "HS384", "HS512"}


class WouldBlock(Exception):
    """`verify(..., block=False)` would have to fetch a client's JWKS (or wait for another thread's fetch): the
    caller retries on a thread, so that an event loop never waits on a key URL."""


class AuthError(CareloopError):
    """A call is not authenticated. `reason` is for the audit log only; the caller gets a bare 401.

    `iss` is the token's issuer when it is on the allowlist (claimed, not proven unless the failure came after
    the signature check), `jti` is set when the signature verified (a replay).
    """

    def __init__(self, reason: str, *, iss: str | None = None, jti: str | None = None,
                 forbidden: bool = False) -> None:
        super().__init__(reason)
        self.reason = reason
        self.iss = iss
        self.forbidden = forbidden  # authenticated as something that may never do this (403)
        self.jti = jti


@dataclass(frozen=True)
class Claims:
    """What a verified CDS client token says (safe to audit: no token material)."""

    iss: str
    sub: str | None
    jti: str
    exp: datetime
    iat: datetime
    tenant: str | None
    kid: str
    alg: str
    aud: str


# -- the EHR's bearer JWT -------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class _Key:
    kty: str
    crv: str | None
    alg: str | None
    public: Any  # a cryptography public key

    @classmethod
    def from_jwk(cls, jwk: dict[str, Any]) -> _Key:
        algo = RSAAlgorithm if jwk["kty"] == "RSA" else ECAlgorithm
        return cls(jwk["kty"], jwk.get("crv"), jwk.get("alg"), algo.from_jwk(jwk))

    def fits(self, alg: str) -> bool:
        if self.alg is not None and self.alg != alg:
            return False
        if alg.startswith(("RS", "PS")):
            return self.kty == "RSA"
        return self.kty == "EC" and self.crv == CURVES.get(alg)


class _FetchError(Exception):
    pass


class _KeySet:
    """One client's public keys: fixed (inline or file), or fetched from its `jku` and cached."""

    def __init__(self, client: TrustedClient, verifier: TokenVerifier) -> None:
        self.client = client
        self.verifier = verifier
        self.lock = threading.Lock()
        self.keys: dict[str, _Key] = {}
        self.fetched_at: float | None = None
        self.attempted_at: float | None = None
        self.inflight: threading.Event | None = None
        self.last_error: str | None = None
        jwks = client.static_jwks()
        if jwks is not None:
            self.keys = {kid: _Key.from_jwk(jwk) for kid, jwk in check_jwks(jwks).items()}

    def get(self, kid: str, block: bool = True) -> _Key:
        if self.client.jku is None:
            if (key := self.keys.get(kid)) is None:
                raise AuthError("unknown kid: no key of the client has it", iss=self.client.iss)
            return key
        v = self.verifier
        now = v.clock()
        with self.lock:
            key = self.keys.get(kid)
            if key is not None and self.fetched_at is not None and now - self.fetched_at < v.jwks_ttl_s:
                return key
            event = self.inflight
            fetcher = event is None and (self.attempted_at is None or now - self.attempted_at >= v.jwks_refetch_s)
            if not block and (fetcher or event is not None):
                raise WouldBlock
            if fetcher:
                self.attempted_at = now
                event = self.inflight = threading.Event()
        if fetcher:
            assert event is not None
            keys: dict[str, _Key] | None = None
            error: str | None = None
            try:
                keys = self.fetch()
            except _FetchError as exc:
                error = str(exc)
            except Exception as exc:  # never leave the fetch marked in flight
                error = type(exc).__name__
            finally:
                with self.lock:
                    if keys is not None:
                        self.keys, self.fetched_at = keys, now
                    self.last_error = error
                    self.inflight = None
                event.set()
            if error is not None:
                log.warning("JWKS of %s from %s could not be fetched: %s", self.client.iss,
                            without_userinfo(self.client.jku or ""), error)
        elif event is not None:
            event.wait(v.jwks_timeout_s + 1)
        with self.lock:
            key = self.keys.get(kid)
            if key is not None:
                return key
            if not self.keys and self.last_error is not None:
                raise AuthError(f"the client's JWKS could not be fetched ({self.last_error})", iss=self.client.iss)
            raise AuthError("unknown kid: not in the client's JWKS", iss=self.client.iss)

    def fetch(self) -> dict[str, _Key]:
        url = self.client.jku
        assert url is not None
        body = bytearray()
        try:
            http = self.verifier.http_client()
            headers = {"Accept": "application/json"}
            timeout = self.verifier.jwks_timeout_s
            deadline = time.monotonic() + timeout
            with http.stream("GET", url, headers=headers, timeout=timeout, follow_redirects=False) as resp:
                if resp.status_code != 200:
                    raise _FetchError(f"HTTP {resp.status_code}")
                for chunk in resp.iter_bytes():
                    body += chunk
                    if len(body) > JWKS_MAX_BYTES:
                        raise _FetchError(f"the response is larger than {JWKS_MAX_BYTES // 1024} KiB")
                    if time.monotonic() > deadline:
                        raise _FetchError(f"the response took longer than {timeout:g} s")
        except _FetchError:
            raise
        except Exception as exc:  # transport errors, and anything a custom transport raises
            raise _FetchError(type(exc).__name__) from None
        try:
            data = json.loads(body)
        except ValueError:
            raise _FetchError("the response is not JSON") from None
        if not isinstance(data, dict) or not isinstance(data.get("keys"), list):
            raise _FetchError('the response is not a JWK Set (no "keys" list)')
        keys: dict[str, _Key] = {}
        ambiguous: set[str] = set()
        for jwk in data["keys"]:
            try:
                kid = check_jwk(jwk)
                if kid is None:
                    continue
                key = _Key.from_jwk(jwk)
            except Exception:
                continue  # one unusable key (an unsupported type, private material) does not spoil the others
            if kid in keys:
                ambiguous.add(kid)
            keys[kid] = key
        for kid in ambiguous:
            del keys[kid]  # two keys under one kid: use neither
        if not keys:
            raise _FetchError("the JWK Set has no usable signing key")
        return keys


class RecentJti:
    """This process's memory of the jti it accepted, until each token expires: a replay to the same process is
    refused before any work. It is a fast path, not the authority: the service also claims every jti in the state
    store, in the transaction that writes the call's audit record, which refuses a replay to another process.
    Bounded (`max_entries`): the oldest are forgotten first, and the store still remembers them."""

    def __init__(self, max_entries: int = 20_000, clock: Callable[[], float] = time.time) -> None:
        self.max_entries = max_entries
        self.clock = clock
        self._seen: dict[tuple[str, str], float] = {}
        self._lock = threading.Lock()

    def __len__(self) -> int:
        return len(self._seen)

    def claim(self, iss: str, jti: str, expires_at: datetime) -> bool:
        key, now = (iss, jti), self.clock()
        with self._lock:
            until = self._seen.get(key)
            if until is not None and until > now:
                return False
            self._seen[key] = expires_at.timestamp()
            if len(self._seen) > self.max_entries:
                self._forget(now)
        return True

    def _forget(self, now: float) -> None:
        self._seen = {k: t for k, t in self._seen.items() if t > now}
        extra = len(self._seen) - self.max_entries * 3 // 4
        if extra > 0:  # still full of live tokens: forget the oldest quarter
            for k in list(self._seen)[:extra]:
                del self._seen[k]


class TokenVerifier:
    """Verifies the `Authorization` header of CDS Hooks calls against the trusted clients (see the module docs).

    `claim_jti(iss, jti, exp)` must atomically record the pair and return False if it was already recorded;
    `exp` is when the token stops being acceptable anyway, after which the record may be dropped. An exception
    it raises is not an authentication failure and propagates as is (the app answers 5xx, never a 200).
    `http` is the client used to fetch `jku` JWK Sets (by default one of its own); `clock` returns epoch seconds.
    """

    def __init__(
        self,
        clients: Iterable[TrustedClient],
        *,
        claim_jti: Callable[[str, str, datetime], bool],
        max_lifetime_s: float = 3600,
        skew_s: float = 60,
        http: httpx.Client | None = None,
        clock: Callable[[], float] = time.time,
        jwks_refetch_s: float = JWKS_REFETCH_S,
        jwks_ttl_s: float = JWKS_TTL_S,
        jwks_timeout_s: float = JWKS_TIMEOUT_S,
    ) -> None:
        self.claim_jti = claim_jti
        self.max_lifetime_s = max_lifetime_s
        self.skew_s = skew_s
        self.clock = clock
        self.jwks_refetch_s = jwks_refetch_s
        self.jwks_ttl_s = jwks_ttl_s
        self.jwks_timeout_s = jwks_timeout_s
        self._http = http
        self._own_http: httpx.Client | None = None
        self._http_lock = threading.Lock()
        self.clients: dict[str, TrustedClient] = {}
        self._keys: dict[str, _KeySet] = {}
        for client in clients:
            self.clients[client.iss] = client
            self._keys[client.iss] = _KeySet(client, self)

    def http_client(self) -> httpx.Client:
        with self._http_lock:
            if self._http is None:
                self._http = self._own_http = httpx.Client(timeout=self.jwks_timeout_s, follow_redirects=False)
            return self._http

    def close(self) -> None:
        """Close the HTTP client the verifier made for itself (one passed in is the caller's to close)."""
        with self._http_lock:
            if self._own_http is not None:
                self._own_http.close()
                self._http = self._own_http = None

    def verify(self, authorization_header: str | None, audience: str, *, block: bool = True) -> Claims:
        """The verified claims of the call's bearer JWT for the endpoint URL `audience`; AuthError otherwise.
        With `block=False`, WouldBlock instead of fetching a JWKS (nothing is claimed then: retry with block)."""
        try:
            claims = self._check(authorization_header, audience, block)
        except (AuthError, WouldBlock):
            raise
        except Exception as exc:  # a safety net: nothing but AuthError leaves the checks
            raise AuthError(f"the token could not be processed ({type(exc).__name__})") from None
        if not self.claim_jti(claims.iss, claims.jti, claims.exp):
            raise AuthError("jti replayed: this token was already used", iss=claims.iss, jti=claims.jti)
        return claims

    def _check(self, authorization_header: str | None, audience: str, block: bool = True) -> Claims:
        token = _bearer(authorization_header)
        match = _COMPACT.fullmatch(token) if len(token) <= MAX_TOKEN_CHARS else None
        if match is None:
            raise AuthError("the bearer is not a compact JWS")
        header = _segment(match.group(1), "header")
        alg = header.get("alg")
        if not isinstance(alg, str) or alg not in ASYMMETRIC:
            named = f"alg {alg}" if alg in _NAMED_ALGS else "an unsupported alg"
            raise AuthError(f"{named} is refused: only asymmetric signatures (RS384, ES384) are accepted")
        typ = header.get("typ")
        if not isinstance(typ, str) or typ.upper() != "JWT":
            raise AuthError("the header's typ must be JWT")
        kid = header.get("kid")
        if not isinstance(kid, str) or not kid or len(kid) > 256:
            raise AuthError("the header has no kid")
        if "crit" in header:
            raise AuthError("the header has critical extensions (crit), which are not supported")
        payload = _segment(match.group(2), "payload")

        iss = payload.get("iss")
        client = self.clients.get(iss) if isinstance(iss, str) else None
        if client is None:
            raise AuthError("iss is not a trusted client")
        if alg not in client.algorithms:
            raise AuthError(f"alg {alg} is not enabled for this client", iss=client.iss)
        if "jku" in header and header["jku"] != client.jku:
            raise AuthError("jku is not on this client's allowlist", iss=client.iss)

        aud = payload.get("aud")
        if not (aud == audience or (isinstance(aud, list) and audience in aud)):
            raise AuthError("aud is not this endpoint's URL", iss=client.iss)

        now = self.clock()
        skew = self.skew_s
        exp, nbf, iat = payload.get("exp"), payload.get("nbf"), payload.get("iat")
        if not _is_time(exp):
            raise AuthError("exp is missing or not a NumericDate", iss=client.iss)
        if exp <= now:
            raise AuthError("the token has expired (exp)", iss=client.iss)
        if nbf is not None and not _is_time(nbf):
            raise AuthError("nbf is not a NumericDate", iss=client.iss)
        if nbf is not None and nbf > now + skew:
            raise AuthError("the token is not valid yet (nbf)", iss=client.iss)
        if not _is_time(iat):
            raise AuthError("iat is missing or not a NumericDate", iss=client.iss)
        if iat > now + skew:
            raise AuthError("the token was issued in the future (iat)", iss=client.iss)
        if exp <= iat:
            raise AuthError("exp is not after iat", iss=client.iss)
        if exp - iat > self.max_lifetime_s:
            raise AuthError(f"the token lives longer than {self.max_lifetime_s:g} s (exp - iat)", iss=client.iss)

        tenant = payload.get("tenant")
        if tenant is not None and not isinstance(tenant, str):
            raise AuthError("tenant is not a string", iss=client.iss)
        allowed = client.tenants
        if allowed is not None and tenant not in allowed:
            raise AuthError("tenant is not on this client's allowlist", iss=client.iss)
        jti = payload.get("jti")
        if not isinstance(jti, str) or not jti or len(jti) > 256:
            raise AuthError("jti is missing or not a string of 1 to 256 characters", iss=client.iss)
        sub = payload.get("sub")
        if sub is not None and not isinstance(sub, str):
            raise AuthError("sub is not a string", iss=client.iss)

        key = self._keys[client.iss].get(kid, block)
        if not key.fits(alg):
            raise AuthError(f"the key of this kid cannot verify alg {alg}", iss=client.iss)
        # PyJWT's algorithm object checks the signature over "header.payload" (for ES384 it turns the JWS's raw r||s
        # into the DER that cryptography verifies); the segments themselves were parsed and checked above, so
        # PyJWS.decode_complete, which parses them again, is not needed
        try:
            signature = base64.urlsafe_b64decode(match.group(3) + "=" * (-len(match.group(3)) % 4))
            ok = _ALGORITHMS[alg].verify(token[: match.end(2)].encode("ascii"), key.public, signature)
        except Exception:
            ok = False
        if not ok:
            raise AuthError("the signature does not verify", iss=client.iss)

        return Claims(
            iss=client.iss,
            sub=sub,
            jti=jti,
            exp=datetime.fromtimestamp(exp, UTC),
            iat=datetime.fromtimestamp(iat, UTC),
            tenant=tenant,
            kid=kid,
            alg=alg,
            aud=audience,
        )


def _bearer(header: str | None) -> str:
    if not isinstance(header, str) or not header.strip():
        raise AuthError("no Authorization header")
    match = _BEARER.fullmatch(header.strip())
    if match is None:
        raise AuthError("the Authorization header is not 'Bearer <token>'")
    return match.group(1)


def _segment(text: str, what: str) -> dict[str, Any]:
    try:
        value = json.loads(base64.urlsafe_b64decode(text + "=" * (-len(text) % 4)))
    except ValueError:  # binascii.Error, UnicodeDecodeError and JSONDecodeError are all ValueErrors
        value = None
    if not isinstance(value, dict):
        raise AuthError(f"the token's {what} is not a base64url JSON object")
    return value


def _is_time(value: Any) -> bool:
    if isinstance(value, bool):
        return False
    if isinstance(value, int):
        return abs(value) < 2**53
    return isinstance(value, float) and math.isfinite(value)


# -- the administrator credential -----------------------------------------------------------------------------------


class AdminAuth:
    """Checks `Authorization: Bearer <secret>` against the configured SHA-256 of the administrator's secret.

    With no `admin` block configured, every administrator call is refused. A JWT (what EHRs send) is never the
    credential, whatever its signature.
    """

    def __init__(self, admin: AdminConfig | None) -> None:
        self.admin = admin
        self._digest = bytes.fromhex(admin.token_sha256) if admin is not None else None

    def check(self, authorization_header: str | None) -> str:
        """The administrator's principal name; AuthError if the header does not carry the credential."""
        if self.admin is None or self._digest is None:
            raise AuthError("no administrator credential is configured: administrator routes are closed")
        secret = _bearer(authorization_header)
        if _COMPACT.fullmatch(secret):  # a JWT: what EHRs carry, never the administrator credential (403, not 401)
            raise AuthError("a JWT on an administrator route: EHR tokens are not administrator credentials",
                            forbidden=True)
        given = hashlib.sha256(secret.encode()).digest()
        if not hmac.compare_digest(given, self._digest):
            raise AuthError("not the administrator credential")
        return self.admin.name


def hash_admin_token(secret: str) -> str:
    """The `admin.token_sha256` value for an administrator secret."""
    return hashlib.sha256(secret.encode()).hexdigest()


def new_admin_token() -> tuple[str, str]:
    """A fresh administrator secret and its `admin.token_sha256` (show the first once, configure the second)."""
    secret = secrets.token_urlsafe(32)
    return secret, hash_admin_token(secret)


# -- what an EHR sends (tests, the demo, the benchmark) -------------------------------------------------------------


def sign_request_token(
    private_key: Any,
    kid: str,
    iss: str,
    aud: str | list[str],
    *,
    alg: str = "RS384",
    lifetime_s: int = 300,
    jti: str | None = None,
    extra: Mapping[str, Any] | None = None,
    headers: Mapping[str, Any] | None = None,
    now: float | None = None,
) -> str:
    """A CDS client's bearer JWT for a call to `aud`, signed with `private_key` (PEM or a cryptography key).

    Claims `iss`, `aud`, `iat`, `exp` (`iat + lifetime_s`) and `jti` (a fresh UUID unless given); `extra` claims
    and `headers` are merged over these and the `kid`/`typ` header, and a None value removes one (for tests).
    """
    t = int(time.time() if now is None else now)
    claims: dict[str, Any] = {"iss": iss, "aud": aud, "iat": t, "exp": t + lifetime_s, "jti": jti or str(uuid.uuid4())}
    head: dict[str, Any] = {"typ": "JWT", "kid": kid}
    for target, overrides in ((claims, extra), (head, headers)):
        for name, value in (overrides or {}).items():
            if value is None:
                target.pop(name, None)
            else:
                target[name] = value
    algorithm = get_default_algorithms()[alg]
    segments = [_b64(json.dumps(part, separators=(",", ":")).encode()) for part in ({"alg": alg} | head, claims)]
    signing_input = ".".join(segments).encode()
    signature = algorithm.sign(signing_input, algorithm.prepare_key(private_key))
    return f"{signing_input.decode()}.{_b64(signature)}"


def _b64(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode()


def jwks_for(public_keys: Mapping[str, Any]) -> dict[str, Any]:
    """A JWK Set of the public halves of `{kid: key}` (cryptography keys, public or private, or PEM)."""
    from cryptography.hazmat.primitives.asymmetric import ec, rsa
    from cryptography.hazmat.primitives.serialization import load_pem_private_key, load_pem_public_key

    keys = []
    for kid, key in public_keys.items():
        if isinstance(key, str | bytes):
            pem = key.encode() if isinstance(key, str) else key
            key = load_pem_private_key(pem, None) if b"PRIVATE KEY" in pem else load_pem_public_key(pem)
        if isinstance(key, rsa.RSAPrivateKey | ec.EllipticCurvePrivateKey):
            key = key.public_key()
        if isinstance(key, rsa.RSAPublicKey):
            jwk = RSAAlgorithm.to_jwk(key, as_dict=True)
        elif isinstance(key, ec.EllipticCurvePublicKey):
            jwk = ECAlgorithm.to_jwk(key, as_dict=True)
        else:
            raise TypeError(f"key {kid!r}: an RSA or EC key is required, not {type(key).__name__}")
        keys.append({**jwk, "kid": kid, "use": "sig"})
    return {"keys": keys}
