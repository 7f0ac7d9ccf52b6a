"""State of the CDS Hooks service: jti replay cache, cards, feedback, kill switches, settings (SQLite or PostgreSQL).

    store = StateStore("sqlite:///state.db")          # or "sqlite://", or "postgresql://user@host:5432/db"
    store.claim_jti(iss, jti, expires_at)             # True once per (iss, jti) until it expires
    store.close()

The audit log (:mod:`careloop.audit`) lives in the same database and is built on this store.
"""

from careloop.state._db import StateError, canonical_json, iso_z, normalize_url, parse_instant
from careloop.state.store import StateStore

__all__ = ["StateError", "StateStore", "canonical_json", "iso_z", "normalize_url", "parse_instant"]
