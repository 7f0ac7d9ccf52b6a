"""The fixed world every synthetic patient lives in: the health system's sites, wards, clinicians, payers.

Three hospitals with deliberately different case mix, coding and units, so that a model validated at
one site and tested at another (external validation) meets real differences, not relabelled copies.
"""

from __future__ import annotations

import random
import uuid
from dataclasses import dataclass, field

from careloop.synth import vocab as V


@dataclass(frozen=True)
class Site:
    key: str
    name: str
    npi: str
    city: str
    state: str
    zips: tuple[str, ...]
    area_code: str
    share: float  # share of the population whose home site this is
    mean_age: float
    race_mix: dict[str, float]
    hispanic: float
    languages: dict[str, float]
    medicaid: float  # share of under-65 adults on Medicaid
    prevalence: dict[str, float]  # log-odds shift of chronic condition prevalence
    readmit_offset: float  # site-level effect in the hidden readmission mechanism
    lab_units: str  # "us" or "si"
    vital_units: str  # "metric" or "imperial"
    local_time: bool  # timestamps written with a local UTC offset instead of Z
    records_housing: bool
    wards: tuple[tuple[str, str], ...]
    id: str = ""
    ward_ids: dict[str, str] = field(default_factory=dict)


def _site_table() -> tuple[Site, ...]:
    wards_full = (("MED", "General Medicine"), ("CARD", "Cardiology"), ("RESP", "Respiratory Medicine"),
                  ("SURG", "General Surgery"), ("ORTH", "Orthopedics"), ("ONC", "Oncology"),
                  ("ICU", "Medical Intensive Care Unit"), ("ED", "Emergency Department"),
                  ("CLIN", "Outpatient Clinics"))
    wards_small = (("MED", "Medical Ward"), ("CARD", "Cardiac Step-Down"), ("SURG", "Surgical Ward"),
                   ("ICU", "Intensive Care Unit"), ("ED", "Emergency Department"), ("CLIN", "Outpatient Clinics"))
    return (
        Site(
            key="RUH", name="Riverside University Hospital", npi="1234567893", city="Boston", state="MA",
            zips=("02115", "02118", "02119", "02120", "02130", "02215", "02446"), area_code="617",
            share=0.45, mean_age=58.0,
            race_mix={"white": 0.60, "black": 0.18, "asian": 0.10, "other": 0.08, "aian": 0.02, "nhpi": 0.02},
            hispanic=0.10, languages={"en": 0.85, "es": 0.06, "zh": 0.04, "ht": 0.03, "ru": 0.02},
            medicaid=0.22,
            prevalence={"cancer": 0.7, "metastatic": 0.6, "cirrhosis": 0.5, "chf": 0.0, "ckd": 0.2},
            readmit_offset=0.10, lab_units="us", vital_units="metric", local_time=False, records_housing=True,
            wards=wards_full,
        ),
        Site(
            key="NCH", name="Northfield Community Hospital", npi="1245319599", city="Claremont", state="NH",
            zips=("03743", "03603", "03601", "03602", "03745"), area_code="603",
            share=0.30, mean_age=66.0,
            race_mix={"white": 0.93, "black": 0.02, "asian": 0.02, "other": 0.02, "aian": 0.01},
            hispanic=0.03, languages={"en": 0.98, "es": 0.01, "pt": 0.01},
            medicaid=0.15,
            prevalence={"chf": 0.5, "copd": 0.6, "dementia": 0.4, "cancer": -0.3, "cirrhosis": -0.4,
                        "obesity": 0.3},
            readmit_offset=-0.15, lab_units="us", vital_units="imperial", local_time=True, records_housing=False,
            wards=wards_small,
        ),
        Site(
            key="LMC", name="Lakeside Medical Center", npi="1396738332", city="Lawrence", state="MA",
            zips=("01840", "01841", "01843", "01844", "01810"), area_code="978",
            share=0.25, mean_age=50.0,
            race_mix={"white": 0.55, "black": 0.12, "asian": 0.05, "other": 0.26, "aian": 0.01, "nhpi": 0.01},
            hispanic=0.55, languages={"en": 0.55, "es": 0.38, "pt": 0.03, "vi": 0.04},
            medicaid=0.45,
            prevalence={"diabetes": 0.6, "obesity": 0.5, "ckd": 0.3, "alcohol": 0.3, "dementia": -0.3},
            readmit_offset=0.25, lab_units="si", vital_units="metric", local_time=False, records_housing=True,
            wards=wards_small,
        ),
    )


@dataclass(frozen=True)
class Practitioner:
    id: str
    npi: str
    family: str
    given: str
    site: str
    specialty: str


@dataclass(frozen=True)
class Payer:
    key: str
    id: str
    name: str


@dataclass(frozen=True)
class World:
    sites: tuple[Site, ...]
    practitioners: dict[str, tuple[Practitioner, ...]]  # by site key
    payers: dict[str, Payer]
    system_org_id: str

    def site(self, key: str) -> Site:
        for s in self.sites:
            if s.key == key:
                return s
        raise KeyError(key)


def _npi(rng: random.Random) -> str:
    """A 10-digit NPI with a valid Luhn check digit (prefix 80840), as real NPIs have."""
    body = "1" + "".join(str(rng.randrange(10)) for _ in range(8))
    digits = [int(c) for c in "80840" + body]
    total = 0
    for i, d in enumerate(reversed(digits)):
        if i % 2 == 0:
            d *= 2
            if d > 9:
                d -= 9
        total += d
    check = (10 - total % 10) % 10
    return body + str(check)


def _uid(rng: random.Random) -> str:
    return str(uuid.UUID(int=rng.getrandbits(128), version=4))


def build_world(seed: int) -> World:
    """The world depends on the seed only, never on the population size or worker count."""
    rng = random.Random(f"careloop-world-{seed}")
    sites = []
    for s in _site_table():
        ward_ids = {code: _uid(rng) for code, _ in s.wards}
        sites.append(Site(**{**s.__dict__, "id": _uid(rng), "ward_ids": ward_ids}))
    specialties = ("Internal Medicine", "Hospital Medicine", "Cardiology", "Pulmonology", "Family Medicine",
                   "General Surgery", "Orthopedic Surgery", "Oncology", "Emergency Medicine", "Nephrology")
    practitioners: dict[str, tuple[Practitioner, ...]] = {}
    for s in sites:
        n = 24 if s.key == "RUH" else 14
        docs = []
        for i in range(n):
            sex = "female" if rng.random() < 0.5 else "male"
            docs.append(Practitioner(
                id=_uid(rng), npi=_npi(rng), family=rng.choice(V.LAST_NAMES),
                given=rng.choice(V.FIRST_NAMES[sex]), site=s.key, specialty=specialties[i % len(specialties)],
            ))
        practitioners[s.key] = tuple(docs)
    payers = {k: Payer(k, _uid(rng), v[2]) for k, v in V.PAYERS.items() if k != "self_pay"}
    return World(sites=tuple(sites), practitioners=practitioners, payers=payers, system_org_id=_uid(rng))
