"""The LACE and HOSPITAL readmission scores, with their published point tables, as pure functions.

LACE: van Walraven C, Dhalla IA, Bell C, et al. "Derivation and validation of an index to predict early death
or unplanned readmission after discharge from hospital to the community", CMAJ 2010;182:551-7.
HOSPITAL: Donzé J, Aujesky D, Williams D, Schnipper JL. "Potentially avoidable 30-day hospital readmissions in
medical patients: derivation and validation of a prediction model", JAMA Intern Med 2013;173:632-8; risk groups
as in Donzé et al., JAMA Intern Med 2016;176:496-502.

Every band is a plain threshold on a number so that a SQL engine can reproduce it with CASE expressions.
Length of stay is whole days, discharge date minus admission date (a same-day stay is 0, i.e. LACE's "<1");
a fractional value is floored into its day band (1.5 days scores as 1 day), which matches integer day counts.
"""

from __future__ import annotations

import math
import numbers
from typing import Literal, NamedTuple

__all__ = [
    "HospitalPoints",
    "LacePoints",
    "hospital_points",
    "hospital_risk_category",
    "hospital_score",
    "lace_points",
    "lace_risk_category",
    "lace_score",
]

LACE_MAX = 19  # 7 + 3 + 5 + 4
HOSPITAL_MAX = 13  # 1 + 2 + 1 + 1 + 1 + 5 + 2


class LacePoints(NamedTuple):
    """The four LACE components; their sum is the score."""

    length_of_stay: int
    acuity: int
    comorbidity: int
    emergency_visits: int


class HospitalPoints(NamedTuple):
    """The seven HOSPITAL components; their sum is the score."""

    hemoglobin: int
    oncology: int
    sodium: int
    procedure: int
    index_type: int
    admissions: int
    length_of_stay: int


def _non_negative(name: str, value: float) -> float:
    if isinstance(value, bool) or not isinstance(value, numbers.Real) or math.isnan(value) or value < 0:
        raise ValueError(f"{name} must be a non-negative number, got {value!r}")
    return value


def _lace_los(days: float) -> int:
    # <1: 0, 1: 1, 2: 2, 3: 3, 4-6: 4, 7-13: 5, >=14: 7 (as published: no band scores 6)
    if days < 1:
        return 0
    if days < 4:
        return int(days)
    if days < 7:
        return 4
    return 5 if days < 14 else 7


def lace_points(*, los_days: float, emergent: bool, charlson: int, ed_visits_6m: int) -> LacePoints:
    """Score each LACE component.

    `charlson` is the Charlson comorbidity index (0: 0, 1: 1, 2: 2, 3: 3, >=4: 5); `ed_visits_6m` counts ED
    visits in the 6 months before admission, excluding the visit that led to this admission (0-3 as is, >=4: 4).

    >>> lace_points(los_days=5, emergent=True, charlson=6, ed_visits_6m=2)
    LacePoints(length_of_stay=4, acuity=3, comorbidity=5, emergency_visits=2)
    """
    _non_negative("los_days", los_days)
    _non_negative("charlson", charlson)
    _non_negative("ed_visits_6m", ed_visits_6m)
    return LacePoints(
        length_of_stay=_lace_los(los_days),
        acuity=3 if emergent else 0,
        comorbidity=int(charlson) if charlson < 4 else 5,
        emergency_visits=int(min(ed_visits_6m, 4)),
    )


def lace_score(*, los_days: float, emergent: bool, charlson: int, ed_visits_6m: int) -> int:
    """LACE index, 0 to 19: risk of death or unplanned readmission within 30 days of discharge.

    >>> lace_score(los_days=5, emergent=True, charlson=6, ed_visits_6m=2)  # 4 + 3 + 5 + 2
    14
    >>> lace_score(los_days=0, emergent=False, charlson=0, ed_visits_6m=0)
    0
    """
    return sum(lace_points(los_days=los_days, emergent=emergent, charlson=charlson, ed_visits_6m=ed_visits_6m))


