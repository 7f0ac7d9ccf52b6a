"""Dashboard sign-in: password hashes (scrypt, PBKDF2), signed session cookies, CSRF tokens and a sign-in throttle.

Everything here is the standard library (`hashlib`, `hmac`, `secrets`): no extra package.

Users are a mapping ``{username: {"role": ROLE, "password_hash": HASH}}`` with ROLE one of :data:`ROLES` and HASH
from :func:`hash_password` (``scrypt$n$r$p$salt$key`` or ``pbkdf2_sha256$iterations$salt$key``; base64 parts).

The session is a cookie ``payload.signature``: the payload is base64url JSON (user, role, session id, issue and
expiry times), the signature HMAC-SHA256 of the payload under the app's secret. It is HttpOnly and SameSite=Strict
(and Secure over HTTPS), so scripts cannot read it and other sites cannot send it. A session is valid while it is
unexpired, signed, not signed out (sign-outs are kept in the state store, so every worker and the app after a restart
refuse the cookie), and its user still exists with the same role. Forms that change state carry a
CSRF token derived from the session id (HMAC), checked on POST together with the Origin header.
"""

from __future__ import annotations

import base64
import datetime as dt
import hashlib
import hmac
import json
import logging
import re
import secrets
import threading
import time
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Protocol

from careloop.errors import CareloopError

log = logging.getLogger("careloop.web")

ROLES = ("clinician", "data_scientist", "governance")
USERNAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9_.@-]{0,63}")
SCRYPT_N, SCRYPT_R, SCRYPT_P = 2**14, 8, 1
PBKDF2_ITERATIONS = 600_000
MAX_PASSWORD = 1024  # characters; longer input is refused before hashing (no CPU exhaustion)


class DashboardConfigError(CareloopError):
    """The dashboard's users or secret are unusable."""


