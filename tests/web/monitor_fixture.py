"""A small `careloop monitor` output (OUT/monitor.json and OUT/monitor.html) in the shape of the command contract:
twelve monthly periods, input drift of one feature from period 8 (hemoglobin, as a changed assay would shift it),
a performance and a fairness alert after it, and alert burden from cards and feedback."""

from __future__ import annotations

import json
import math
from pathlib import Path

FEATURES = ("age", "hemoglobin_last", "sodium_last", "los_days", "admissions_365d", "charlson_index", "lace",
            "creatinine_last", "ed_visits_180d", "albumin_last")
DRIFTED = "hemoglobin_last"
ONSET = 7  # index of the first drifted period
INJECTION = "<script>alert('monitor')</script><img src=x onerror=alert(1)>"  # must show as text, never run


def _ci(x: float, w: float) -> dict:
    return {"estimate": round(x, 4), "ci": [round(x - w, 4), round(x + w, 4)]}


def monitor_doc(n: int = 12) -> dict:
    periods = []
    for i in range(n):
        drift = i >= ONSET
        start, end = f"2024-{i + 1:02d}-01", f"2024-{i + 2:02d}-01" if i < 11 else "2025-01-01"
        wig = 0.01 * math.sin(i * 1.7)
        inputs = [{"feature": f, "psi": round(0.02 + 0.01 * k / 10 + abs(wig) + (0.38 if drift and f == DRIFTED
                                                                                  else 0.0), 4),
                   "missing": round(0.05 + 0.002 * k, 4), "missing_reference": round(0.05 + 0.002 * k, 4)}
                  for k, f in enumerate(FEATURES)]
        auroc = 0.75 + wig - (0.07 if i >= ONSET + 1 else 0.0)
        alerts = []
        if i == ONSET:
            alerts.append({"kind": "input_drift", "feature": DRIFTED, "metric": "psi", "value": inputs[1]["psi"],
                           "threshold": 0.25, "reason": "PSI 0.41 against training above 0.25"})
        if i == ONSET + 1:
            alerts.append({"kind": "performance", "metric": "auroc", "value": round(auroc, 3), "threshold": 0.70,
                           "reason": "AUROC upper 95% bound below the validation estimate"})
            alerts.append({"kind": "fairness", "group": "sex=female", "metric": "auroc_gap", "value": 0.09,
                           "threshold": 0.05, "reason": "AUROC gap beyond tolerance"})
        periods.append({
            "start": start, "end": end, "discharges": 210 + 7 * i, "labelled": 210 + 7 * i if i < n - 1 else 120,
            "alerts": alerts,
            "input_drift": inputs,
            "output_drift": {"psi": round(0.03 + (0.12 if drift else 0.0) + abs(wig), 4),
                             "mean_risk": round(0.15 + (0.03 if drift else 0.0), 4),
                             "flag_rate": round(0.10 + (0.04 if drift else 0.0), 4)},
            "performance": {"auroc": _ci(auroc, 0.05),
                            "calibration_slope": _ci(1.0 - (0.25 if drift else 0) + wig, 0.2),
                            "calibration_intercept": _ci(0.0 + (0.3 if drift else 0) + wig, 0.15),
                            "ppv": _ci(0.45 - (0.1 if drift else 0) + wig, 0.08)},
            "subgroups": [{"attribute": "sex", "group": g, "auroc": _ci(auroc + d, 0.07)}
                          for g, d in (("female", -0.09 if i >= ONSET + 1 else 0.0), ("male", 0.01))],
            "burden": {"alerts_per_100_discharges": round(10 + (4 if drift else 0) + 3 * wig, 2),
                       "ppv": round(0.45 - (0.1 if drift else 0), 3), "nne": round(2.2 + (0.8 if drift else 0), 2),
                       "override_rate": round(0.2 + (0.15 if drift else 0), 3), "repeat_alert_share": 0.05},
        })
    return {"model": "readmission-30d", "bundle": "0" * 64, "period": "month", "thresholds": {"psi": 0.25,
            "auroc_drop": 0.05}, "note": INJECTION, "periods": periods}


def write_monitor(out: Path) -> Path:
    out.mkdir(parents=True, exist_ok=True)
    (out / "monitor.json").write_text(json.dumps(monitor_doc(), indent=1))
    (out / "monitor.html").write_text("<!doctype html><html><head><meta charset='utf-8'><title>Monitoring report"
                                      "</title><link rel='icon' href='data:,'></head><body><h1>Monitoring report</h1>"
                                      "<p>Fixture.</p></body></html>")
    return out
