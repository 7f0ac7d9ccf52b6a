"""REST source of ``careloop ingest http://...``: paged FHIR search against a live server.

It only fetches: searchset Bundle pages are handed on as the exact bytes received, so that the pipeline parses
them once, the same way as files, and a report can name the page a bad resource came from. This module owns
what is specific to talking to a server: SMART Backend Services tokens, ``next`` links, retries and turning
OperationOutcomes into one-line errors. Tokens, keys and client assertions never appear in messages or reprs.
"""

from __future__ import annotations

import email.utils
import logging
import math
import re
import time
import uuid
from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import Any
from urllib.parse import parse_qsl, urlencode, urljoin, urlsplit

import httpx
import jwt
import orjson

from careloop import __version__
from careloop.errors import CareloopError, ConfigError

log = logging.getLogger(__name__)

DEFAULT_TYPES: tuple[str, ...] = (
    "Patient",
    "Encounter",
    "Condition",
    "Observation",
    "MedicationRequest",
    "Procedure",
    "DocumentReference",
    "Coverage",
    "Organization",
    "Location",
    "Practitioner",
)
ALGORITHMS: tuple[str, ...] = ("RS384", "ES384")  # what SMART Backend Services requires servers to support
# Types with no ``patient`` search parameter: in per-patient mode they are fetched once, not once per patient.
SHARED_TYPES: frozenset[str] = frozenset(
    {
        "Organization",
        "Location",
        "Practitioner",
        "PractitionerRole",
        "Medication",
        "Substance",
        "HealthcareService",
        "Endpoint",
        "Group",
    }
)
ASSERTION_TYPE = "urn:ietf:params:oauth:client-assertion-type:jwt-bearer"
ASSERTION_LIFETIME = 300  # seconds; SMART servers reject client assertions that live longer than 5 minutes
MAX_RETRY_AFTER = 300.0  # seconds: a Retry-After beyond this is capped rather than hanging the ingest
TOKEN_REFRESH_MARGIN = 30.0  # seconds before expiry (at most 10% of the lifetime) to fetch a new access token

_TYPE_RE = re.compile(r"^[A-Z][A-Za-z]{1,63}$")
_ID_RE = re.compile(r"^[A-Za-z0-9\-.]{1,64}$")  # FHIR id datatype
_SECRET_PARAM_WORDS = ("token", "secret", "password", "assertion", "signature", "apikey", "api_key", "credential")
_SECRET_PARAMS = frozenset({"key", "sig", "auth", "code"})


class FhirServerError(CareloopError):
    """The FHIR server or its token endpoint failed, refused, or answered something other than a searchset page."""


