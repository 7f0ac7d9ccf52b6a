"""The service's YAML configuration: whom to trust, the administrator credential, the state store and the alert policy.

```yaml
trusted_clients:
  - iss: https://ehr.example.org            # the EHR's issuer (allowlist)
    jwks: {keys: [...]}                      # its public keys inline, or
    jwks_file: keys/ehr-jwks.json            # in a file (relative to this file), or
    jku: https://ehr.example.org/jwks.json   # at an allowlisted JWKS URL
    tenant: optional                         # one tenant or a list; when set, the token's `tenant` must be one
    algorithms: [RS384, ES384]               # the default; RS256, ES256, ... only when listed here
admin:
  token_sha256: <hex>                        # SHA-256 of the administrator credential (never the secret itself)
state: sqlite:///careloop-state.db           # a file, or postgresql://USER@HOST/DB (never in memory)
base_url: http://127.0.0.1:8080              # `aud` must equal {base_url}/cds-services/{id}
max_token_lifetime_s: 3600
clock_skew_s: 60
alert: {repeat_window_h: 72, repeat_delta: 0.10, daily_budget_per_unit: null, timezone: UTC, deferral: card}
deadline_ms: 1500
audit:                                       # optional: signed checkpoints of the audit chain
  signing_key_file: keys/audit-ed25519.pem   # Ed25519 private key (`careloop audit keygen`), relative to this file
  checkpoint_every: 1000                     # a checkpoint every N records
clock: {ntp_server: time.example.org, max_skew_ms: 1000, required: false}  # optional: checked at start
feedback_limit: {per_minute: 600, burst: 120}  # per client, all workers together; beyond it 429, Retry-After
fhir_connections: 16                         # reads in flight to one FHIR server, per worker process
patient_page: https://ehr.example.org/chart?patient={patient}&encounter={encounter}  # optional: the cards' link
```

`load_config(path)` reports every problem with its line (`service.yaml:7: trusted_clients.0: ...`), like every
careloop spec, and reads `jwks_file`s so that a missing or malformed key file stops the service at start.
"""

from __future__ import annotations

import ipaddress
import json
import re
import string
from pathlib import Path
from typing import Any, Literal, get_args
from urllib.parse import SplitResult, quote, urlsplit, urlunsplit

import yaml
from pydantic import BaseModel, ConfigDict, Field, field_validator, model_validator

from careloop.errors import ConfigError
from careloop.specfile import line_of, parse_spec, read_spec

Algorithm = Literal["RS256", "RS384", "RS512", "PS256", "PS384", "PS512", "ES256", "ES384", "ES512"]
"""Asymmetric JWS algorithms a client may opt into; `none` and HMAC (HS*) can never be configured."""

DEFAULT_ALGORITHMS: tuple[Algorithm, ...] = ("RS384", "ES384")
"""What CDS Hooks 2.0 recommends, and all a client gets unless its entry lists more."""

CURVES = {"ES256": "P-256", "ES384": "P-384", "ES512": "P-521"}
MIN_RSA_BITS = 2048
_PRIVATE_MEMBERS = ("d", "p", "q", "dp", "dq", "qi", "oth", "k")
_HEX64 = re.compile(r"[0-9a-fA-F]{64}")


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid")


def is_loopback(host: str | None) -> bool:
    if not host:
        return False
    if host.lower() == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


def without_userinfo(url: str) -> str:
    """`url` for logs and messages: a user name and password in it (user:pw@host) shown as ***, and the values of
    its query hidden (they may be tokens). The configuration refuses such URLs; this is the second line."""
    try:
        parts = urlsplit(url)
    except ValueError:
        return "(a URL that does not parse)"
    netloc = f"***@{parts.netloc.rpartition('@')[2]}" if "@" in parts.netloc else parts.netloc
    query = "&".join(f"{k.partition('=')[0]}=***" for k in parts.query.split("&")) if parts.query else ""
    return urlunsplit((parts.scheme, netloc, parts.path, query, ""))


