"""The CDS Hooks 2.0 service: discovery, the readmission-risk services, feedback, admin, and the audit of all of it.

The web layer is thin: `Service` holds the verified model bundle, the state store and the audit log and decides
(`Service.handle`); FastAPI routes authenticate, parse, enforce the deadline and turn decisions into responses.
Every call, including refusals, is appended to the hash-chained audit log, with no token, name or note in it.

A scored call's path: the token is verified on the event loop (on a thread when its key must first be fetched from
the client's JWKS URL; a replay to this process is refused from memory);
the body is decoded with msgspec, its prefetch left as raw JSON; `handle` runs on the process's one scoring thread
(decode and map each resource, evaluate the features, score, decide), under the deadline counted from arrival;
then the call's jti claim, card and audit record go to the journal's next group commit, and the answer goes out
once that commit is durable (`journal.py`).
"""

from __future__ import annotations

import asyncio
import contextvars
import datetime as dt
import functools
import hashlib
import json
import logging
import math
import re
import threading
import time
import uuid as uuidlib
from concurrent.futures import ThreadPoolExecutor
from contextlib import asynccontextmanager
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Annotated, Any, Literal, NamedTuple
from zoneinfo import ZoneInfo

import httpx
import msgspec
import numpy as np
import orjson
import pyarrow.parquet as pq
from fastapi import FastAPI, Request
from fastapi.responses import HTMLResponse, JSONResponse, PlainTextResponse, Response
from pydantic import BaseModel, ConfigDict, Field, ValidationError
from starlette.datastructures import Headers

from careloop.serve import cards as C
from careloop.serve.auth import RecentJti
from careloop.serve.features import (
    PREFETCH,
    REQUIRED_KEYS,
    BedsideFeatures,
    FhirRead,
    bedside_features,
    collect,
    evaluator,
    fhir_tls,
    location_names,
    new_fhir_client,
    prefetch_templates,
    read_prefetch,
)
from careloop.serve.journal import Journal, Work
from careloop.state import StateError
from careloop.state.store import ModelPolicy
from careloop.tasks.cohort import excluded_at_index

READY_TIMEOUT_S = 1.0  # /readyz: the state store must answer a read within this
MAX_BODY = 5 * 1024 * 1024  # bytes; a larger request is refused with 413 before it is parsed
_USER_ID = re.compile(r"[\x21-\x7e]{1,256}")  # a FHIR reference such as Practitioner/123 (else not kept)
UNKNOWN_UNIT = "hospital"  # the unit of a stay whose Encounter names no location: its budget is the hospital's
NARROW_RETRY_S = 3600.0  # a FHIR server that refused a narrowed search is asked the broader one this long
SERVICES = {
    "readmission-risk": ("encounter-discharge", "30-day readmission risk at discharge"),
    "readmission-risk-patient-view": ("patient-view", "30-day readmission risk of the current inpatient stay"),
}
MIN_AGE = 18.0
log = logging.getLogger(__name__)
JOURNAL_LINGER_S = 0.005  # how long the journal waits for calls being scored to share its transaction


_Text = Annotated[str, msgspec.Meta(min_length=1)]


class FhirAuthorization(msgspec.Struct):
    access_token: _Text
    token_type: Literal["Bearer"]
    expires_in: int
    scope: _Text
    subject: _Text
    patient: str | None = None


class HookRequest(msgspec.Struct):
    """A CDS Hooks call, decoded straight from its bytes (field names as the specification spells them). The
    prefetch values stay undecoded JSON until the mapping reads each resource with its typed decoder."""

    hook: _Text
    hookInstance: _Text
    context: dict[str, Any]
    fhirServer: str | None = None
    fhirAuthorization: FhirAuthorization | None = None
    prefetch: dict[str, msgspec.Raw] | None = None

    @classmethod
    def decode(cls, raw: bytes) -> HookRequest:
        """The request, or `msgspec.DecodeError` naming the offending path."""
        return _hook_decoder.decode(raw)


_hook_decoder = msgspec.json.Decoder(HookRequest)


class FeedbackItem(BaseModel):
    model_config = ConfigDict(extra="forbid")
    card: str = Field(min_length=1)
    outcome: Literal["accepted", "overridden"]
    acceptedSuggestions: list[dict[str, str]] | None = None
    overrideReason: dict[str, Any] | None = None
    outcomeTimestamp: dt.datetime = Field(strict=True)  # RFC 3339 text (strict: not a Unix number)
    extension: dict[str, Any] | None = None  # CDS Hooks extensions: accepted, not stored (careloop defines none)


class FeedbackRequest(BaseModel):
    model_config = ConfigDict(extra="forbid")
    feedback: list[FeedbackItem] = Field(min_length=1, max_length=100)
    extension: dict[str, Any] | None = None


class SwitchRequest(BaseModel):
    model_config = ConfigDict(extra="forbid")
    enabled: bool


class ThresholdRequest(BaseModel):
    model_config = ConfigDict(extra="forbid")
    # a calibrated risk; null goes back to the bundle's operating point (the key itself is required)
    threshold: float | None = Field(..., gt=0, lt=1, allow_inf_nan=False)


def outcome(status: int, text: str) -> JSONResponse:
    """A non-2xx answer with a FHIR OperationOutcome body (CDS Hooks 3.0 ballot recommends one)."""
    code = {400: "invalid", 401: "login", 403: "forbidden", 404: "not-found", 412: "incomplete",
            413: "too-costly", 429: "throttled", 503: "transient"}.get(
        status, "exception"
    )
    body = {"resourceType": "OperationOutcome", "issue": [{"severity": "error", "code": code, "diagnostics": text}]}
    return JSONResponse(body, status_code=status)


def unauthorized() -> JSONResponse:
    """401 with no detail, and the bare challenge RFC 6750 asks of every 401 (it names no error either)."""
    return JSONResponse({}, status_code=401, headers={"WWW-Authenticate": "Bearer"})


class CardRow(NamedTuple):
    """A card shown, as the state store records it (StateStore.record_card_in's arguments, in order)."""

    uuid: str
    service: str
    patient: str
    model_hash: str
    risk: float | None
    indicator: str
    unit: str | None
    at: dt.datetime
    user: str | None = None  # whom it was shown to (the hook's userId): the feedback export names them
    kind: str | None = None  # which info card it is (`info_kind`): the same one is not shown again within the window


@dataclass
class Decision:
    cards: list[dict]
    patient: str | None = None
    score: float | None = None
    deferral: str | None = None
    digest: str | None = None
    note: str | None = None
    extra: dict = field(default_factory=dict)
    card_row: CardRow | None = None  # the card to remember
    refetch: list[str] | None = None  # not decided yet: these keys are first to be read from the FHIR server
    precondition: str | None = None  # required data neither sent nor readable from the FHIR server: a 412, why
    encounter: str | None = None  # the stay the decision is about (audited: monitoring links alerts to stays by it)


