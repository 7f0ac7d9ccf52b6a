"""Simulate one patient's life in the health system: demographics, chronic disease, visits, stays, outcomes.

The simulation is a competing-risks process in continuous time (clinic visits, ED visits, unplanned and
elective admissions, death), driven by each patient's comorbidity, age, social context and an unobserved
frailty. At each discharge the hidden mechanism (`mechanism.py`) draws the 30-day readmission, and the
timeline is made to agree with it: a drawn readmission happens within 30 days, and no unplanned admission
falls inside the 30 days of a stay whose draw was negative. Planned (elective) admissions may, since they
do not count as readmissions.

Randomness comes only from per-patient generators seeded by (seed, patient index), so a patient is the
same whatever the number of workers or the population size.
"""

from __future__ import annotations

import datetime as dt
import hashlib
import math
import random
from dataclasses import dataclass, field

from careloop.synth import mechanism as M
from careloop.synth import vocab as V
from careloop.synth.config import SynthConfig
from careloop.synth.world import Site, World

DAY = 86400
YEAR = 365.25 * DAY
HOUR = 3600


def patient_seed(seed: int, idx: int, stream: str) -> int:
    h = hashlib.blake2b(f"{seed}:{idx}:{stream}".encode(), digest_size=8).digest()
    return int.from_bytes(h, "big")


def stable_fraction(*parts: object) -> float:
    """A uniform number in [0, 1) from a hash: a draw that consumes no generator state."""
    h = hashlib.blake2b(":".join(map(str, parts)).encode(), digest_size=8).digest()
    return int.from_bytes(h, "big") / 2**64


def _ts(d: dt.date) -> int:
    return int(dt.datetime(d.year, d.month, d.day, tzinfo=dt.UTC).timestamp())


# --- records -----------------------------------------------------------------------------------


@dataclass(slots=True)
class Chronic:
    key: str
    onset: int
    id: str
    recorded: int = 0  # first encounter at which it is on the problem list
    icd_override: tuple[str, str] | None = None


@dataclass(slots=True)
class Measurement:
    key: str  # LABS or VITALS key, or "bp"
    time: int
    value: float
    value2: float = 0.0  # diastolic for "bp"
    id: str = ""


@dataclass(slots=True)
class Stay:
    """An inpatient stay with everything written about it, and its hidden truth."""

    id: str
    ed_id: str | None
    ed_start: int
    admit: int
    discharge: int
    finished: bool
    site: str
    ward: str
    icu: bool
    attending: int
    dx: str
    secondary: list[str]
    dx_ids: list[str]
    elective: bool
    admit_source: str
    disposition: str
    died: bool
    labs: list[Measurement]
    vitals: list[Measurement]
    meds: list[tuple[str, str, str, int, str]]  # (id, rxcui, display, time, category)
    procedures: list[tuple[str, str, str, int]]  # (id, snomed, display, time)
    social_ids: tuple[str, str, str]
    note_id: str
    note_themes: list[str] = field(default_factory=list)
    true_risk: float = 0.0
    readmitted: bool = False
    clinician_risk: float = 0.0
    death_risk: float = 0.0
    censored: bool = False


@dataclass(slots=True)
class Visit:
    """An ambulatory or treat-and-release ED encounter."""

    id: str
    kind: str  # AMB, AMB_FU, EMER
    start: int
    end: int
    site: str
    clinician: int
    reason: V.Dx | None
    reason_id: str | None
    measurements: list[Measurement]


@dataclass(slots=True)
class Person:
    idx: int
    id: str
    site: str
    sex: str
    birth: int
    age_at_entry: float
    race: str
    hispanic: bool
    language: str
    marital: str
    payer: str
    given: str
    middle: str
    family: str
    street: str
    zip: str
    phone: str
    mrn: str
    ssn: str
    license: str
    entry: int
    frailty: float
    lives_alone: bool
    household: int
    housing_unstable: bool
    smoking: str
    height_cm: float
    weight_kg: float
    chronic: list[Chronic]
    baseline: dict[str, float]
    coverage_ids: tuple[str, str]
    death: int | None = None
    stays: list[Stay] = field(default_factory=list)
    visits: list[Visit] = field(default_factory=list)
    case_mix_shifted: bool = False

    def age(self, t: int) -> float:
        return (t - self.birth) / YEAR


_V4_MASK = ~((0xF000 << 64) | (0xC000 << 48)) & ((1 << 128) - 1)
_V4_BITS = (0x4000 << 64) | (0x8000 << 48)