def _refuse_userinfo(url: SplitResult, field: str) -> None:
    if "@" in url.netloc:  # https://user:password@host/...: a secret in the config, in logs, in the audit log
        raise ValueError(f"{field} must not hold a user name or password (user:password@host); a credential does not "
                         "belong in a URL")


def check_jwk(jwk: Any) -> str | None:
    """The `kid` of a usable public signing JWK, None for a key marked for another `use`; ValueError otherwise.

    A usable key has a `kid` (tokens must name theirs) and is an RSA key of at least 2048 bits or an EC key on
    P-256/P-384/P-521; symmetric (`oct`) keys and private key members are refused.
    """
    from jwt.algorithms import ECAlgorithm, RSAAlgorithm

    if not isinstance(jwk, dict):
        raise ValueError("a JWK must be an object")
    kid = jwk.get("kid")
    if not isinstance(kid, str) or not kid:
        raise ValueError("a key has no kid (tokens name their key by kid)")
    if private := [m for m in _PRIVATE_MEMBERS if m in jwk]:
        raise ValueError(
            f"key {kid!r} holds private or symmetric key material ({', '.join(private)}): "
            "configure only the client's public keys"
        )
    if jwk.get("use", "sig") != "sig":
        return None
    if "alg" in jwk and jwk["alg"] not in get_args(Algorithm):
        raise ValueError(f"key {kid!r} has alg {jwk['alg']!r}; only RS*, PS* and ES* keys can sign CDS Hooks calls")
    kty = jwk.get("kty")
    if kty not in ("RSA", "EC"):
        raise ValueError(f"key {kid!r} has kty {kty!r}; only RSA and EC public keys can sign CDS Hooks calls")
    if kty == "EC" and jwk.get("crv") not in CURVES.values():
        raise ValueError(f"key {kid!r} has curve {jwk.get('crv')!r}; use P-256, P-384 or P-521")
    try:
        key = (RSAAlgorithm if kty == "RSA" else ECAlgorithm).from_jwk(jwk)
    except Exception as exc:  # PyJWT's InvalidKeyError and cryptography's errors
        raise ValueError(f"key {kid!r} is not a valid {kty} public key ({exc})") from None
    if kty == "RSA" and key.key_size < MIN_RSA_BITS:
        raise ValueError(f"key {kid!r} is a {key.key_size}-bit RSA key; at least {MIN_RSA_BITS} bits are required")
    return kid


def check_jwks(jwks: Any) -> dict[str, dict[str, Any]]:
    """The public signing keys of a JWK Set by `kid` (see `check_jwk`); ValueError naming what is wrong with it."""
    if not isinstance(jwks, dict) or not isinstance(jwks.get("keys"), list):
        raise ValueError('a JWK Set is a mapping with a "keys" list')
    keys: dict[str, dict[str, Any]] = {}
    for i, jwk in enumerate(jwks["keys"]):
        try:
            kid = check_jwk(jwk)
        except ValueError as exc:
            raise ValueError(f"keys[{i}]: {exc}") from None
        if kid is None:
            continue
        if kid in keys:
            raise ValueError(f"keys[{i}]: kid {kid!r} appears twice; a kid must be unique within the JWK Set")
        keys[kid] = jwk
    if not keys:
        raise ValueError("the JWK Set has no signing keys")
    return keys


def read_jwks_file(path: Path) -> dict[str, Any]:
    """A JWK Set file's JSON (checked with `check_jwks`); ValueError saying why it cannot be used."""
    try:
        data = json.loads(path.read_text())
    except OSError as exc:
        raise ValueError(f"cannot read {path} ({exc.strerror})") from None
    except ValueError as exc:
        raise ValueError(f"{path} is not JSON ({exc})") from None
    try:
        check_jwks(data)
    except ValueError as exc:
        raise ValueError(f"{path}: {exc}") from None
    return data