class Service:
    """Everything a request needs, loaded once: the bundle (verified), the model, its features, the state store."""

    def __init__(self, bundle_path: Path, config, *, verifier=None, store=None) -> None:
        from careloop.audit import AuditLog
        from careloop.explain import column_infos
        from careloop.features.spec import FeatureSet
        from careloop.registry import verify
        from careloop.reports import load_facts
        from careloop.serve.auth import AdminAuth, TokenVerifier
        from careloop.state import StateStore

        self.config = config
        self.base = config.base_url.rstrip("/")
        self.bundle = verify(bundle_path)
        self.meta = self.bundle.metadata
        if "features.yaml" not in self.bundle.files:
            raise ValueError("this bundle was trained on a flat table; the service needs a feature set")
        self.model = self.bundle.model()
        self.fs = FeatureSet.from_text((self.bundle.path / "features.yaml").read_text(), "features.yaml")
        directory = self.bundle.path / "directory.parquet"
        self.locations = location_names(pq.read_table(directory) if directory.is_file() else None)
        self.features = evaluator(self.fs)
        self.prefetch = prefetch_templates(self.fs)  # what the EHR is asked for: the data these features read
        # the broader searches for a FHIR server that refuses a narrowed one (no `combo-code`), and when one did
        self.wider = {k: PREFETCH[k] for k, v in self.prefetch.items() if k in PREFETCH and v != PREFETCH[k]}
        self._narrow_refused: dict[tuple[str, str, int | None], float] = {}
        self.infos = column_infos(self.meta.get("describe") or [], self.meta.get("units") or {})
        op = self.meta["operating_point"]
        self.threshold = float(op["threshold"])
        self.band = tuple(op["threshold_ci"]) if op.get("threshold_ci") else None
        self.ranges = self.meta.get("input_ranges") or {}
        # the task the model was trained for: the bedside scores only stays its cohort would have held
        self.task = None
        if "task.yaml" in self.bundle.files:
            from careloop.tasks.spec import Task

            self.task = Task.from_text((self.bundle.path / "task.yaml").read_text(), "task.yaml")
        self.index_classes = frozenset(self.task.index.encounter_class if self.task else ("IMP",))
        self.min_age = max(MIN_AGE, self.task.min_age or 0.0) if self.task else MIN_AGE
        self.policy = None  # a learned deferral policy, hashed with the bundle (careloop train --clinician)
        if "deferral_policy.json" in self.bundle.files:
            from careloop.deferral import DeferralPolicy

            self.policy = DeferralPolicy.from_json((self.bundle.path / "deferral_policy.json").read_text())
        self.model_key = self.bundle.bundle_id
        facts = (
            load_facts(self.bundle.path / "documentation.yaml")
            if "documentation.yaml" in self.bundle.files
            else load_facts(None)
        )
        self.intended_use = str(facts.intended_use or "see the model card")
        self.not_for = str(facts.out_of_scope or "see the model card")
        self.store = store or StateStore(config.state)
        self.audit = AuditLog(self.store, signing_key=config.audit.signing_key(),
                              checkpoint_every=config.audit.checkpoint_every)
        # a replay within this process is refused at once from memory; the state store, claimed in the same
        # transaction as the call's audit record (the journal's group commit), is the authority across processes
        self.recent = RecentJti()
        self.verifier = verifier or TokenVerifier(
            config.trusted_clients,
            claim_jti=self.recent.claim,
            max_lifetime_s=config.max_token_lifetime_s,
            skew_s=config.clock_skew_s,
        )
        self.admin = AdminAuth(config.admin)
        self.patient_pages = False  # set by the dashboard when it serves the stays' pages (cards then link to them)
        # while calls are being scored, the journal waits a little for them to share its transaction
        self.journal = Journal(self.store, self.audit, linger_s=JOURNAL_LINGER_S, expecting=lambda: self.pending)
        # one scoring thread: calls queue in order (no convoy of threads on the GIL) and a call slower than its
        # deadline is answered without waiting for it
        self.scorer = ThreadPoolExecutor(max_workers=1, thread_name_prefix="careloop-score")
        fhir_tls()  # built now, not by the first call that reads a FHIR server (on the event loop)
        self._fhir_loop: asyncio.AbstractEventLoop | None = None
        self._fhir_clients: dict[tuple, httpx.AsyncClient] = {}  # (scheme, host, port) -> client
        self._fhir_lock = threading.Lock()
        self.pending = 0  # calls submitted to the scorer and not finished
        self._pending_lock = threading.Lock()
        self.cost_s = 0.005  # moving average of one call's scoring time: predicts the queue's wait

    def shutdown(self) -> None:
        """Write what is queued; then, with a signing key, sign the log's head, so that cutting the tail written
        since the last checkpoint shows too (idempotent: a head already signed, by any worker, is not signed again)."""
        self.journal.close()
        if self.audit.signing_key is not None:
            try:
                self.audit.checkpoint()
            except Exception:
                log.exception("the audit log's closing checkpoint could not be written")

    def close(self) -> None:
        self.shutdown()
        self.scorer.shutdown(wait=False, cancel_futures=True)
        self.store.close()

    # -- audit ----------------------------------------------------------------------------------------
    def record(
        self,
        kind: str,
        result: str,
        *,
        claims=None,
        req: HookRequest | None = None,
        decision=None,
        service: str | None = None,
        request_id: str | None = None,
        detail: dict | None = None,
        patient: str | None = None,
        user: str | None = None,
    ) -> None:
        with self.store.transaction(write=True) as conn:
            self.audit.append_prepared(conn, self._prepared(kind, result, claims=claims, req=req, decision=decision,
                                                            service=service, request_id=request_id, detail=detail,
                                                            patient=patient, user=user))

    def _prepared(self, kind: str, result: str, *, claims=None, req=None, decision=None, service=None,
                  request_id=None, detail=None, patient=None, user=None) -> list[tuple[str, dict]]:
        """The call's audit event, validated and serialised. A field the audit log refuses (not an identifier, or
        token-like text sent by the caller) is left out and named, and everything else is kept: the call is still
        recorded (its patient, correlation ids, score and cards), and still answered."""
        from careloop.audit import AuditContentError, audit_event

        fields = self._event(kind, result, claims=claims, req=req, decision=decision, service=service,
                             request_id=request_id, detail=detail, patient=patient, user=user)
        try:
            return self.audit.prepare([audit_event(**fields)])
        except AuditContentError:
            pass
        kept = {k: v for k, v in fields.items() if k not in _CALLER_FIELDS}
        dropped = []
        for name in _CALLER_FIELDS:  # each field the caller could have shaped, alone with the safe ones
            if fields.get(name) is None:
                continue
            try:
                audit_event(**kept, **{name: fields[name]})
            except AuditContentError:
                dropped.append(name)
            else:
                kept[name] = fields[name]
        note = {"error": "unrecordable request fields", "field": ",".join(dropped)}
        kept["detail"] = {**(kept.get("detail") or {}), **note}
        try:
            return self.audit.prepare([audit_event(**kept)])
        except AuditContentError:  # the fields together (never seen): the bare record
            return self.audit.prepare([audit_event(kind=kind, outcome=result, service=service,
                                                   model_hash=self.bundle.bundle_id, detail=note)])

    def take_feedback(self, service_id: str, claims, rid: str, raw: bytes | None) -> Response:
        """A feedback request (off the event loop): every item is checked before any is stored, then all items and
        their audit records are written in one transaction, so a batch is stored whole or not at all. A card is
        known only to the service that showed it; an accepted suggestion must be one of its card's. A refusal is
        audited too, and no answer quotes what the caller sent."""

        def refuse(status: int, text: str, patient: str | None = None) -> Response:
            self.record("feedback", "minor", claims=claims, service=service_id, request_id=rid, patient=patient,
                        detail={"reason": text[:200], "http_status": status})
            return outcome(status, text)

        if not self.store.claim_jti(claims.iss, claims.jti, claims.exp):  # a replay through another worker
            self.record("auth-failure", "serious", claims=claims, service=service_id, request_id=rid,
                        detail=_replayed(claims))
            return unauthorized()
        if raw is None:
            return refuse(413, f"request larger than {MAX_BODY} bytes")
        try:
            fb = FeedbackRequest.model_validate_json(raw)
        except ValidationError as e:
            return refuse(400, _validation_problem(e))
        items = []
        for i, item in enumerate(fb.feedback):
            where = f"feedback[{i}]"
            card = self.store.card(item.card) if _UUID.fullmatch(item.card) else None  # cards' uuids are UUIDs
            if card is None or card["service"] != service_id:
                return refuse(404, f"{where}.card: no card of this service has this uuid")
            if item.outcome != "accepted" and item.acceptedSuggestions:
                return refuse(400, f"{where}.acceptedSuggestions: only with the outcome 'accepted'", card["patient"])
            if item.outcome == "accepted":
                if not item.acceptedSuggestions:
                    return refuse(400, f"{where}: 'accepted' needs acceptedSuggestions", card["patient"])
                offered = set(C.suggestion_ids(card["uuid"])) if card["indicator"] == "warning" else set()
                if any(s.get("id") not in offered for s in item.acceptedSuggestions):
                    return refuse(400, f"{where}.acceptedSuggestions: each id must be a suggestion of the card",
                                  card["patient"])
            if item.outcomeTimestamp.tzinfo is None:
                return refuse(400, f"{where}.outcomeTimestamp needs a time zone (RFC 3339)", card["patient"])
            skew = dt.timedelta(seconds=self.config.clock_skew_s)
            if item.outcomeTimestamp > dt.datetime.now(dt.UTC) + skew:
                return refuse(400, f"{where}.outcomeTimestamp is in the future", card["patient"])
            if item.outcomeTimestamp < _aware(card["at"]) - skew:  # a clinician acts on a card after seeing it
                return refuse(400, f"{where}.outcomeTimestamp is before the card was shown", card["patient"])
            problem = _override_problem((item.overrideReason or {}).get("reason"), card["indicator"])
            if problem is not None:
                return refuse(400, f"{where}.overrideReason.reason: {problem}", card["patient"])
            try:
                sent = json.loads(item.model_dump_json(exclude_none=True, exclude={"extension"}))
                row = self.store.feedback_row(service_id, sent, client=claims.iss, user=card.get("user"))
            except StateError as e:
                return refuse(400, f"{where}: {str(e).splitlines()[0][:200]}", card["patient"])
            items.append((item, card, row))
        # each distinct interaction is kept (the spec: "a card once ignored could later be acted upon", and the
        # client reports each); the same one sent again is not (the unique key), so retries never double-count
        with self.store.transaction(write=True) as conn:
            new = self.store.add_feedback_rows_in(conn, [row for _, _, row in items])
            events = []
            for (item, card, row), added in zip(items, new, strict=True):
                events += self._prepared("feedback", "success", claims=claims, service=service_id, request_id=rid,
                                         patient=card["patient"],
                                         detail={"card": item.card, "outcome": item.outcome, "new": added,
                                                 "reason": row["override_code"] or None})
            self.audit.append_prepared(conn, events)
        return JSONResponse({"received": len(items), "new": sum(new)})

    async def audited(self, kind: str, result: str, **fields) -> None:
        """Append one audit event through the journal's group commit, from the event loop without blocking it
        (`record` writes in its own transaction, for code off the loop). If the log cannot be written, the call's
        answer does not change (a refusal stays a refusal)."""
        try:
            await asyncio.wrap_future(self.journal.submit(Work(self._prepared(kind, result, **fields))))
        except Exception:
            log.exception("the audit log could not record a %s event", kind)

    def work(self, kind: str, result: str, *, claims, req=None, decision=None, service: str | None = None,
             request_id: str | None = None, detail: dict | None = None) -> Work:
        """A call's writes for the journal: its audit record, its jti claim, its card; and, should the jti turn out
        to be a replay from another process, the authentication failure to record instead."""
        events = self._prepared(kind, result, claims=claims, req=req, decision=decision, service=service,
                                request_id=request_id, detail=detail)
        def instead() -> list[tuple[str, dict]]:
            return self._prepared("auth-failure", "serious", claims=claims, service=service, request_id=request_id,
                                  detail=_replayed(claims))

        jti = (claims.iss, claims.jti, claims.exp) if claims is not None else None
        card = decision.card_row if decision is not None else None
        if card is None or card.indicator != "warning":  # only warnings are checked again at commit (info_repeated)
            return Work(events, jti=jti, instead=instead, card=card)

        def unshown(why: str) -> list[tuple[str, dict]]:
            quiet = replace(decision, cards=[], note=why, card_row=None)
            return self._prepared(kind, result, claims=claims, req=req, decision=quiet, service=service,
                                  request_id=request_id, detail={**(detail or {}), "note": why})

        return Work(events, jti=jti, instead=instead, card=card, unshown=unshown,
                    recheck=lambda conn: self.alert_blocked(conn, card.patient, card.risk, card.unit, card.at))

    def _event(self, kind, result, *, claims, req, decision, service, request_id, detail, patient, user) -> dict:
        """The arguments of the call's `audit_event`: who (the client, and the user from the hook's context),
        which patient, the correlation ids, the model, the inputs' digest, the score, the cards, why it deferred."""
        if user is None and req is not None:
            user = req.context.get("userId") if isinstance(req.context.get("userId"), str) else None
        return dict(
            kind=kind,
            outcome=result,
            client=getattr(claims, "iss", None),
            network=CLIENT_NETWORK.get(),
            service=service,
            patient=(decision.patient if decision else None) or (_patient_of(req) if req else None) or patient,
            encounter=(decision.encounter if decision else None) or (_encounter_of(req) if req else None),
            user=user,
            hook_instance=req.hookInstance if req and _UUID.fullmatch(req.hookInstance) else None,
            jti=getattr(claims, "jti", None),
            request_id=request_id,
            model_hash=self.bundle.bundle_id,
            input_digest=decision.digest if decision else None,
            score=decision.score if decision else None,
            cards=[{"uuid": c["uuid"], "indicator": c["indicator"]} for c in decision.cards] if decision else None,
            deferral_reason=decision.deferral if decision else None,
            detail=detail,
        )

    # -- the scoring thread ---------------------------------------------------------------------------
    def score(self, service_id: str, req: HookRequest, client_iss: str | None, fetched: FhirRead | None = None,
              setting: ModelPolicy | None = None):
        """`handle` on the scoring thread, without reading the FHIR server (a Decision with `refetch` says what to
        read first); a concurrent future. A call cancelled before it starts never runs."""
        with self._pending_lock:
            self.pending += 1
        fut = self.scorer.submit(self._timed_handle, service_id, req, client_iss, fetched, setting)
        fut.add_done_callback(self._done)
        return fut

    async def fetch(self, req: HookRequest, keys: list[str], timeout: float, *, shared: bool = True) -> FhirRead:
        """The prefetch keys `keys` read from the request's FHIR server within `timeout` seconds in all (on the event
        loop: a slow server delays only its own call, and holds no thread); `shared`: through the server's client
        (`fhir_client`), else one of this call's own (a one-off event loop's)."""
        assert req.fhirServer is not None and req.fhirAuthorization is not None
        origin = _origin(req.fhirServer)
        refused = self._narrow_refused.get(origin)
        recently = refused is not None and time.monotonic() - refused < NARROW_RETRY_S
        got = await read_prefetch(req.fhirServer, req.fhirAuthorization.access_token, _patient_of(req) or "", keys,
                                  templates=self.prefetch | self.wider if recently else self.prefetch,
                                  wider=self.wider, timeout=timeout,
                                  client=self.fhir_client(req.fhirServer) if shared else None)
        if got.widened:  # this server refuses the narrowed searches: ask it the broader ones for a while
            self._narrow_refused[origin] = time.monotonic()
        return got

    def fhir_client(self, fhir_server: str) -> httpx.AsyncClient:
        """This process's client for one EHR's FHIR server (its scheme, host and port), per event loop: connections
        are reused, and at most `fhir_connections` reads are in flight to that server, so a burst of calls does not
        flood it and a slow EHR does not hold the reads of another. Servers are those under trusted issuers only
        (`_may_fetch`), so the clients are few."""
        loop = asyncio.get_running_loop()
        origin = _origin(fhir_server)
        with self._fhir_lock:
            if self._fhir_loop is not loop:  # a new loop (a test client's): those of the old one go with it
                self._fhir_loop, self._fhir_clients = loop, {}
            client = self._fhir_clients.get(origin)
            if client is None:
                client = self._fhir_clients[origin] = new_fhir_client(self.config.fhir_connections)
            return client

    async def close_fhir_clients(self) -> None:
        with self._fhir_lock:
            mine = self._fhir_loop is asyncio.get_running_loop()
            clients, self._fhir_clients, self._fhir_loop = list(self._fhir_clients.values()), {}, None
        for client in clients if mine else ():
            await client.aclose()

    def _timed_handle(self, service_id: str, req: HookRequest, client_iss: str | None,
                      fetched: FhirRead | None, setting: ModelPolicy | None = None) -> Decision:
        t0 = time.perf_counter()
        try:
            return self.handle(service_id, req, None, client_iss, fetched=fetched, fetch=False, setting=setting)
        finally:
            self.cost_s = 0.9 * self.cost_s + 0.1 * (time.perf_counter() - t0)

    def _done(self, _fut) -> None:
        with self._pending_lock:
            self.pending -= 1

    def feedback_wait(self, client: str) -> float:
        """0 when `client` may send feedback now (one request taken from its bucket), else the seconds until it
        may (config `feedback_limit`; the bucket is in the state store, shared by every worker process)."""
        lim = self.config.feedback_limit
        return self.store.take_token(f"feedback|{client}", per_s=lim.per_minute / 60, burst=lim.burst)

    def expected_wait(self) -> float:
        """Seconds a call submitted now would wait for and take on the scoring thread (the calls ahead of it, and
        its own, at the recent average)."""
        return (self.pending + 1) * self.cost_s

    # -- the decision ---------------------------------------------------------------------------------
    def card_context(self, patient: str, encounter: str | None) -> C.CardContext:
        return C.CardContext(
            patient,
            encounter,
            self.config.base_url,
            self.bundle.bundle_id,
            self.bundle.name,
            _model_version(self.meta),
            self.intended_use,
            self.not_for,
            patient_page=self.config.patient_page_url(patient, encounter) or (
                f"{self.config.base_url}/dashboard/patient/{encounter}" if self.patient_pages and encounter else None),
        )

    def defer(self, ctx: C.CardContext, reason: str, **kw) -> Decision:
        cards = [C.deferral_card(ctx, reason)] if self.config.alert.deferral == "card" else []
        return Decision(cards, ctx.patient_id, deferral=reason, **kw)

    def handle(self, service_id: str, req: HookRequest, now: dt.datetime | None = None,
               client_iss: str | None = None, *, fetched: FhirRead | None = None, fetch: bool = True,
               setting: ModelPolicy | None = None) -> Decision:
        """Score one request, or say why not; the card shown, if any, is remembered with the call (feedback names
        it, and warnings drive repeat suppression and the daily budget). Data the EHR did not prefetch, or sent
        only a page of, is read from its FHIR server first: here when `fetch`, else the Decision's `refetch` asks
        the caller to read it (off the scoring thread) and call again with it as `fetched`. `setting`: the
        administrators' settings as the caller read them (read from the store when not given)."""
        now = now or dt.datetime.now(dt.UTC)
        setting = setting or self.store.policy(self.model_key)
        d = self._decide(service_id, req, now, client_iss, fetched, setting)
        if d.refetch is not None and fetch:
            d = self._decide(service_id, req, now, client_iss, asyncio.run(
                self.fetch(req, d.refetch, self.config.deadline_ms / 1000, shared=False)), setting)
        if d.cards and d.card_row is None and d.patient:
            card = d.cards[0]
            kind = info_kind(d)
            if kind is not None and self.info_repeated(d.patient, kind, d.score, now):
                d.cards, d.note = [], f"repeat suppressed ({'near threshold' if kind == NEAR else 'deferral'})"
                return d
            d.card_row = CardRow(card["uuid"], service_id, d.patient, self.model_key, d.score, card["indicator"], None,
                                 now, kind=kind)
        user = req.context.get("userId")
        if d.card_row is not None and isinstance(user, str) and _USER_ID.fullmatch(user):
            d.card_row = d.card_row._replace(user=user)
        return d

    def _decide(self, service_id: str, req: HookRequest, now: dt.datetime, client_iss: str | None,
                fetched: FhirRead | None, setting: ModelPolicy) -> Decision:
        """The decision, or (`refetch`) the keys to read from the FHIR server first: those not prefetched, and those
        prefetched as only a page of their search. The EHR's FHIR server is read only when it lies under the token's
        issuer (the EHR's own FHIR base, as Epic sets `iss`), and only for the patient its access token is for: an
        attacker-chosen `fhirServer` is never fetched."""
        patient = _patient_of(req)
        encounter = req.context.get("encounterId") if service_id == "readmission-risk" else None
        ctx = self.card_context(patient, encounter)
        prefetch: dict[str, Any] = dict(req.prefetch or {}) | (fetched.values if fetched else {})
        absent = [k for k in self.prefetch if k not in prefetch]
        pre = collect(prefetch, patient)
        need = [k for k in self.prefetch if k in absent or k in pre.partial or k in pre.outcomes or k in pre.malformed]
        if need and fetched is None and _may_fetch(req, client_iss, patient):
            return Decision([], patient, refetch=need)
        digest = pre.digest()
        if pre.outcomes:
            return self.defer(ctx, f"the EHR could not supply {', '.join(pre.outcomes)}", digest=digest)
        if pre.malformed:  # read as "no data" they would understate the record
            return self.defer(ctx, f"the EHR sent {', '.join(pre.malformed)} as something other than a FHIR resource "
                                   "or Bundle (the model does not score part of a record)", digest=digest,
                              extra={"malformed_prefetch": pre.malformed})
        if pre.partial:
            return self.defer(ctx, f"the EHR sent only part of {', '.join(pre.partial)} (a page of the search; the "
                                   "model does not score part of a record)", digest=digest,
                              extra={"partial_prefetch": pre.partial})
        if pre.patient is None and "patient" not in pre.missing and "patient" in self.prefetch:
            why = ("the prefetched Patient is another patient than the one in context" if pre.foreign
                   else "the prefetched Patient could not be read")
            return self.defer(ctx, why, digest=digest)
        if absent:  # not sent, and not read: CDS Hooks' 412 (scoring without them would understate the history)
            if fetched is not None:
                failed = [f"{k} ({fetched.failed[k]})" if k in fetched.failed else k for k in absent]
                why = f"prefetch {', '.join(absent)} missing, and the EHR's FHIR server could not be read: " \
                      f"{', '.join(failed)}"
            else:
                why = f"prefetch {', '.join(absent)} missing, and the FHIR server given is not one this client's " \
                      "token may read (not under its issuer, or the access token is for another patient)"
            return Decision([], patient, digest=digest, note=why, precondition=why,
                            extra={"missing_prefetch": absent})
        if any(k in pre.missing for k in REQUIRED_KEYS):
            return self.defer(ctx, "required data (the patient and their encounters) is missing", digest=digest)
        feats = bedside_features(self.features, pre, patient, encounter, directory=self.locations, now=now)
        decision = self._decide_stay(service_id, ctx, pre, feats, encounter, digest, now, setting)
        decision.encounter = feats.encounter_id or encounter
        return decision

    def _decide_stay(self, service_id: str, ctx: C.CardContext, pre, feats: BedsideFeatures, encounter: str | None,
                     digest: str, now: dt.datetime, setting: ModelPolicy) -> Decision:
        """The decision on the stay `bedside_features` chose (the context's at a discharge, else the chart's
        current one): quiet, deferred, or scored and carded."""
        patient = ctx.patient_id
        extra = {"foreign_resources": pre.foreign} if pre.foreign else {}
        if pre.batch.void:  # e.g. results withdrawn as entered-in-error: received, not read
            extra["void_resources"] = dict(sorted(pre.batch.void.items()))
        if pre.batch.unconverted:  # values in a unit with no conversion: received, not read (units are not quoted)
            extra["unconverted_values"] = sum(pre.batch.unconverted.values())
        if feats.quiet:  # no current stay on the chart: no card, and the audit record says why
            return Decision([], patient, digest=digest, note=feats.reason, extra=extra)
        if feats.row is None:
            return self.defer(ctx, feats.reason or "the stay cannot be scored", digest=digest, extra=extra)
        scope = self.out_of_scope(feats, at_discharge=encounter is not None)
        if scope:
            return self.defer(ctx, scope, digest=digest, extra=extra)
        ood = self.out_of_distribution(feats.row, at_discharge=encounter is not None)
        if ood:
            return self.defer(ctx, f"inputs outside the training data ({ood})", digest=digest, extra=extra)
        risk = float(self.model.predict_proba_rows([feats.row])[0])
        if self.policy is not None and bool(self.policy.defers(np.asarray([risk]))[0]):
            d = self.defer(ctx, f"in this risk range clinicians' own judgement has been more accurate than the model "
                                f"(learned deferral policy {self.policy.hash[:12]})", digest=digest,
                           extra={**extra, "deferral_policy": self.policy.hash})
            d.score = risk
            return d
        if setting.threshold_version:  # which threshold decided (each administrator's change is a new version)
            extra["threshold_version"] = setting.threshold_version
        decision = Decision([], patient, score=risk, digest=digest, extra=extra)
        # the operating point decides (warnings are exactly the risks at or above the bundle's threshold, so the
        # alert rate, sensitivity and PPV validated for it hold), unless an administrator set another; the
        # threshold's own 95% interval says which risks are too close to it to be sure of their side: below it an
        # info card says so, above it the warning says so
        threshold, band = self.thresholds(setting)
        if risk < threshold:
            if band and band[0] <= risk:
                decision.cards = [C.near_threshold_card(ctx, risk, threshold, band,
                                                        self.reasons(feats.row, ended=encounter is not None
                                                                     or feats.end_us is not None))]
                decision.note = "near threshold"
            else:
                decision.note = "below threshold"
            return decision
        # the stay has ended at a discharge (its end, or now as it happens), or on a chart whose stay's end is recorded
        # by now (`BedsideFeatures.end_us`): its reasons say "at discharge", else "latest"
        ended = encounter is not None or feats.end_us is not None
        return self.alert(service_id, ctx, decision, feats.row, now, feats.unit, setting, ended=ended)

    @functools.cached_property
    def validation(self):
        """The held-out stays' risks and outcomes (`serve.threshold.Validation`, or None when the bundle keeps
        none): what another alert threshold would give. Read when an administrator first asks, not at start."""
        from careloop.serve.threshold import Validation

        return Validation.of(self.bundle.path, f"careloop {self.meta.get('estimator')}")

    def serves(self, model_key: str) -> bool:
        """Does an admin route's model key (the whole bundle id, or its first 12 digits) name the served model?"""
        return model_key in (self.model_key, self.model_key[:12])

    def threshold_refused(self, new: float | None) -> str | None:
        """Why an administrator may not set `new` (None: back to the bundle's, always allowed), or None."""
        if new is None:
            return None
        if self.validation is None:
            return ("this bundle keeps no held-out predictions, so what another threshold gives cannot be shown: "
                    "retrain to set one")
        lo, hi = self.validation.span
        if not lo <= new <= hi:
            return f"threshold outside the risks of the held-out stays ({lo:.3f} to {hi:.3f}): what it gives is unknown"
        return None

    def set_alert_threshold(self, new: float | None, *, by: str, route: str | None = None) -> int:
        """Set an administrator's alert threshold (None: back to the bundle's), after `threshold_refused`; audited
        with the old and new values and the new version. Every worker applies it from its next call."""
        why = self.threshold_refused(new)
        if why:
            raise ValueError(why)
        old = self.store.policy(self.model_key).threshold
        version = self.store.set_threshold(self.model_key, new, by=by)
        self.record("admin-change", "success", detail={
            "by": by, "setting": "threshold", "old": "bundle" if old is None else f"{old:.6f}",
            "new": "bundle" if new is None else f"{new:.6f}", "threshold_version": version,
            **({"route": route} if route else {})})
        return version

    def threshold_state(self, preview: float | None = None) -> dict:
        """The threshold in force (or `preview`), where it comes from, and what it gives on the held-out stays."""
        setting = self.store.policy(self.model_key)
        threshold = self.thresholds(setting)[0] if preview is None else preview
        out = {"model": self.model_key, "threshold": threshold,
               "source": "bundle" if setting.threshold is None else "administrator",
               "version": setting.threshold_version, "bundle_threshold": self.threshold}
        if self.validation is not None:
            out["validated"] = self.validation.at(threshold) | {"span": list(self.validation.span)}
        return out

    def current_thresholds(self) -> tuple[float, tuple[float, float] | None]:
        """`thresholds` as the administrators' settings stand now (for the dashboard)."""
        return self.thresholds(self.store.policy(self.model_key))

    def thresholds(self, setting: ModelPolicy) -> tuple[float, tuple[float, float] | None]:
        """The alert threshold in force and its 95% interval: the bundle's operating point, or the threshold an
        administrator set, which has no interval (so no near-threshold cards while it is in force)."""
        if setting.threshold is None:
            return self.threshold, self.band
        return setting.threshold, None

    def out_of_distribution(self, row, *, at_discharge: bool = True) -> str | None:
        """Why the model's inputs for `row` are outside what it was trained on, or None. A category missing where
        training never had one counts at a discharge (the model was trained on completed stays, whose disposition
        and other categories were recorded); during a stay (patient-view, the dashboard's risk over the stay) a
        disposition not yet recorded is expected, and the risk is read as the model reads a missing value."""
        return unseen_category(row, self.model, missing=at_discharge) or outside_training(row, self.ranges)

    def excluded(self, *, disposition: str | None, disposition_nubc: str | None, death_us: int | None,
                 index_us: int) -> str | None:
        """The task's exclusion that removes this stay, worded for a deferral; None when none does."""
        if self.task is None:
            return None
        gone = excluded_at_index(self.task, disposition=disposition, disposition_nubc=disposition_nubc,
                                 death_us=death_us, index_us=index_us)
        return f"{gone} (out of scope: the model's task excludes such stays)" if gone else None

    def out_of_scope(self, feats: BedsideFeatures, *, at_discharge: bool = True) -> str | None:
        """Why the model's task leaves this stay out (its index encounter class, age and exclusions: the same
        rules that built the training cohort), or None when the stay is in scope. At a discharge only a death up to
        its time counts (a later one in the record is a replay's future); a chart opened later (patient-view) is
        out of scope once any death is recorded."""
        if feats.encounter_class not in self.index_classes:
            return "not an inpatient stay (out of scope)"
        if feats.age_years is None:
            return "the patient's birth date is missing (needed to check the model's age range)"
        if feats.age_years < self.min_age:  # calendar age, as the cohort's exclusion (not the age feature)
            return under_age(self.min_age)
        if feats.index_us is not None:
            gone = self.excluded(disposition=feats.disposition, disposition_nubc=feats.disposition_nubc,
                                 death_us=feats.death_us, index_us=feats.index_us)
            if gone:
                return gone
        if feats.deceased_no_time or (not at_discharge and feats.death_us is not None):
            return "the patient's death is recorded (out of scope)"
        return None

    def info_repeated(self, patient: str, kind: str, risk: float | None, now: dt.datetime) -> bool:
        """Whether this model showed the patient the same info card (`info_kind`) within the repeat window, from any
        hook: a chart opened again, or a discharge started twice, repeats no card that says nothing new (checklist
        H-06). A near-threshold card is new again once the risk has moved by more than `repeat_delta`. Unlike a
        warning's, this rule is not checked again at commit: two such cards at once cost a clinician a glance, not
        an alert."""
        a = self.config.alert
        with self.store.transaction(write=False) as conn:
            last = self.store.last_card_in(conn, None, patient, self.model_key, "info", kind=kind)
        if last is None or now - _aware(last["at"]) >= dt.timedelta(hours=a.repeat_window_h):
            return False
        if kind != NEAR:  # a deferral for the same reason
            return True
        return risk is not None and last["risk"] is not None and abs(risk - last["risk"]) <= a.repeat_delta

    def alert_blocked(self, conn, patient: str, risk: float, unit: str | None, now: dt.datetime) -> str | None:
        """Why the alert policy withholds a warning now, or None: this model warned on the patient within the repeat
        window (from any hook) and the risk has not moved by more than `repeat_delta`; or the unit has had its
        daily budget of this model's warnings since midnight in the hospital's time zone. Checked while scoring,
        and again in the transaction that would record the card (journal.py), where it decides."""
        a = self.config.alert
        last = self.store.last_card_in(conn, None, patient, self.model_key, "warning")
        if (
            last
            and last.get("risk") is not None
            and now - _aware(last["at"]) < dt.timedelta(hours=a.repeat_window_h)
            and abs(risk - last["risk"]) <= a.repeat_delta
        ):
            return "repeat suppressed"
        if a.daily_budget_per_unit:
            zone = ZoneInfo(a.timezone)
            midnight = now.astimezone(zone).replace(hour=0, minute=0, second=0, microsecond=0)
            shown = self.store.cards_since_in(conn, None, unit or UNKNOWN_UNIT, midnight.astimezone(dt.UTC),
                                              "warning", model_hash=self.model_key)
            if shown >= a.daily_budget_per_unit:
                return "daily budget reached"
        return None

    def reasons(self, row, *, ended: bool) -> list[str]:
        """The top three reasons for a stay's risk, as clinical phrases (`ended`: the stay has ended at the index
        time, so a last value reads "at discharge", not "latest")."""
        from careloop.explain import reasons

        rs = reasons(self.model.contributions_rows([row]), [row], self.infos, top=3, columns=self.model.columns,
                     ended=ended)
        return [r.phrase for r in rs[0]]

    def alert(self, service_id: str, ctx: C.CardContext, decision: Decision, row, now: dt.datetime,
              unit: str | None = None, setting: ModelPolicy | None = None, *, ended: bool = True) -> Decision:
        """Repeat suppression, the unit's daily budget, then the card with its reasons (`ended`: the stay has ended at
        the index time, so a last value reads "at discharge", not "latest")."""

        with self.store.transaction(write=False) as conn:
            why = self.alert_blocked(conn, ctx.patient_id, decision.score, unit, now)
        if why:
            decision.note = why
            return decision
        setting = setting or ModelPolicy(True, None, 0)
        threshold, uncertain = self.thresholds(setting)
        op = self.meta["operating_point"]
        if setting.threshold is not None:  # an administrator's threshold: say so, and what was validated
            band = "above the hospital's alert threshold"
            budget_text = (f"set by the hospital's administrators in place of the validated {self.threshold:.0%}; "
                           "see the model card for what each threshold gives")
        else:
            band = f"top {op['target']:.0%} of discharges" if op.get("policy") == "budget" else "high risk"
            budget_text = ("see the card" if not op.get("rationale") else "set to flag about "
                           + (f"{op['target']:.0%} of discharges" if op.get("policy") == "budget"
                              else "the chosen share of discharges"))
        card = C.risk_card(
            ctx,
            decision.score,
            threshold,
            self.reasons(row, ended=ended),
            band=band,
            budget_text=budget_text,
            today=now.date(),
            uncertain=uncertain if uncertain and decision.score < uncertain[1] else None,
        )
        decision.card_row = CardRow(card["uuid"], service_id, ctx.patient_id, self.model_key, decision.score,
                                    "warning", unit or UNKNOWN_UNIT, now)
        decision.cards = [card]
        return decision