class Ids:
    """Deterministic UUIDs from their own stream, so scenarios never shift anyone's ids."""

    __slots__ = ("_rng",)

    def __init__(self, seed: int) -> None:
        self._rng = random.Random(seed)

    def __call__(self) -> str:
        # RFC 4122 version-4 layout, formatted directly (uuid.UUID costs twice as much per id)
        x = (self._rng.getrandbits(128) & _V4_MASK) | _V4_BITS
        h = f"{x:032x}"
        return f"{h[:8]}-{h[8:12]}-{h[12:16]}-{h[16:20]}-{h[20:]}"


# --- patient -----------------------------------------------------------------------------------

_CHRONIC_BASE = {  # (log-odds at age 60, per-decade slope)
    "hypertension": (-0.2, 0.45), "diabetes": (-1.4, 0.25), "obesity": (-1.1, -0.05), "cad": (-2.2, 0.45),
    "chf": (-2.9, 0.55), "copd": (-2.5, 0.35), "ckd": (-2.5, 0.5), "afib": (-3.0, 0.6), "cancer": (-3.3, 0.3),
    "depression": (-1.9, 0.0), "dementia": (-5.0, 0.95), "pvd": (-3.4, 0.4), "stroke_hx": (-3.3, 0.45),
    "cirrhosis": (-4.0, 0.1), "alcohol": (-3.2, -0.1), "osteoarthritis": (-2.2, 0.35),
}


def _choose(rng: random.Random, weights: dict[str, float]) -> str:
    total = sum(weights.values())
    u = rng.random() * total
    for k, w in weights.items():
        u -= w
        if u < 0:
            return k
    return k


def _phone(rng: random.Random, area: str) -> str:
    return f"({area}) 555-{rng.randrange(100, 200):04d}"