def lace_risk_category(score: int) -> Literal["low", "moderate", "high"]:
    """LACE >= 10 is the conventional high-risk cut-off; 0-4 low and 5-9 moderate are the usual lower bands.

    >>> [lace_risk_category(s) for s in (4, 5, 9, 10)]
    ['low', 'moderate', 'moderate', 'high']
    """
    if score >= 10:
        return "high"
    return "moderate" if score >= 5 else "low"


def _below(value: float | None, threshold: float) -> int:
    # A missing lab (None or NaN) counts as normal: 0 points, as a clinician scoring at the bedside would.
    return int(value is not None and not math.isnan(value) and value < threshold)


def _admission_points(n: int) -> int:
    # Admissions in the previous 12 months, not counting the index one: 0-1: 0, 2-5: 2, >5: 5.
    if n <= 1:
        return 0
    return 2 if n <= 5 else 5


def hospital_points(
    *,
    hemoglobin_g_dl: float | None,
    oncology: bool,
    sodium_mmol_l: float | None,
    procedure: bool,
    urgent: bool,
    admissions_12m: int,
    los_days: float,
) -> HospitalPoints:
    """Score each HOSPITAL component.

    Hemoglobin < 12 g/dL at discharge: 1; discharge from an oncology service: 2; sodium < 135 mmol/L at
    discharge: 1; any ICD-coded procedure during the stay: 1; urgent/emergent index admission: 1; hospital
    admissions in the 12 months before this one (0-1: 0, 2-5: 2, >5: 5); length of stay >= 5 days: 2.
    A missing lab value (None or NaN) scores 0 points, i.e. it is treated as normal.

    >>> hospital_points(hemoglobin_g_dl=11.9, oncology=False, sodium_mmol_l=None, procedure=True,
    ...                 urgent=True, admissions_12m=2, los_days=5)
    HospitalPoints(hemoglobin=1, oncology=0, sodium=0, procedure=1, index_type=1, admissions=2, length_of_stay=2)
    """
    _non_negative("admissions_12m", admissions_12m)
    _non_negative("los_days", los_days)
    return HospitalPoints(
        hemoglobin=_below(hemoglobin_g_dl, 12.0),
        oncology=2 if oncology else 0,
        sodium=_below(sodium_mmol_l, 135.0),
        procedure=1 if procedure else 0,
        index_type=1 if urgent else 0,
        admissions=_admission_points(admissions_12m),
        length_of_stay=2 if los_days >= 5 else 0,
    )


def hospital_score(
    *,
    hemoglobin_g_dl: float | None,
    oncology: bool,
    sodium_mmol_l: float | None,
    procedure: bool,
    urgent: bool,
    admissions_12m: int,
    los_days: float,
) -> int:
    """HOSPITAL score, 0 to 13: risk of a potentially avoidable readmission within 30 days.

    >>> hospital_score(hemoglobin_g_dl=11.9, oncology=False, sodium_mmol_l=None, procedure=True,
    ...                urgent=True, admissions_12m=2, los_days=5)  # 1 + 0 + 0 + 1 + 1 + 2 + 2
    7
    """
    return sum(
        hospital_points(
            hemoglobin_g_dl=hemoglobin_g_dl,
            oncology=oncology,
            sodium_mmol_l=sodium_mmol_l,
            procedure=procedure,
            urgent=urgent,
            admissions_12m=admissions_12m,
            los_days=los_days,
        )
    )


def hospital_risk_category(score: int) -> Literal["low", "intermediate", "high"]:
    """Donzé's risk groups: 0-4 low, 5-6 intermediate, >= 7 high.

    >>> [hospital_risk_category(s) for s in (4, 5, 6, 7)]
    ['low', 'intermediate', 'intermediate', 'high']
    """
    if score >= 7:
        return "high"
    return "intermediate" if score >= 5 else "low"