NEAR = "near-threshold"


def info_kind(d: Decision) -> str | None:
    """Which info card a decision shows, as the card store keeps it: `near-threshold`, or `deferral-` and the first
    16 hex digits of the SHA-256 of the deferral's reason (so that a different reason is a different card); None for
    a warning."""
    if not d.cards or d.cards[0].get("indicator") != "info":
        return None
    if d.deferral is not None:
        return "deferral-" + hashlib.sha256(d.deferral.encode()).hexdigest()[:16]
    return NEAR if d.note == "near threshold" else None


def _model_version(meta: dict) -> str:
    """What the card says of the model's version beside its bundle hash: when it was trained, and by what code."""
    created, code = str(meta.get("created") or "")[:10], meta.get("code_version")
    return ", ".join(x for x in (f"trained {created}" if created else "", f"by {code}" if code else "") if x) \
        or "no training record"


def under_age(min_age: float) -> str:
    return f"patient under {min_age:g} (out of scope: an adult model)"


def unseen_category(row: dict, model, *, missing: bool = True) -> str | None:
    """The categorical inputs the model has no level for (`Preprocessor.unknown_levels`), worded for a deferral:
    the model would read them as a guess (its reference level, or a branch no training stay took). None when every
    category is known."""
    pre = getattr(model, "preprocessor", None)
    unknown = pre.unknown_levels(row, missing=missing) if pre is not None else []
    return "; ".join(f"{col} missing, never missing in training" if v is None
                     else f"{col} {str(v)[:40]!r}, a value never seen in training" for col, v in unknown[:3]) or None