def make_person(idx: int, cfg: SynthConfig, world: World, ids: Ids, rng: random.Random) -> Person:
    start, end = _ts(cfg.start), _ts(cfg.end)
    pid = ids()  # first, so a patient's identity never depends on what is drawn for them
    coverage_ids = (ids(), ids())
    site = world.sites[0]
    u = rng.random()
    for s in world.sites:
        u -= s.share
        if u < 0:
            site = s
            break
    established = rng.random() < 0.55
    entry = start if established else start + int(rng.random() * (end - start - 45 * DAY))
    shifted = cfg.drift and entry >= _ts(cfg.effective_drift_date)
    if rng.random() < 0.04:
        age = rng.uniform(1, 17.9)
    else:
        age = rng.gauss(site.mean_age + (9.0 if shifted else 0.0), 17.0)
        age = min(max(age, 18.0), 101.0)
    birth = entry - int(age * YEAR) - rng.randrange(0, DAY)
    sex = "female" if rng.random() < 0.52 else "male"
    race = _choose(rng, site.race_mix)
    hispanic = rng.random() < site.hispanic
    lang_w = dict(site.languages)
    if hispanic:
        lang_w["es"] = lang_w.get("es", 0) + 1.2
    language = _choose(rng, lang_w)
    if age < 18:
        marital = "S"
    else:
        marital = _choose(rng, {"M": 0.5, "S": 0.25 if age < 60 else 0.08, "D": 0.12,
                                "W": 0.02 if age < 60 else 0.25 + max(0.0, (age - 75) / 40)})
    if age >= 65:
        payer = "medicare" if rng.random() < 0.93 else "medicaid"
    else:
        r = rng.random()
        payer = "medicaid" if r < site.medicaid else ("self_pay" if r > 0.95 else "commercial")
    frailty = rng.gauss(0.0, 1.0)
    chronic: list[Chronic] = []
    have: set[str] = set()
    decade = (age - 60.0) / 10.0
    for key, (base, slope) in _CHRONIC_BASE.items():
        lo = base + slope * decade + 0.35 * frailty + site.prevalence.get(key, 0.0) + (0.5 if shifted else 0.0)
        if key == "chf":
            lo += 0.8 * (("cad" in have) + ("hypertension" in have))
        if key == "ckd":
            lo += 0.7 * (("diabetes" in have) + ("hypertension" in have))
        if key == "afib":
            lo += 0.5 * ("cad" in have)
        if key == "cirrhosis":
            lo += 1.5 * ("alcohol" in have)
        if age < 18:
            lo -= 3.0
        if rng.random() < M.sigmoid(lo):
            # either present before entry, or developing during the window
            if rng.random() < 0.75:
                onset = entry - int(rng.uniform(0.2, 15.0) * YEAR)
            else:
                onset = entry + int(rng.random() * (end - entry))
            onset = max(onset, birth + int(5 * YEAR))
            chronic.append(Chronic(key, onset, ids()))
            have.add(key)
    if "cancer" in have and rng.random() < 0.35:
        onset = max(c.onset for c in chronic if c.key == "cancer") + int(rng.uniform(0.1, 3) * YEAR)
        chronic.append(Chronic("metastatic", onset, ids()))
        have.add("metastatic")
    lives_alone = age >= 18 and rng.random() < (0.12 + (0.30 if marital in "WDS" and age > 60 else 0.0))
    household = 1 if lives_alone else 2 + min(int(rng.expovariate(0.8)), 6)
    housing_unstable = age >= 18 and rng.random() < (0.015 + 0.07 * (payer in ("medicaid", "self_pay"))
                                                     + 0.12 * ("alcohol" in have))
    smoking = _choose(rng, {"current": 0.13 + 0.15 * ("copd" in have), "former": 0.25, "never": 0.6}) \
        if age >= 18 else "never"
    female = sex == "female"
    height = rng.gauss(162 if female else 176, 7) if age >= 18 else 80 + age * 5.5
    bmi = rng.gauss(33 if "obesity" in have else 26.5, 4.0)
    weight = max(35.0, bmi * (height / 100) ** 2) if age >= 18 else 10 + age * 3.2
    cr0 = (0.75 if female else 0.95) * (2.1 if "ckd" in have else 1.0) * math.exp(rng.gauss(0, 0.12))
    baseline = {
        "sodium": rng.gauss(140.0, 1.8) - (2.5 if "cirrhosis" in have else 0.0),
        "potassium": rng.gauss(4.2, 0.25) + (0.3 if "ckd" in have else 0.0),
        "creatinine": cr0,
        "hemoglobin": rng.gauss(13.2 if female else 14.6, 0.9) - 1.6 * (("ckd" in have) + ("cancer" in have)),
        "albumin": rng.gauss(4.1, 0.25) - 0.5 * (("cirrhosis" in have) + ("metastatic" in have)) - 0.1 * frailty,
        "glucose": rng.gauss(165.0, 35.0) if "diabetes" in have else rng.gauss(96.0, 8.0),
        "hba1c": rng.gauss(7.9, 1.2) if "diabetes" in have else rng.gauss(5.3, 0.3),
        "platelets": rng.gauss(250.0, 50.0) * (0.5 if "cirrhosis" in have else 1.0),
        "wbc": rng.gauss(7.2, 1.5),
        "bicarbonate": rng.gauss(25.0, 1.5) - (2.0 if "ckd" in have else 0.0),
        "sbp": rng.gauss(138 if "hypertension" in have else 122, 12),
        "heart_rate": rng.gauss(76, 9),
    }
    gender_names = V.FIRST_NAMES[sex]
    given = rng.choice(gender_names)
    middle = rng.choice(gender_names)
    family = rng.choice(V.LAST_NAMES)
    street = f"{rng.randrange(1, 999)} {rng.choice(V.STREETS)}"
    if rng.random() < 0.25:
        street += f" Apt {rng.randrange(1, 40)}"
    zip_code = rng.choice(site.zips)
    phone = _phone(rng, site.area_code)
    mrn = f"{rng.randrange(10**7, 10**8)}"
    ssn = f"999-{rng.randrange(10, 99)}-{rng.randrange(1000, 9999)}"
    lic = f"S{rng.randrange(10**7, 10**8)}"
    return Person(
        idx=idx, id=pid, site=site.key, sex=sex, birth=birth, age_at_entry=age, race=race, hispanic=hispanic,
        language=language, marital=marital, payer=payer, given=given, middle=middle, family=family,
        street=street, zip=zip_code, phone=phone, mrn=mrn, ssn=ssn, license=lic, entry=entry,
        frailty=frailty, lives_alone=lives_alone, household=household, housing_unstable=housing_unstable,
        smoking=smoking, height_cm=height, weight_kg=weight, chronic=chronic, baseline=baseline,
        coverage_ids=coverage_ids, case_mix_shifted=shifted,
    )


# --- timeline ------------------------------------------------------------------------------------


def comorbidity_score(p: Person, t: int) -> float:
    return sum(V.CHRONIC_WEIGHT[c.key] for c in p.chronic if c.onset <= t)


def active(p: Person, t: int) -> set[str]:
    return {c.key for c in p.chronic if c.onset <= t}


_LOS_MEDIAN = {
    "hf_exac": 4.2, "copd_exac": 3.6, "pneumonia": 4.0, "sepsis": 6.0, "uti": 3.0, "aki": 4.0, "gi_bleed": 3.5,
    "cellulitis": 3.5, "stroke": 5.0, "nstemi": 3.5, "hip_fracture": 6.0, "dka": 3.0, "hepatic_enc": 5.0,
    "syncope": 2.0, "chest_pain": 1.4, "afib_rvr": 2.5, "elective_knee": 2.2, "chemo": 3.0, "elective_cabg": 7.0,
}
_WARD = {
    "hf_exac": "CARD", "nstemi": "CARD", "afib_rvr": "CARD", "chest_pain": "CARD", "syncope": "CARD",
    "copd_exac": "RESP", "pneumonia": "RESP", "hip_fracture": "ORTH", "elective_knee": "ORTH",
    "chemo": "ONC", "elective_cabg": "SURG", "gi_bleed": "SURG", "cellulitis": "SURG",
}
_ICU_P = {"sepsis": 0.45, "stroke": 0.25, "nstemi": 0.25, "elective_cabg": 1.0, "dka": 0.4, "gi_bleed": 0.2,
          "hepatic_enc": 0.2}
