"""Demo accounts for `make demo`: one per role, all with the documented demo password :data:`DEMO_PASSWORD`.

    clinician        role clinician       (worklist, patient pages, model)
    data-scientist   role data_scientist  (model, monitoring)
    governance       role governance      (model, monitoring, governance)

The returned mapping holds only scrypt hashes (fresh salts on every call), never the password. For a synthetic
demonstration on loopback only: a real deployment loads its own users with `careloop.web.load_users`.
"""

from __future__ import annotations

import datetime as dt
import random
import uuid
from pathlib import Path

from careloop.web.auth import hash_password

DEMO_PASSWORD = "careloop-demo"  # documented; printed by `make demo`
DEMO_ACCOUNTS = {"clinician": "clinician", "data-scientist": "data_scientist", "governance": "governance"}


def demo_users(password: str = DEMO_PASSWORD) -> dict[str, dict]:
    """{username: {"role", "password_hash"}} for the three demo accounts.

    >>> sorted((u, d["role"]) for u, d in demo_users().items())
    [('clinician', 'clinician'), ('data-scientist', 'data_scientist'), ('governance', 'governance')]
    """
    return {user: {"role": role, "password_hash": hash_password(password)} for user, role in DEMO_ACCOUNTS.items()}


DEMO_CLIENT = "https://ehr.demo.careloop.example/fhir"  # the made-up EHR the demo's cards and feedback come from


def seed_activity(service, store_dir: Path, *, seed: int = 0) -> dict[str, int]:
    """Fill a fresh demo state store with what a few days of use would leave: a card (recorded and audited as the
    service does) for each worklist stay at or near the alert threshold, and synthetic clinician feedback on about
    two thirds of them (accepted or overridden, with a coded reason). Synthetic by construction: for `make demo`
    only, never against a real state store. Returns counts {cards, accepted, overridden}."""
    from careloop.serve.app import Decision
    from careloop.web.data import worklist

    rng = random.Random(seed)
    wl = worklist(service, Path(store_dir))
    now = dt.datetime.now(dt.UTC)
    counts = {"cards": 0, "accepted": 0, "overridden": 0}
    for r in wl["current"] + wl["recent"]:
        a = r.assessment
        if a.risk is None or a.status not in ("flagged", "near threshold"):
            continue
        sid = "readmission-risk" if r.discharged else "readmission-risk-patient-view"
        card = {"uuid": str(uuid.uuid4()), "indicator": "warning" if a.status == "flagged" else "info"}
        at = now - dt.timedelta(hours=rng.uniform(2, 72))
        service.store.record_card(card["uuid"], sid, r.patient_id, service.model_key, a.risk, card["indicator"],
                                  None, at)
        service.record("cds-call", "success", service=sid, request_id=str(uuid.uuid4()),
                       decision=Decision([card], r.patient_id, score=a.risk), detail={"note": "demo"})
        counts["cards"] += 1
        u = rng.random()
        if u > 2 / 3:
            continue
        item: dict = {"card": card["uuid"], "outcomeTimestamp": (at + dt.timedelta(minutes=rng.uniform(1, 90)))
                      .isoformat()}
        code = None
        if u < 0.4 and card["indicator"] == "warning":  # only a warning card has suggestions to accept
            from careloop.serve.cards import suggestion_ids

            item |= {"outcome": "accepted", "acceptedSuggestions": [{"id": suggestion_ids(card["uuid"])[0]}]}
        else:
            from careloop.serve.cards import OVERRIDE_REASONS, OVERRIDE_SYSTEM

            code, display = OVERRIDE_REASONS[rng.randrange(len(OVERRIDE_REASONS))]
            item |= {"outcome": "overridden", "overrideReason": {
                "reason": {"code": code, "system": OVERRIDE_SYSTEM, "display": display}}}
        service.store.add_feedback(sid, item, client=DEMO_CLIENT)
        service.record("feedback", "success", service=sid, patient=r.patient_id,
                       detail={"card": card["uuid"], "outcome": item["outcome"], "reason": code})
        counts[item["outcome"]] += 1
    return counts


def sign_in_text(url: str) -> str:
    """What `make demo` prints: the dashboard's address and the demo accounts."""
    users = ", ".join(f"{u} ({r.replace('_', ' ')})" for u, r in DEMO_ACCOUNTS.items())
    return (f"Dashboard: {url.rstrip('/')}/dashboard/  (synthetic data, loopback only)\n"
            f"Sign in as {users}; password: {DEMO_PASSWORD}")


__all__ = ["DEMO_ACCOUNTS", "DEMO_CLIENT", "DEMO_PASSWORD", "demo_users", "seed_activity", "sign_in_text"]