def outside_training(row: dict, ranges: dict) -> str | None:
    """The numeric inputs far outside the training range (0.5th-99.5th percentile), when the service should defer
    instead of extrapolating: two or more beyond it by over half its width, or one beyond it by over five widths (a
    120-day stay where training saw up to 20 days: most likely a data error, and a tree model's answer there is
    not evidence). One input a little out is common (a frequent attender's many admissions) and still scored.
    None when the row is in range."""
    far, very_far = [], []
    for col, (lo, hi) in ranges.items():
        v = row.get(col)
        if v is None or isinstance(v, str):
            continue
        pad = 0.5 * (hi - lo) if hi > lo else 1.0  # a constant in training: a step of 1 away is far
        if v < lo - pad or v > hi + pad:
            far.append(col)
            if v < lo - 10 * pad or v > hi + 10 * pad:
                very_far.append(col)
    return ", ".join(far[:3]) if len(far) >= 2 or very_far else None


def _origin(fhir_server: str) -> tuple[str, str, int | None]:
    url = httpx.URL(fhir_server)
    return url.scheme, url.host, url.port


def _may_fetch(req: HookRequest, client_iss: str | None, patient: str | None) -> bool:
    """May this call read the EHR's FHIR server: access granted, the server under the token's issuer, and the
    access token (when it names its patient) for the patient in context?"""
    auth = req.fhirAuthorization
    return bool(req.fhirServer and auth and _under(req.fhirServer, client_iss)
                and (auth.patient is None or auth.patient == patient))