class TrustedClient(_Strict):
    """A CDS client (an EHR) whose signed calls the service accepts, and where its public keys are."""

    iss: str = Field(min_length=1)
    jwks: dict[str, Any] | None = None
    jwks_file: Path | None = None
    jku: str | None = None
    tenant: str | list[str] | None = None
    algorithms: list[Algorithm] = Field(default_factory=lambda: list(DEFAULT_ALGORITHMS), min_length=1)

    @field_validator("jwks")
    @classmethod
    def _jwks(cls, v: dict[str, Any] | None) -> dict[str, Any] | None:
        if v is not None:
            check_jwks(v)
        return v

    @field_validator("jku")
    @classmethod
    def _jku(cls, v: str | None) -> str | None:
        if v is None:
            return v
        try:
            url = urlsplit(v)
            url.port  # noqa: B018 -- ValueError for a port that is not a number from 0 to 65535
        except ValueError:
            raise ValueError("jku is not a valid URL") from None
        _refuse_userinfo(url, "jku")
        if url.scheme == "https" and url.hostname:
            return v
        if url.scheme == "http" and is_loopback(url.hostname):
            return v  # a JWKS served on this machine (tests, the demo)
        raise ValueError("jku must be an https:// URL (http:// only on loopback)")

    @field_validator("tenant")
    @classmethod
    def _tenant(cls, v: str | list[str] | None) -> str | list[str] | None:
        if v is not None and (v == "" or v == [] or (isinstance(v, list) and "" in v)):
            raise ValueError("tenant must be a non-empty string or list of strings (omit it to accept any)")
        return v

    @model_validator(mode="after")
    def _one_key_source(self) -> TrustedClient:
        given = [name for name in ("jwks", "jwks_file", "jku") if getattr(self, name) is not None]
        if len(given) != 1:
            what = "none" if not given else " and ".join(given)
            raise ValueError(f"give exactly one of jwks, jwks_file or jku for the client's keys (got {what})")
        return self

    @property
    def tenants(self) -> frozenset[str] | None:
        """The allowlisted tenants, or None when any tenant is accepted."""
        if self.tenant is None:
            return None
        return frozenset([self.tenant] if isinstance(self.tenant, str) else self.tenant)

    def static_jwks(self) -> dict[str, Any] | None:
        """The inline or file JWK Set (None for a `jku` client, whose keys are fetched)."""
        if self.jwks is not None:
            return self.jwks
        if self.jwks_file is not None:
            return read_jwks_file(self.jwks_file)
        return None


class AdminConfig(_Strict):
    """The administrator credential, as the SHA-256 (hex) of the bearer secret; the secret is never in the file."""

    token_sha256: str
    name: str = Field(default="admin", min_length=1)

    @field_validator("token_sha256")
    @classmethod
    def _hex(cls, v: str) -> str:
        if not _HEX64.fullmatch(v):
            raise ValueError("token_sha256 must be 64 hexadecimal characters (the SHA-256 of the secret)")
        return v.lower()


class AlertConfig(_Strict):
    """The alert policy the service applies: no second warning for a patient from the model (whichever hook) within
    `repeat_window_h` unless the risk moved by more than `repeat_delta`; at most `daily_budget_per_unit` warnings a
    day in a unit (the stay's ward, its Encounter.location), the day starting at midnight in `timezone` (the
    hospital's, an IANA name). Within the same window no info card is shown twice: the same deferral, or the
    near-threshold card with a risk that has not moved by more than `repeat_delta`."""

    repeat_window_h: float = Field(default=72, gt=0)
    repeat_delta: float = Field(default=0.10, ge=0, le=1)
    daily_budget_per_unit: int | None = Field(default=None, ge=1)
    timezone: str = "UTC"
    deferral: Literal["card", "none"] = "card"

    @field_validator("timezone")
    @classmethod
    def _known_zone(cls, v: str) -> str:
        from zoneinfo import ZoneInfo

        try:
            ZoneInfo(v)
        except (ValueError, KeyError, OSError):
            raise ValueError(f"unknown time zone (an IANA name, e.g. America/New_York): {v!r}") from None
        return v


