"""CDS Hooks 2.0 cards a clinician can act on: pure functions from a decision to JSON, free of the web framework.

A risk card is a `warning` (never `critical`: a readmission risk is not an emergency), with a summary under 140
characters, Markdown detail (risk, band, reasons in clinical phrases, the model's version and intended use, what
it is not for), links to the model card and the patient's page, suggestions that are valid FHIR R4 resources
(a follow-up appointment within 7 days, a transitional-care referral) and override reasons. A deferral card is
`info`, says the model defers to clinical judgement and why. Every card has a `uuid` for feedback and audit.
"""

from __future__ import annotations

import datetime as dt
import uuid as uuidlib
from dataclasses import dataclass

SUMMARY_MAX = 139
OVERRIDE_REASONS = [
    ("already-planned", "Follow-up already arranged"),
    ("clinical-judgement", "Risk judged lower on clinical assessment"),
    ("patient-declined", "Patient declined follow-up"),
    ("not-applicable", "Not applicable to this patient"),
]
OVERRIDE_SYSTEM = "https://careloop.example/CodeSystem/override-reason"


@dataclass(frozen=True)
class CardContext:
    patient_id: str
    encounter_id: str | None
    base_url: str
    bundle_id: str
    model_name: str
    model_version: str
    intended_use: str
    not_for: str
    source_label: str = "careloop readmission risk model"
    patient_page: str | None = None  # the stay's page in careloop's dashboard, when the service serves it


def _uuid() -> str:
    return str(uuidlib.uuid4())


SUGGESTIONS = ("follow-up-7d", "transitional-care")  # each warning card's suggestions, in order


def suggestion_ids(card_uuid: str) -> list[str]:
    """The uuids of a warning card's suggestions, derived from the card's own uuid (UUIDv5), so that feedback
    accepting a suggestion can be checked against the card without storing them."""
    try:
        card = uuidlib.UUID(card_uuid)
    except ValueError:
        return []
    return [str(uuidlib.uuid5(card, key)) for key in SUGGESTIONS]


def _links(ctx: CardContext) -> list[dict]:
    links = [
        {
            "label": "Model card and validation report",
            "url": f"{ctx.base_url}/models/{ctx.bundle_id[:12]}/card",
            "type": "absolute",
        },
    ]
    if ctx.patient_page:
        links.append({"label": "Patient risk page", "url": ctx.patient_page, "type": "absolute"})
    return links


def _source(ctx: CardContext) -> dict:
    return {"label": ctx.source_label, "url": f"{ctx.base_url}/models/{ctx.bundle_id[:12]}/card"}


def _suggestions(ctx: CardContext, today: dt.date, card_uuid: str) -> list[dict]:
    """Valid FHIR R4 resources, proposed: the clinician picks any of them."""
    follow_up, transitional = suggestion_ids(card_uuid)
    patient = {"reference": f"Patient/{ctx.patient_id}"}
    appointment = {
        "resourceType": "Appointment",
        "status": "proposed",
        "serviceType": [
            {"coding": [{"system": "http://snomed.info/sct", "code": "390906007", "display": "Follow-up encounter"}]}
        ],
        "description": "Follow-up visit within 7 days of discharge",
        "requestedPeriod": [{"start": today.isoformat(), "end": (today + dt.timedelta(days=7)).isoformat()}],
        "participant": [{"actor": patient, "status": "needs-action"}],
    }
    referral = {
        "resourceType": "ServiceRequest",
        "status": "draft",
        "intent": "proposal",
        "code": {
            "coding": [{"system": "http://snomed.info/sct", "code": "306206005", "display": "Referral to service"}],
            "text": "Referral to the transitional-care team",
        },
        "subject": patient,
        "reasonCode": [{"text": "High risk of unplanned readmission within 30 days"}],
    }
    if ctx.encounter_id:
        referral["encounter"] = {"reference": f"Encounter/{ctx.encounter_id}"}
    return [
        {
            "label": "Book a follow-up visit within 7 days",
            "uuid": follow_up,
            "isRecommended": True,
            "actions": [
                {
                    "type": "create",
                    "description": "Propose a follow-up appointment within 7 days",
                    "resource": appointment,
                }
            ],
        },
        {
            "label": "Refer to the transitional-care team",
            "uuid": transitional,
            "actions": [{"type": "create", "description": "Draft a transitional-care referral", "resource": referral}],
        },
    ]


