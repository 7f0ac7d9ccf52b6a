"""Features at the bedside from prefetched FHIR, with the training feature definitions and the ingest mapping.

Each prefetched resource is decoded straight from the request's bytes by the ingest's own typed decoder and mapped
by `careloop.ingest.mapping` (the same units, codes and quarantine rules as the event store), and the feature set
is evaluated for the one index stay by `careloop.features.rows.StayFeatures`, which a conformance test holds equal
to the SQL engine that made the training features. Resources about another patient are not used (and are
counted), nor are OperationOutcomes; a resource the mapping refuses is noted with its reason.
"""

from __future__ import annotations

import datetime as dt
import functools
import hashlib
import re
import ssl
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

import msgspec
import orjson
import pyarrow as pa

from careloop.features.rows import Record, Stay, StayFeatures
from careloop.features.rows import location_names as stay_location_names
from careloop.features.spec import FeatureSet
from careloop.ingest import model as M
from careloop.ingest.mapping import (
    SYSTEMS,
    Batch,
    Context,
    Reject,
    Skip,
    decode,
    map_resource,
    medication_definition,
    observation_codes,
    observation_time,
    resolve,
    void_reason,
)
from careloop.ingest.versions import meta_version, preference
from careloop.tasks.cohort import age_in_years

PREFETCH = {  # CDS Hooks prefetch templates for one patient's record (`prefetch_templates` narrows the Observations)
    "patient": "Patient/{{context.patientId}}",
    "encounters": "Encounter?patient={{context.patientId}}",
    "conditions": "Condition?patient={{context.patientId}}",
    "observations": "Observation?patient={{context.patientId}}",
    "medications": "MedicationRequest?patient={{context.patientId}}&_include=MedicationRequest:medication",
    "procedures": "Procedure?patient={{context.patientId}}",
    "coverage": "Coverage?beneficiary={{context.patientId}}",
}
REQUIRED_KEYS = ("patient", "encounters")  # without these there is no index stay to score
_SYSTEM_OF = {prefix: url for url, prefix in SYSTEMS.items()}  # LOINC -> http://loinc.org
_PATIENT_REFS = ("subject", "patient", "beneficiary")
_ENC_KEYS = ("encounter_id", "class", "start", "end", "priority", "admit_source", "location_ref", "reason_code",
             "diagnosis_ref", "discharge_disposition", "discharge_disposition_nubc")


def observation_tokens(fs: FeatureSet | StayFeatures) -> list[str] | None:
    """The FHIR token search values (`system|code`, or `system|` for a whole code system) that select every
    Observation some feature of `fs` could read, or None when a feature may read any Observation.

    An Observation's events carry the codes of its code and its components, each as PREFIX/code for a system careloop
    knows (`SYSTEMS`); so a feature reads Observations only through an exact code of such a system, or through a
    prefix that one of those codes can start with (then the whole system is asked for: a search cannot say "codes
    starting with"). A feature counting events by source Observation, or a prefix that could match several systems'
    codes at once, needs them all."""
    features = fs.fs.features if isinstance(fs, StayFeatures) else fs.features
    tokens: set[str] = set()
    for f in features:
        if f.source == "Observation":
            return None
        if f.code and f.kind in ("measurement", "latest_text"):
            system, sep, code = f.code.partition("/")
            if sep and system in _SYSTEM_OF and code:
                tokens.add(f"{_SYSTEM_OF[system]}|{code}")
        prefixes = [f.prefix] if f.prefix else ["ICD10CM/"] if f.kind == "comorbidity" else []
        for p in prefixes:
            hits = [s for s in _SYSTEM_OF if p.startswith(f"{s}/") or f"{s}/".startswith(p)]
            if len(hits) > 1:
                return None
            tokens.update(f"{_SYSTEM_OF[s]}|" for s in hits)
    whole = {t for t in tokens if t.endswith("|")}
    return sorted(t for t in tokens if t in whole or t.split("|", 1)[0] + "|" not in whole)


def prefetch_templates(fs: FeatureSet | StayFeatures) -> dict[str, str]:
    """The service's prefetch templates: `PREFETCH`, with the Observation search narrowed to the codes the features
    read (`combo-code`: the Observation's code or a component's), so that the EHR sends only the data the model
    needs (the minimum necessary) rather than every Observation of the patient's record."""
    out = dict(PREFETCH)
    tokens = observation_tokens(fs)
    if tokens == []:  # no feature reads an Observation: none is asked for
        del out["observations"]
    elif tokens is not None:
        out["observations"] = f"{PREFETCH['observations']}&combo-code={','.join(tokens)}"
    return out