NOTE_THEMES = ("adherence", "understanding", "caregiver", "transport", "affordability")


def _principal_dx(rng: random.Random, conds: set[str], age: float) -> str:
    w = {
        "pneumonia": 1.6, "sepsis": 1.0, "uti": 1.0, "aki": 0.5 + 0.8 * ("ckd" in conds), "cellulitis": 0.6,
        "gi_bleed": 0.5 + 1.2 * ("cirrhosis" in conds), "syncope": 0.5, "chest_pain": 0.7,
        "stroke": 0.3 + 0.6 * ("afib" in conds) + 0.5 * ("stroke_hx" in conds),
        "nstemi": 0.2 + 0.8 * ("cad" in conds), "hip_fracture": 0.1 + (0.6 if age > 75 else 0.0)
        + 0.5 * ("dementia" in conds),
    }
    if "chf" in conds:
        w["hf_exac"] = 3.5
    if "copd" in conds:
        w["copd_exac"] = 3.0
    if "diabetes" in conds:
        w["dka"] = 0.3
    if "cirrhosis" in conds:
        w["hepatic_enc"] = 2.0
    if "afib" in conds:
        w["afib_rvr"] = 1.0
    return _choose(rng, w)


def _elective_dx(rng: random.Random, conds: set[str]) -> str:
    w = {"elective_knee": 0.2 + 2.0 * ("osteoarthritis" in conds), "chemo": 4.0 * ("cancer" in conds),
         "elective_cabg": 0.05 + 0.8 * ("cad" in conds)}
    return _choose(rng, w)


def _draw_labs(p: Person, dx: str, rng: random.Random, *, acute: float) -> dict[str, float]:
    """Lab values at a point of a stay; `acute` is how far from baseline (1 at admission)."""
    b = p.baseline
    g = rng.gauss
    na_shift = {"hf_exac": -4.0, "hepatic_enc": -5.0, "sepsis": -2.0, "pneumonia": -2.0, "dka": -3.0}.get(dx, 0.0)
    cr_mult = {"aki": 2.3, "sepsis": 1.7, "hf_exac": 1.35, "dka": 1.5, "gi_bleed": 1.3}.get(dx, 1.05)
    hb_shift = {"gi_bleed": -3.8, "sepsis": -0.8, "hip_fracture": -1.5, "elective_cabg": -2.5,
                "elective_knee": -1.8, "chemo": -1.2}.get(dx, 0.0)
    wbc_shift = {"sepsis": 9.0, "pneumonia": 6.0, "cellulitis": 4.5, "uti": 4.0, "copd_exac": 2.5,
                 "chemo": -3.0}.get(dx, 0.0)
    glu_shift = {"dka": 320.0, "sepsis": 30.0}.get(dx, 0.0)
    alb_shift = {"sepsis": -0.7, "pneumonia": -0.3, "hepatic_enc": -0.4}.get(dx, 0.0)
    sev = acute * (1.0 + 0.25 * max(p.frailty, 0.0))
    creat = b["creatinine"] * (1 + (cr_mult - 1) * sev) * math.exp(g(0, 0.08))
    bun = (8 + 11 * creat) * math.exp(g(0, 0.15)) + (14 * sev if dx == "gi_bleed" else 0.0)
    return {
        "sodium": b["sodium"] + na_shift * sev + g(0, 2.2),
        "potassium": b["potassium"] + (0.5 * sev if dx in ("aki", "dka") else 0.0) + g(0, 0.35),
        "creatinine": max(0.3, creat),
        "bun": max(3.0, bun),
        "glucose": max(45.0, b["glucose"] + glu_shift * sev + g(0, 18)),
        "hemoglobin": max(5.0, b["hemoglobin"] + hb_shift * (0.6 + 0.4 * acute) + g(0, 0.6)),
        "wbc": max(0.8, b["wbc"] + wbc_shift * sev + g(0, 1.2)),
        "platelets": max(15.0, b["platelets"] + g(0, 25)),
        "albumin": max(1.4, b["albumin"] + alb_shift * (0.5 + 0.5 * acute) + g(0, 0.2)),
        "bicarbonate": b["bicarbonate"] - (12 * sev if dx == "dka" else 0.0) + g(0, 1.5),
    }