@dataclass(frozen=True)
class RestSource:
    """Where and how to search: a FHIR base URL, credentials, and which resources to fetch.

    Credentials are either a static Bearer ``token`` or SMART Backend Services (``client_id`` +
    ``private_key_pem`` signing ``algorithm`` client assertions); neither means an open server.
    Invalid values raise ConfigError here, before any request is sent.
    """

    base_url: str
    token: str | None = field(default=None, repr=False)
    client_id: str | None = None
    private_key_pem: bytes | None = field(default=None, repr=False)
    key_id: str | None = None
    algorithm: str = "RS384"
    token_url: str | None = None
    scope: str = "system/*.read"
    types: tuple[str, ...] = DEFAULT_TYPES
    patients: tuple[str, ...] | None = None
    page_size: int = 200
    max_retries: int = 5
    backoff: float = 0.5
    timeout: float = 30.0

    def __post_init__(self) -> None:
        for name in ("base_url", "token_url"):  # first, so that no message below quotes a password
            if _has_userinfo(getattr(self, name)):
                raise ConfigError(f"{name} must not carry a user name or password (user:password@host): give a "
                                  "token or SMART credentials instead")
        parts = urlsplit(self.base_url)
        if parts.scheme not in ("http", "https") or not parts.netloc or parts.query or parts.fragment:
            raise ConfigError(f"FHIR base URL must be http(s)://host/path without a query, not {self.base_url!r}")
        object.__setattr__(self, "base_url", self.base_url.rstrip("/"))
        object.__setattr__(self, "types", tuple(dict.fromkeys(self.types)))  # a repeat would fetch everything twice
        if self.patients is not None:
            object.__setattr__(self, "patients", tuple(dict.fromkeys(self.patients)))
        if self.algorithm not in ALGORITHMS:
            raise ConfigError(f"algorithm must be one of {', '.join(ALGORITHMS)}, not {self.algorithm!r}")
        if self.token is not None and self.client_id is not None:
            raise ConfigError("give either a static token or a SMART client_id and private key, not both")
        if self.token is not None and (not self.token or any(c.isspace() for c in self.token)):
            raise ConfigError("token must be a non-empty string without whitespace")
        if (self.client_id is None) != (self.private_key_pem is None):
            raise ConfigError("SMART Backend Services needs both client_id and private_key_pem")
        if self.private_key_pem is not None:
            _check_private_key(self.private_key_pem, self.algorithm)
        if self.token_url is not None and urlsplit(self.token_url).scheme not in ("http", "https"):
            raise ConfigError(f"token_url must be an http(s) URL, not {self.token_url!r}")
        if not self.types:
            raise ConfigError("types must name at least one FHIR resource type")
        bad_types = [t for t in self.types if not _TYPE_RE.match(t)]
        if bad_types:
            raise ConfigError(f"not FHIR resource type names: {', '.join(map(repr, bad_types))}")
        if self.patients is not None:
            if not self.patients:
                raise ConfigError("patients is empty: give at least one Patient id, or None for per-type mode")
            bad_ids = [p for p in self.patients if not _ID_RE.match(p)]
            if bad_ids:
                raise ConfigError(f"not FHIR Patient ids (1-64 of A-Z a-z 0-9 - .): {', '.join(map(repr, bad_ids))}")
        if not 1 <= self.page_size <= 10_000:
            raise ConfigError(f"page_size must be 1..10000, not {self.page_size}")
        if self.max_retries < 0 or self.backoff < 0 or self.timeout <= 0:
            raise ConfigError("max_retries and backoff must be >= 0 and timeout > 0")


@dataclass(frozen=True)
class Page:
    """One searchset Bundle as received; ``label`` names it in reports ("Observation?patient=123 page 2")."""

    label: str
    url: str
    body: bytes = field(repr=False)


def fetch_pages(source: RestSource, *, client: httpx.Client | None = None) -> Iterator[Page]:
    """Search every type of ``source`` and yield each searchset page, following ``next`` links to the end.

    Per-type mode searches ``{Type}?_count=N``; per-patient mode searches ``{Type}?patient=<id>`` (``Patient?_id=``)
    for each patient, after fetching the SHARED_TYPES among ``types`` once each. Lazy: requests happen as pages
    are consumed, and errors (FhirServerError) surface at the page that failed. ``client`` is not closed here.
    """
    own_client = client is None
    http = client if client is not None else httpx.Client(timeout=source.timeout)
    try:
        session = _Session(source, http)
        for rtype, params, label in _searches(source):
            yield from session.search(rtype, params, label)
    finally:
        if own_client:
            http.close()


# Resources a search brings along on its pages, so that references to them resolve within the page: the Medication
# a MedicationRequest names (`mapping.medication_codes`).
_INCLUDES: dict[str, dict[str, str]] = {"MedicationRequest": {"_include": "MedicationRequest:medication"}}


def _searches(source: RestSource) -> Iterator[tuple[str, dict[str, str], str]]:
    """(type, query, label) of each search, in a stable order so that reports and reruns line up."""
    count = str(source.page_size)
    if source.patients is None:
        for rtype in source.types:
            yield rtype, {"_count": count, **_INCLUDES.get(rtype, {})}, f"{rtype}?_count={count}"
        return
    for rtype in source.types:
        if rtype in SHARED_TYPES:
            yield rtype, {"_count": count}, f"{rtype}?_count={count}"
    for pid in source.patients:
        for rtype in source.types:
            if rtype not in SHARED_TYPES:
                param = "_id" if rtype == "Patient" else "patient"
                yield rtype, {param: pid, "_count": count, **_INCLUDES.get(rtype, {})}, f"{rtype}?{param}={pid}"