@dataclass
class Prefetched:
    """The usable resources of a request, mapped, and what was set aside and why (for the audit log)."""

    received: list[tuple[str, Any]] = field(default_factory=list)  # (key, its value's JSON bytes as received)
    used: list[tuple[tuple[str, str], Any]] = field(default_factory=list)  # each resource about the patient:
    # ((type, id), the decoded resource)
    batch: Batch = field(default_factory=Batch)  # their rows in the store's tables
    missing: list[str] = field(default_factory=list)  # keys absent or null
    outcomes: list[str] = field(default_factory=list)  # keys answered with an OperationOutcome (or a Bundle holding
    # one that says its search failed)
    malformed: list[str] = field(default_factory=list)  # keys whose value is not a resource, a Bundle or null
    partial: list[str] = field(default_factory=list)  # keys answered with only a page of the search (see is_page)
    foreign: int = 0  # resources about another patient (not used)
    rejected: list[str] = field(default_factory=list)  # resources the mapping refused, with the reason
    deferred: list[Any] = field(default_factory=list)  # decoded, mapped once the index stay is known (see below)
    unread: int = 0  # deferred resources no feature could read, left unmapped
    patient: Any = None  # the Patient resource (decoded)
    ctx: Context = field(default_factory=Context)

    def digest(self) -> str:
        """SHA-256 of the prefetch as received: for each key the service asked for, in the order of its templates,
        the key, a NUL, the value's JSON bytes exactly as the EHR sent them (or, for data read from the FHIR server,
        as serialised by orjson), and a NUL. Audit records carry this, never the data; the EHR can compute it from
        what it sent, and two calls with the same digest and model had the same inputs."""
        h = hashlib.sha256()
        for key, raw in self.received:
            h.update(key.encode())
            h.update(b"\0")
            h.update(raw)
            h.update(b"\0")
        return h.hexdigest()


class _Search(msgspec.Struct):
    mode: Any = None


class _Link(msgspec.Struct):
    relation: Any = None
    url: Any = None


class _Entry(msgspec.Struct):
    resource: msgspec.Raw = msgspec.Raw(b"null")
    search: Any = None


class _Value(msgspec.Struct):
    """A prefetch value's outline: its type and, for a Bundle, its entries' resources left undecoded, its links
    and its total (a page of a search is not the whole record)."""

    resourceType: Any = None
    entry: list[_Entry] | None = None
    link: Any = None
    total: Any = None


_value_decoder = msgspec.json.Decoder(_Value)


class _Outcome(msgspec.Struct, tag_field="resourceType", tag="OperationOutcome"):
    """An OperationOutcome: a prefetch the EHR could not fulfil, or, inside a Bundle, a search warning (or, with an
    issue of severity error or fatal, a search that failed: see `_failed`)."""

    issue: Any = None


def _failed(issue: Any) -> bool:
    """Does an OperationOutcome's `issue` say its search failed (severity error or fatal), rather than warn?"""
    return isinstance(issue, list) and any(isinstance(i, dict) and i.get("severity") in ("error", "fatal")
                                           for i in issue)


class _SearchEntry(msgspec.Struct):
    resource: M.Resource | _Outcome | None = None
    search: _Search | None = None


class _SearchBundle(msgspec.Struct, tag_field="resourceType", tag="Bundle"):
    entry: list[_SearchEntry] = []
    link: list[_Link] = []
    total: Any = None


def _field(obj: Any, name: str) -> Any:
    return obj.get(name) if isinstance(obj, dict) else getattr(obj, name, None)


def next_link(link: Any) -> Any:
    """The `next` link's url of a Bundle's `link` (decoded or parsed), or None."""
    for lk in link if isinstance(link, list) else ():
        if _field(lk, "relation") == "next":
            return _field(lk, "url") or True  # a next link without a url still says there is more
    return None


def _has_previous(link: Any) -> bool:
    """Does the Bundle link to an earlier page (`previous`, or `prev` as some servers write it): it is not the first
    page, so the matches before it are not here."""
    return any(_field(lk, "relation") in ("previous", "prev") for lk in (link if isinstance(link, list) else ()))


def _count(total: Any) -> int | None:
    """`Bundle.total` as a number: an unsignedInt, or one written as a whole float or a digit string by a lax
    server (read as meant, not ignored); None when absent or not a count."""
    if isinstance(total, bool):
        return None
    if isinstance(total, int):
        return total
    if isinstance(total, float) and total.is_integer():
        return int(total)
    if isinstance(total, str) and total.strip().isdigit():
        return int(total)
    return None