def _vitals(p: Person, dx: str, rng: random.Random, t: int, ids: Ids, acute: float) -> list[Measurement]:
    b = p.baseline
    g = rng.gauss
    febrile = dx in ("sepsis", "pneumonia", "cellulitis", "uti")
    hr = b["heart_rate"] + acute * (28 if dx in ("sepsis", "afib_rvr") else 12 if febrile else 6) + g(0, 6)
    sbp = b["sbp"] - (22 * acute if dx == "sepsis" else 0.0) + g(0, 10)
    rr = 16 + acute * (8 if dx in ("copd_exac", "pneumonia", "hf_exac", "sepsis") else 2) + g(0, 2)
    spo2 = 97 - acute * (6 if dx in ("copd_exac", "pneumonia", "hf_exac") else 1) + g(0, 1.2)
    temp = 36.8 + (1.6 * acute if febrile else 0.0) + g(0, 0.3)
    weight = p.weight_kg + (2.5 * acute if dx == "hf_exac" else 0.0) + g(0, 0.4)
    return [
        Measurement("heart_rate", t, round(hr), 0.0, ids()),
        Measurement("bp", t, round(sbp), round(sbp * 0.6 + g(0, 6)), ids()),
        Measurement("resp_rate", t, round(rr), 0.0, ids()),
        Measurement("spo2", t, min(100, round(spo2)), 0.0, ids()),
        Measurement("temperature", t, round(temp, 1), 0.0, ids()),
        Measurement("weight", t, round(weight, 1), 0.0, ids()),
    ]


def _disposition(rng: random.Random, p: Person, dx: str, age: float, conds: set[str]) -> str:
    w = {
        "ama": 0.015 + 0.06 * ("alcohol" in conds) + 0.05 * p.housing_unstable,
        "transfer": 0.015 + 0.05 * (dx in ("stroke", "nstemi")),
        "hospice": 0.004 + 0.10 * ("metastatic" in conds) + 0.05 * ("dementia" in conds and age > 85),
        "snf": 0.03 + 0.10 * (age > 75) + 0.05 * max(p.frailty, 0) + 0.25 * (dx == "hip_fracture")
        + 0.08 * ("dementia" in conds),
        "rehab": 0.01 + 0.18 * (dx in ("stroke", "elective_knee", "hip_fracture")),
        "home_health": 0.10 + 0.10 * (age > 75) + 0.06 * p.lives_alone,
    }
    w["home"] = max(0.05, 1.0 - sum(w.values()))
    return _choose(rng, w)


def _note_themes(rng: random.Random, p: Person, conds: set[str]) -> list[str]:
    prob = 0.10 + 0.10 * p.lives_alone + 0.10 * ("dementia" in conds) + 0.10 * p.housing_unstable \
        + 0.05 * max(p.frailty, 0.0)
    if rng.random() >= prob:
        return []
    k = 1 + (rng.random() < 0.3)
    return rng.sample(NOTE_THEMES, k)


