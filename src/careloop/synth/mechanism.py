"""The documented ground truth: how a stay's 30-day readmission and in-hospital death are drawn.

Every coefficient is here and nowhere else, and `describe()` writes them to `truth/mechanism.json`, so a
study can compare what a model learned with what generated the data. Most inputs are observable in the
FHIR output (codes, labs, utilisation, disposition, social history); three are not, on purpose:
`frailty` (never written anywhere), `note_signal` (written only in the discharge summary text), and the
true chronic conditions of a patient whose codes were under-recorded by the `bias` scenario.
"""

from __future__ import annotations

import math

READMIT_INTERCEPT = -3.85
READMIT = {
    "prior_unplanned_admissions_180d": 0.38,  # per admission, capped at 4
    "prior_ed_visits_180d": 0.15,  # per visit, capped at 5
    "comorbidity_score": 0.16,  # Charlson-like weighted sum of true chronic conditions, capped at 12
    "discharge_sodium_below_135": 0.50,
    "discharge_hemoglobin_below_10": 0.45,
    "discharge_creatinine_above_2": 0.40,
    "albumin_below_3": 0.40,
    "discharge_potassium_abnormal": 0.25,
    "log_length_of_stay_days": 0.35,
    "age_per_year_over_65": 0.014,
    "lives_alone": 0.30,
    "housing_unstable": 0.60,
    "medicaid": 0.15,
    "note_signal": 0.65,
    "frailty_sd": 0.50,
}
READMIT_DISPOSITION = {
    "home": 0.0, "home_health": 0.15, "snf": 0.25, "rehab": 0.10, "ama": 0.80, "hospice": -1.40,
    "transfer": 0.0,
}
READMIT_DIAGNOSIS = {
    "hf_exac": 0.30, "copd_exac": 0.25, "hepatic_enc": 0.45, "gi_bleed": 0.15, "sepsis": 0.10,
    "aki": 0.15, "dka": 0.20, "chest_pain": -0.45, "syncope": -0.35, "cellulitis": -0.10,
    "elective_knee": -0.90, "elective_cabg": -0.40, "chemo": -0.30,
}

DEATH_INTERCEPT = -4.9
DEATH = {
    "age_per_year_over_65": 0.035,
    "comorbidity_score": 0.10,
    "frailty_sd": 0.50,
    "admission_sodium_below_130": 0.40,
    "admission_creatinine_above_2": 0.35,
    "admission_albumin_below_3": 0.35,
}
DEATH_DIAGNOSIS = {
    "sepsis": 1.7, "stroke": 1.0, "nstemi": 0.7, "hepatic_enc": 1.1, "gi_bleed": 0.5, "hip_fracture": 0.5,
    "pneumonia": 0.7, "hf_exac": 0.5, "aki": 0.5, "copd_exac": 0.3, "chest_pain": -1.5, "syncope": -1.2,
    "elective_knee": -2.5, "chemo": -1.0, "elective_cabg": -0.5, "cellulitis": -0.8, "uti": -0.2,
}

# The clinician's estimate sees the chart (as the model does), part of the frailty and of the note
# signal (what the data does not show), with noise; clinicians also tend to over-estimate risk.
CLINICIAN = {"chart_weight": 0.70, "frailty_sd": 0.45, "note_signal": 0.50, "noise_sd": 0.95, "shift": 0.25}


def sigmoid(x: float) -> float:
    if x >= 0:
        return 1.0 / (1.0 + math.exp(-x))
    e = math.exp(x)
    return e / (1.0 + e)


def readmission_logit(f: dict[str, float], disposition: str, diagnosis: str, site_offset: float) -> float:
    """Linear predictor of 30-day unplanned readmission from the state at discharge."""
    lp = READMIT_INTERCEPT + site_offset
    for name, beta in READMIT.items():
        lp += beta * f[name]
    return lp + READMIT_DISPOSITION.get(disposition, 0.0) + READMIT_DIAGNOSIS.get(diagnosis, 0.0)


def death_logit(f: dict[str, float], diagnosis: str) -> float:
    """Linear predictor of death before discharge, from the state at admission."""
    lp = DEATH_INTERCEPT
    for name, beta in DEATH.items():
        lp += beta * f[name]
    return lp + DEATH_DIAGNOSIS.get(diagnosis, 0.0)


def clinician_logit(readmit_lp: float, f: dict[str, float], noise: float) -> float:
    """The clinician's own estimate: chart-visible risk, some unseen frailty and note signal, noise."""
    chart = readmit_lp - READMIT["frailty_sd"] * f["frailty_sd"] - READMIT["note_signal"] * f["note_signal"]
    c = CLINICIAN
    return (c["chart_weight"] * chart + (1 - c["chart_weight"]) * READMIT_INTERCEPT + c["shift"]
            + c["frailty_sd"] * f["frailty_sd"] + c["note_signal"] * f["note_signal"] + c["noise_sd"] * noise)


def describe() -> dict:
    """All coefficients, for `truth/mechanism.json`."""
    return {
        "readmission_30d": {
            "form": "logit P(unplanned inpatient readmission within 30 days of discharge)",
            "intercept": READMIT_INTERCEPT,
            "coefficients": READMIT,
            "disposition": READMIT_DISPOSITION,
            "principal_diagnosis": READMIT_DIAGNOSIS,
            "site_offsets": "see sites[].readmit_offset",
        },
        "death_in_hospital": {
            "form": "logit P(death before discharge), state at admission",
            "intercept": DEATH_INTERCEPT,
            "coefficients": DEATH,
            "principal_diagnosis": DEATH_DIAGNOSIS,
        },
        "clinician_risk_30d": CLINICIAN,
        "unobserved": {
            "frailty_sd": "standard-normal latent frailty; also raises admission, ED and death rates",
            "note_signal": "1 when the discharge summary records a discharge-readiness concern (only in text)",
        },
    }