def is_page(link: Any, total: Any, entries: Any) -> bool:
    """Is this Bundle only part of its search: a `next` link, a `previous` one, or a `total` above the matches it
    holds (entries whose search mode is `match` or unstated; `include` and `outcome` entries are not counted)?"""
    if next_link(link) is not None or _has_previous(link):
        return True
    count = _count(total)
    if count is None:
        return False
    modes = (_field(_field(e, "search"), "mode") for e in entries if isinstance(e, (dict, msgspec.Struct)))
    return count > sum(m in (None, "match") for m in modes)


# A well-formed prefetch value in one pass: a resource careloop maps, a Bundle of them (search warnings allowed), an
# OperationOutcome, or null. Anything else (a resource type careloop skips, a field of the wrong type, a malformed
# entry) fails here and the value is read resource by resource instead, so that each problem is named and the rest
# is still used: both ways give the same resources (tested).
_fast_value = msgspec.json.Decoder(M.Resource | _SearchBundle | _Outcome | None)


@functools.cache
def fhir_tls() -> ssl.SSLContext:
    """The one TLS context for reading EHRs' FHIR servers (the CA bundle, or SSL_CERT_FILE / SSL_CERT_DIR when set).
    Building one loads the CAs, about 35 ms of CPU; per call, that would stall the event loop and every call on it."""
    import httpx

    return httpx.create_ssl_context()


def new_fhir_client(connections: int) -> Any:
    """An `httpx.AsyncClient` for reading EHRs' FHIR servers: no redirects followed (the token stays on the server
    it was sent to), the one TLS context, at most `connections` at once, and no cookies kept. A shared client would
    otherwise send one call's session cookie (a gateway's, set for one tenant or patient) with the next call's
    reads, whoever they are for."""
    import http.cookiejar

    import httpx

    refuse_all = http.cookiejar.CookieJar(policy=http.cookiejar.DefaultCookiePolicy(allowed_domains=[]))
    return httpx.AsyncClient(follow_redirects=False, verify=fhir_tls(), cookies=refuse_all,
                             limits=httpx.Limits(max_connections=connections, max_keepalive_connections=connections))


@dataclass
class FhirRead:
    """What `read_prefetch` got: each key's value; the keys still being read at the deadline (the server was too
    slow); and the keys it could not use, with why (an HTTP status, a link off the server, too large...)."""

    values: dict = field(default_factory=dict)
    unread: list[str] = field(default_factory=list)
    failed: dict[str, str] = field(default_factory=dict)
    widened: list[str] = field(default_factory=list)  # keys read through their `wider` search (see read_prefetch)


class _Unusable(Exception):
    """A key's search cannot be had whole; the message says why (no token, no patient data: fit for the audit)."""


class _Refused(_Unusable):
    """HTTP 400: the server does not take the search as written (e.g. a search parameter it does not support)."""


def fetch_prefetch(fhir_server: str, access_token: str, patient_id: str, keys: list[str], **kw: Any) -> dict:
    """`read_prefetch`'s values, for code outside an event loop (the same arguments)."""
    import asyncio

    try:
        asyncio.get_running_loop()
    except RuntimeError:
        return asyncio.run(read_prefetch(fhir_server, access_token, patient_id, keys, **kw)).values
    raise RuntimeError("fetch_prefetch blocks: inside an event loop, await read_prefetch instead")


