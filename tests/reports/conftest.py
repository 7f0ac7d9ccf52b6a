"""Hand-built report.json dicts that follow docs/validation-report.md field by field.

`report` has fairness flags, suppressed groups, a comparison with LACE and HOSPITAL, and a clinician-and-AI team
section; `report_no_flags` has none of the flags and no team; `report_scores` is a kind="scores" report (no model
block). Curves come from a binormal model so they look real; all numbers are fixed (no randomness).
"""

from __future__ import annotations

import copy
import math
from pathlib import Path
from statistics import NormalDist

import pytest

from careloop.reports import Facts, load_facts

REPO = Path(__file__).resolve().parents[2]
DOC = REPO / "documentation" / "readmission-30d.yaml"
N, POS = 2000, 300  # test split: stays, positives
PREV = POS / N
PRIMARY = "readmission_lgbm"
_Z = NormalDist()


def e(x: float | None, half: float | None = None) -> dict:
    """An estimate with a symmetric interval of half-width `half` (default 4% of the value, at least 0.01)."""
    if x is None:
        return {"estimate": None, "ci": None}
    h = half if half is not None else max(abs(x) * 0.04, 0.01)
    return {"estimate": x, "ci": [x - h, x + h]}


def r(x: float, half: float | None = None) -> dict:
    """A proportion's estimate, its interval clipped to [0, 1]."""
    out = e(x, half)
    out["ci"] = [max(0.0, out["ci"][0]), min(1.0, out["ci"][1])]
    return out


def binormal(auc: float, t: float) -> tuple[float, float]:
    """(tpr, fpr) of a binormal score with the given AUROC at quantile threshold t of the negatives."""
    a = math.sqrt(2) * _Z.inv_cdf(auc)
    fpr = 1 - _Z.cdf(t)
    return _Z.cdf(a - t), fpr


def evaluation(auc: float, *, slope: float = 0.97, probabilistic: bool = True, op_threshold: float = 0.25) -> dict:
    cuts = [-3 + 6 * i / 59 for i in range(60)]
    pts = [(0.0, 0.0), *sorted((f, t) for t, f in (binormal(auc, c) for c in cuts)), (1.0, 1.0)]
    calibration = []
    for b in range(10):
        mp = 0.03 + 0.045 * b
        obs = min(0.95, mp * (1.05 if b % 2 else 0.96))
        h = 1.96 * math.sqrt(obs * (1 - obs) / 200)
        calibration.append({"bin": b, "n": 200, "mean_predicted": round(mp, 4), "observed": round(obs, 4),
                            "ci": [round(max(0, obs - h), 4), round(min(1, obs + h), 4)]})
    decision = []
    for i in range(1, 26):
        t = i / 50
        treat_all = PREV - (1 - PREV) * t / (1 - t)
        nb = max(0.002, PREV * (1 - t) ** 3 * (auc - 0.5) * 2.6 - 0.004 * i * (0.8 - auc))
        decision.append({"threshold": t, "net_benefit": e(round(nb, 4), 0.01), "treat_all": round(treat_all, 4),
                         "treat_none": 0.0})
    table = []
    for i in range(1, 11):
        t = i * 0.05
        sens = max(0.02, 1 - t * 1.7) * (auc / 0.74)
        spec = min(0.99, 0.6 + t * 1.2)
        tp, fn = round(POS * min(sens, 1)), POS - round(POS * min(sens, 1))
        tn = round((N - POS) * spec)
        fp = N - POS - tn
        ppv = tp / (tp + fp)
        table.append({"threshold": round(t, 2), "flagged": tp + fp, "alerts_per_100": round(100 * (tp + fp) / N, 1),
                      "sensitivity": r(tp / POS), "specificity": r(tn / (N - POS)), "ppv": r(ppv),
                      "npv": r(tn / (tn + fn)), "nne": e(1 / ppv, 0.4), "tp": tp, "fp": fp, "fn": fn, "tn": tn})
    op = next(r for r in table if abs(r["threshold"] - op_threshold) < 1e-9)
    return {
        "n": N, "positives": POS, "prevalence": PREV, "clusters": 1712, "n_boot": 1000, "ci_level": 0.95,
        "probabilistic": probabilistic,
        "metrics": {"auroc": e(auc, 0.029), "auprc": e(round(auc - 0.42, 3), 0.03), "brier": e(0.118, 0.006),
                    "calibration_intercept": e(-0.04, 0.09), "calibration_slope": e(slope, 0.08),
                    "observed_expected": e(1.02, 0.07), "mean_predicted": 0.147, "observed_rate": PREV},
        "roc_curve": {"fpr": [p[0] for p in pts], "tpr": [p[1] for p in pts],
                      "threshold": [1 - i / (len(pts) - 1) for i in range(len(pts))]},
        "pr_curve": {"recall": [p[1] for p in pts], "precision": [max(PREV, 0.6 - 0.45 * p[1]) for p in pts]},
        "calibration_curve": calibration,
        "decision_curve": decision,
        "threshold_table": table,
        "operating_point": copy.deepcopy(op),
    }


