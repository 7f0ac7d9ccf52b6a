"""Discharge summaries as a hospitalist writes them: problems, negations, history, family, social, PHI.

The text is where the `note_signal` of the hidden mechanism lives (a discharge-readiness concern that no
structured field records), and where NLP meets its classic traps: negated findings ("denies chest pain"),
historical ones ("history of pneumonia in 2015"), findings in family members ("mother with breast
cancer"), and real-looking PHI (names, MRN, dates, phone numbers) for de-identification to remove.
"""

from __future__ import annotations

import datetime as dt
import random

from careloop.synth import vocab as V

_THEME_PHRASES = {
    "adherence": (
        "Patient admits to frequently missing doses of home medications.",
        "Reports stopping diuretics last month because of frequent urination.",
        "Pill bottles brought from home were largely full; adherence is poor.",
    ),
    "understanding": (
        "Teach-back on the discharge plan was incomplete despite two attempts.",
        "Patient had difficulty restating the warning signs that should prompt return.",
        "Limited health literacy; daughter asked to review instructions with patient.",
    ),
    "caregiver": (
        "Spouse, who usually manages medications, is currently hospitalized herself.",
        "Primary caregiver is out of state for the next several weeks.",
        "No one is available to help at home during the first week after discharge.",
    ),
    "transport": (
        "Patient states he has no transportation to the follow-up appointment.",
        "Has missed prior clinic visits because of lack of a ride.",
    ),
    "affordability": (
        "Expressed concern about affording the new prescriptions.",
        "Reports rationing insulin because of cost.",
    ),
}
_REASSURING = (
    "Patient verbalized understanding of the discharge plan using teach-back.",
    "Family at bedside and engaged in discharge teaching.",
    "Medication reconciliation completed with patient, who manages own medications reliably.",
)
_NEGATIONS = {
    "pneumonia": "No evidence of pneumonia on chest x-ray.",
    "chest_pain": "Denies chest pain.",
    "dvt": "No signs of deep vein thrombosis.",
    "fever": "Afebrile throughout the stay.",
    "bleeding": "No evidence of gastrointestinal bleeding.",
    "sob": "Denies shortness of breath at rest.",
}
_HISTORICAL = ("pneumonia", "appendectomy", "cholecystectomy", "kidney stones", "a fractured wrist",
               "shingles")


def _date(ts: int) -> str:
    return dt.datetime.fromtimestamp(ts, dt.UTC).strftime("%m/%d/%Y")


def discharge_summary(
    rng: random.Random,
    *,
    patient_name: str,
    mrn: str,
    birth_ts: int,
    phone: str,
    age: float,
    sex: str,
    admit: int,
    discharge: int,
    attending: str,
    site_name: str,
    principal: V.Dx,
    secondary: list[V.Dx],
    chronic: list[V.Dx],
    disposition: str,
    lives_alone: bool,
    housing_unstable: bool,
    smoking: str,
    themes: list[str],
    followup_doctor: str,
    followup_days: int,
) -> str:
    """One discharge summary; every choice is drawn from `rng` so it is reproducible."""
    who = "woman" if sex == "female" else "man"
    pronoun = "She" if sex == "female" else "He"
    history = ", ".join(d.text for d in chronic) if chronic else "no significant past medical history"
    lines = [
        f"DISCHARGE SUMMARY - {site_name}",
        f"Patient: {patient_name}    MRN: {mrn}    DOB: {_date(birth_ts)}",
        f"Admitted: {_date(admit)}    Discharged: {_date(discharge)}",
        f"Attending: Dr. {attending}",
        "",
        f"PRINCIPAL DIAGNOSIS: {principal.text}",
    ]
    if secondary:
        lines.append("SECONDARY DIAGNOSES: " + "; ".join(d.text for d in secondary))
    lines += [
        "",
        "HOSPITAL COURSE:",
        f"{int(age)}-year-old {who} with {history} who presented with {principal.text}. "
        f"{pronoun} was treated and improved over the course of the admission.",
    ]
    negs = [k for k in _NEGATIONS if k != principal.key]
    for k in rng.sample(negs, 2):
        lines.append(_NEGATIONS[k])
    if rng.random() < 0.4:
        year = dt.datetime.fromtimestamp(admit, dt.UTC).year - rng.randrange(3, 20)
        lines.append(f"History of {rng.choice(_HISTORICAL)} in {year}.")
    if rng.random() < 0.5:
        rel = rng.choice(("Mother", "Father", "Brother", "Sister"))
        lines.append(f"Family history: {rel.lower()} with {rng.choice(V.FAMILY_HISTORY)}.")
    lines += ["", "SOCIAL HISTORY:"]
    if housing_unstable:
        lines.append("Currently staying in a shelter; housing is unstable.")
    lines.append("Lives alone." if lives_alone else rng.choice(("Lives with spouse.", "Lives with family.",
                                                                "Lives with daughter and son-in-law.")))
    lines.append({"current": "Current every-day smoker; cessation counseling given.",
                  "former": "Former smoker, quit years ago.", "never": "Never smoker."}[smoking])
    lines += ["", "DISCHARGE CONSIDERATIONS:"]
    if themes:
        for th in themes:
            lines.append(rng.choice(_THEME_PHRASES[th]))
    else:
        lines.append(rng.choice(_REASSURING))
    dest = {"home": "home", "home_health": "home with home health services", "snf": "a skilled nursing facility",
            "rehab": "an inpatient rehabilitation facility", "ama": "home against medical advice",
            "hospice": "home with hospice", "transfer": "another acute care hospital for a higher level of care"}
    lines += [
        "",
        f"DISPOSITION: Discharged to {dest.get(disposition, disposition)}.",
        f"FOLLOW-UP: See Dr. {followup_doctor} within {followup_days} days. "
        f"Patient contact number: {phone}.",
    ]
    return "\n".join(lines) + "\n"
