"""The web dashboard, mounted on the CDS Hooks service's FastAPI app under ``/dashboard``.

    app = create_app(service)
    mount(app, service, users=load_users("users.yaml"), monitor_dir=Path("monitor-out"), store_dir=Path("store"))

Pages (role → pages; anything else is a 403 page):

- clinician: worklist (``/dashboard/worklist``), patient pages (``/dashboard/patient/{encounter_id}``), model;
- data_scientist: model (``/dashboard/model``), monitoring (``/dashboard/monitoring``);
- governance: model, monitoring, governance (``/dashboard/governance``: audit-log verification, kill switch,
  feedback export).

Patient-level pages are for the care team only (minimum necessary): data scientists and the governance committee
see aggregates. No page or log holds a patient's name (the store has none; the dashboard shows pseudonymous ids).
Pages are server-rendered Jinja2 with autoescaping, charts are inline SVG, and there is no JavaScript at all; the
Content-Security-Policy forbids scripts, so injected markup could not run one either.
"""

from __future__ import annotations

import csv
import datetime as dt
import io
import json
import logging
import os
import secrets
import threading
import time
import urllib.parse
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

from fastapi import FastAPI, Request
from fastapi.responses import HTMLResponse, JSONResponse, RedirectResponse, Response
from jinja2 import Environment, FileSystemLoader, select_autoescape
from markupsafe import Markup

from careloop.web import charts as CH
from careloop.web import monitoring as MON
from careloop.web.auth import DUMMY_HASH, ROLES, Sessions, Throttle, check_users, verify_password

log = logging.getLogger("careloop.web")

PREFIX = "/dashboard"
COOKIE = "careloop_dashboard"
SIGNIN_COOKIE = "careloop_signin"
HERE = Path(__file__).resolve().parent
MAX_FORM = 16 * 1024

ACCESS: dict[str, frozenset[str]] = {
    "worklist": frozenset({"clinician"}),
    "patient": frozenset({"clinician"}),
    "model": frozenset(ROLES),
    "monitoring": frozenset({"data_scientist", "governance"}),
    "governance": frozenset({"governance"}),
}
NAV = (("worklist", "Worklist"), ("model", "Model"), ("monitoring", "Monitoring"), ("governance", "Governance"))
HOME = {"clinician": "worklist", "data_scientist": "monitoring", "governance": "governance"}
ROLE_NAMES = {"clinician": "Clinician", "data_scientist": "Data scientist", "governance": "Governance"}

CSP = ("default-src 'none'; style-src 'self' 'unsafe-inline'; img-src 'self' data:; font-src data:; "
       "frame-src 'self'; form-action 'self'; frame-ancestors 'self'; base-uri 'none'")
CSP_REPORT = ("default-src 'none'; style-src 'unsafe-inline'; img-src data:; font-src data:; "
              "frame-ancestors 'self'; base-uri 'none'; form-action 'none'; sandbox")


def _env() -> Environment:
    env = Environment(loader=FileSystemLoader(HERE / "templates"), autoescape=select_autoescape(default=True),
                      trim_blocks=True, lstrip_blocks=True)
    env.filters["pct"] = lambda v, d=1: "–" if v is None else f"{100 * v:.{d}f}%"
    env.filters["num"] = _num
    env.filters["when"] = lambda t: "–" if t is None else t.astimezone(dt.UTC).strftime("%Y-%m-%d %H:%M")
    env.filters["day"] = lambda t: "–" if t is None else t.astimezone(dt.UTC).strftime("%Y-%m-%d")
    return env


def _num(v: object, d: int = 3) -> str:
    if v is None:
        return "–"
    if isinstance(v, bool):
        return "yes" if v else "no"
    if isinstance(v, int):
        return f"{v:,}"
    if isinstance(v, float):
        return f"{v:.{d}f}" if abs(v) < 1e6 else f"{v:.3g}"
    return str(v)


def _secure(resp: Response, *, csp: str = CSP) -> Response:
    resp.headers["Content-Security-Policy"] = csp
    resp.headers["X-Content-Type-Options"] = "nosniff"
    resp.headers["X-Frame-Options"] = "SAMEORIGIN"
    resp.headers["Referrer-Policy"] = "same-origin"  # no-referrer would make the browser send "Origin: null"
    resp.headers["Cache-Control"] = "no-store"
    resp.headers["Cross-Origin-Opener-Policy"] = "same-origin"
    resp.headers["Permissions-Policy"] = "camera=(), microphone=(), geolocation=()"
    return resp