def group(code: str, label: str, n: int, positives: int, auroc: float, auroc_gap: float, oe_gap: float = 0.02,
          flags: tuple[str, ...] = ()) -> dict:
    metrics = {"auroc": e(auroc, 0.05), "observed_expected": e(round(math.exp(oe_gap) * 1.02, 3), 0.12),
               "calibration_intercept": e(round(-0.04 + oe_gap * 0.6, 3), 0.15), "tpr": e(0.45 + auroc_gap, 0.08),
               "fpr": e(0.19, 0.03), "ppv": e(0.30, 0.05), "flag_rate": e(0.21, 0.03)}
    gaps = {"auroc": e(auroc_gap, 0.03), "observed_expected": e(oe_gap, 0.08),
            "calibration_intercept": e(round(oe_gap * 0.6, 3), 0.1), "tpr": e(auroc_gap, 0.06),
            "fpr": e(-0.01, 0.02), "ppv": e(0.01, 0.04), "flag_rate": e(0.005, 0.02)}
    return {"group": code, "label": label, "n": n, "positives": positives, "metrics": metrics, "gaps": gaps,
            "flags": list(flags)}


def fairness(with_flags: bool) -> dict:
    black_gap = -0.081 if with_flags else -0.02
    old_oe = 0.26 if with_flags else 0.05
    attributes = {
        "race": {
            "groups": [group("2106-3", "White", 1210, 176, 0.748, 0.006),
                       group("2054-5", "Black or African American", 420, 70, 0.661, black_gap,
                             flags=("auroc",) if with_flags else ()),
                       group("2131-1", "Other race", 270, 40, 0.736, -0.006)],
            "suppressed": [{"group": "2028-9", "n": 60, "reason": "fewer than 10 positives"},
                           {"group": "1002-5", "n": 40, "reason": "fewer than 100 stays"}] if with_flags else [],
        },
        "sex": {"groups": [group("female", "Female", 1040, 150, 0.745, 0.003),
                           group("male", "Male", 960, 150, 0.738, -0.004)], "suppressed": []},
        "age_group": {"groups": [group("18-64", "18 to 64", 760, 98, 0.752, 0.01),
                                 group("65-79", "65 to 79", 820, 124, 0.735, -0.007),
                                 group("80+", "80 and over", 420, 78, 0.719, -0.023, oe_gap=old_oe,
                                       flags=("observed_expected",) if with_flags else ())],
                      "suppressed": []},
    }
    flags = []
    if with_flags:
        flags = [
            {"attribute": "race", "group": "2054-5", "metric": "auroc", "gap": e(-0.081, 0.03), "tolerance": 0.05,
             "message": "AUROC for Black or African American patients is 0.081 lower than overall (95% CI 0.051 to "
                        "0.111), beyond the tolerance of 0.05"},
            {"attribute": "age_group", "group": "80+", "metric": "observed_expected", "gap": e(0.26, 0.08),
             "tolerance": 0.2, "message": "Observed/expected for patients 80 and over is 30% above overall: the model "
                                          "under-estimates their risk"},
        ]
    return {"threshold": 0.25, "min_group_size": 100,
            "tolerances": {"auroc": 0.05, "observed_expected": 0.2, "calibration_intercept": 0.2},
            "attributes": attributes, "flags": flags}


MISSING = [("age", "Age in years at the index time", 0.0, 0.0), ("sex", "Administrative sex", 0.0, 0.0),
           ("race", "OMB race category", 0.03, 0.031), ("ethnicity", "OMB ethnicity category", 0.04, 0.04),
           ("language", "Preferred language", 0.08, 0.07), ("payer", "Payer type of the latest coverage", 0.01, 0.01),
           ("los_days", "Length of stay (days)", 0.0, 0.0), ("admissions_180d", "Admissions in 180 days", 0.0, 0.0),
           ("charlson_index", "Charlson comorbidity index", 0.0, 0.0), ("sodium_last", "Sodium, last", 0.05, 0.06),
           ("hemoglobin_min", "Haemoglobin, lowest", 0.07, 0.08), ("albumin_last", "Albumin, last", 0.41, 0.48),
           ("household_size_last", "People in the household", 0.35, 0.36), ("housing", "Housing status", 0.52, 0.50),
           ("lace", "LACE index", 0.0, 0.0)]
IMPORTANCE = [("admissions_180d", "Admissions in 180 days", 0.31), ("charlson_index", "Charlson index", 0.22),
              ("los_days", "Length of stay (days)", 0.18), ("albumin_last", "Albumin, last", 0.12),
              ("age", "Age", 0.09), ("sodium_last", "Sodium, last", 0.08), ("housing", "Housing status", 0.05),
              ("household_size_last", "People in the household", 0.04), ("payer", "Payer", 0.03),
              ("race", "OMB race category", 0.011)]