def _under(url: str, base: str | None) -> bool:
    if not base:
        return False
    url, base = url.rstrip("/"), base.rstrip("/")
    return url == base or url.startswith(base + "/")


def _aware(t) -> dt.datetime:
    if isinstance(t, str):
        t = dt.datetime.fromisoformat(t)
    return t if t.tzinfo else t.replace(tzinfo=dt.UTC)


def _patient_of(req: HookRequest | None) -> str | None:
    if req is None:
        return None
    p = req.context.get("patientId")
    return p if isinstance(p, str) and p else None


def _replayed(claims) -> dict:
    """The audit detail of a verified token used a second time (a replay, refused with a bare 401)."""
    return {"reason": "jti replayed: this token was already used", "iss": getattr(claims, "iss", None),
            "signature_verified": True}


class Claimed(NamedTuple):
    """Who a refused token says it is, for its audit record: the issuer when on the allowlist (proven when the
    signature verified, as for a replay), and its jti once the signature verified."""

    iss: str | None
    jti: str | None


def _encounter_of(req: HookRequest | None) -> str | None:
    """The context's encounter (a call that ended before a stay was chosen is still about it)."""
    e = req.context.get("encounterId") if req is not None else None
    return e if isinstance(e, str) and e else None


ARRIVED = "careloop.arrived"
_CALL_PATH = re.compile(r"/cds-services/([^/]+)")


