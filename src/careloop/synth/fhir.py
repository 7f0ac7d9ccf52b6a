"""Render a simulated patient as FHIR R4 resources (US Core shaped), applying the site's feed quirks and
the drift and bias scenarios. The simulation never changes with a scenario; only what is written does.
"""

from __future__ import annotations

import base64
import datetime as dt
import random
import uuid
from collections.abc import Iterator
from zoneinfo import ZoneInfo

from careloop.synth import vocab as V
from careloop.synth.config import SynthConfig
from careloop.synth.notes import discharge_summary
from careloop.synth.sim import YEAR, Measurement, Person, Stay, Visit, _ts, patient_seed, stable_fraction
from careloop.synth.world import World

Resource = tuple[str, str, dict]  # (resourceType, id, resource)

_EASTERN = ZoneInfo("America/New_York")
ENTERED_IN_ERROR = 0.005  # share of inpatient lab results also sent as a withdrawn, wrong version (a feed quirk)
_LAB_CAT = [V.concept(V.coding(V.OBS_CATEGORY, "laboratory", "Laboratory"))]
_VITAL_CAT = [V.concept(V.coding(V.OBS_CATEGORY, "vital-signs", "Vital Signs"))]
_SOCIAL_CAT = [V.concept(V.coding(V.OBS_CATEGORY, "social-history", "Social History"))]
_PROBLEM_CAT = [V.concept(V.coding(V.COND_CATEGORY, "problem-list-item", "Problem List Item"))]
_ENCDX_CAT = [V.concept(V.coding(V.COND_CATEGORY, "encounter-diagnosis", "Encounter Diagnosis"))]
_ACTIVE = V.concept(V.coding(V.COND_CLINICAL, "active", "Active"))
_RESOLVED = V.concept(V.coding(V.COND_CLINICAL, "resolved", "Resolved"))
_CONFIRMED = V.concept(V.coding(V.COND_VERIFICATION, "confirmed", "Confirmed"))
_ATTENDER = [V.concept(V.coding(V.PARTICIPATION, "ATND", "attender"))]
_DX_ROLE = {
    "AD": V.concept(V.coding(V.DIAGNOSIS_ROLE, "AD", "Admission diagnosis")),
    "DD": V.concept(V.coding(V.DIAGNOSIS_ROLE, "DD", "Discharge diagnosis")),
    "CM": V.concept(V.coding(V.DIAGNOSIS_ROLE, "CM", "Comorbidity diagnosis")),
}
_MED_CAT = {k: [V.concept(V.coding(V.MEDREQ_CATEGORY, k, k.title()))] for k in ("inpatient", "discharge",
                                                                                   "community")}
_H = [V.concept(V.coding(V.INTERPRETATION, "H", "High"))]
_L = [V.concept(V.coding(V.INTERPRETATION, "L", "Low"))]
_N = [V.concept(V.coding(V.INTERPRETATION, "N", "Normal"))]
_DISCHARGE_SUMMARY = V.concept(V.coding(V.LOINC, "18842-5", "Discharge summary"))
_CLINICAL_NOTE = [V.concept(V.coding(V.DOCREF_CATEGORY, "clinical-note", "Clinical Note"))]
_PROFILE = {t: {"profile": [V.US_CORE + p]} for t, p in {
    "Patient": "us-core-patient", "Encounter": "us-core-encounter", "lab": "us-core-observation-lab",
    "problem": "us-core-condition-problems-health-concerns", "encdx": "us-core-condition-encounter-diagnosis",
    "MedicationRequest": "us-core-medicationrequest", "Procedure": "us-core-procedure",
    "DocumentReference": "us-core-documentreference", "Coverage": "us-core-coverage",
    "smoking": "us-core-smokingstatus", "vital": "us-core-vital-signs", "bp": "us-core-blood-pressure",
}.items()}
_VITAL_PROFILE = {
    "heart_rate": "us-core-heart-rate", "resp_rate": "us-core-respiratory-rate",
    "spo2": "us-core-pulse-oximetry", "temperature": "us-core-body-temperature", "weight": "us-core-body-weight",
    "height": "us-core-body-height", "bmi": "us-core-bmi",
}
_VITAL_PROFILE = {k: {"profile": [V.US_CORE + v]} for k, v in _VITAL_PROFILE.items()}