def _check_private_key(pem: bytes, algorithm: str) -> None:
    """Fail at configuration time, not at the first token request, if the key cannot sign ``algorithm``."""
    from cryptography.hazmat.primitives.asymmetric import ec, rsa
    from cryptography.hazmat.primitives.serialization import load_pem_private_key

    try:
        key = load_pem_private_key(pem, password=None)
    except (ValueError, TypeError):
        raise ConfigError("private_key_pem is not an unencrypted PEM private key") from None
    if algorithm == "RS384" and not (isinstance(key, rsa.RSAPrivateKey) and key.key_size >= 2048):
        raise ConfigError("RS384 needs an RSA private key of at least 2048 bits")
    if algorithm == "ES384" and not (isinstance(key, ec.EllipticCurvePrivateKey) and key.curve.name == "secp384r1"):
        raise ConfigError("ES384 needs an EC P-384 (secp384r1) private key")


class _Session:
    """Per-run state that must not live on the frozen RestSource: the access token and the secrets to scrub."""

    def __init__(self, source: RestSource, client: httpx.Client) -> None:
        self.source = source
        self.client = client
        self.origin = _origin(source.base_url)
        self.token_url = source.token_url
        self.access_token = source.token
        self.expires_at: float | None = None  # time.monotonic() after which to fetch a new token
        self.secrets: set[str] = {source.token} if source.token else set()
        self.headers = {"Accept": "application/fhir+json", "User-Agent": f"careloop/{__version__}"}

    # -- paging -------------------------------------------------------------------------------------------------

    def search(self, rtype: str, params: dict[str, str], label: str) -> Iterator[Page]:
        url: str | None = f"{self.source.base_url}/{rtype}?{urlencode(params)}"
        seen: set[str] = set()
        number = 0
        while url is not None:
            if url in seen:
                raise FhirServerError(f"FHIR server's next links for {label} loop back to {self.display(url)}")
            seen.add(url)
            number += 1
            body, bundle = self.fetch_bundle(url)
            yield Page(label=f"{label} page {number}", url=url, body=body)
            url = self.next_url(bundle, url, label)

    def next_url(self, bundle: dict[str, Any], url: str, label: str) -> str | None:
        links = bundle.get("link") if isinstance(bundle.get("link"), list) else []
        nexts = [ln["url"] for ln in links if isinstance(ln, dict) and ln.get("relation") == "next" and ln.get("url")]
        if not nexts:
            return None
        target = urljoin(url, str(nexts[0]))
        if _origin(target) != self.origin:  # never send credentials to a host the user did not name
            raise FhirServerError(
                f"FHIR server's next link for {label} leaves {self.origin} for {_origin(target)}; refusing to follow"
            )
        return target

    def fetch_bundle(self, url: str) -> tuple[bytes, dict[str, Any]]:
        what = self.display(url)
        resp = self.get(url, what, auth=True)
        data = self.parse_json(resp, what, strict=resp.is_success)
        rtype = data.get("resourceType")
        if rtype == "OperationOutcome" or not resp.is_success:
            raise FhirServerError(f"FHIR server refused {what}: {resp.status_code} {self.error_text(resp, data)}")
        if rtype != "Bundle" or data.get("type") not in (None, "searchset"):
            kind = f"a {data.get('type')} Bundle" if rtype == "Bundle" else repr(rtype)
            raise FhirServerError(f"FHIR server answered {what} with {kind} instead of a searchset Bundle")
        outcomes = [
            e["resource"]
            for e in data.get("entry") or ()
            if isinstance(e, dict)
            and isinstance(e.get("resource"), dict)
            and (e.get("search") or {}).get("mode") == "outcome"
        ]
        for outcome in outcomes:
            log.warning("FHIR server notes on %s: %s", what, self.scrub(_outcome_text(outcome)))
        return resp.content, data

    # -- HTTP with retries and auth -------------------------------------------------------------------------------

    def get(self, url: str, what: str, *, auth: bool) -> httpx.Response:
        """GET with transient-failure retries and one token refresh on 401; returns the final response."""
        refreshed = False
        attempt = 0
        while True:
            headers = dict(self.headers)
            if auth and (bearer := self.bearer()):
                headers["Authorization"] = f"Bearer {bearer}"
            try:
                resp = self.client.get(url, headers=headers, timeout=self.source.timeout, follow_redirects=True)
            except httpx.TransportError as exc:
                attempt = self.wait_or_fail(attempt, what, None, type(exc).__name__)
                continue
            if resp.status_code == 401 and auth:
                if self.source.client_id is not None and not refreshed:
                    refreshed = True  # the token may have been revoked or expired early: get a new one, once
                    self.access_token = None
                    continue
                data = self.parse_json(resp, what, strict=False)
                raise FhirServerError(f"FHIR server authorization failed for {what}: 401 {self.error_text(resp, data)}")
            if _retryable(resp.status_code):
                data = self.parse_json(resp, what, strict=False)
                attempt = self.wait_or_fail(attempt, what, resp, self.error_text(resp, data))
                continue
            return resp

    def wait_or_fail(self, attempt: int, what: str, resp: httpx.Response | None, reason: str) -> int:
        """Sleep before retry number ``attempt + 1`` (Retry-After wins over backoff), or raise when out of retries."""
        status = f"{resp.status_code} " if resp is not None else ""
        if attempt >= self.source.max_retries:
            raise FhirServerError(f"FHIR server kept failing {what}: {status}{reason} ({attempt + 1} attempts)")
        delay = _retry_after(resp) if resp is not None else None
        if delay is None:
            delay = self.source.backoff * 2**attempt
        log.info(
            "retrying %s in %.2f s after %s%s (retry %d of %d)",
            what,
            delay,
            status,
            reason,
            attempt + 1,
            self.source.max_retries,
        )
        time.sleep(delay)
        return attempt + 1

    def bearer(self) -> str | None:
        if self.source.client_id is not None and (
            self.access_token is None or (self.expires_at is not None and time.monotonic() >= self.expires_at)
        ):
            self.fetch_token()
        return self.access_token

    def fetch_token(self) -> None:
        """SMART Backend Services: trade a freshly signed client assertion for an access token."""
        src = self.source
        assert src.client_id is not None and src.private_key_pem is not None
        token_url = self.token_url or self.discover_token_url()
        self.token_url = token_url
        what = f"token request to {_strip_query(token_url)}"
        attempt = 0
        while True:
            now = int(time.time())
            claims = {
                "iss": src.client_id,
                "sub": src.client_id,
                "aud": token_url,
                "iat": now,
                "exp": now + ASSERTION_LIFETIME,
                "jti": str(uuid.uuid4()),
            }
            headers = {"kid": src.key_id} if src.key_id else None
            assertion = jwt.encode(claims, src.private_key_pem, algorithm=src.algorithm, headers=headers)
            self.secrets.add(assertion)
            form = {
                "grant_type": "client_credentials",
                "scope": src.scope,
                "client_assertion_type": ASSERTION_TYPE,
                "client_assertion": assertion,
            }
            started = time.monotonic()
            try:
                resp = self.client.post(
                    token_url, data=form, headers={"Accept": "application/json"}, timeout=src.timeout
                )
            except httpx.TransportError as exc:
                attempt = self.wait_or_fail(attempt, what, None, type(exc).__name__)
                continue
            if _retryable(resp.status_code):
                data = self.parse_json(resp, what, strict=False)
                attempt = self.wait_or_fail(attempt, what, resp, self.error_text(resp, data))
                continue
            break
        data = self.parse_json(resp, what, strict=False)
        token = data.get("access_token")
        if not resp.is_success or not isinstance(token, str) or not token:
            detail = self.error_text(resp, data) if data else "no access_token in the response"
            raise FhirServerError(f"SMART {what} failed: {resp.status_code} {detail}")
        self.secrets.add(token)
        self.access_token = token
        try:
            lifetime = float(data["expires_in"])
        except (KeyError, TypeError, ValueError):
            self.expires_at = None  # unknown lifetime: rely on the 401 refresh
        else:
            self.expires_at = started + lifetime - min(TOKEN_REFRESH_MARGIN, lifetime * 0.1)

    def discover_token_url(self) -> str:
        url = f"{self.source.base_url}/.well-known/smart-configuration"
        resp = self.get(url, ".well-known/smart-configuration", auth=False)
        data = self.parse_json(resp, ".well-known/smart-configuration", strict=False)
        endpoint = data.get("token_endpoint")
        if not resp.is_success or not isinstance(endpoint, str) or urlsplit(endpoint).scheme not in ("http", "https"):
            raise FhirServerError(
                f"no token_url given and {url} has no token_endpoint ({resp.status_code}); pass token_url"
            )
        return endpoint

    # -- messages -------------------------------------------------------------------------------------------------

    def parse_json(self, resp: httpx.Response, what: str, *, strict: bool = True) -> dict[str, Any]:
        """The JSON object in ``resp``; not JSON raises when ``strict``, else gives {} (error bodies may be HTML)."""
        try:
            data = orjson.loads(resp.content)
        except orjson.JSONDecodeError:
            data = None
        if isinstance(data, dict):
            return data
        if not strict:
            return {}
        ctype = resp.headers.get("content-type", "no content type")
        snippet = self.scrub(" ".join(resp.text[:120].split())) or "empty body"
        raise FhirServerError(
            f"FHIR server answered {what} with {resp.status_code} {ctype} that is not a JSON resource: {snippet!r}"
        )

    def error_text(self, resp: httpx.Response, data: dict[str, Any]) -> str:
        """Why the server said no: OperationOutcome issues, an OAuth error, or the HTTP reason phrase."""
        if data.get("resourceType") == "OperationOutcome":
            return f"{self.scrub(_outcome_text(data))} (OperationOutcome)"
        if isinstance(data.get("error"), str):  # OAuth 2 error response (RFC 6749 section 5.2)
            desc = data.get("error_description")
            return self.scrub(f"{data['error']}: {desc}" if isinstance(desc, str) else data["error"])[:300]
        return resp.reason_phrase or "error"

    def scrub(self, text: str) -> str:
        for secret in self.secrets:
            text = text.replace(secret, "***")
        return text

    def display(self, url: str) -> str:
        """``url`` for messages: relative to the base URL, with secret-looking query values masked."""
        base = self.source.base_url + "/"
        parts = urlsplit(url)
        query = [(k, "***" if _is_secret_param(k) else v) for k, v in parse_qsl(parts.query, keep_blank_values=True)]
        path = f"{parts.scheme}://{_host(parts)}{parts.path}"  # a server's link with user:password@ shows neither
        path = path[len(base) :] if path.startswith(base) else path
        return f"{path}?{urlencode(query, safe='/:,|*')}" if query else path