class FastPath:
    """ASGI middleware: stamps each request's arrival (monotonic seconds: the deadline counts from here), and
    answers `POST /cds-services/{id}` itself with the same code as the FastAPI route (`answer_call`), without the
    framework's routing and request handling, which cost a large share of a call's CPU under load. Every other
    request goes to FastAPI. Answers over HTTPS (TLS here, or at a trusted proxy) carry HSTS, so a browser that
    opened the dashboard once never falls back to plain HTTP."""

    def __init__(self, app, service: Service | None = None) -> None:
        self.app = app
        self.service = service

    async def __call__(self, scope, receive, send) -> None:
        if scope["type"] == "http":
            scope[ARRIVED] = time.monotonic()
            client = scope.get("client")
            CLIENT_NETWORK.set(client[0] if client else None)
            if scope.get("scheme") == "https":
                send = _with_hsts(send)
            if self.service is not None and scope["method"] == "POST":
                m = _CALL_PATH.fullmatch(scope["path"])
                if m is not None:
                    headers = Headers(scope=scope)
                    answer = await answer_call(self.service, m.group(1), headers, _reader(headers, receive),
                                               scope[ARRIVED])
                    await answer(scope, receive, send)
                    return
        await self.app(scope, receive, send)


HSTS = (b"strict-transport-security", b"max-age=31536000")


def _with_hsts(send):
    async def sending(message) -> None:
        if message["type"] == "http.response.start":
            message = {**message, "headers": [*message.get("headers", ()), HSTS]}
        await send(message)
    return sending


def _reader(headers: Headers, receive):
    """The request body, or None when it is larger than MAX_BODY (by its Content-Length or as it arrives)."""
    async def read() -> bytes | None:
        size = headers.get("content-length")
        if size and size.isdigit() and int(size) > MAX_BODY:
            return None
        chunks, total = [], 0
        while True:
            message = await receive()
            if message["type"] != "http.request":
                break  # the client went away
            chunk = message.get("body", b"")
            total += len(chunk)
            if total > MAX_BODY:
                return None
            chunks.append(chunk)
            if not message.get("more_body", False):
                break
        return chunks[0] if len(chunks) == 1 else b"".join(chunks)

    return read


async def _authenticate(service: Service, headers, audience: str, service_id: str, rid: str):
    """The caller's verified claims, or None after auditing the refusal (the answer is a bare 401). A token whose
    key must first be fetched from its client's JWKS URL is verified on a thread: the event loop never waits on a
    key server (a token with an unknown kid would otherwise stall every call for the fetch's timeout)."""
    from careloop.serve.auth import AuthError, WouldBlock

    auth = headers.get("authorization")
    try:
        try:
            return service.verifier.verify(auth, audience, block=False)
        except WouldBlock:
            return await asyncio.to_thread(service.verifier.verify, auth, audience)
    except AuthError as e:
        # the client is the allowlisted issuer the token names (checklist C-03), said to be proven or only claimed
        await service.audited("auth-failure", "serious", claims=Claimed(e.iss, e.jti), service=service_id,
                              request_id=rid, detail={"reason": str(e.reason)[:200], "iss": e.iss,
                                                      "signature_verified": e.jti is not None})
        return None