def _address(request: Request) -> str | None:
    """The client's network address (the proxy's forwarded one when `careloop serve --proxy` trusts that proxy)."""
    return request.client.host if request.client else None


def _route(request: Request) -> str:
    """The matched route's template (``/dashboard/patient/{encounter_id}``), never the path as sent: that is the
    caller's own text, and may hold anything."""
    return getattr(request.scope.get("route"), "path", None) or PREFIX


def _safe_next(target: str | None) -> str | None:
    """Only a path of this dashboard (no scheme, no host, no backslash tricks) may be a redirect target."""
    if not target or not isinstance(target, str) or len(target) > 512:
        return None
    if not target.startswith(PREFIX + "/") or target.startswith("//") or "\\" in target or "://" in target:
        return None
    if any(ord(c) < 0x21 for c in target):
        return None
    return target


class Dashboard:
    """State of the mounted dashboard: users, sessions, throttle, templates, and the service it shows."""

    def __init__(self, service, users: Mapping, monitor_dir: Path | None, store_dir: Path | None,
                 secret: bytes | None, session_hours: float) -> None:
        self.service = service
        self.users = check_users(users)
        env_secret = os.environ.get("CARELOOP_DASHBOARD_SECRET")
        secret = secret or (env_secret.encode() if env_secret else secrets.token_bytes(32))
        # sign-outs go to the state store that every worker shares (and that outlives a restart)
        self.sessions = Sessions(secret, lifetime_s=int(session_hours * 3600), sign_outs=service.store)
        self.throttle = Throttle()
        self.monitor_dir = Path(monitor_dir) if monitor_dir is not None else None
        self.store_dir = Path(store_dir) if store_dir is not None else None
        self.env = _env()
        self._monitor_lock = threading.Lock()
        self._monitor: tuple[tuple, dict] | None = None  # (monitor.json's stat, the rendered view)
        if self.monitor_dir is not None:  # draw the charts now, so the first visit does not wait for them
            threading.Thread(target=self._warm, name="careloop-dashboard-charts", daemon=True).start()

    def _warm(self) -> None:
        try:
            self.monitoring_view()
        except Exception:  # the page will show the error when visited
            log.warning("drawing the monitoring charts failed", exc_info=True)

    def monitoring_view(self) -> dict:
        """The monitoring page's content, redrawn only when monitor.json changes (drawing takes seconds)."""
        path = self.monitor_dir / "monitor.json" if self.monitor_dir else None
        try:
            st = path.stat() if path else None
        except OSError:
            st = None
        key = (str(path), st.st_mtime_ns, st.st_size) if st else (str(path),)
        with self._monitor_lock:
            if self._monitor and self._monitor[0] == key:
                return self._monitor[1]
            doc, why = MON.load(self.monitor_dir)
            view: dict[str, Any] = {"doc": doc, "why": why}
            if doc is not None:
                labels, counts = MON.alert_counts(doc)
                view["alerts_chart"] = Markup(CH.alerts_svg(labels, counts)) if labels else None
                view["charts"] = [{"chart": c, "svg": Markup(_draw(c, f"m{i + 1}"))}
                                  for i, c in enumerate(MON.charts(doc))]
                view["omitted"] = len(MON.charts(doc, limit=None)) - len(view["charts"])
                view["alerts"] = MON.alert_rows(doc)
                view["summary"] = MON.summary(doc)
                view["n_periods"] = len(labels)
                view["has_html"] = (self.monitor_dir / "monitor.html").is_file()
            if st:
                self._monitor = (key, view)
            return view

    # -- responses ------------------------------------------------------------------------------------
    def page(self, request: Request, template: str, status: int = 200, session=None, **ctx: Any) -> Response:
        s = self.service
        nav = [(key, title) for key, title in NAV if session and session.role in ACCESS[key]]
        html = self.env.get_template(template).render(
            prefix=PREFIX, session=session, role_name=ROLE_NAMES.get(session.role) if session else None,
            csrf=self.sessions.csrf(session) if session else None, nav=nav, model_name=s.bundle.name,
            page={"patient": "worklist"}.get(template.split(".")[0], template.split(".")[0]),
            model_key=s.model_key, enabled=s.store.enabled(s.model_key), **ctx)
        return _secure(HTMLResponse(html, status_code=status))

    def error(self, request: Request, status: int, title: str, text: str, session=None) -> Response:
        return self.page(request, "error.html.j2", status, session, title=title, text=text, code=status)

    def set_cookie(self, resp: Response, request: Request, name: str, value: str, max_age: int) -> None:
        resp.set_cookie(name, value, max_age=max_age, path=PREFIX, httponly=True, samesite="strict",
                        secure=request.url.scheme == "https")

    # -- audit ----------------------------------------------------------------------------------------
    def event(self, request: Request, kind: str, outcome: str, *, user: str | None = None,
              patient: str | None = None, detail: dict | None = None) -> dict:
        """One dashboard AuditEvent: the user, the client's address, the route's template and the model's hash. A
        field the log refuses is left out and named (best effort: the event is still recorded)."""
        from careloop.audit import AuditContentError, audit_event

        fields: dict[str, Any] = {"user": user, "patient": patient, "network": _address(request),
                                  "detail": {"route": _route(request), **(detail or {})}}
        base = {"kind": kind, "outcome": outcome, "model_hash": self.service.bundle.bundle_id}
        try:
            return audit_event(**base, **fields)
        except AuditContentError:
            pass
        dropped = []
        for name, value in fields.items():
            try:
                audit_event(**base, **{name: value})
            except AuditContentError:
                dropped.append(name)
            else:
                base[name] = value
        base["detail"] = {**(base.get("detail") or {}), "error": "unrecordable fields", "field": ",".join(dropped)}
        return audit_event(**base)

    def record(self, events: Sequence[dict]) -> None:
        """Append the events in one transaction (all or none); errors propagate."""
        if events:
            self.service.audit.append_many(list(events))

    def record_access(self, request: Request, s, stays: Sequence[tuple[str, str]]) -> None:
        """One `access` event per patient shown (BALP: one per patient), naming the stays shown of each; errors
        propagate, so that a page whose viewing is not recorded is not shown."""
        by_patient: dict[str, list[str]] = {}
        for patient, encounter in stays:
            by_patient.setdefault(patient, []).append(encounter)
        self.record([self.event(request, "access", "success", user=s.user, patient=p,
                                detail={"value": ",".join(encs)}) for p, encs in by_patient.items()])

    def record_refusal(self, request: Request, status: int, reason: str, s=None, *, outcome: str = "minor") -> None:
        """An `auth-failure` event for a refused request (who, if known, the role, the route, the address); if it
        cannot be written, the refusal stands and the failure is logged."""
        detail = {"reason": reason, "http_status": status, "role": s.role if s else None}
        try:
            self.record([self.event(request, "auth-failure", outcome, user=s.user if s else None, detail=detail)])
        except Exception:
            log.exception("the audit log could not record a refused dashboard request")

    # -- checks ---------------------------------------------------------------------------------------
    def session(self, request: Request):
        return self.sessions.read(request.cookies.get(COOKIE), self.users)

    def guard(self, request: Request, page: str, *, api: bool = False):
        """(session, None) when the signed-in role may see `page`; else (None or session, the refusal). Refusals are
        audited: a JSON call without a valid session, a cookie that is no session (forged, expired, signed out), a
        role the page is not for. A page visited before signing in is only sent to the sign-in page."""
        s = self.session(request)
        if s is None:
            cookie = request.cookies.get(COOKIE)
            if api or cookie:
                why = "not a valid session (forged, expired or signed out)" if cookie else "not signed in"
                self.record_refusal(request, 401 if api else 303, why)
            if api:
                return None, _secure(JSONResponse({"error": "sign in first"}, status_code=401))
            target = request.url.path + (f"?{request.url.query}" if request.url.query else "")
            q = urllib.parse.urlencode({"next": target}) if _safe_next(target) else ""
            return None, _secure(RedirectResponse(f"{PREFIX}/sign-in" + (f"?{q}" if q else ""), status_code=303))
        if s.role not in ACCESS[page]:
            self.record_refusal(request, 403, "role may not open this page", s)
            if api:
                return s, _secure(JSONResponse({"error": "forbidden for this role"}, status_code=403))
            return s, self.error(request, 403, "Not allowed",
                                 f"The {ROLE_NAMES[s.role].lower()} role cannot open this page.", s)
        return s, None

    @staticmethod
    def same_origin(request: Request) -> bool:
        """A state-changing request must come from this origin (Origin, else Referer, when the browser sends one)."""
        here = f"{request.url.scheme}://{request.headers.get('host', request.url.netloc)}"
        origin = request.headers.get("origin")
        if origin is not None:
            return origin == here
        referer = request.headers.get("referer")
        if referer:
            return referer == here or referer.startswith(here + "/")
        return True

    @staticmethod
    async def form(request: Request) -> dict[str, str] | None:
        if "application/x-www-form-urlencoded" not in request.headers.get("content-type", ""):
            return None
        raw = await request.body()
        if len(raw) > MAX_FORM:
            return None
        try:
            pairs = urllib.parse.parse_qsl(raw.decode("utf-8"), keep_blank_values=True, max_num_fields=20)
        except (UnicodeDecodeError, ValueError):
            return None
        return dict(pairs)