async def read_prefetch(
    fhir_server: str,
    access_token: str,
    patient_id: str,
    keys: list[str],
    *,
    templates: Mapping[str, str] = PREFETCH,
    wider: Mapping[str, str] | None = None,
    timeout: float = 1.5,
    max_pages: int = 20,
    max_bytes: int = 8 << 20,
    max_total_bytes: int = 32 << 20,
    client: Any = None,
) -> FhirRead:
    """What the EHR did not prefetch, read from its FHIR server with the token it gave (never logged or kept).

    The keys are read at once, so the wait is the slowest search, not the sum of all; `timeout` bounds the whole
    read: at that time the reads still under way are cancelled (nothing is left waiting on a slow or dripping
    server) and named `unread`. A key is `failed`, so that the request defers rather than scores on part of the
    record, when any of its pages fails, is not a Bundle, is larger than `max_bytes` (or the call's pages together
    than `max_total_bytes`: each is parsed on the event loop), or is not all there in `max_pages`; its rebuilt
    Bundle keeps the first page's `total`, so that one that says more matches than were read is still seen as a
    page. A `next` link is followed only on the same server (scheme, host, port) and under its base path, so the
    token never leaves the EHR's FHIR server. `wider`: for a key whose search the server refuses (HTTP 400, as a
    server without `combo-code` answers), a broader search to read instead; the mapping keeps only what the
    features read from its superset, and the key is named in `widened`. `client`: a shared client
    (`new_fhir_client`: its connections are reused and its pool limits the reads in flight); by default one for
    this call."""
    import asyncio
    import contextlib
    import time

    import httpx

    base = fhir_server.rstrip("/")
    until = time.monotonic() + timeout
    received = [0]  # bytes of every page of this call
    late = object()  # what a search still under way at the deadline gives
    widened: list[str] = []
    headers = {"Authorization": f"Bearer {access_token}", "Accept": "application/fhir+json"}

    async def read(client: httpx.AsyncClient, url: str) -> dict:
        async with client.stream("GET", url, headers=headers, timeout=timeout) as r:
            if r.status_code != 200:
                raise (_Refused if r.status_code == 400 else _Unusable)(f"HTTP {r.status_code}")
            body = bytearray()
            async for chunk in r.aiter_bytes():
                body += chunk
                received[0] += len(chunk)
                if len(body) > max_bytes or received[0] > max_total_bytes:
                    raise _Unusable(f"larger than {max_bytes >> 20} MiB a page or {max_total_bytes >> 20} MiB a call")
        if time.monotonic() > until:
            raise TimeoutError  # too late to be used: not parsed (parsing holds the event loop)
        try:
            doc = orjson.loads(body)  # orjson refuses JSON nested too deeply
        except orjson.JSONDecodeError:
            raise _Unusable("not JSON (or nested too deeply)") from None
        if not isinstance(doc, dict):
            raise _Unusable("not a FHIR resource")
        return doc

    def url_of(template: str) -> str:
        return f"{base}/" + template.replace("{{context.patientId}}", patient_id)

    async def first_page(client: httpx.AsyncClient, key: str) -> dict:
        try:
            return await read(client, url_of(templates[key]))
        except _Refused:
            broader = (wider or {}).get(key)
            if broader is None or broader == templates[key]:
                raise
            try:
                doc = await read(client, url_of(broader))
            except _Unusable as e:
                raise _Unusable(f"HTTP 400, and {e} for the broader search") from None
            widened.append(key)
            return doc

    async def search(client: httpx.AsyncClient, key: str) -> Any:
        """The key's value (a read, or a searchset Bundle holding every page), `late`, or why it is not to be had."""
        try:
            doc = await first_page(client, key)
            if doc.get("resourceType") != "Bundle":
                return doc  # a read (the Patient), or an OperationOutcome: collect says what it is
            entries, pages, total = [], 0, doc.get("total")
            while True:
                found = doc.get("entry") or []
                entries += found if isinstance(found, list) else []
                pages += 1
                nxt = next_link(doc.get("link"))
                if nxt is None:
                    whole = {"resourceType": "Bundle", "type": "searchset", "entry": entries}
                    return whole if total is None else whole | {"total": total}
                if not isinstance(nxt, str) or not on_server(nxt, base):
                    raise _Unusable("a next link off the FHIR server")
                if pages >= max_pages:
                    raise _Unusable(f"more than {max_pages} pages")
                doc = await read(client, nxt)
                if doc.get("resourceType") != "Bundle":
                    raise _Unusable("a page that is not a Bundle")
        except (TimeoutError, httpx.TimeoutException):
            return late
        except _Unusable as e:
            return e
        except httpx.HTTPError as e:
            return _Unusable(type(e).__name__)

    async with contextlib.AsyncExitStack() as stack:
        if client is None:
            client = await stack.enter_async_context(new_fhir_client(len(keys) or 1))
        tasks = {key: asyncio.create_task(search(client, key)) for key in keys}
        try:
            if tasks:
                await asyncio.wait(tasks.values(), timeout=timeout)
        finally:  # at the deadline, or when the caller gives up: no read outlives the call
            for task in tasks.values():
                task.cancel()
            await asyncio.gather(*tasks.values(), return_exceptions=True)
    got = FhirRead()
    for key, task in tasks.items():
        result = late if task.cancelled() else task.result()
        if result is late:
            got.unread.append(key)
        elif isinstance(result, _Unusable):
            got.failed[key] = str(result)
        else:
            got.values[key] = result
    got.widened = [k for k in keys if k in widened and k in got.values]
    return got