async def answer_call(service: Service, service_id: str, headers, read_body, arrived: float) -> Response:
    """One CDS Hooks call, from its headers and a coroutine function reading its body, to its answer; audited."""
    rid = headers.get("x-request-id") or str(uuidlib.uuid4())
    if service_id not in SERVICES:
        return await _no_such_service(service, service_id, rid)
    claims = await _authenticate(service, headers, f"{service.base}/cds-services/{service_id}", service_id, rid)
    if claims is None:
        return unauthorized()

    async def finish(answer: Response, kind: str, result: str, *, req=None, decision=None, detail=None):
        """Write the call's jti, card and audit record (group commit), then answer; a replay seen only now, by
        another worker's claim, is answered 401 and recorded as such."""
        work = service.work(kind, result, claims=claims, req=req, decision=decision, service=service_id,
                            request_id=rid, detail=detail)
        try:
            fresh = await asyncio.wrap_future(service.journal.submit(work))
        except Exception:
            return outcome(503, "the audit log cannot be written now, so the call was not answered; retry later")
        if not fresh:
            return unauthorized()
        return _json({"cards": []}) if work.withheld is not None else answer

    async def policy_or_answer(req) -> tuple[ModelPolicy | None, Response | None]:
        """The kill switch and threshold in force now (read at each scoring), or the call's answer when there is
        nothing to apply them to: the state store cannot be read, or the model is switched off."""
        setting = _policy(service)
        if setting is None:
            return None, await finish(_store_down(), "cds-call", "serious", req=req, detail={"reason": _STORE_DOWN})
        if not setting.enabled:
            return None, await finish(_json({"cards": []}), "kill-switch", "minor", req=req)
        return setting, None

    raw = await read_body()
    if raw is None:
        return await finish(outcome(413, f"request larger than {MAX_BODY} bytes"), "cds-call", "minor",
                            detail={"reason": "request too large"})
    try:
        req = HookRequest.decode(raw)
    except (msgspec.DecodeError, UnicodeDecodeError, RecursionError) as e:  # the path and the type, never a value
        msg = ("body: not UTF-8 JSON" if isinstance(e, UnicodeDecodeError) else "body: JSON nested too deeply"
               if isinstance(e, RecursionError) else f"body: {_decode_problem(e)}")
        return await finish(outcome(400, msg), "cds-call", "minor", detail={"reason": msg[:200]})
    problem = _check_request(service_id, req)
    if problem:
        return await finish(outcome(400, problem), "cds-call", "minor", req=req, detail={"reason": problem})
    setting, answered = await policy_or_answer(req)  # read once per call (and again after a FHIR read)
    if answered is not None:
        return answered
    absent = _prefetch_absent(req, service.prefetch)
    if absent and not req.fhirAuthorization:  # CDS Hooks 2.0: required data not prefetched and no FHIR access: 412
        return await finish(outcome(412, f"prefetch {', '.join(absent)} missing and no FHIR server access was "
                                         "granted to read it"),
                            "cds-call", "minor", req=req, detail={"reason": "412: no prefetch and no FHIR access",
                                                                  "missing_prefetch": absent})
    deadline_s = service.config.deadline_ms / 1000
    budget = deadline_s - (time.monotonic() - arrived)
    expected = service.expected_wait()
    if budget <= 0 or expected >= budget:  # answered now, in time, rather than late: load shedding
        why = "queued past the deadline" if budget <= 0 else f"overloaded: expected wait {expected * 1000:.0f} ms"
        return await finish(_json({"cards": []}), "timeout", "minor", req=req,
                            detail={"deadline_ms": service.config.deadline_ms, "reason": why})
    until = time.monotonic() + budget
    fetched: FhirRead | None = None
    try:
        decision = await asyncio.wait_for(asyncio.wrap_future(service.score(service_id, req, claims.iss,
                                                                            setting=setting)), budget)
        if decision.refetch is not None:  # read from the EHR's FHIR server off the scoring thread, then score
            left = until - time.monotonic()  # the read leaves time to score what it got
            fetched = await service.fetch(req, decision.refetch,
                                          max(left - min(service.expected_wait() + 0.02, left / 2), 0.001))
            if fetched.unread:  # answered now, in time, as the spec's deadline asks (keys that failed instead defer)
                return await finish(_json({"cards": []}), "timeout", "minor", req=req, detail={
                    "deadline_ms": service.config.deadline_ms, "missing_prefetch": fetched.unread,
                    "reason": "the FHIR server was slower than the deadline"})
            setting, answered = await policy_or_answer(req)  # changed while the FHIR server was read?
            if answered is not None:
                return answered
            decision = await asyncio.wait_for(asyncio.wrap_future(
                service.score(service_id, req, claims.iss, fetched, setting)), until - time.monotonic())
    except TimeoutError:
        return await finish(_json({"cards": []}), "timeout", "minor", req=req,
                            detail={"deadline_ms": service.config.deadline_ms,
                                    "reason": "scoring (or the FHIR server) was slower than the deadline"})
    except Exception as e:  # a defect met by some input: answered and audited, never a 500 (nor its traceback)
        log.error("a call could not be scored: %s", type(e).__name__)
        return await finish(_json({"cards": []}), "cds-call", "serious", req=req,
                            detail={"reason": f"internal error while scoring ({type(e).__name__})"})
    if decision.precondition is not None:
        return await finish(outcome(412, decision.precondition), "cds-call", "minor", req=req,
                            detail=call_detail(decision, fetched))
    return await finish(_json({"cards": decision.cards}), "cds-call", "success", req=req, decision=decision,
                        detail=call_detail(decision, fetched))


_OFFERED_CODES = frozenset(c for c, _ in C.OVERRIDE_REASONS)  # the override reasons a warning card offers


def _override_problem(reason: Any, indicator: str) -> str | None:
    """What is wrong with a feedback's override reason (a Coding), if anything. One in careloop's code system
    (assumed when no system is named) must be one the card offered; the EHR's own reasons, in its own code system,
    are taken as sent (CDS Hooks: the client "may enable the clinician to provide an additional overrideReason")."""
    if reason is None:
        return None
    if not isinstance(reason, dict):
        return "must be a Coding (an object with a system and a code)"
    code, system = reason.get("code"), reason.get("system", C.OVERRIDE_SYSTEM)
    if not isinstance(code, str) or not code.strip():
        return "code must be a non-empty string"
    if not isinstance(system, str) or not system.strip():
        return "system must be a non-empty string"
    if system == C.OVERRIDE_SYSTEM and (indicator != "warning" or code not in _OFFERED_CODES):
        return ("must be one of the card's overrideReasons (a reason of the EHR's own names its code system)"
                if indicator == "warning" else "this card offered no overrideReasons (a reason of the EHR's own "
                "names its code system)")
    return None


_STORE_DOWN = "the state store could not be read"


def _policy(service: Service) -> ModelPolicy | None:
    """The model's kill switch and threshold, or None when the state store cannot be read (the call is then not
    scored: whether the model is switched off is unknown)."""
    try:
        return service.store.policy(service.model_key)
    except Exception as e:
        log.error("the state store could not be read: %s", type(e).__name__)
        return None


def _store_down() -> JSONResponse:
    return outcome(503, f"{_STORE_DOWN} (the kill switch is unknown), so the call was not scored; retry later")


def call_detail(decision: Decision, fetched: FhirRead | None = None) -> dict | None:
    """The audit detail of a scored call: the decision's note (e.g. why no card was shown), what it set aside, and
    which prefetch keys were read by a broader search than the template's."""
    widened = {"widened_prefetch": fetched.widened} if fetched is not None and fetched.widened else {}
    if not (decision.note or decision.extra or widened):
        return None
    return {"note": decision.note, **decision.extra, **widened}


async def _no_such_service(service: Service, service_id: str, rid: str) -> Response:
    """404 for a service this server does not have, audited like every refusal (the id sent is not quoted)."""
    await service.audited("cds-call", "minor", request_id=rid,
                          detail={"reason": "no such CDS service", "http_status": 404})
    return outcome(404, "no such CDS service (see GET /cds-services)")


def _json(body: dict) -> Response:
    return Response(orjson.dumps(body), media_type="application/json")


