"""The truth sidecar agrees with what the FHIR shows, and outcomes follow the documented mechanism."""

from __future__ import annotations

import datetime as dt
import math
from collections import defaultdict
from pathlib import Path

import numpy as np
import pyarrow.parquet as pq
import pytest

DAY = dt.timedelta(days=1)


def _t(s: str) -> dt.datetime:
    return dt.datetime.fromisoformat(s.replace("Z", "+00:00"))


@pytest.fixture(scope="module")
def truth(hospital: Path) -> list[dict]:
    return pq.read_table(hospital / "truth" / "stays.parquet").to_pylist()


@pytest.fixture(scope="module")
def stays_by_patient(resources) -> dict[str, list[dict]]:
    by: dict[str, list[dict]] = defaultdict(list)
    for e in resources("Encounter"):
        if e["class"]["code"] == "IMP":
            by[e["subject"]["reference"].split("/")[1]].append(e)
    return by


def test_truth_has_the_contract_columns_and_one_row_per_finished_stay(truth, resources):
    cols = set(truth[0])
    assert {"encounter_id", "patient_id", "true_risk_30d", "readmitted_30d", "died_in_hospital",
            "clinician_risk_30d"} <= cols
    finished = {e["id"] for e in resources("Encounter") if e["class"]["code"] == "IMP" and e["status"] == "finished"}
    assert {r["encounter_id"] for r in truth} == finished
    assert len(truth) == len(finished)


def test_readmission_labels_are_what_the_fhir_shows(truth, stays_by_patient):
    """Independent check: an unplanned inpatient admission within 30 days after discharge, from the FHIR alone."""
    checked = positives = planned_inside = 0
    for row in truth:
        if row["died_in_hospital"] or row["censored_30d"]:
            continue
        discharge = row["discharge_time"]
        later = [e for e in stays_by_patient[row["patient_id"]]
                 if discharge < _t(e["period"]["start"]) <= discharge + 30 * DAY]
        unplanned = [e for e in later if e["priority"]["coding"][0]["code"] != "EL"]
        planned_inside += len(later) - len(unplanned)
        assert bool(unplanned) == row["readmitted_30d"], row["encounter_id"]
        checked += 1
        positives += row["readmitted_30d"]
    assert checked > 800 and positives > 80
    assert planned_inside > 0, "planned admissions inside the window exist and are not readmissions"


def test_observed_readmission_tracks_true_risk_by_decile(truth):
    rows = [r for r in truth if not r["died_in_hospital"] and not r["censored_30d"]]
    p = np.array([r["true_risk_30d"] for r in rows])
    y = np.array([r["readmitted_30d"] for r in rows], dtype=float)
    order = np.argsort(p)
    chi2 = 0.0
    observed, expected = [], []
    for idx in np.array_split(order, 10):
        e, o, n = p[idx].sum(), y[idx].sum(), len(idx)
        var = (p[idx] * (1 - p[idx])).sum()
        chi2 += (o - e) ** 2 / var
        observed.append(o / n)
        expected.append(e / n)
        assert abs(o - e) <= 3.5 * math.sqrt(var) + 1, (o, e)
    assert chi2 < 35  # Hosmer-Lemeshow-style, 10 groups: p < 1e-4 would exceed this
    assert observed[-1] > 3 * observed[0]  # the risk gradient is real
    assert 0.10 <= y.mean() <= 0.20  # a realistic all-cause 30-day readmission rate


def _auroc(y: np.ndarray, s: np.ndarray) -> float:
    """Mann-Whitney AUROC, computed here so the check does not trust any library."""
    order = np.argsort(s, kind="mergesort")
    ranks = np.empty(len(s))
    ranks[order] = np.arange(1, len(s) + 1)
    for v in np.unique(s):  # average ranks over ties
        m = s == v
        if m.sum() > 1:
            ranks[m] = ranks[m].mean()
    pos = y == 1
    n1, n0 = pos.sum(), (~pos).sum()
    return float((ranks[pos].sum() - n1 * (n1 + 1) / 2) / (n1 * n0))


def test_true_risk_and_clinician_discriminate_but_not_perfectly(truth):
    rows = [r for r in truth if not r["died_in_hospital"] and not r["censored_30d"]]
    y = np.array([r["readmitted_30d"] for r in rows], dtype=int)
    true_auc = _auroc(y, np.array([r["true_risk_30d"] for r in rows]))
    clin_auc = _auroc(y, np.array([r["clinician_risk_30d"] for r in rows]))
    assert 0.74 <= true_auc <= 0.88  # the oracle; a model seeing only the FHIR sits below it
    assert 0.62 <= clin_auc < true_auc


def test_in_hospital_deaths_agree_with_disposition_and_patient(truth, resources):
    enc = {e["id"]: e for e in resources("Encounter")}
    patients = {p["id"]: p for p in resources("Patient")}
    deaths = [r for r in truth if r["died_in_hospital"]]
    assert 0.01 <= len(deaths) / len(truth) <= 0.06
    for r in truth:
        dispo = enc[r["encounter_id"]]["hospitalization"]["dischargeDisposition"]["coding"][0]["code"]
        assert (dispo == "exp") == r["died_in_hospital"]
    for r in deaths:
        assert _t(patients[r["patient_id"]]["deceasedDateTime"]) == r["discharge_time"]
        assert r["true_risk_30d"] is None and not r["readmitted_30d"]


def test_length_of_stay_is_right_skewed_like_a_real_hospital(truth):
    los = np.array([(r["discharge_time"] - r["admit_time"]).total_seconds() / 86400 for r in truth])
    assert 2.5 <= np.median(los) <= 5.0
    assert np.mean(los) > np.median(los)
    assert np.percentile(los, 95) > 2 * np.median(los)
    assert los.min() > 0


def test_nothing_happens_after_death(resources):
    death = {p["id"]: _t(p["deceasedDateTime"]) for p in resources("Patient") if "deceasedDateTime" in p}
    for e in resources("Encounter"):
        pid = e["subject"]["reference"].split("/")[1]
        if pid in death:
            assert _t(e["period"]["start"]) <= death[pid]