class FeedbackLimit(_Strict):
    """How much feedback one client (token issuer) may send: a token bucket holding `burst` requests, refilled at
    `per_minute`, kept in the state store so that every worker process draws on the same one; a request beyond it
    gets 429 with Retry-After (and is audited)."""

    per_minute: float = Field(default=600, gt=0)
    burst: int = Field(default=120, ge=1)


class AuditConfig(_Strict):
    """Signed checkpoints of the audit chain: they expose a wholesale rewrite of the chain by someone with database
    rights, which the hash chain alone cannot (`careloop audit verify --verify-key` checks them)."""

    signing_key_file: Path | None = None
    checkpoint_every: int = Field(default=1000, ge=1)

    def signing_key(self):
        """The Ed25519 private key, or None; ValueError saying what is wrong with the file."""
        if self.signing_key_file is None:
            return None
        from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
        from cryptography.hazmat.primitives.serialization import load_pem_private_key

        try:
            key = load_pem_private_key(self.signing_key_file.read_bytes(), password=None)
        except OSError as exc:
            raise ValueError(f"cannot read {self.signing_key_file}: {exc.strerror}") from None
        except (ValueError, TypeError) as exc:
            raise ValueError(f"{self.signing_key_file} is not an unencrypted PEM private key ({exc})") from None
        if not isinstance(key, Ed25519PrivateKey):
            raise ValueError(f"{self.signing_key_file} is not an Ed25519 key")
        return key


class ClockConfig(_Strict):
    """The clock check at start (checklist A-07): the host's clock against an NTP server, at most `max_skew_ms`
    apart, or the service does not start; an NTP server that does not answer stops it only when `required`."""

    ntp_server: str | None = None  # host or host:port, e.g. the hospital's time server
    max_skew_ms: int = Field(default=1000, ge=1, le=600_000)
    required: bool = False

    @field_validator("ntp_server")
    @classmethod
    def _address(cls, v: str | None) -> str | None:
        from careloop.serve.clock import host_port

        if v is not None:
            host_port(v)
        return v