def create_app(service: Service) -> FastAPI:
    @asynccontextmanager
    async def lifespan(_app: FastAPI):
        # host name lookups for FHIR reads run on the loop's default pool and outlive a cancelled read; a pool of
        # cpu+4 threads could be filled by one slow resolver, stalling token-key fetches that use it too
        asyncio.get_running_loop().set_default_executor(ThreadPoolExecutor(max_workers=32,
                                                                           thread_name_prefix="careloop-io"))
        yield
        await service.close_fhir_clients()
        await asyncio.to_thread(service.shutdown)  # the queue written, the head signed

    app = FastAPI(
        title="careloop CDS Hooks service",
        version="2.0",
        description="CDS Hooks 2.0 services for 30-day readmission risk, with feedback and audit.",
        lifespan=lifespan,
        # no interactive API pages: an unlisted route serving a page whose scripts come from a CDN, which a
        # hospital network does not reach (the OpenAPI document stays, for integrators and the fuzzing tests)
        docs_url=None,
        redoc_url=None,
    )
    app.state.service = service
    app.add_middleware(FastPath, service=service)
    base = service.base

    @app.get("/cds-services")
    def discovery() -> dict:
        return {
            "services": [
                {
                    "hook": hook,
                    "id": sid,
                    "title": title,
                    "description": f"{title}: calibrated risk, reasons, and a follow-up suggestion above "
                    "the alert threshold; defers to clinical judgement when out of scope.",
                    "prefetch": dict(service.prefetch),
                }
                for sid, (hook, title) in SERVICES.items()
            ]
        }

    @app.get("/healthz")
    def healthz() -> dict:
        """Liveness for a load balancer: the process answers. No credential, no patient data, not audited."""
        return {"status": "ok"}

    @app.get("/readyz")
    async def readyz():
        """Readiness for a load balancer: the state store (jti claims, cards, audit chain) answers a read within
        READY_TIMEOUT_S; 503 names what fails, without the database's address or message. Not audited."""
        try:
            await asyncio.wait_for(asyncio.to_thread(service.store.ping), READY_TIMEOUT_S)
        except (StateError, TimeoutError) as exc:
            why = "no answer" if isinstance(exc, TimeoutError) else "an error"
            return JSONResponse({"status": "not ready", "failing": [f"state store: {why}"]}, status_code=503)
        return {"status": "ready"}

    async def body_of(request: Request) -> bytes | None:
        return await _reader(request.headers, request.receive)()

    async def authenticate(request: Request, audience: str, service_id: str, rid: str):
        return await _authenticate(service, request.headers, audience, service_id, rid)

    @app.post("/cds-services/{service_id}")
    async def call(service_id: str, request: Request):
        """A CDS Hooks call (answered by `FastPath` before it reaches here; declared for the OpenAPI document)."""
        arrived = request.scope.get(ARRIVED) or time.monotonic()
        return await answer_call(service, service_id, request.headers, lambda: body_of(request), arrived)

    @app.post("/cds-services/{service_id}/feedback")
    async def feedback(service_id: str, request: Request):
        rid = request.headers.get("x-request-id") or str(uuidlib.uuid4())
        if service_id not in SERVICES:
            return await _no_such_service(service, service_id, rid)
        claims = await authenticate(request, f"{base}/cds-services/{service_id}/feedback", service_id, rid)
        if claims is None:
            return unauthorized()
        try:
            wait = await asyncio.to_thread(service.feedback_wait, claims.iss)
        except StateError:
            return outcome(503, "the state store cannot be read now, so the feedback was not stored; retry later")
        if wait > 0:
            await service.audited("feedback", "minor", claims=claims, service=service_id, request_id=rid,
                                  detail={"reason": "rate limit: too much feedback from this client",
                                          "http_status": 429})
            answer = outcome(429, "too much feedback from this client; retry after the time in Retry-After")
            answer.headers["Retry-After"] = str(max(1, math.ceil(wait)))
            return answer
        raw = await body_of(request)
        try:
            return await asyncio.to_thread(service.take_feedback, service_id, claims, rid, raw)
        except StateError:
            return outcome(503, "the state store cannot be written now, so the feedback was not stored; retry later")

    async def admin_of(request: Request) -> tuple[str | None, Response | None]:
        """The administrator's name, or the refusal (audited): 401 without the secret, 403 for an EHR's JWT."""
        from careloop.serve.auth import AuthError

        try:
            return service.admin.check(request.headers.get("authorization")), None
        except AuthError as e:
            await service.audited("auth-failure", "serious", detail={"reason": str(e.reason)[:200], "route": "admin"})
            return None, JSONResponse({}, status_code=403) if e.forbidden else unauthorized()

    async def admin_refusal(who: str, status: int, text: str) -> Response:
        await service.audited("admin-change", "minor", detail={"by": who, "reason": text, "http_status": status})
        return outcome(status, text)

    async def admin_request(request: Request, model_key: str, schema: type[BaseModel]):
        """(administrator, body, None) for a valid request about the served model, else (.., .., the refusal)."""
        who, refused = await admin_of(request)
        if refused:
            return None, None, refused
        try:
            body = schema.model_validate_json(await request.body())
        except ValidationError as e:
            return who, None, await admin_refusal(who, 400, _validation_problem(e))
        if not service.serves(model_key):
            return who, None, await admin_refusal(who, 404, "no such model is served here")
        return who, body, None

    @app.post("/admin/models/{model_key}/enabled")
    async def switch(model_key: str, request: Request):
        who, body, refused = await admin_request(request, model_key, SwitchRequest)
        if refused:
            return refused
        await asyncio.to_thread(service.store.set_enabled, service.model_key, body.enabled, by=who)
        await service.audited("admin-change", "success", detail={"by": who, "enabled": body.enabled})
        return {"model": service.model_key, "enabled": body.enabled}

    @app.get("/admin/models/{model_key}/threshold")
    async def threshold_now(model_key: str, request: Request):
        """The alert threshold in force, where it comes from, and what it gives on the held-out stays."""
        who, refused = await admin_of(request)
        if refused:
            return refused
        if not service.serves(model_key):
            return await admin_refusal(who, 404, "no such model is served here")
        return await asyncio.to_thread(service.threshold_state)

    @app.post("/admin/models/{model_key}/threshold")
    async def threshold_set(model_key: str, request: Request):
        """Set the alert threshold in place of the bundle's operating point (`{"threshold": 0.3}`), or go back to
        it (`{"threshold": null}`); every worker applies it from its next call. Audited with the old and new
        values and the new version, which every scored call then records."""
        who, body, refused = await admin_request(request, model_key, ThresholdRequest)
        if refused:
            return refused
        why = service.threshold_refused(body.threshold)
        if why:
            return await admin_refusal(who, 409 if service.validation is None else 400, why)
        await asyncio.to_thread(service.set_alert_threshold, body.threshold, by=who)
        return await asyncio.to_thread(service.threshold_state)

    @app.get("/admin/status")
    async def status(request: Request):
        _, refused = await admin_of(request)
        if refused:
            return refused
        v = await asyncio.to_thread(service.audit.verify)
        setting = await asyncio.to_thread(service.store.policy, service.model_key)
        return {
            "model": service.model_key,
            "enabled": setting.enabled,
            "threshold": service.thresholds(setting)[0],
            "threshold_version": setting.threshold_version,
            "audit": {"ok": v.ok, "checked": v.checked, "first_bad": v.first_bad},
        }

    @app.get("/models/{key}/card", response_class=HTMLResponse)
    def model_card(key: str):
        if not service.model_key.startswith(key) or len(key) < 6:
            return PlainTextResponse("unknown model", status_code=404)
        return HTMLResponse((service.bundle.path / "report.html").read_text())

    return app


_FHIR_ID = re.compile(r"[A-Za-z0-9\-.]{1,64}")
_UUID = re.compile(r"[0-9a-fA-F]{8}-[0-9a-fA-F]{4}-[0-9a-fA-F]{4}-[0-9a-fA-F]{4}-[0-9a-fA-F]{12}")
_SCHEMA_FIELDS = frozenset({"feedback", "card", "outcome", "acceptedSuggestions", "id", "overrideReason", "reason",
                            "code", "system", "display", "userComment", "outcomeTimestamp", "enabled", "threshold",
                            "extension"})


def _validation_problem(e: ValidationError) -> str:
    """The first problem of a request body, by its place and pydantic's message about our schema: a key the
    caller invented is not named, and no value is quoted (it may be a name or a note, and refusals are audited)."""
    err = e.errors(include_input=False, include_url=False)[0]
    where = ".".join(str(x) if isinstance(x, int) or x in _SCHEMA_FIELDS else "(a field not in the schema)"
                     for x in err["loc"]) or "body"
    return f"{where}: {err['msg']}"


def _decode_problem(e: msgspec.DecodeError) -> str:
    """msgspec's message up to the first quoted value, and the JSON path (`$.fhirAuthorization.token_type`)."""
    head, sep, path = str(e).partition(" - at `")
    head = re.split(r"['\"]", head, maxsplit=1)[0].rstrip(" :")
    return f"{head}{sep}{path}" if sep else head
# the audit fields a caller shapes (ids from the request or its token, and details quoting it): one the audit log
# refuses is left out of the record alone
_CALLER_FIELDS = ("patient", "encounter", "user", "hook_instance", "jti", "request_id", "client", "network", "detail")
# the network address of the client of the request being answered (set per request by the ASGI middleware), for the
# audit record's agent.network (BALP): the EHR's or the administrator's machine
CLIENT_NETWORK: contextvars.ContextVar[str | None] = contextvars.ContextVar("careloop_client_network", default=None)


def _check_request(service_id: str, req: HookRequest) -> str | None:
    hook = SERVICES[service_id][0]
    if req.hook != hook:  # the value sent is not quoted back: answers and audit records never echo the caller
        return f"hook: this service answers {hook!r} only"
    if not _UUID.fullmatch(req.hookInstance):
        return "hookInstance must be a UUID (CDS Hooks 2.0)"
    if req.fhirAuthorization and not req.fhirServer:
        return "fhirServer is required when fhirAuthorization is given"
    if not _patient_of(req):
        return "context.patientId is required"
    if not _FHIR_ID.fullmatch(_patient_of(req)):
        return "context.patientId must be a FHIR id (letters, digits, '-' and '.', at most 64)"
    if service_id == "readmission-risk" and not isinstance(req.context.get("encounterId"), str):
        return "context.encounterId is required for encounter-discharge"
    if service_id == "readmission-risk" and not _FHIR_ID.fullmatch(req.context["encounterId"]):
        return "context.encounterId must be a FHIR id (letters, digits, '-' and '.', at most 64)"
    return None


def _prefetch_absent(req: HookRequest, keys) -> list[str]:
    """The prefetch keys the service needs that were not sent (a null value counts as sent: 'no data'). Every one is
    needed: a record scored without its conditions or medications would understate the risk."""
    pf = req.prefetch or {}
    return [k for k in keys if k not in pf]


__all__ = ["SERVICES", "Service", "create_app"]