def mount(app: FastAPI, service, *, users: Mapping, monitor_dir: Path | None = None, store_dir: Path | None = None,
          secret: bytes | None = None, session_hours: float = 8.0) -> Dashboard:
    """Add the dashboard's routes (under /dashboard) to the service's app; returns the Dashboard.

    `users`: {username: {"role": clinician | data_scientist | governance, "password_hash": hash_password(...)}}.
    `monitor_dir`: the `careloop monitor --out` folder (monitor.json, monitor.html). `store_dir`: the event store
    the worklist and patient pages score. `secret` signs the session cookies (default: $CARELOOP_DASHBOARD_SECRET,
    else random per process, so a restart signs everyone out; several workers need a shared secret).
    """
    d = Dashboard(service, users, monitor_dir, store_dir, secret, session_hours)
    service.patient_pages = store_dir is not None  # the cards' "Patient risk page" link has a page to open
    app.state.dashboard = d
    svc = service

    def route(path: str, methods: tuple[str, ...] = ("GET",), **kw):
        return app.api_route(PREFIX + path, methods=list(methods), include_in_schema=False, **kw)

    # -- sign-in --------------------------------------------------------------------------------------
    @route("")
    @route("/")
    def home(request: Request):
        s = d.session(request)
        if s is None:
            return _secure(RedirectResponse(f"{PREFIX}/sign-in", status_code=303))
        return _secure(RedirectResponse(f"{PREFIX}/{HOME[s.role]}", status_code=303))

    def sign_in_page(request: Request, next_: str | None, error: str | None = None, status: int = 200) -> Response:
        nonce = secrets.token_hex(16)
        resp = d.page(request, "sign_in.html.j2", status, None, token=d.sessions.login_token(nonce),
                      next=_safe_next(next_) or "", error=error)
        d.set_cookie(resp, request, SIGNIN_COOKIE, nonce, 900)
        return resp

    @route("/sign-in")
    def sign_in_form(request: Request, next: str | None = None):
        s = d.session(request)
        if s is not None:
            return _secure(RedirectResponse(_safe_next(next) or f"{PREFIX}/{HOME[s.role]}", status_code=303))
        return sign_in_page(request, next)

    @route("/sign-in", ("POST",))
    async def sign_in(request: Request):
        form = await d.form(request)
        if form is None or not d.same_origin(request):
            return d.error(request, 400, "Bad request", "The sign-in form could not be read. Reload the page.")
        next_ = form.get("next")
        if not d.sessions.login_ok(request.cookies.get(SIGNIN_COOKIE), form.get("token")):
            return sign_in_page(request, next_, "Your sign-in form expired. Please try again.", 400)
        user, password = form.get("username", "").strip()[:65], form.get("password", "")
        client = request.client.host if request.client else "?"
        if d.throttle.blocked(f"user:{user.lower()}", f"ip:{client}"):
            d.record_refusal(request, 429, "too many failed sign-ins")  # the name typed is never recorded
            return sign_in_page(request, next_, "Too many failed attempts. Wait a few minutes and try again.", 429)
        spec = d.users.get(user)
        ok = verify_password(password, spec["password_hash"] if spec else DUMMY_HASH) and spec is not None
        if not ok:
            d.throttle.fail(f"user:{user.lower()}", f"ip:{client}")
            d.record_refusal(request, 401, "bad credentials")
            return sign_in_page(request, next_, "Unknown user name or wrong password.", 401)
        d.throttle.clear(f"user:{user.lower()}")
        cookie, sess = d.sessions.issue(user, spec["role"])
        resp = _secure(RedirectResponse(_safe_next(next_) or f"{PREFIX}/{HOME[sess.role]}", status_code=303))
        d.set_cookie(resp, request, COOKIE, cookie, d.sessions.lifetime_s)
        resp.delete_cookie(SIGNIN_COOKIE, path=PREFIX)
        return resp

    @route("/sign-out", ("POST",))
    async def sign_out(request: Request):
        s = d.session(request)
        form = await d.form(request)
        if s is not None:
            if form is None or not d.same_origin(request) or not d.sessions.csrf_ok(s, form.get("csrf")):
                d.record_refusal(request, 403, "csrf", s, outcome="serious")
                return d.error(request, 403, "Not allowed", "The sign-out form was not valid. Reload the page.", s)
            try:
                d.sessions.revoke(s)
            except Exception as e:  # other workers would still take the cookie: say so, do not pretend
                log.warning("a dashboard sign-out could not be stored: %s", type(e).__name__)
                resp = d.error(request, 503, "Not signed out", "Your sign-out could not be recorded just now, so "
                               "the session may still be open elsewhere. Try again shortly.", s)
                resp.delete_cookie(COOKIE, path=PREFIX)
                return resp
        resp = _secure(RedirectResponse(f"{PREFIX}/sign-in", status_code=303))
        resp.delete_cookie(COOKIE, path=PREFIX)
        return resp

    @route("/static/dashboard.css")
    def css():
        resp = Response((HERE / "static" / "dashboard.css").read_text(), media_type="text/css")
        resp.headers["X-Content-Type-Options"] = "nosniff"
        resp.headers["Cache-Control"] = "max-age=300"
        return resp

    # -- clinician ------------------------------------------------------------------------------------
    @route("/worklist")
    def worklist_page(request: Request):
        s, refused = d.guard(request, "worklist")
        if refused:
            return refused
        if d.store_dir is None:
            return d.page(request, "worklist.html.j2", session=s, wl=None,
                          note="No event store is configured for the worklist (careloop serve --store).")
        wl, why = audited_worklist(request, s)
        if wl is None:
            return d.page(request, "worklist.html.j2", 503, session=s, wl=None, note=f"{why} Try again shortly.")
        threshold, band = svc.current_thresholds()
        return d.page(request, "worklist.html.j2", session=s, wl=wl, note=None, threshold=threshold, band=band)

    def audited_worklist(request: Request, s) -> tuple[dict | None, str | None]:
        """(the scored worklist, None) with one `access` record per patient listed, written before it is shown;
        else (None, why): a store being rewritten or a broken file, or an audit log that cannot be written."""
        from careloop.web.data import worklist

        try:
            wl = worklist(svc, d.store_dir)
        except Exception as e:  # say so, and keep the rest of the app up
            log.warning("worklist scoring failed: %s", type(e).__name__)
            return None, f"The worklist could not be scored just now ({type(e).__name__})."
        try:
            d.record_access(request, s, [(r.patient_id, r.encounter_id) for r in wl["current"] + wl["recent"]])
        except Exception as e:  # patients' risks are not shown unrecorded
            log.warning("the audit log could not record a worklist view: %s", type(e).__name__)
            return None, "The worklist cannot be shown just now: its viewing could not be recorded in the audit log."
        return wl, None

    @route("/api/worklist")
    def worklist_api(request: Request):
        s, refused = d.guard(request, "worklist", api=True)
        if refused:
            return refused
        if d.store_dir is None:
            return _secure(JSONResponse({"error": "no event store configured"}, status_code=404))
        wl, why = audited_worklist(request, s)
        if wl is None:
            return _secure(JSONResponse({"error": why}, status_code=503))
        out = {"as_of": wl["as_of"].isoformat(), "model": svc.model_key, "threshold": svc.current_thresholds()[0]}
        for key in ("current", "recent"):
            out[key] = [{"encounter": r.encounter_id, "patient": r.patient_id, "admitted": r.admit.isoformat(),
                         "index_time": r.index_time.isoformat(), "risk": r.assessment.risk,
                         "status": r.assessment.status, "deferral": r.assessment.reason,
                         "reasons": [x.phrase for x in r.reasons],
                         "card": (r.card or {}).get("status")} for r in wl[key]]
        return _secure(JSONResponse(out))

    @route("/patient/{encounter_id}")
    def patient_page(request: Request, encounter_id: str):
        s, refused = d.guard(request, "patient")
        if refused:
            return refused
        if d.store_dir is None:
            return d.error(request, 404, "No event store", "No event store is configured for patient pages.", s)
        if not (0 < len(encounter_id) <= 128) or any(ord(c) < 0x21 or ord(c) > 0x7E for c in encounter_id):
            return d.error(request, 404, "Not found", "There is no such stay.", s)
        from careloop.web.data import timeline

        try:
            tl = timeline(svc, d.store_dir, encounter_id)
        except Exception as e:  # as the worklist: a secured answer, the rest of the app up
            log.warning("patient page scoring failed: %s", type(e).__name__)
            return d.error(request, 503, "Not available", "This stay could not be scored just now "
                           f"({type(e).__name__}). Try again shortly.", s)
        if tl is None:
            return d.error(request, 404, "Not found", "There is no such inpatient stay in the store.", s)
        try:  # every view of a patient's page is audited: who (the dashboard user), which patient, which stay
            d.record_access(request, s, [(tl.stay.get("patient_id"), encounter_id)])
        except Exception as e:  # a patient's data is not shown unrecorded
            log.warning("the audit log could not record a patient page view: %s", type(e).__name__)
            return d.error(request, 503, "Not available", "This page cannot be shown just now: its viewing could "
                           "not be recorded in the audit log. Try again shortly.", s)
        days = [(t - tl.stay["admit"]).total_seconds() / 86400 for t in tl.times]
        threshold, band = svc.current_thresholds()
        chart = CH.risk_over_stay_svg(days, [a.risk for a in tl.assessments], threshold, band,
                                      discharged=tl.stay["end"] is not None)
        points = list(zip(tl.times, days, tl.assessments, strict=True))
        return d.page(request, "patient.html.j2", session=s, tl=tl, chart=Markup(chart), points=points,
                      threshold=threshold, band=band)

    # -- model ----------------------------------------------------------------------------------------
    @route("/model")
    def model_page(request: Request):
        s, refused = d.guard(request, "model")
        if refused:
            return refused
        path = svc.bundle.path
        hti1 = []
        if (path / "hti1_source_attributes.json").is_file():
            attrs = json.loads((path / "hti1_source_attributes.json").read_text())
            hti1 = sorted((v for v in attrs.values() if isinstance(v, dict)), key=lambda v: v.get("number") or 0)
        card = _markdown((path / "model_card.md").read_text()) if (path / "model_card.md").is_file() else None
        op = dict(svc.meta.get("operating_point") or {})
        switches = svc.store.switches().get(svc.model_key)
        setting = svc.store.policy(svc.model_key)
        threshold, band = svc.thresholds(setting)
        return d.page(request, "model.html.j2", session=s, hti1=hti1, card=card, op=op, meta=svc.meta,
                      band=band, threshold=threshold, bundle=svc.bundle, switch=switches,
                      admin_threshold=setting.threshold, threshold_version=setting.threshold_version,
                      bundle_threshold=svc.threshold,
                      has_report=(path / "report.html").is_file(), policy=svc.policy)

    @route("/model/report")
    def model_report(request: Request):
        s, refused = d.guard(request, "model")
        if refused:
            return refused
        path = svc.bundle.path / "report.html"
        if not path.is_file():
            return d.error(request, 404, "Not found", "This bundle has no validation report.", s)
        return _secure(HTMLResponse(path.read_text()), csp=CSP_REPORT)

    @route("/model/model_card.md")
    def model_card_md(request: Request):
        s, refused = d.guard(request, "model")
        if refused:
            return refused
        path = svc.bundle.path / "model_card.md"
        if not path.is_file():
            return d.error(request, 404, "Not found", "This bundle has no model card.", s)
        return _secure(Response(path.read_text(), media_type="text/markdown; charset=utf-8"))

    # -- monitoring -----------------------------------------------------------------------------------
    @route("/monitoring")
    def monitoring_page(request: Request):
        s, refused = d.guard(request, "monitoring")
        if refused:
            return refused
        return d.page(request, "monitoring.html.j2", session=s, **d.monitoring_view())

    @route("/monitoring/report")
    def monitoring_report(request: Request):
        s, refused = d.guard(request, "monitoring")
        if refused:
            return refused
        path = d.monitor_dir / "monitor.html" if d.monitor_dir else None
        if path is None or not path.is_file():
            return d.error(request, 404, "Not found", "There is no monitoring report yet.", s)
        return _secure(HTMLResponse(path.read_text()), csp=CSP_REPORT)

    @route("/api/monitor")
    def monitor_api(request: Request):
        _, refused = d.guard(request, "monitoring", api=True)
        if refused:
            return refused
        doc, why = MON.load(d.monitor_dir)
        if doc is None:
            return _secure(JSONResponse({"error": why}, status_code=404))
        return _secure(JSONResponse(doc))

    # -- governance -----------------------------------------------------------------------------------
    @route("/governance")
    def governance_page(request: Request, changed: str | None = None, preview: str | None = None):
        s, refused = d.guard(request, "governance")
        if refused:
            return refused
        t0 = time.perf_counter()
        v = svc.audit.verify()
        verify_ms = 1000 * (time.perf_counter() - t0)
        fb = _feedback_summary(svc)
        chart = Markup(CH.feedback_svg(*zip(*fb["per_day"], strict=True))) if fb["per_day"] else None
        tried, tried_why = _percent(preview)  # "what would 25% give?", before anyone sets it
        if tried is not None:
            tried_why = svc.threshold_refused(tried)
        return d.page(request, "governance.html.j2", session=s, verify=v, verify_ms=verify_ms,
                      head=svc.audit.head(), recent=_recent_audit(svc), by_kind=_audit_counts(svc),
                      switch=svc.store.switches().get(svc.model_key), fb=fb, feedback_chart=chart,
                      changed=changed in ("on", "off", "threshold") and changed, thr=svc.threshold_state(),
                      tried=svc.threshold_state(tried) if tried is not None and not tried_why else None,
                      tried_value=preview if preview and len(preview) <= 12 else None, tried_why=tried_why)

    @route("/governance/threshold", ("POST",))
    async def set_threshold(request: Request):
        s, form, refused = await governance_form(request)
        if refused:
            return refused
        raw = form.get("threshold")
        new, why = (None, None) if raw == "bundle" else _fraction(raw)
        why = why or svc.threshold_refused(new)
        if why or (new is None and raw != "bundle"):
            return d.error(request, 400, "Bad request", f"The threshold was not set: {why or 'no threshold'}.", s)
        svc.set_alert_threshold(new, by=f"dashboard:{s.user}", route="dashboard")
        return _secure(RedirectResponse(f"{PREFIX}/governance?changed=threshold", status_code=303))

    async def governance_form(request: Request):
        """(session, form, None) for a governance user's form from this site with its CSRF token, else the refusal
        (a bad token is audited)."""
        s, refused = d.guard(request, "governance")
        if refused:
            return None, None, refused
        form = await d.form(request)
        if form is None or not d.same_origin(request) or not d.sessions.csrf_ok(s, form.get("csrf")):
            d.record_refusal(request, 403, "csrf", s, outcome="serious")
            return s, None, d.error(request, 403, "Not allowed", "The form was not valid (expired or from another "
                                                                 "site). Reload the governance page and try again.", s)
        return s, form, None

    @route("/governance/kill-switch", ("POST",))
    async def kill_switch(request: Request):
        s, form, refused = await governance_form(request)
        if refused:
            return refused
        if form.get("enabled") not in ("true", "false"):
            return d.error(request, 400, "Bad request", "Choose to switch the model on or off.", s)
        enabled = form["enabled"] == "true"
        by = f"dashboard:{s.user}"
        svc.store.set_enabled(svc.model_key, enabled, by=by)
        svc.record("admin-change", "success", detail={"by": by, "enabled": enabled, "route": "dashboard"})
        state = "on" if enabled else "off"
        return _secure(RedirectResponse(f"{PREFIX}/governance?changed={state}", status_code=303))

    @route("/governance/feedback.csv")
    def feedback_csv(request: Request):
        s, refused = d.guard(request, "governance")
        if refused:
            return refused
        rows = svc.store.feedback()
        svc.record("export", "success", detail={"by": f"dashboard:{s.user}", "format": "csv", "rows": len(rows),
                                                "route": "dashboard-feedback"})
        resp = Response(_csv(rows), media_type="text/csv; charset=utf-8")
        stamp = dt.datetime.now(dt.UTC).strftime("%Y%m%d")
        resp.headers["Content-Disposition"] = f'attachment; filename="careloop-feedback-{stamp}.csv"'
        return _secure(resp)

    return d