class ServiceConfig(_Strict):
    """The whole service configuration (see the module docstring)."""

    trusted_clients: list[TrustedClient] = Field(min_length=1)
    admin: AdminConfig | None = None
    state: str = "sqlite:///careloop-state.db"
    base_url: str = "http://127.0.0.1:8080"
    max_token_lifetime_s: int = Field(default=3600, gt=0, le=3600)
    clock_skew_s: int = Field(default=60, ge=0, le=300)
    alert: AlertConfig = Field(default_factory=AlertConfig)
    deadline_ms: int = Field(default=1500, gt=0, le=60_000)
    audit: AuditConfig = Field(default_factory=AuditConfig)
    clock: ClockConfig = Field(default_factory=ClockConfig)
    feedback_limit: FeedbackLimit = Field(default_factory=FeedbackLimit)
    # reads in flight at once to one EHR FHIR server, per worker process (the server sees up to workers x this);
    # the others wait their turn, inside their call's deadline
    fhir_connections: int = Field(default=16, ge=1, le=256)
    # the cards' "Patient risk page" link: a URL template, {patient} and {encounter} replaced by the hook's context
    # ids (percent-encoded); a template naming {encounter} gives no link to a call without one (patient-view). When
    # unset, cards link to careloop's own stay page if the service serves the dashboard (`--dashboard`)
    patient_page: str | None = None

    @field_validator("patient_page")
    @classmethod
    def _patient_page(cls, v: str | None) -> str | None:
        if v is None:
            return v
        try:
            names = {name for _, name, _, _ in string.Formatter().parse(v) if name is not None}
        except ValueError as exc:
            raise ValueError(f"patient_page is not a valid template ({exc})") from None
        if names - {"patient", "encounter"} or "patient" not in names:
            raise ValueError("patient_page may name only {patient} and {encounter}, and must name {patient}")
        url = urlsplit(v.replace("{patient}", "p").replace("{encounter}", "e"))
        if url.scheme not in ("http", "https") or not url.hostname:
            raise ValueError("patient_page must be an absolute http(s) URL template")
        _refuse_userinfo(url, "patient_page")
        return v

    def patient_page_url(self, patient: str | None, encounter: str | None) -> str | None:
        """The configured patient page for a call's context, or None (no template, no patient, or the template
        needs an encounter and the call has none)."""
        if self.patient_page is None or not patient or ("{encounter}" in self.patient_page and not encounter):
            return None
        return self.patient_page.format(patient=quote(patient, safe=""), encounter=quote(encounter or "", safe=""))

    @field_validator("state")
    @classmethod
    def _state(cls, v: str) -> str:
        from careloop.state._db import StateError, is_memory

        try:
            memory = is_memory(v)  # also refuses another database, a driver careloop lacks, a URL that does not parse
        except StateError as exc:
            raise ValueError(str(exc)) from None
        if memory:  # each worker would have a database of its own, and the audit chain would go with the process
            raise ValueError("an in-memory SQLite store cannot hold the service's state: each worker process would "
                             "keep its own, jti claims and rate limits would not be shared, and the audit log would "
                             "be lost at exit, never verified; use sqlite:///PATH (a file) or postgresql://...")
        return v

    @field_validator("base_url")
    @classmethod
    def _base_url(cls, v: str) -> str:
        url = urlsplit(v)
        if url.scheme not in ("http", "https") or not url.hostname or url.query or url.fragment:
            raise ValueError("base_url must be an http(s) URL without query or fragment, e.g. https://cds.example.org")
        _refuse_userinfo(url, "base_url")
        if url.scheme == "http" and not is_loopback(url.hostname):  # CDS Hooks: all exchanges MUST use HTTPS
            raise ValueError("base_url must be https (plain http only on loopback, for tests and the demo)")
        return v.rstrip("/")

    @model_validator(mode="after")
    def _unique_issuers(self) -> ServiceConfig:
        seen: set[str] = set()
        for client in self.trusted_clients:
            if client.iss in seen:
                raise ValueError(f"iss {client.iss!r} is listed twice; give each issuer one entry")
            seen.add(client.iss)
        return self

    @property
    def discovery_url(self) -> str:
        """The discovery endpoint, the `aud` of discovery calls."""
        return f"{self.base_url}/cds-services"

    def service_url(self, service_id: str) -> str:
        """A service's endpoint URL: the exact `aud` its calls must carry."""
        return f"{self.base_url}/cds-services/{service_id}"


def load_config(path: str | Path) -> ServiceConfig:
    """Read and validate a service configuration file; ConfigError listing every problem with its line.

    Relative `jwks_file` paths are resolved against the configuration file's folder, and each file is read and
    checked now.
    """
    text, source = read_spec(path, ConfigError, "service configuration")
    config = parse_spec(ServiceConfig, text, source, ConfigError)
    base = Path(path).resolve().parent
    problems = []
    for i, client in enumerate(config.trusted_clients):
        if client.jwks_file is None:
            continue
        if not client.jwks_file.is_absolute():
            client.jwks_file = base / client.jwks_file
        try:
            client.static_jwks()
        except ValueError as exc:
            line = line_of(yaml.compose(text), ["trusted_clients", i, "jwks_file"])
            problems.append(f"{source}:{line}: trusted_clients.{i}.jwks_file: {exc}")
    key_file = config.audit.signing_key_file
    if key_file is not None:
        if not key_file.is_absolute():
            config.audit.signing_key_file = base / key_file
        try:
            config.audit.signing_key()
        except ValueError as exc:
            problems.append(f"{source}:{line_of(yaml.compose(text), ['audit', 'signing_key_file'])}: "
                            f"audit.signing_key_file: {exc}")
    if problems:
        raise ConfigError("\n".join(problems))
    return config