def _code(system: str, code: str, display: str) -> dict:
    return {"coding": [{"system": system, "code": code, "display": display}], "text": display}


_LAB_CODE = {k: _code(V.LOINC, x.loinc, x.display) for k, x in {**V.LABS, **V.VITALS}.items()}


class Renderer:
    """Turns `Person` records into FHIR resources for one configuration."""

    def __init__(self, cfg: SynthConfig, world: World) -> None:
        self.cfg = cfg
        self.world = world
        self.drift_ts = _ts(cfg.effective_drift_date) if cfg.drift else None
        self.sites = {s.key: s for s in world.sites}
        self._days: dict[int, str] = {}
        self._offsets: dict[int, tuple[int, str]] = {}

    # -- time ---------------------------------------------------------------------------------
    def when(self, ts: int, site: str) -> str:
        """FHIR dateTime: UTC with Z, or local time with its offset at sites whose feed sends that."""
        if self.sites[site].local_time:
            hour = ts // 3600
            offset = self._offsets.get(hour)
            if offset is None:
                off = dt.datetime.fromtimestamp(ts, _EASTERN).utcoffset()
                secs = int(off.total_seconds()) if off is not None else 0
                sign = "-" if secs < 0 else "+"
                offset = self._offsets[hour] = (secs, f"{sign}{abs(secs) // 3600:02d}:{abs(secs) % 3600 // 60:02d}")
            ts += offset[0]
            suffix = offset[1]
        else:
            suffix = "Z"
        days, secs = divmod(ts, 86400)
        date = self._days.get(days)
        if date is None:
            date = self._days[days] = (dt.date(1970, 1, 1) + dt.timedelta(days=days)).isoformat()
        return f"{date}T{secs // 3600:02d}:{secs % 3600 // 60:02d}:{secs % 60:02d}{suffix}"

    def day(self, ts: int) -> str:
        days = ts // 86400
        date = self._days.get(days)
        if date is None:
            date = self._days[days] = (dt.date(1970, 1, 1) + dt.timedelta(days=days)).isoformat()
        return date

    def doctor(self, site: str, k: int):
        docs = self.world.practitioners[site]
        return docs[k % len(docs)]

    # -- scenarios ----------------------------------------------------------------------------
    def under_recorded(self, p: Person, condition_id: str) -> bool:
        """`bias`: a subgroup's chronic conditions go unrecorded (hash draw: touches no generator)."""
        if not self.cfg.bias:
            return False
        attr, value = self.cfg.bias_group.split(":")
        member = {
            "race": p.race == value, "ethnicity": p.hispanic and value == "hispanic",
            "language": p.language == value, "payer": p.payer == value, "sex": p.sex == value,
        }[attr]
        return member and stable_fraction(self.cfg.seed, "bias", condition_id) < self.cfg.bias_rate

    def after_drift(self, ts: int) -> bool:
        return self.drift_ts is not None and ts >= self.drift_ts

    # -- resources ----------------------------------------------------------------------------
    def patient(self, p: Person) -> Iterator[Resource]:
        site = self.sites[p.site]
        race_code, race_disp = V.RACES[p.race]
        eth_code, eth_disp = V.ETHNICITIES["hispanic" if p.hispanic else "not_hispanic"]
        prefix = {"male": "Mr.", "female": "Ms." if p.marital != "M" else "Mrs."}[p.sex]
        gp = self.doctor(p.site, p.idx)
        res = {
            "resourceType": "Patient", "id": p.id, "meta": _PROFILE["Patient"],
            "extension": [
                {"url": V.US_CORE + "us-core-race", "extension": [
                    {"url": "ombCategory", "valueCoding": V.coding(V.CDC_RACE, race_code, race_disp)},
                    {"url": "text", "valueString": race_disp}]},
                {"url": V.US_CORE + "us-core-ethnicity", "extension": [
                    {"url": "ombCategory", "valueCoding": V.coding(V.CDC_RACE, eth_code, eth_disp)},
                    {"url": "text", "valueString": eth_disp}]},
                {"url": V.US_CORE + "us-core-birthsex", "valueCode": "F" if p.sex == "female" else "M"},
            ],
            "identifier": [
                {"use": "usual", "type": V.concept(V.coding(V.ID_TYPE, "MR", "Medical record number")),
                 "system": V.MRN_SYSTEM, "value": p.mrn},
                {"type": V.concept(V.coding(V.ID_TYPE, "SS", "Social Security number")), "system": V.SSN,
                 "value": p.ssn},
                {"type": V.concept(V.coding(V.ID_TYPE, "DL", "Driver's license number")),
                 "system": V.MA_DRIVERS_LICENSE, "value": p.license},
            ],
            "name": [{"use": "official", "family": p.family, "given": [p.given, p.middle], "prefix": [prefix]}],
            "telecom": [{"system": "phone", "value": p.phone, "use": "home"}],
            "gender": p.sex,
            "birthDate": self.day(p.birth),
            "address": [{"use": "home", "line": [p.street], "city": site.city, "state": site.state,
                         "postalCode": p.zip, "country": "US"}],
            "maritalStatus": V.concept(V.coding(V.MARITAL, p.marital, V.MARITAL_STATUS[p.marital])),
            "communication": [{"language": V.concept(V.coding(V.BCP47, p.language, V.LANGUAGES[p.language])),
                               "preferred": True}],
            "generalPractitioner": [{"reference": f"Practitioner/{gp.id}"}],
            "managingOrganization": {"reference": f"Organization/{site.id}"},
        }
        if p.death is not None:
            res["deceasedDateTime"] = self.when(p.death, p.site)
        yield "Patient", p.id, res
        yield from self.coverage(p)

    def coverage(self, p: Person) -> Iterator[Resource]:
        end = _ts(self.cfg.end)
        turn65 = p.birth + int(65 * YEAR)
        last = min(end, p.death) if p.death is not None else end
        periods: list[tuple[str, int, int | None]] = []
        if p.payer != "medicare" and p.entry < turn65 < last and p.payer != "medicaid":
            periods = [(p.payer, p.entry, turn65), ("medicare", turn65, None)]
        else:
            periods = [(p.payer, p.entry, None)]
        for (payer, start, stop), cid in zip(periods, p.coverage_ids, strict=False):
            code, disp, _ = V.PAYERS[payer]
            payor = (f"Organization/{self.world.payers[payer].id}" if payer != "self_pay"
                     else f"Patient/{p.id}")
            period = {"start": self.day(start)}
            if stop is not None:
                period["end"] = self.day(stop)
            res = {
                "resourceType": "Coverage", "id": cid, "meta": _PROFILE["Coverage"],
                "status": "active",
                "type": V.concept(V.coding(V.SOPT, code, disp)),
                "subscriberId": f"{payer[:3].upper()}{p.mrn[::-1]}",
                "beneficiary": {"reference": f"Patient/{p.id}"},
                "relationship": V.concept(V.coding(
                    "http://terminology.hl7.org/CodeSystem/subscriber-relationship", "self", "Self")),
                "period": period,
                "payor": [{"reference": payor}],
            }
            yield "Coverage", cid, res

    def chronic_conditions(self, p: Person) -> Iterator[Resource]:
        for c in p.chronic:
            if not c.recorded or self.under_recorded(p, c.id):
                continue
            dx = V.CHRONIC[c.key]
            code = dx.concept
            if self.after_drift(c.recorded) and c.key in V.DRIFT_RECODE:
                options = V.DRIFT_RECODE[c.key]
                icd, disp = options[int(stable_fraction(c.id) * len(options))]
                code = V.concept(V.coding(V.ICD10CM, icd, disp), dx.concept["coding"][1], text=disp)
            yield "Condition", c.id, {
                "resourceType": "Condition", "id": c.id, "meta": _PROFILE["problem"],
                "clinicalStatus": _ACTIVE, "verificationStatus": _CONFIRMED, "category": _PROBLEM_CAT,
                "code": code, "subject": {"reference": f"Patient/{p.id}"},
                "onsetDateTime": self.when(c.onset, p.site), "recordedDate": self.when(c.recorded, p.site),
            }

    def measurement(self, p: Person, m: Measurement, site: str, enc: str) -> Resource:
        s = self.sites[site]
        base = {"resourceType": "Observation", "id": m.id, "status": "final"}
        ref_pat = {"reference": f"Patient/{p.id}"}
        when = self.when(m.time, site)
        if m.key == "bp":
            sys_, dia = V.BP_SYSTOLIC, V.BP_DIASTOLIC
            base.update({
                "meta": _PROFILE["bp"], "category": _VITAL_CAT, "code": _code(V.LOINC, *V.BP_PANEL),
                "subject": ref_pat, "encounter": {"reference": f"Encounter/{enc}"}, "effectiveDateTime": when,
                "component": [
                    {"code": _code(V.LOINC, *sys_), "valueQuantity": _qty(m.value, "mm[Hg]")},
                    {"code": _code(V.LOINC, *dia), "valueQuantity": _qty(m.value2, "mm[Hg]")},
                ],
            })
            return "Observation", m.id, base
        spec = V.LABS.get(m.key) or V.VITALS[m.key]
        value = m.value
        if m.key == "creatinine" and self.after_drift(m.time):
            value = value * 1.12 + 0.05  # `drift`: the new creatinine assay reads high
        unit, decimals, low, high = spec.unit, spec.decimals, spec.low, spec.high
        if s.lab_units == "si" and m.key in V.SI_UNITS:
            unit, factor, decimals = V.SI_UNITS[m.key]
            value *= factor
            low = None if low is None else round(low * factor, decimals)
            high = None if high is None else round(high * factor, decimals)
        elif s.vital_units == "imperial" and m.key == "weight":
            unit, factor, decimals = V.IMPERIAL_UNITS["weight"]
            value *= factor
        elif s.vital_units == "imperial" and m.key == "temperature":
            unit, value = "[degF]", value * 9 / 5 + 32
            low, high = round(low * 9 / 5 + 32, 1), round(high * 9 / 5 + 32, 1)
        value = round(value, decimals) if decimals else float(round(value))
        vital = spec.category == "vital-signs"
        base.update({
            "meta": _VITAL_PROFILE[m.key] if vital else _PROFILE["lab"],
            "category": _VITAL_CAT if vital else _LAB_CAT,
            "code": _LAB_CODE[m.key], "subject": ref_pat, "encounter": {"reference": f"Encounter/{enc}"},
            "effectiveDateTime": when,
            "valueQuantity": _qty(value, unit),
        })
        if not vital:
            base["issued"] = self.when(m.time + 3600, site)
            if low is not None or high is not None:
                rr = {}
                if low is not None:
                    rr["low"] = _qty(low, unit)
                if high is not None:
                    rr["high"] = _qty(high, unit)
                base["referenceRange"] = [rr]
                base["interpretation"] = _H if high is not None and value > high else (
                    _L if low is not None and value < low else _N)
        return "Observation", m.id, base

    def entered_in_error(self, p: Person, m: Measurement, site: str, enc: str) -> Resource:
        """A result filed with a decimal slip (ten times the value) and withdrawn: a real feed sends the withdrawn
        version, status entered-in-error, beside the right one. Decided by a hash of the result's id, so the
        simulation's random streams, and everything else written, are the same with or without it."""
        wrong = Measurement(m.key, m.time, m.value * 10, m.value2, str(uuid.uuid5(uuid.NAMESPACE_URL, m.id)))
        rtype, rid, res = self.measurement(p, wrong, site, enc)
        res["status"] = "entered-in-error"
        res.pop("interpretation", None)
        return rtype, rid, res

    def visit(self, p: Person, v: Visit) -> Iterator[Resource]:
        site = self.sites[v.site]
        doc = self.doctor(v.site, v.clinician)
        cls = "EMER" if v.kind == "EMER" else "AMB"
        ward = "ED" if cls == "EMER" else "CLIN"
        enc = {
            "resourceType": "Encounter", "id": v.id, "meta": _PROFILE["Encounter"], "status": "finished",
            "class": V.ENC_CLASS[cls], "type": [V.ENC_TYPE[v.kind]],
            "subject": {"reference": f"Patient/{p.id}"},
            "participant": [{"type": _ATTENDER, "individual": {"reference": f"Practitioner/{doc.id}"}}],
            "period": {"start": self.when(v.start, v.site), "end": self.when(v.end, v.site)},
            "location": [{"location": {"reference": f"Location/{site.ward_ids[ward]}"}, "status": "completed"}],
            "serviceProvider": {"reference": f"Organization/{site.id}"},
        }
        if v.reason is not None and v.reason_id:
            enc["reasonCode"] = [v.reason.concept]
            enc["diagnosis"] = [{"condition": {"reference": f"Condition/{v.reason_id}"}, "use": _DX_ROLE["DD"],
                                 "rank": 1}]
        yield "Encounter", v.id, enc
        if v.reason is not None and v.reason_id:
            yield "Condition", v.reason_id, {
                "resourceType": "Condition", "id": v.reason_id, "meta": _PROFILE["encdx"],
                "clinicalStatus": _RESOLVED, "verificationStatus": _CONFIRMED, "category": _ENCDX_CAT,
                "code": v.reason.concept, "subject": {"reference": f"Patient/{p.id}"},
                "encounter": {"reference": f"Encounter/{v.id}"}, "onsetDateTime": self.when(v.start, v.site),
                "abatementDateTime": self.when(v.end, v.site), "recordedDate": self.when(v.start, v.site),
            }
        for m in v.measurements:
            yield self.measurement(p, m, v.site, v.id)

    def stay(self, p: Person, s: Stay, k: int) -> Iterator[Resource]:
        site = self.sites[s.site]
        doc = self.doctor(s.site, s.attending)
        pref = {"reference": f"Patient/{p.id}"}
        end_ts = _ts(self.cfg.end)
        if s.ed_id:
            yield "Encounter", s.ed_id, {
                "resourceType": "Encounter", "id": s.ed_id, "meta": _PROFILE["Encounter"], "status": "finished",
                "class": V.ENC_CLASS["EMER"], "type": [V.ENC_TYPE["EMER"]], "priority": V.PRIORITY["EM"],
                "subject": pref,
                "participant": [{"type": _ATTENDER, "individual": {"reference": f"Practitioner/{doc.id}"}}],
                "period": {"start": self.when(s.ed_start, s.site), "end": self.when(s.admit, s.site)},
                "reasonCode": [V.ACUTE[s.dx].concept],
                "location": [{"location": {"reference": f"Location/{site.ward_ids['ED']}"}, "status": "completed"}],
                "serviceProvider": {"reference": f"Organization/{site.id}"},
            }
        principal = V.ACUTE[s.dx]
        dxs = [principal] + [V.SECONDARY[x] for x in s.secondary]
        period = {"start": self.when(s.admit, s.site)}
        if s.finished:
            period["end"] = self.when(s.discharge, s.site)
        hosp = {"admitSource": V.ADMIT_SOURCES[s.admit_source]}
        if s.finished:
            hosp["dischargeDisposition"] = V.DISPOSITIONS[s.disposition]
        locs = []
        ward_start = s.admit
        if s.icu:
            icu_end = min(s.admit + int((s.discharge - s.admit) * 0.4), end_ts - 1)
            locs.append({"location": {"reference": f"Location/{site.ward_ids['ICU']}"}, "status": "completed",
                         "period": {"start": self.when(s.admit, s.site), "end": self.when(icu_end, s.site)}})
            ward_start = icu_end
        if ward_start < end_ts:
            wp = {"start": self.when(ward_start, s.site)}
            if s.finished:
                wp["end"] = self.when(s.discharge, s.site)
            locs.append({"location": {"reference": f"Location/{site.ward_ids[s.ward]}"},
                         "status": "completed" if s.finished else "active", "period": wp})
        yield "Encounter", s.id, {
            "resourceType": "Encounter", "id": s.id, "meta": _PROFILE["Encounter"],
            "status": "finished" if s.finished else "in-progress",
            "class": V.ENC_CLASS["IMP"], "type": [V.ENC_TYPE["IMP_EL" if s.elective else "IMP"]],
            "priority": V.PRIORITY["EL" if s.elective else "EM"],
            "subject": pref,
            "participant": [{"type": _ATTENDER, "individual": {"reference": f"Practitioner/{doc.id}"}}],
            "period": period,
            "reasonCode": [principal.concept],
            "diagnosis": [{"condition": {"reference": f"Condition/{cid}"}, "use": _DX_ROLE["DD" if i == 0 else "CM"],
                           "rank": i + 1} for i, cid in enumerate(s.dx_ids)],
            "hospitalization": hosp,
            "location": locs,
            "serviceProvider": {"reference": f"Organization/{site.id}"},
        }
        for i, (dx, cid) in enumerate(zip(dxs, s.dx_ids, strict=True)):
            cond = {
                "resourceType": "Condition", "id": cid, "meta": _PROFILE["encdx"],
                "clinicalStatus": _RESOLVED if s.finished else _ACTIVE, "verificationStatus": _CONFIRMED,
                "category": _ENCDX_CAT, "code": dx.concept, "subject": pref,
                "encounter": {"reference": f"Encounter/{s.id}"},
                "onsetDateTime": self.when(s.admit, s.site),
                "recordedDate": self.when(s.admit if i == 0 else s.admit + 6 * 3600, s.site),
            }
            if s.finished:
                cond["abatementDateTime"] = self.when(s.discharge, s.site)
            yield "Condition", cid, cond
        for m in s.labs:
            if m.time < end_ts:
                yield self.measurement(p, m, s.site, s.id)
                if stable_fraction(m.id, "entered-in-error") < ENTERED_IN_ERROR:
                    yield self.entered_in_error(p, m, s.site, s.id)
        for m in s.vitals:
            if m.time < end_ts and m.time <= s.discharge:
                yield self.measurement(p, m, s.site, s.id)
        social_t = s.admit + 4 * 3600
        if social_t < end_ts:
            yield from self.social(p, s, social_t)
        for mid, rx, name, t, cat in s.meds:
            if t >= end_ts or (cat == "discharge" and (not s.finished or s.died)):
                continue
            med = {
                "resourceType": "MedicationRequest", "id": mid, "meta": _PROFILE["MedicationRequest"],
                "status": "completed" if cat == "inpatient" and s.finished else "active", "intent": "order",
                "category": _MED_CAT[cat],
                "medicationCodeableConcept": {"coding": [V.coding(V.RXNORM, rx, name)], "text": name},
                "subject": pref, "encounter": {"reference": f"Encounter/{s.id}"},
                "authoredOn": self.when(t, s.site),
                "requester": {"reference": f"Practitioner/{doc.id}"},
            }
            yield "MedicationRequest", mid, med
        for pid_, code, disp, t in s.procedures:
            if t >= end_ts:
                continue
            yield "Procedure", pid_, {
                "resourceType": "Procedure", "id": pid_, "meta": _PROFILE["Procedure"], "status": "completed",
                "code": _code(V.SNOMED, code, disp), "subject": pref,
                "encounter": {"reference": f"Encounter/{s.id}"}, "performedDateTime": self.when(t, s.site),
                "performer": [{"actor": {"reference": f"Practitioner/{doc.id}"}}],
            }
        if s.finished and not s.died:
            yield self.note(p, s, k, doc)

    def social(self, p: Person, s: Stay, t: int) -> Iterator[Resource]:
        site = self.sites[s.site]
        pref = {"reference": f"Patient/{p.id}"}
        when = self.when(t, s.site)
        enc = {"reference": f"Encounter/{s.id}"}
        smoke_id, household_id, housing_id = s.social_ids
        sc, sd = V.SMOKING_VALUES[p.smoking]
        yield "Observation", smoke_id, {
            "resourceType": "Observation", "id": smoke_id, "meta": _PROFILE["smoking"], "status": "final",
            "category": _SOCIAL_CAT, "code": _code(V.LOINC, *V.SMOKING_LOINC), "subject": pref, "encounter": enc,
            "effectiveDateTime": when, "valueCodeableConcept": _code(V.SNOMED, sc, sd),
        }
        yield "Observation", household_id, {
            "resourceType": "Observation", "id": household_id, "status": "final", "category": _SOCIAL_CAT,
            "code": _code(V.LOINC, *V.HOUSEHOLD_LOINC), "subject": pref, "encounter": enc,
            "effectiveDateTime": when, "valueInteger": p.household,
        }
        if site.records_housing:
            hc, hd = V.HOUSING_VALUES[p.housing_unstable]
            yield "Observation", housing_id, {
                "resourceType": "Observation", "id": housing_id, "status": "final", "category": _SOCIAL_CAT,
                "code": _code(V.LOINC, *V.HOUSING_LOINC), "subject": pref, "encounter": enc,
                "effectiveDateTime": when, "valueCodeableConcept": _code(V.LOINC, hc, hd),
            }

    def note(self, p: Person, s: Stay, k: int, doc) -> Resource:
        rng = random.Random(patient_seed(self.cfg.seed, p.idx, f"note-{k}"))
        followup = self.doctor(p.site, p.idx)
        text = discharge_summary(
            rng, patient_name=f"{p.given} {p.family}", mrn=p.mrn, birth_ts=p.birth, phone=p.phone,
            age=p.age(s.admit), sex=p.sex, admit=s.admit, discharge=s.discharge,
            attending=f"{doc.given} {doc.family}", site_name=self.sites[s.site].name,
            principal=V.ACUTE[s.dx], secondary=[V.SECONDARY[x] for x in s.secondary],
            chronic=[V.CHRONIC[c.key] for c in p.chronic if c.onset <= s.admit],
            disposition=s.disposition, lives_alone=p.lives_alone, housing_unstable=p.housing_unstable,
            smoking=p.smoking, themes=s.note_themes, followup_doctor=f"{followup.given} {followup.family}",
            followup_days=7 if s.clinician_risk > 0.25 else 14,
        )
        return "DocumentReference", s.note_id, {
            "resourceType": "DocumentReference", "id": s.note_id, "meta": _PROFILE["DocumentReference"],
            "status": "current", "docStatus": "final", "type": _DISCHARGE_SUMMARY, "category": _CLINICAL_NOTE,
            "subject": {"reference": f"Patient/{p.id}"}, "date": self.when(s.discharge + 1800, s.site),
            "author": [{"reference": f"Practitioner/{doc.id}"}],
            "content": [{"attachment": {
                "contentType": "text/plain; charset=utf-8", "language": "en-US",
                "data": base64.b64encode(text.encode()).decode("ascii"), "title": "Discharge summary",
                "creation": self.when(s.discharge + 1800, s.site)}}],
            "context": {"encounter": [{"reference": f"Encounter/{s.id}"}],
                        "period": {"start": self.when(s.admit, s.site), "end": self.when(s.discharge, s.site)}},
        }

    def render(self, p: Person) -> Iterator[Resource]:
        """Every resource of one patient, in a fixed order."""
        yield from self.patient(p)
        yield from self.chronic_conditions(p)
        for v in p.visits:
            yield from self.visit(p, v)
        for k, s in enumerate(p.stays):
            yield from self.stay(p, s, k)


def _qty(value: float, unit: str) -> dict:
    return {"value": value, "unit": unit, "system": V.UCUM, "code": unit}