def _fraction(text: str | None) -> tuple[float | None, str | None]:
    """A risk between 0 and 1 as a form sends it, or why not."""
    try:
        value = float(text or "")
    except ValueError:
        return None, "not a number"
    if not 0.0 < value < 1.0:
        return None, "a threshold is a risk between 0 and 1"
    return value, None


def _percent(text: str | None) -> tuple[float | None, str | None]:
    """A percentage typed in the governance page's threshold box, as a risk, or why not (None, None: nothing typed)."""
    if not text:
        return None, None
    try:
        value = float(text.strip().rstrip("%")) / 100
    except ValueError:
        return None, "type a percentage, such as 25"
    if not 0.0 < value < 1.0:
        return None, "a threshold is a percentage between 0 and 100"
    return value, None


def _draw(c: MON.Chart, name: str) -> str:
    if c.kind == "heatmap":
        return CH.heatmap_svg(c.title, c.labels, c.series, name=name, percent=c.percent, threshold=c.threshold)
    return CH.series_svg(c.title, c.labels, c.series, alert_periods=c.alert_periods, name=name, percent=c.percent,
                         hline=c.threshold)


FEEDBACK_COLUMNS = ("intervention", "card", "action", "accepted_suggestions", "override_code", "override_system",
                    "override_display", "comment", "user", "client", "date", "received", "location", "model_hash")