def on_server(url: str, base: str) -> bool:
    """Is `url` on the FHIR server at `base`: the same scheme, host and port, and a path under the base's?"""
    import httpx

    try:
        u, b = httpx.URL(url), httpx.URL(base)
    except (httpx.InvalidURL, TypeError, ValueError):
        return False
    root = b.path.rstrip("/")
    return ((u.scheme, u.host, u.port) == (b.scheme, b.host, b.port) and not u.userinfo
            and (u.path == root or u.path.startswith(root + "/")) and not _climbs(u.raw_path.split(b"?")[0]))


_PATH_CHARS = re.compile(rb"[A-Za-z0-9\-._~!$&'()*+,;=:@/%]*")  # RFC 3986 pchar and "/", as sent


def _climbs(raw_path: bytes) -> bool:
    """Could a server read this path as leaving the directory it names? A dot segment, written plainly, encoded
    (`%2e`) or with parameters (`..;x`, which Java servers strip); a backslash (which some take for a slash); or
    anything a lenient server or proxy might decode into one: a percent sign left after one decoding (`%252e`),
    a control character, a space, or a byte outside ASCII (`%c0%ae`, fullwidth dots)."""
    from urllib.parse import unquote_to_bytes

    if not _PATH_CHARS.fullmatch(raw_path):
        return True
    path = unquote_to_bytes(raw_path)
    if any(c < 0x21 or c > 0x7E for c in path) or b"%" in path or b"\\" in path:
        return True
    return any(seg.split(b";")[0] in (b".", b"..") for seg in path.split(b"/"))


def _resources(value: Any) -> tuple[list[bytes] | None, bool]:
    """A prefetch value's resources as JSON bytes: the resource itself, or a Bundle's entries (None for an
    OperationOutcome or a Bundle holding one that says its search failed, `_MALFORMED` for anything that is not a
    resource or a Bundle); and whether it is only a page of its search."""
    if isinstance(value, (bytes, msgspec.Raw)):
        raw = bytes(value)
        try:
            outline = _value_decoder.decode(raw)
        except msgspec.DecodeError:  # not an object, or an odd Bundle (e.g. a non-list entry): read it generally
            try:
                return _resources(orjson.loads(raw))
            except (orjson.JSONDecodeError, RecursionError):
                return _MALFORMED, False
        if outline.resourceType == "OperationOutcome":
            return None, False
        if outline.resourceType == "Bundle":
            raws = [r for r in (bytes(e.resource) for e in outline.entry or ()) if r[:1] == b"{"]
            if any(b'"OperationOutcome"' in r and _failed_outcome(r) for r in raws):
                return None, False
            return raws, is_page(outline.link, outline.total, outline.entry or [])
        return ([raw] if isinstance(outline.resourceType, str) else _MALFORMED), False
    if not isinstance(value, dict) or not isinstance(value.get("resourceType"), str):
        return _MALFORMED, False
    if value.get("resourceType") == "OperationOutcome":
        return None, False
    bundle = value.get("resourceType") == "Bundle"
    items = value.get("entry", []) if bundle else [{"resource": value}]
    if not isinstance(items, list):
        return _MALFORMED, False
    if bundle and any(isinstance(e, dict) and isinstance(r := e.get("resource"), dict)
                      and r.get("resourceType") == "OperationOutcome" and _failed(r.get("issue")) for e in items):
        return None, False
    out = []
    for e in items:
        r = e.get("resource") if isinstance(e, dict) else None
        if isinstance(r, dict):
            try:
                out.append(orjson.dumps(r))
            except (TypeError, orjson.JSONEncodeError):  # e.g. an integer beyond 64 bits: refused like the mapping
                out.append(b"{}")
    return out, bundle and is_page(value.get("link"), value.get("total"), items)


def _failed_outcome(raw: bytes) -> bool:
    """Is this Bundle entry an OperationOutcome saying the search failed?"""
    try:
        res = orjson.loads(raw)
    except (orjson.JSONDecodeError, RecursionError):
        return False
    return isinstance(res, dict) and res.get("resourceType") == "OperationOutcome" and _failed(res.get("issue"))


def _about(res: Any, patient_id: str, ctx: Context) -> bool:
    """Does this resource belong to the patient (or to no patient at all, like a Location)? Its reference is read
    as ingest reads it (`Patient/p1/_history/4` and an absolute URL name p1; `Group/p1` does not), so training and
    the bedside take the same resources."""
    if type(res).__name__ == "Patient":
        return res.id == patient_id
    for key in _PATIENT_REFS:
        ref = getattr(res, key, None)
        if ref is not None and isinstance(ref.reference, str):
            return resolve(ref.reference, ctx) == ("Patient", patient_id)
    return True