def risk_card(
    ctx: CardContext,
    risk: float,
    threshold: float,
    reasons: list[str],
    *,
    band: str,
    budget_text: str,
    today: dt.date | None = None,
    uncertain: tuple[float, float] | None = None,
) -> dict:
    """The card for a patient at or above the operating threshold; `uncertain`: the threshold's 95% interval, when
    the risk lies inside it (the card then says the model is less sure of the patient's side of the threshold)."""
    summary = f"High 30-day readmission risk: {risk:.0%} ({band}). Consider follow-up within 7 days."
    if len(summary) > SUMMARY_MAX:
        summary = f"High 30-day readmission risk: {risk:.0%}."
    lines = [
        f"**Estimated risk of unplanned readmission within 30 days: {risk:.0%}** ({band}; the alert threshold "
        f"is {threshold:.0%}, {budget_text}).",
        "",
    ]
    if uncertain is not None:
        lines += [f"This risk is close to the alert threshold: inside the threshold's own 95% interval "
                  f"({uncertain[0]:.0%}–{uncertain[1]:.0%}), so the model is less sure than the percentage suggests "
                  f"that this patient is above it.", ""]
    lines += _basis(ctx, reasons)
    uuid = _uuid()
    return {
        "uuid": uuid,
        "summary": summary,
        "indicator": "warning",
        "detail": "\n".join(lines),
        "source": _source(ctx),
        "suggestions": _suggestions(ctx, today or dt.date.today(), uuid),
        "selectionBehavior": "any",
        "overrideReasons": [{"system": OVERRIDE_SYSTEM, "code": c, "display": d} for c, d in OVERRIDE_REASONS],
        "links": _links(ctx),
    }


def _basis(ctx: CardContext, reasons: list[str]) -> list[str]:
    """What a card stating a risk rests on, for the clinician to review it (checklist H-01): the record's main
    reasons, the model and its version, its intended use and what it is not for."""
    lines = ["Main reasons in this patient's record:", *[f"- {r}" for r in reasons], ""] if reasons else []
    return [
        *lines,
        f"Model: {ctx.model_name}, version `{ctx.bundle_id[:12]}` (its bundle's hash; {ctx.model_version}).",
        f"Intended use: {ctx.intended_use}",
        f"Not for: {ctx.not_for}",
        "This estimate informs, and does not replace, clinical judgement.",
    ]


def near_threshold_card(ctx: CardContext, risk: float, threshold: float, band: tuple[float, float],
                        reasons: list[str] | None = None) -> dict:
    """Risk below the operating threshold but inside its own uncertainty band: stated, not a warning; with the same
    basis as a warning (its reasons, the model, its intended use), since it too states a risk."""
    lines = [
        f"**Estimated risk of unplanned readmission within 30 days: {risk:.0%}**, below the alert threshold "
        f"({threshold:.0%}) but inside the threshold's own 95% interval ({band[0]:.0%}–{band[1]:.0%}), so the model "
        "cannot say that this patient is below it.",
        "",
        *_basis(ctx, reasons or []),
    ]
    return {
        "uuid": _uuid(),
        "indicator": "info",
        "summary": f"Readmission risk {risk:.0%} is close to the alert threshold: clinical judgement decides.",
        "detail": "\n".join(lines),
        "source": _source(ctx),
        "links": _links(ctx),
    }


def deferral_card(ctx: CardContext, reason: str) -> dict:
    """The model defers to clinical judgement (missing inputs, out of scope, out of distribution)."""
    return {
        "uuid": _uuid(),
        "indicator": "info",
        "summary": "Readmission model defers to clinical judgement for this patient.",
        "detail": f"No risk estimate is given: {reason}. Model bundle `{ctx.bundle_id[:12]}`.",
        "source": _source(ctx),
        "links": _links(ctx),
    }