def _cell(v: object) -> str:
    text = "" if v is None else json.dumps(v) if isinstance(v, list | dict) else str(v)
    return "'" + text if text[:1] in ("=", "+", "-", "@", "\t", "\r") else text  # no formulas in a spreadsheet


def _csv(rows: list[dict]) -> str:
    buf = io.StringIO()
    w = csv.writer(buf, lineterminator="\r\n")
    w.writerow(FEEDBACK_COLUMNS)
    for r in rows:
        w.writerow([_cell(r.get(c)) for c in FEEDBACK_COLUMNS])
    return buf.getvalue()


def _recent_audit(svc, limit: int = 25) -> list[dict]:
    from sqlalchemy import select

    from careloop.audit.log import audit_table

    a = audit_table.c
    with svc.store.transaction(write=False) as conn:
        rows = conn.execute(select(a.seq, a.recorded, a.kind, a.outcome, a.client).order_by(a.seq.desc())
                            .limit(limit)).mappings().all()
    return [dict(r) for r in rows]


def _audit_counts(svc) -> list[tuple[str, str, int]]:
    from sqlalchemy import func, select

    from careloop.audit.log import audit_table

    a = audit_table.c
    with svc.store.transaction(write=False) as conn:
        rows = conn.execute(select(a.kind, a.outcome, func.count()).group_by(a.kind, a.outcome)
                            .order_by(a.kind, a.outcome)).all()
    return [(k or "–", o or "–", int(n)) for k, o, n in rows]