def _outcome_text(outcome: dict[str, Any]) -> str:
    texts: list[str] = []
    for issue in outcome.get("issue") or ():
        if not isinstance(issue, dict):
            continue
        details = issue.get("details") if isinstance(issue.get("details"), dict) else {}
        codings = [c for c in details.get("coding") or () if isinstance(c, dict)]
        text = (
            issue.get("diagnostics")
            or details.get("text")
            or next((c.get("display") or c.get("code") for c in codings if c.get("display") or c.get("code")), None)
            or issue.get("code")
            or ""
        )
        text = " ".join(str(text).split())
        if text and text not in texts:
            texts.append(text)
    joined = "; ".join(texts) or "no issue text"
    return joined if len(joined) <= 300 else joined[:297] + "..."


def _retryable(status: int) -> bool:
    return status == 429 or (500 <= status <= 599 and status not in (501, 505))


def _retry_after(resp: httpx.Response) -> float | None:
    """Seconds from a Retry-After header (delta-seconds or HTTP-date), capped at MAX_RETRY_AFTER."""
    value = resp.headers.get("retry-after")
    if value is None:
        return None
    try:
        seconds = float(value)
    except ValueError:
        try:
            seconds = email.utils.parsedate_to_datetime(value).timestamp() - time.time()
        except (TypeError, ValueError):
            return None
    if math.isnan(seconds):
        return None
    return min(max(seconds, 0.0), MAX_RETRY_AFTER)


def _origin(url: str) -> str:
    parts = urlsplit(url)
    return f"{parts.scheme}://{parts.netloc}".lower()


def _strip_query(url: str) -> str:
    parts = urlsplit(url)
    return f"{parts.scheme}://{_host(parts)}{parts.path}"


def _host(parts) -> str:
    """host[:port] of a split URL, without any user name or password it carries."""
    return parts.netloc.rpartition("@")[2]


def _has_userinfo(url: str | None) -> bool:
    return isinstance(url, str) and "@" in urlsplit(url).netloc


def _is_secret_param(name: str) -> bool:
    lowered = name.lower()
    return lowered in _SECRET_PARAMS or any(word in lowered for word in _SECRET_PARAM_WORDS)