def build_report(*, with_flags: bool = True, team: bool = True) -> dict:
    scores = {PRIMARY: evaluation(0.742), "lace": evaluation(0.681, slope=1.08, probabilistic=False),
              "hospital_score": evaluation(0.668, slope=0.91, probabilistic=False)}
    return {
        "schema": "careloop.validation-report/1",
        "kind": "model",
        "title": "30-day unplanned readmission at discharge",
        "created": "2026-11-03T10:15:00Z",
        "model": {
            "name": "readmission-30d", "bundle_id": "readmission-30d-3f9a1c2b7d4e", "version": "1.0.0",
            "task": "readmission-30d", "feature_set": "readmission-v1", "estimator": "lightgbm",
            "candidates": {"lightgbm": {"calibration_auroc": e(0.751, 0.028), "calibration_brier": e(0.117, 0.006)},
                           "logistic": {"calibration_auroc": e(0.733, 0.029), "calibration_brier": e(0.121, 0.006)}},
            "selection": "lightgbm had the higher AUROC on the calibration split (0.751 vs 0.733) at similar Brier",
            "calibration": {"method": "sigmoid", "fitted_on": "calibration"},
            "hyperparameters": {"learning_rate": 0.05, "num_leaves": 31, "n_estimators": 400,
                                "min_child_samples": 50},
            "code_version": "careloop 0.1.0 (git eb6ab9d)", "training_fingerprint": "sha256:9c1e4f0a7b",
            "n_features": 61,
        },
        "data": {
            "source": "synthetic hospital (careloop synth, 5,000 patients, seed 0)",
            "label": "unplanned inpatient readmission within 30 days of discharge", "positive": "readmitted",
            "splits": {
                "train": {"stays": 6100, "patients": 3000, "positives": 912, "prevalence": 0.1495,
                          "first_index": "2019-01-04T11:00:00Z", "last_index": "2024-11-28T16:30:00Z"},
                "calibration": {"stays": 2010, "patients": 1000, "positives": 305, "prevalence": 0.1517,
                                "first_index": "2019-01-09T09:00:00Z", "last_index": "2024-11-30T12:00:00Z"},
                "test": {"stays": N, "patients": 1712, "positives": POS, "prevalence": PREV,
                         "first_index": "2019-01-07T10:20:00Z", "last_index": "2024-11-29T18:45:00Z"},
            },
            "excluded": [{"step": "died_in_stay", "stays": 412}, {"step": "transfer_out", "stays": 133},
                         {"step": "against_medical_advice", "stays": 58}, {"step": "hospice", "stays": 77},
                         {"step": "age_under_18", "stays": 205}, {"step": "censored_at_data_end", "stays": 190}],
            "missingness": [{"column": c, "label": lab, "train": tr, "test": te} for c, lab, tr, te in MISSING],
        },
        "primary": PRIMARY,
        "scores": scores,
        "comparisons": [
            {"reference": "lace", "metric": "auroc", "difference": e(0.061, 0.021), "intervals_overlap": False},
            {"reference": "hospital_score", "metric": "auroc", "difference": e(0.074, 0.024),
             "intervals_overlap": False},
        ],
        "operating_point": {"policy": "budget", "target": 0.15, "threshold": 0.25, "chosen_on": "calibration",
                            "achieved_on_calibration": {"alerts_per_100": 14.6, "sensitivity": e(0.41),
                                                        "ppv": e(0.31)},
                            "rationale": "the transitional-care team can call 15 patients per 100 discharges"},
        "fairness": fairness(with_flags),
        "importance": [{"column": c, "label": lab, "mean_abs_contribution": v} for c, lab, v in IMPORTANCE],
        "example_reasons": [
            {"risk": 0.47, "reasons": [
                {"column": "admissions_180d", "value": 3, "contribution": 0.62,
                 "phrase": "3 inpatient admissions in the past 6 months"},
                {"column": "albumin_last", "value": 2.6, "contribution": 0.31, "phrase": "Low albumin (2.6 g/dL)"},
                {"column": "los_days", "value": 2, "contribution": -0.12, "phrase": "Short stay (2 days)"}]},
            {"risk": 0.08, "reasons": [
                {"column": "charlson_index", "value": 0, "contribution": -0.4, "phrase": "No recorded comorbidity"}]},
        ],
        "team": {"policy": "defer to the clinician when the model is uncertain",
                 "deferral_rate": 0.18,
                 "rows": [{"strategy": "model alone", "auroc": e(0.742)},
                          {"strategy": "clinician alone", "auroc": e(0.731)},
                          {"strategy": "team", "auroc": e(0.771)}]} if team else None,
    }


@pytest.fixture
def report() -> dict:
    return build_report()


@pytest.fixture
def report_no_flags() -> dict:
    return build_report(with_flags=False, team=False)


@pytest.fixture
def report_scores() -> dict:
    """Third-party scores only (careloop evaluate): no model block, points scores, no comparisons."""
    r = build_report(with_flags=False, team=False)
    del r["model"]
    r["kind"] = "scores"
    r["primary"] = "lace"
    r["scores"] = {"lace": r["scores"]["lace"], "hospital_score": r["scores"]["hospital_score"]}
    r["comparisons"] = [{"reference": "hospital_score", "metric": "auroc", "difference": e(0.013, 0.02),
                         "intervals_overlap": True}]
    r["importance"], r["example_reasons"] = [], []
    return r


@pytest.fixture(scope="session")
def facts() -> Facts:
    """The shipped documentation of the demo readmission model."""
    return load_facts(DOC)