def _feedback_summary(svc) -> dict:
    from sqlalchemy import select

    from careloop.state.store import card_table

    c = card_table.c
    with svc.store.transaction(write=False) as conn:
        shown = conn.execute(select(c.uuid, c.at).where(c.model_hash == svc.model_key)).all()
    rows = [r for r in svc.store.feedback() if r.get("model_hash") in (svc.model_key, None)]
    days: dict[str, list[int]] = {}
    for _, at in shown:
        days.setdefault(at.strftime("%Y-%m-%d"), [0, 0, 0])[0] += 1
    ours = {u: at.strftime("%Y-%m-%d") for u, at in shown}
    for r in rows:
        day = ours.get(r["card"])
        if day is not None:
            days[day][1 if r["action"] == "accepted" else 2] += 1
    per_day = [(d, *v) for d, v in sorted(days.items())][-30:]
    accepted = sum(r["action"] == "accepted" for r in rows)
    overridden = sum(r["action"] == "overridden" for r in rows)
    reasons: dict[str, int] = {}
    for r in rows:
        if r["action"] == "overridden":
            key = r.get("override_display") or r.get("override_code") or "no reason given"
            reasons[key] = reasons.get(key, 0) + 1
    return {"cards": len(shown), "per_day": per_day, "feedback": len(rows), "accepted": accepted,
            "overridden": overridden,
            "override_rate": overridden / len(rows) if rows else None,
            "reasons": sorted(reasons.items(), key=lambda kv: (-kv[1], kv[0]))[:10]}


def _markdown(text: str) -> Markup:
    """The model card as HTML: CommonMark with tables, raw HTML escaped, unsafe links refused (markdown-it-py)."""
    try:
        from markdown_it import MarkdownIt
    except ImportError:  # pragma: no cover - markdown-it-py comes with rich
        from markupsafe import escape

        return Markup(f"<pre>{escape(text)}</pre>")
    md = MarkdownIt("commonmark", {"html": False, "linkify": False, "typographer": False}).enable("table")
    return Markup(md.render(text))


__all__ = ["ACCESS", "PREFIX", "Dashboard", "mount"]