def _b64(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode("ascii")


def _unb64(text: str) -> bytes:
    return base64.urlsafe_b64decode(text + "=" * (-len(text) % 4))


def hash_password(password: str, *, method: str = "scrypt") -> str:
    """A salted hash of `password` to store in the users file: ``scrypt$16384$8$1$SALT$KEY`` (default) or
    ``pbkdf2_sha256$600000$SALT$KEY``.

    >>> verify_password("s3cret!", hash_password("s3cret!"))
    True
    """
    if not isinstance(password, str) or not password or len(password) > MAX_PASSWORD:
        raise DashboardConfigError(f"a password must be a non-empty string of at most {MAX_PASSWORD} characters")
    salt = secrets.token_bytes(16)
    if method == "scrypt":
        key = hashlib.scrypt(password.encode(), salt=salt, n=SCRYPT_N, r=SCRYPT_R, p=SCRYPT_P, dklen=32)
        return f"scrypt${SCRYPT_N}${SCRYPT_R}${SCRYPT_P}${_b64(salt)}${_b64(key)}"
    if method == "pbkdf2_sha256":
        key = hashlib.pbkdf2_hmac("sha256", password.encode(), salt, PBKDF2_ITERATIONS)
        return f"pbkdf2_sha256${PBKDF2_ITERATIONS}${_b64(salt)}${_b64(key)}"
    raise DashboardConfigError(f"unknown password hash method {method!r}: scrypt or pbkdf2_sha256")


def _parse_hash(stored: str) -> tuple[str, tuple[int, ...], bytes, bytes]:
    parts = stored.split("$") if isinstance(stored, str) else []
    try:
        if len(parts) == 6 and parts[0] == "scrypt":
            n, r, p = (int(x) for x in parts[1:4])
            if not (2 <= n <= 2**20 and n & (n - 1) == 0 and 1 <= r <= 32 and 1 <= p <= 16):
                raise ValueError("scrypt parameters out of range")
            return "scrypt", (n, r, p), _unb64(parts[4]), _unb64(parts[5])
        if len(parts) == 4 and parts[0] == "pbkdf2_sha256":
            it = int(parts[1])
            if not 10_000 <= it <= 10_000_000:
                raise ValueError("iterations out of range")
            return "pbkdf2_sha256", (it,), _unb64(parts[2]), _unb64(parts[3])
    except ValueError as e:
        raise DashboardConfigError(f"unreadable password hash: {e}") from None
    raise DashboardConfigError("a password hash must look like scrypt$N$r$p$SALT$KEY or pbkdf2_sha256$ITER$SALT$KEY "
                               "(make one with careloop.web.hash_password)")


def verify_password(password: str, stored: str) -> bool:
    """Whether `password` matches the stored hash (constant-time comparison of the derived keys)."""
    method, params, salt, key = _parse_hash(stored)
    if not isinstance(password, str) or not password or len(password) > MAX_PASSWORD:
        return False
    if method == "scrypt":
        n, r, p = params
        got = hashlib.scrypt(password.encode(), salt=salt, n=n, r=r, p=p, dklen=len(key), maxmem=2**27)
    else:
        got = hashlib.pbkdf2_hmac("sha256", password.encode(), salt, params[0], dklen=len(key))
    return hmac.compare_digest(got, key)


def check_users(users: Mapping) -> dict[str, dict]:
    """The users mapping validated and normalised: ``{username: {"role", "password_hash"}}``."""
    if not isinstance(users, Mapping) or not users:
        raise DashboardConfigError("the dashboard needs at least one user: {username: {role, password_hash}}")
    out: dict[str, dict] = {}
    for name, spec in users.items():
        if not isinstance(name, str) or not USERNAME.fullmatch(name):
            raise DashboardConfigError(f"bad username {name!r:.40}: letters, digits and _.@- (at most 64)")
        if not isinstance(spec, Mapping):
            raise DashboardConfigError(f"user {name}: expected {{role, password_hash}}")
        role, stored = spec.get("role"), spec.get("password_hash")
        if role not in ROLES:
            raise DashboardConfigError(f"user {name}: role must be one of {', '.join(ROLES)}, not {role!r:.40}")
        _parse_hash(stored)
        out[name] = {"role": role, "password_hash": stored}
    return out


def load_users(path: Path | str) -> dict[str, dict]:
    """Users from a YAML or JSON file: ``{username: {role: ..., password_hash: ...}}`` (hashes, never passwords)."""
    import yaml

    text = Path(path).read_text()
    doc = yaml.safe_load(text)
    if isinstance(doc, Mapping) and "users" in doc and isinstance(doc["users"], Mapping):
        doc = doc["users"]
    return check_users(doc)


@dataclass(frozen=True)
class Session:
    user: str
    role: str
    sid: str
    expires: int


class SignOuts(Protocol):
    """Where sign-outs are kept for every worker: the state store (`careloop.state.StateStore`)."""

    def sign_out(self, sid: str, expires_at: dt.datetime) -> None: ...

    def signed_out(self, sid: str) -> bool: ...


class Sessions:
    """Issues and checks signed session cookies, CSRF tokens and sign-in nonces under one secret.

    `sign_outs`: the store shared by every worker that holds the secret; without it (a single process, the unit
    tests) a sign-out holds only in this process, until a restart."""

    def __init__(self, secret: bytes, *, lifetime_s: int = 8 * 3600, sign_outs: SignOuts | None = None) -> None:
        if not isinstance(secret, bytes) or len(secret) < 16:
            raise DashboardConfigError("the session secret must be at least 16 bytes")
        self._key = hashlib.sha256(b"careloop-dashboard-session\n" + secret).digest()
        self.lifetime_s = lifetime_s
        self.sign_outs = sign_outs
        self._revoked: dict[str, int] = {}  # sid -> expiry: sessions signed out through this process
        self._lock = threading.Lock()

    def _mac(self, purpose: str, data: str) -> str:
        return _b64(hmac.new(self._key, f"{purpose}\n{data}".encode(), hashlib.sha256).digest())

    def issue(self, user: str, role: str, now: float | None = None) -> tuple[str, Session]:
        now = int(now if now is not None else time.time())
        s = Session(user, role, secrets.token_hex(16), now + self.lifetime_s)
        body = _b64(json.dumps({"u": s.user, "r": s.role, "s": s.sid, "i": now, "e": s.expires},
                               separators=(",", ":")).encode())
        return f"{body}.{self._mac('session', body)}", s

    def read(self, cookie: str | None, users: Mapping[str, dict], now: float | None = None) -> Session | None:
        if not cookie or len(cookie) > 4096 or cookie.count(".") != 1:
            return None
        body, sig = cookie.split(".")
        if not hmac.compare_digest(sig.encode(), self._mac("session", body).encode()):
            return None
        try:
            d = json.loads(_unb64(body))
            s = Session(str(d["u"]), str(d["r"]), str(d["s"]), int(d["e"]))
        except (ValueError, KeyError, TypeError):
            return None
        now = now if now is not None else time.time()
        if s.expires <= now or s.sid in self._revoked:
            return None
        user = users.get(s.user)
        if user is None or user["role"] != s.role:
            return None  # the user was removed or changed role: sign in again
        return None if self._signed_out_elsewhere(s.sid) else s

    def _signed_out_elsewhere(self, sid: str) -> bool:
        """Signed out through another worker (or before a restart); an unreadable store counts as signed out: a
        session that cannot be checked is not honoured."""
        if self.sign_outs is None:
            return False
        try:
            return self.sign_outs.signed_out(sid)
        except Exception as e:
            log.warning("the dashboard's sign-outs could not be read (%s): session refused", type(e).__name__)
            return True

    def revoke(self, s: Session) -> None:
        """Sign `s` out here at once, and in the shared store for every worker (its errors propagate: the caller
        must not report a sign-out that other workers do not know of)."""
        now = time.time()
        with self._lock:
            self._revoked = {k: v for k, v in self._revoked.items() if v > now}
            self._revoked[s.sid] = s.expires
        if self.sign_outs is not None:
            self.sign_outs.sign_out(s.sid, dt.datetime.fromtimestamp(s.expires, dt.UTC))

    def csrf(self, s: Session) -> str:
        return self._mac("csrf", s.sid)

    def csrf_ok(self, s: Session, token: str | None) -> bool:
        return bool(token) and hmac.compare_digest(str(token).encode(), self.csrf(s).encode())

    def login_token(self, nonce: str) -> str:
        return self._mac("sign-in", nonce)

    def login_ok(self, nonce: str | None, token: str | None) -> bool:
        return bool(nonce) and bool(token) and hmac.compare_digest(str(token).encode(),
                                                                   self.login_token(str(nonce)).encode())


class Throttle:
    """At most `limit` failed sign-ins per key (username, client address) in `window_s`; then a wait."""

    def __init__(self, limit: int = 5, window_s: float = 900.0) -> None:
        self.limit, self.window_s = limit, window_s
        self._fails: dict[str, list[float]] = {}
        self._lock = threading.Lock()

    def blocked(self, *keys: str) -> bool:
        now = time.monotonic()
        with self._lock:
            return any(len([t for t in self._fails.get(k, []) if now - t < self.window_s]) >= self.limit
                       for k in keys)

    def fail(self, *keys: str) -> None:
        now = time.monotonic()
        with self._lock:
            if len(self._fails) > 10_000:  # bounded memory under a spray of names
                self._fails = {k: v for k, v in self._fails.items() if v and now - v[-1] < self.window_s}
            for k in keys:
                recent = [t for t in self._fails.get(k, []) if now - t < self.window_s]
                self._fails[k] = [*recent[-self.limit:], now]

    def clear(self, *keys: str) -> None:
        with self._lock:
            for k in keys:
                self._fails.pop(k, None)


DUMMY_HASH = "scrypt$16384$8$1$Y2FyZWxvb3AtZHVtbXk$WkjdUj6pkx1Y7xN2vCvDkq3jTSSD6lOD0Vtmm6cKcYU"  # unknown users


__all__ = ["ROLES", "DashboardConfigError", "Session", "Sessions", "SignOuts", "Throttle", "check_users",
           "hash_password", "load_users", "verify_password"]