def simulate(idx: int, cfg: SynthConfig, world: World) -> Person:
    """One patient, start to end of the data window."""
    rng = random.Random(patient_seed(cfg.seed, idx, "sim"))
    ids = Ids(patient_seed(cfg.seed, idx, "ids"))
    p = make_person(idx, cfg, world, ids, rng)
    site = world.site(p.site)
    end = _ts(cfg.end)
    t = p.entry
    scheduled: int | None = None  # a drawn readmission's admit time
    quiet_until = 0  # no unplanned admission before this (a stay drew "no readmission")
    unplanned_times: list[int] = []
    ed_times: list[int] = []
    pending_death: int | None = None
    while True:
        age = p.age(t)
        conds = active(p, t)
        cs = comorbidity_score(p, t)
        n = len(conds)
        r_amb = 0.8 + 0.45 * n
        r_ed = 0.10 * math.exp(0.35 * p.frailty + 0.06 * cs + 0.6 * p.housing_unstable)
        r_ip = 0.050 * math.exp(0.16 * min(cs, 12) + 0.55 * p.frailty + 0.012 * (age - 60)
                                + 0.3 * p.housing_unstable)
        r_el = 0.006 + 2.0 * ("cancer" in conds and "metastatic" not in conds) * 0.5 \
            + 0.05 * ("osteoarthritis" in conds) + 0.02 * ("cad" in conds)
        r_death = math.exp(-10.2 + 0.085 * max(age, 20) + 0.12 * cs + 0.45 * p.frailty)
        total = r_amb + r_ed + r_ip + r_el + r_death
        t_next = t + int(rng.expovariate(total) * YEAR) + 1
        if pending_death is not None and pending_death < t_next and (scheduled is None or pending_death
                                                                      < scheduled):
            p.death = pending_death if pending_death < end else None
            break
        if scheduled is not None and scheduled <= t_next:
            t = scheduled
            scheduled = None
            if t >= end:
                t = end
                # the readmission falls after the data ends: nothing more is written
                break
            stay = _stay(p, site, world, cfg, rng, ids, t, elective=False, prior_unplanned=unplanned_times,
                         prior_ed=ed_times)
            unplanned_times.append(t)
        else:
            t = t_next
            if t >= end:
                break
            u = rng.random() * total
            if u < r_amb:
                _clinic_visit(p, site, rng, ids, t, "AMB")
                continue
            u -= r_amb
            if u < r_ed:
                _ed_visit(p, site, rng, ids, t)
                ed_times.append(t)
                continue
            u -= r_ed
            if u < r_ip:
                if t < quiet_until or scheduled is not None:
                    continue  # the drawn outcome of the last stay decides the next unplanned admission
                stay = _stay(p, site, world, cfg, rng, ids, t, elective=False, prior_unplanned=unplanned_times,
                             prior_ed=ed_times)
                unplanned_times.append(t)
            elif u - r_ip < r_el:
                if t + 2 * DAY >= end or scheduled is not None:
                    continue
                stay = _stay(p, site, world, cfg, rng, ids, t, elective=True, prior_unplanned=unplanned_times,
                             prior_ed=ed_times)
            else:
                if scheduled is not None:
                    continue  # the drawn readmission happens first: the patient lives to it
                p.death = t
                break
        # after a stay
        if stay.died:
            p.death = stay.discharge
            break
        if not stay.finished:
            break
        t = stay.discharge
        if stay.readmitted:
            pending_death = None  # the drawn readmission happens: the patient lives to it
            lo = max(quiet_until - t, 0)
            delay = int(30 * DAY * rng.betavariate(0.9, 1.9))
            if delay <= lo:
                delay = lo + int((30 * DAY - lo) * rng.random())
            delay = min(max(delay, 6 * HOUR), 30 * DAY - HOUR)
            scheduled = t + delay
        else:
            quiet_until = max(quiet_until, t + 31 * DAY)
            d = stay.disposition
            p_die = 0.55 if d == "hospice" else 0.012 + 0.04 * max(p.frailty, 0) + 0.004 * max(age - 70, 0)
            if rng.random() < p_die:
                pending_death = t + int(rng.uniform(1, 60) * DAY)
        if stay.disposition not in ("hospice", "transfer", "ama") and rng.random() < 0.6:
            fu = t + int(rng.uniform(5, 16) * DAY)
            if fu < end and (scheduled is None or fu < scheduled) and (pending_death is None or fu < pending_death):
                _clinic_visit(p, site, rng, ids, fu, "AMB_FU")
        t = max(t, t + 1)
    if p.death is not None:  # a follow-up booked before an unexpected death never took place
        p.visits = [v for v in p.visits if v.end <= p.death]
    p.visits = [v for v in p.visits if v.end < end]
    _record_problems(p, end)
    return p


def _record_problems(p: Person, end: int) -> None:
    """A chronic condition reaches the problem list at the first encounter on or after its onset."""
    times = sorted([v.start for v in p.visits] + [s.admit for s in p.stays])
    for c in p.chronic:
        last = min(end, p.death) if p.death is not None else end
        rec = next((x for x in times if x >= c.onset), None)
        if rec is None:
            rec = max(c.onset, p.entry) if c.onset < last else 0
        c.recorded = rec