def collect(prefetch: Mapping[str, Any] | None, patient_id: str, keys: tuple[str, ...] = tuple(PREFETCH), *,
            defer: tuple[str, ...] = ("Observation",)) -> Prefetched:
    """Gather and map the prefetched resources about `patient_id`, de-duplicated by type and id (a resource sent
    twice is read in its newest version, by the rule ingest applies: `ingest.versions`). Values may be parsed JSON
    (dicts) or undecoded JSON (`msgspec.Raw`, bytes: the service's fast path).

    Resources of the `defer` types (Observations: most of a record) are decoded and checked now but mapped by
    `bedside_features` once the index stay is known, and only those a feature could read at their time (an
    Observation from years ago whose code no feature reads over the whole record is never mapped). A deferred
    resource that is never mapped is never checked by the mapping either, so `rejected` does not list it."""
    out = Prefetched()
    rejected: set[tuple[str, str]] = set()
    chosen: dict[tuple[str, str], Any] = {}  # each resource once: the newest copy (`ingest.versions`) ...
    others: dict[tuple[str, str], list] = {}  # ... chosen among its copies, when it came more than once
    prefetch = prefetch or {}
    for key in keys:
        value = prefetch.get(key)
        if key in prefetch:
            out.received.append((key, value if isinstance(value, (bytes, msgspec.Raw)) else _dumps(value)))
        items, page = _decoded(value)
        if page:
            out.partial.append(key)
        if items is None:
            out.outcomes.append(key)
            continue
        if items is _MISSING:
            out.missing.append(key)
            continue
        if items is _MALFORMED:
            out.malformed.append(key)
            continue
        for res in items:
            if isinstance(res, Skip):
                continue  # OperationOutcome entries (search warnings) and types the features do not read
            if isinstance(res, Reject):
                if res.rtype and res.rid:
                    if (res.rtype, res.rid) in rejected:
                        continue
                    rejected.add((res.rtype, res.rid))
                out.rejected.append(f"{res.rtype or 'resource'}: {res.reason}")
                continue
            if type(res) is M.Medication:  # a drug a request names (`_include`): read as the requests are mapped
                if res.id:
                    out.ctx.medications[res.id] = medication_definition(res)
                continue
            ident = (type(res).__name__, str(res.id))
            prior = chosen.get(ident)
            if prior is None:
                chosen[ident] = res
            elif prior != res:  # a repeat with the same content: nothing to choose
                others.setdefault(ident, [prior]).append(res)
    ctx = out.ctx
    for ident, copies in others.items():
        chosen[ident] = _newest_mappable(copies, ctx, out.rejected)
    for ident, res in chosen.items():
        if not _about(res, patient_id, ctx):
            out.foreign += 1
            continue
        out.used.append((ident, res))
        if ident[0] == "Patient":
            out.patient = res
        if ident[0] in defer:
            out.deferred.append(res)
            continue
        try:
            map_resource(res, ctx, out.batch)
        except Reject as e:
            out.rejected.append(f"{ident[0]}: {e.reason}")
    return out


def _newest_mappable(copies: list, ctx: Context, rejected: list[str]) -> Any:
    """The copy of a resource sent more than once (listed in arrival order) that ingest would keep: the newest
    (`ingest.versions.preference`) that the mapping accepts; each newer one it refuses is listed
    in `rejected`, as ingest quarantines it. If none is accepted, the newest, left for the mapping to refuse (or
    not to read) as it would a lone copy."""
    order = preference([meta_version(c.meta) for c in copies])
    refused = []
    for i in order:
        try:
            map_resource(copies[i], ctx, Batch())  # a trial: a refused resource leaves nothing behind anyway
        except Reject as e:
            refused.append(f"{type(copies[i]).__name__}: {e.reason}")
            continue
        rejected.extend(refused)
        return copies[i]
    rejected.extend(refused[1:])
    return copies[order[0]]


def _dumps(value: Any) -> bytes:
    try:
        return orjson.dumps(value)
    except (TypeError, orjson.JSONEncodeError):  # e.g. an integer beyond 64 bits, parsed by another library
        import json

        return json.dumps(value, default=str).encode()


_MISSING: list = []  # a sentinel: the key is absent or null
_MALFORMED: list = []  # a sentinel: the value is not a resource, a Bundle or null (a string, a list, {})


def _decoded(value: Any) -> tuple[list | None, bool]:
    """A prefetch value's resources, decoded (each a resource Struct, or the Skip or Reject that says why not);
    `_MISSING` for an absent or null value, `_MALFORMED` for one that is no resource, None for an OperationOutcome
    (or a Bundle saying its search failed); and whether the value is only a page of
    its search (a Bundle with a `next` link, or fewer matches than its `total`)."""
    if value is None:
        return _MISSING, False
    if isinstance(value, (bytes, msgspec.Raw)):
        try:
            fast = _fast_value.decode(value)
        except (msgspec.DecodeError, RecursionError):
            pass  # read it resource by resource below, to say what is wrong with which
        else:
            if fast is None:
                return _MISSING, False
            if isinstance(fast, _Outcome):
                return None, False
            if isinstance(fast, _SearchBundle):
                if any(isinstance(e.resource, _Outcome) and _failed(e.resource.issue) for e in fast.entry):
                    return None, False
                return ([e.resource for e in fast.entry if e.resource is not None
                         and not isinstance(e.resource, _Outcome)], is_page(fast.link, fast.total, fast.entry))
            return [fast], False
        if bytes(value).strip() == b"null":
            return _MISSING, False
    items, page = _resources(value)
    if items is None or items is _MALFORMED:
        return items, page
    return [_decode_one(raw) for raw in items], page


def _decode_one(raw: bytes) -> Any:
    try:
        return decode(raw)
    except (Skip, Reject) as e:
        return e
    except RecursionError:
        return Reject("malformed resource", "nested too deeply")


CURRENT_STAY_H = 24  # patient-view: a stay ended this recently is still the one a chart opened now is about


def _day(us: int) -> str:
    return (dt.datetime(1970, 1, 1, tzinfo=dt.UTC) + dt.timedelta(microseconds=us)).date().isoformat()


@dataclass
class BedsideFeatures:
    row: dict[str, Any] | None  # the features of the stay ({column: value}), or None when it cannot be scored
    reason: str | None  # why not, for the deferral card and the audit log
    index_time: dt.datetime | None = None
    age: float | None = None
    encounter_class: str | None = None
    disposition: str | None = None  # the stay's discharge disposition (HL7 code), when already recorded
    disposition_nubc: str | None = None  # ... and its NUBC patient status code
    death_us: int | None = None  # the patient's recorded death (UTC microseconds)
    deceased_no_time: bool = False  # the Patient says deceasedBoolean: true (a death without a time)
    index_us: int | None = None
    unit: str | None = None  # the stay's ward (its Encounter.location), for the unit's alert budget
    quiet: bool = False  # nothing to score, and nothing to say either (a chart opened with no current stay)
    end_us: int | None = None  # the stay's recorded end (UTC microseconds), None while it is open
    age_years: int | None = None  # calendar age in whole years at the index time, as the cohort's age exclusion
    encounter_id: str | None = None  # the stay scored (the context's at a discharge, the current one on a chart)


_EVALUATORS: dict[int, tuple[FeatureSet, StayFeatures]] = {}


def evaluator(fs: FeatureSet | StayFeatures) -> StayFeatures:
    """The feature set's per-stay evaluator (made once per feature set)."""
    if isinstance(fs, StayFeatures):
        return fs
    hit = _EVALUATORS.get(id(fs))
    if hit is None or hit[0] is not fs:
        hit = _EVALUATORS[id(fs)] = (fs, StayFeatures(fs))
    return hit[1]


_DIRECTORY_KEYS = ("resource_type", "resource_id", "name", "identifier_system", "identifier_value")


def location_names(directory: pa.Table | Mapping[str, str] | None) -> dict[str, str]:
    """Location names by id and by conditional reference (`features.rows.location_names`), from a directory table
    (contracts.DIRECTORY) or as given."""
    if directory is None:
        return {}
    if isinstance(directory, Mapping):
        return dict(directory)
    cols = directory.select(list(_DIRECTORY_KEYS)).to_pydict()
    return stay_location_names(zip(*(cols[k] for k in _DIRECTORY_KEYS), strict=True))


def _map_deferred(pre: Prefetched, features: StayFeatures, stay: Stay) -> None:
    """Map the deferred Observations some feature of `stay` could read; the rest are left unmapped."""
    deferred, pre.deferred = pre.deferred, []
    for res in deferred:
        try:
            wanted = features.wants(observation_codes(res), "Observation", observation_time(res), stay)
        except Reject:
            wanted = True  # let the mapping say why, as for any resource
        if not wanted:
            pre.unread += 1
            continue
        try:
            map_resource(res, pre.ctx, pre.batch)
        except Reject as e:
            pre.rejected.append(f"Observation: {e.reason}")