def _clinic_visit(p: Person, site: Site, rng: random.Random, ids: Ids, t: int, kind: str) -> None:
    t = t - t % 900 + 8 * HOUR if (t // HOUR) % 24 < 7 else t - t % 900
    conds = active(p, t)
    vid = ids()
    ms = [Measurement("bp", t, round(p.baseline["sbp"] + rng.gauss(0, 11)),
                      round(p.baseline["sbp"] * 0.6 + rng.gauss(0, 7)), ids()),
          Measurement("heart_rate", t, round(p.baseline["heart_rate"] + rng.gauss(0, 7)), 0.0, ids()),
          Measurement("weight", t, round(p.weight_kg + rng.gauss(0, 1.2), 1), 0.0, ids())]
    if "diabetes" in conds and rng.random() < 0.5:
        ms.append(Measurement("hba1c", t + 600, round(p.baseline["hba1c"] + rng.gauss(0, 0.5), 1), 0.0, ids()))
    if ("ckd" in conds or "chf" in conds) and rng.random() < 0.5:
        ms.append(Measurement("creatinine", t + 600, p.baseline["creatinine"] * math.exp(rng.gauss(0, 0.1)),
                              0.0, ids()))
        ms.append(Measurement("potassium", t + 600, p.baseline["potassium"] + rng.gauss(0, 0.3), 0.0, ids()))
    if "chf" in conds and rng.random() < 0.3:
        ms.append(Measurement("bnp", t + 600, 180 * math.exp(rng.gauss(0, 0.6)), 0.0, ids()))
    p.visits.append(Visit(vid, kind, t, t + int(rng.uniform(15, 45) * 60), site.key,
                          rng.randrange(10**6), None, None, ms))


def _ed_visit(p: Person, site: Site, rng: random.Random, ids: Ids, t: int) -> None:
    reason = rng.choice(V.ED_REASONS)
    vid = ids()
    ms = [Measurement("heart_rate", t + 600, round(p.baseline["heart_rate"] + 8 + rng.gauss(0, 8)), 0.0, ids()),
          Measurement("bp", t + 600, round(p.baseline["sbp"] + rng.gauss(0, 12)),
                      round(p.baseline["sbp"] * 0.6 + rng.gauss(0, 7)), ids())]
    if rng.random() < 0.5:
        labs = _draw_labs(p, "none", rng, acute=0.2)
        for k in ("sodium", "potassium", "creatinine", "hemoglobin", "wbc"):
            ms.append(Measurement(k, t + 3600, labs[k], 0.0, ids()))
    p.visits.append(Visit(vid, "EMER", t, t + int(rng.uniform(2, 7) * HOUR), site.key,
                          rng.randrange(10**6), reason, ids(), ms))


def _stay(p: Person, home: Site, world: World, cfg: SynthConfig, rng: random.Random, ids: Ids, t: int, *,
          elective: bool, prior_unplanned: list[int], prior_ed: list[int]) -> Stay:
    end = _ts(cfg.end)
    site = home if rng.random() < 0.85 else world.sites[rng.randrange(len(world.sites))]
    age = p.age(t)
    conds = active(p, t)
    cs = comorbidity_score(p, t)
    dx = _elective_dx(rng, conds) if elective else _principal_dx(rng, conds, age)
    if elective:
        source = "mp"
        admit = t - t % DAY + int(rng.uniform(6.5, 10) * HOUR)
        if admit <= t:
            admit += DAY
        ed_id, ed_start = None, admit
    else:
        source = _choose(rng, {"emd": 0.85, "hosp-trans": 0.05, "nursing": 0.04 + 0.08 * (age > 80), "mp": 0.06})
        admit = t
        ed_id = ids() if source == "emd" else None
        ed_start = admit - int(rng.uniform(1.5, 9) * HOUR)
    los_days = _LOS_MEDIAN[dx] * math.exp(0.15 * p.frailty + 0.008 * (age - 65) + rng.gauss(0, 0.5))
    los_days = min(max(los_days, 0.4), 60.0)
    icu = rng.random() < _ICU_P.get(dx, 0.04)
    ward_code = _WARD.get(dx, "MED")
    if ward_code not in site.ward_ids:
        ward_code = "MED"
    adm_labs = _draw_labs(p, dx, rng, acute=1.0)
    death_f = {
        "age_per_year_over_65": age - 65, "comorbidity_score": min(cs, 12), "frailty_sd": p.frailty,
        "admission_sodium_below_130": float(adm_labs["sodium"] < 130),
        "admission_creatinine_above_2": float(adm_labs["creatinine"] > 2.0),
        "admission_albumin_below_3": float(adm_labs["albumin"] < 3.0),
    }
    death_risk = M.sigmoid(M.death_logit(death_f, dx))
    died = rng.random() < death_risk
    if died:
        los_days *= rng.uniform(0.05, 1.0)
    discharge = admit + int(los_days * DAY)
    if not died:  # discharges happen in the day, mostly around midday
        day0 = discharge - discharge % DAY
        discharge = max(admit + 6 * HOUR, day0 + int(rng.uniform(10.5, 18.5) * HOUR))
    finished = discharge < end
    sid = ids()
    dx_ids = [ids()]
    secondary: list[str] = []
    # labs: admission panel, a mid-stay panel if long enough, a discharge panel
    labs: list[Measurement] = []
    lab_t = admit + int(rng.uniform(0.3, 2.0) * HOUR)
    for k, v in adm_labs.items():
        labs.append(Measurement(k, lab_t, v, 0.0, ids()))
    if dx == "hf_exac" or ("chf" in conds and rng.random() < 0.5):
        labs.append(Measurement("bnp", lab_t, 900 * math.exp(rng.gauss(0, 0.6)), 0.0, ids()))
    if "diabetes" in conds and rng.random() < 0.6:
        labs.append(Measurement("hba1c", lab_t, p.baseline["hba1c"] + rng.gauss(0, 0.4), 0.0, ids()))
    recovery = min(0.97, max(0.05, rng.betavariate(4, 1.6) - 0.12 * max(p.frailty, 0.0)))
    if (discharge - admit) > 3 * DAY:
        mid = _draw_labs(p, dx, rng, acute=(1 - recovery * 0.6))
        mt = admit + (discharge - admit) // 2
        for k in ("sodium", "potassium", "creatinine", "bun", "hemoglobin", "wbc", "glucose"):
            labs.append(Measurement(k, mt, mid[k], 0.0, ids()))
    dc_labs = _draw_labs(p, dx, rng, acute=1 - recovery)
    dct = discharge - int(rng.uniform(3, 8) * HOUR)
    if dct > lab_t + 6 * HOUR:
        for k in ("sodium", "potassium", "creatinine", "bun", "glucose", "hemoglobin", "wbc"):
            labs.append(Measurement(k, dct, dc_labs[k], 0.0, ids()))
    else:
        dc_labs = adm_labs
    if adm_labs["sodium"] < 133 or dc_labs["sodium"] < 133:
        secondary.append("hyponatremia")
    if min(adm_labs["hemoglobin"], dc_labs["hemoglobin"]) < 10:
        secondary.append("anemia")
    if adm_labs["potassium"] < 3.4:
        secondary.append("hypokalemia")
    if adm_labs["albumin"] < 2.8 and rng.random() < 0.5:
        secondary.append("malnutrition")
    dx_ids += [ids() for _ in secondary]
    vitals = _vitals(p, dx, rng, admit + 900, ids, 1.0)
    vitals += _vitals(p, dx, rng, max(admit + 7200, discharge - 4 * HOUR), ids, 1 - recovery)
    # medications: inpatient orders, then the discharge list
    meds: list[tuple[str, str, str, int, str]] = []
    for rx, name in V.ACUTE_MEDS.get(dx, ()):
        meds.append((ids(), rx, name, admit + 2 * HOUR, "inpatient"))
    if not elective or dx != "chemo":
        meds.append((ids(), *V.VTE_PROPHYLAXIS, admit + 3 * HOUR, "inpatient"))
    chronic_rx: dict[str, str] = {}
    for c in sorted(conds):
        for rx, name in V.CHRONIC_MEDS.get(c, ()):
            chronic_rx[rx] = name
    for rx, name in chronic_rx.items():
        if rng.random() < 0.85:
            meds.append((ids(), rx, name, discharge - HOUR, "discharge"))
    procs = [(ids(), code, disp, admit + int(rng.uniform(3, 30) * HOUR))
             for code, disp in V.PROCEDURES.get(dx, ()) if rng.random() < 0.8]
    procs = [x for x in procs if x[3] < discharge]
    disposition = "expired" if died else _disposition(rng, p, dx, age, conds)
    themes = _note_themes(rng, p, conds) if not died else []
    los = max((discharge - admit) / DAY, 0.1)
    prior_adm = sum(1 for x in prior_unplanned if admit - 180 * DAY <= x < admit)
    prior_ed = sum(1 for x in prior_ed if admit - 180 * DAY <= x < admit)
    f = {
        "prior_unplanned_admissions_180d": min(prior_adm, 4),
        "prior_ed_visits_180d": min(prior_ed, 5),
        "comorbidity_score": min(cs, 12),
        "discharge_sodium_below_135": float(dc_labs["sodium"] < 135),
        "discharge_hemoglobin_below_10": float(dc_labs["hemoglobin"] < 10),
        "discharge_creatinine_above_2": float(dc_labs["creatinine"] > 2.0),
        "albumin_below_3": float(adm_labs["albumin"] < 3.0),
        "discharge_potassium_abnormal": float(not 3.5 <= dc_labs["potassium"] <= 5.1),
        "log_length_of_stay_days": math.log(los),
        "age_per_year_over_65": age - 65,
        "lives_alone": float(p.lives_alone),
        "housing_unstable": float(p.housing_unstable),
        "medicaid": float(p.payer == "medicaid"),
        "note_signal": float(bool(themes)),
        "frailty_sd": p.frailty,
    }
    lp = M.readmission_logit(f, disposition, dx, site.readmit_offset)
    true_risk = 0.0 if died else M.sigmoid(lp)
    clin = M.sigmoid(M.clinician_logit(lp, f, rng.gauss(0, 1)))
    readmitted = (not died) and rng.random() < true_risk
    stay = Stay(
        id=sid, ed_id=ed_id, ed_start=ed_start, admit=admit, discharge=discharge, finished=finished,
        site=site.key, ward=ward_code, icu=icu, attending=rng.randrange(10**6), dx=dx, secondary=secondary,
        dx_ids=dx_ids, elective=elective, admit_source=source, disposition=disposition, died=died, labs=labs,
        vitals=vitals, meds=meds, procedures=procs, social_ids=(ids(), ids(), ids()), note_id=ids(),
        note_themes=themes, true_risk=true_risk, readmitted=readmitted, clinician_risk=clin,
        death_risk=death_risk, censored=discharge + 30 * DAY > end,
    )
    p.stays.append(stay)
    return stay