def _micros(t: dt.datetime) -> int:
    return (t - dt.datetime(1970, 1, 1, tzinfo=dt.UTC)) // dt.timedelta(microseconds=1)


def bedside_features(
    fs: FeatureSet | StayFeatures,
    pre: Prefetched,
    patient_id: str,
    encounter_id: str | None,
    *,
    directory: pa.Table | Mapping[str, str] | None = None,
    now: dt.datetime | None = None,
) -> BedsideFeatures:
    """The index stay's features at discharge: its end time if recorded, else `now` (the discharge is happening).
    Without `encounter_id` (a chart opened: patient-view), the current inpatient stay: the latest one still open or
    ended within `CURRENT_STAY_H` hours; a chart with none is quiet (a stay that ended years ago is no discharge
    to warn about, and a card on every outpatient chart would be noise)."""
    enc = pre.batch.enc
    ids = enc["encounter_id"]
    if not ids:
        return BedsideFeatures(None, "no encounter for the patient in the prefetched data")
    now_us = _micros(now or dt.datetime.now(dt.UTC))
    if encounter_id is None:  # patient-view: the current inpatient stay
        imp = [i for i, c in enumerate(enc["class"]) if c == "IMP" and enc["start"][i] is not None]
        if not imp:
            return BedsideFeatures(None, "no inpatient stay in the record", quiet=True)
        since = now_us - CURRENT_STAY_H * 3_600_000_000
        current = [i for i in imp if enc["end"][i] is None or enc["end"][i] >= since]
        if not current:
            last = max(enc["end"][i] for i in imp)
            return BedsideFeatures(None, f"no current inpatient stay (the latest ended {_day(last)})", quiet=True)
        j = max(current, key=lambda i: enc["start"][i])
    elif encounter_id in ids:
        j = ids.index(encounter_id)
    else:
        sent = next((res for ident, res in pre.used if ident == ("Encounter", encounter_id)), None)
        if sent is not None and void_reason(sent):  # sent, but its status withdraws it
            return BedsideFeatures(None, f"the context's encounter is {sent.status} (not a stay to score)")
        return BedsideFeatures(None, "the context's encounter is not in the prefetched data")
    row = {k: enc[k][j] for k in _ENC_KEYS}
    if row["start"] is None:
        return BedsideFeatures(None, "the index stay has no admission time", encounter_class=row["class"])
    index_us = row["end"] if row["end"] is not None and row["end"] <= now_us else now_us
    stay = Stay(row["encounter_id"], row["start"], index_us, row["end"], row["class"], row["priority"],
                row["admit_source"], row["location_ref"], row["reason_code"], row["diagnosis_ref"])
    if pre.deferred:
        _map_deferred(pre, evaluator(fs), stay)
    pat = pre.batch.pat
    birth, death = next(((b, d) for p, b, d in zip(pat["patient_id"], pat["birth_date"], pat["deceased_time"],
                                                    strict=True) if p == patient_id), (None, None))
    # the service's directory as given (a Mapping is read, never copied, on every call); the prefetch's own
    # Locations over it when it sent any
    locations: Mapping[str, str] = directory if isinstance(directory, Mapping) else location_names(directory)
    d = pre.batch.dir
    if "Location" in d["resource_type"]:
        locations = {**locations, **stay_location_names(zip(*(d[k] for k in _DIRECTORY_KEYS), strict=True))}
    encounters = [{"encounter_id": e, "class": c, "start": s, "end": t}
                  for e, c, s, t in zip(ids, enc["class"], enc["start"], enc["end"], strict=True)]
    values = evaluator(fs)(Record(pre.batch.ev, encounters, birth, locations), stay)
    index_time = dt.datetime(1970, 1, 1, tzinfo=dt.UTC) + dt.timedelta(microseconds=index_us)
    deceased = pre.patient is not None and pre.patient.deceasedBoolean is True
    return BedsideFeatures(values, None, index_time, values.get("age"), row["class"], row["discharge_disposition"],
                           row["discharge_disposition_nubc"], death, deceased, index_us, row["location_ref"],
                           end_us=row["end"] if row["end"] is not None and row["end"] <= now_us else None,
                           age_years=None if birth is None else age_in_years(birth, index_us),
                           encounter_id=row["encounter_id"])
