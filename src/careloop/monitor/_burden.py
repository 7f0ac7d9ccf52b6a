"""Alert burden from the service's audit log and feedback store: what the cards cost the people who receive them.

Per period, from the `cds-call` records of this model (matched by its bundle hash):
- alerts: calls that returned a risk card (indicator `warning`); per 100 discharges of the period (the task's index
  stays in the event store; the number of calls when the store has none);
- PPV of the alerts: each alert is linked to the stay it was shown for (`Stays.link`): by the encounter id its audit
  record names (the stay the service scored); for a record without one (written by an older careloop), by time: the
  index stay in progress at the call, else one ended within the service's 24 h, else one discharged within
  `link_window_hours` after it. It is counted once its 30-day window has closed by the end of the data;
  NNE (number needed to evaluate) is 1 / PPV;
- override rate: of the alerted cards with feedback, the share whose latest feedback is `overridden`;
- repeat-alert share: alerts to a patient who had an alert within the previous `repeat_window_days`;
- and what the service held back: repeats suppressed, alerts over the daily budget, deferrals;
- `by_threshold`, when an administrator changed the alert threshold: the same figures for each threshold version
  the scored calls record (`threshold_version`; 0 is the bundle's operating point before any change), per 100
  scored calls, with the threshold each version set (read from the admin-change records).
"""

from __future__ import annotations

import bisect
import datetime as dt
from dataclasses import dataclass, field

import numpy as np

from careloop.monitor._config import BurdenConfig
from careloop.monitor._periods import Period
from careloop.monitor._stats import poisson_rate, wilson
from careloop.serve.features import CURRENT_STAY_H

# a card shown this long after a discharge is still about that stay (the service's CURRENT_STAY_H: a chart opened
# within it shows the stay just ended)
GRACE_US = CURRENT_STAY_H * 3_600_000_000


@dataclass
class Stays:
    """The index stays of the store, for linking alerts: patient id -> sorted (discharge times in us, labels or
    None, admission times in us or None); and (patient id, encounter id) -> label or None."""

    by_patient: dict[str, tuple[list[int], list[int | None], list[int | None]]]
    by_encounter: dict[tuple[str, str], int | None] = field(default_factory=dict)

    @classmethod
    def build(cls, patients: list[str], index_us: np.ndarray, labels: list[bool | None],
              admit_us: np.ndarray | None = None, encounters: list[str | None] | None = None) -> Stays:
        admits = admit_us.tolist() if admit_us is not None else [None] * len(patients)
        rows: dict[str, list[tuple[int, int | None, int | None]]] = {}
        by_encounter: dict[tuple[str, str], int | None] = {}
        for i, (p, t, y, a) in enumerate(zip(patients, index_us.tolist(), labels, admits, strict=True)):
            label = None if y is None else int(bool(y))
            rows.setdefault(p, []).append((int(t), label, a))
            if encounters is not None and encounters[i] is not None:
                by_encounter[(p, encounters[i])] = label
        out = {}
        for p, items in rows.items():
            items.sort(key=lambda r: r[0])
            out[p] = ([t for t, _, _ in items], [y for _, y, _ in items], [a for _, _, a in items])
        return cls(out, by_encounter)

    def link(self, patient: str | None, t_us: int, window_us: int,
             encounter: str | None = None) -> tuple[bool, int | None]:
        """(found, label) of the stay a card shown at t concerns. When the record names its `encounter`, that
        stay, and no other: a card about a stay outside the cohort (excluded, or not an index stay) is about no
        index stay, however close in time one is. Else by time, as the service chooses a stay: the patient's index
        stay in progress at t; else the latest one ended within GRACE_US before t; else the next one discharged
        within the window after t (its admission unknown). Never a stay ended longer ago: a card shown during a
        readmission is not about the stay before it, which that readmission makes a true positive."""
        if patient is None:
            return False, None
        if encounter is not None:
            key = (patient, encounter)
            return (True, self.by_encounter[key]) if key in self.by_encounter else (False, None)
        if patient not in self.by_patient:
            return False, None
        times, labels, admits = self.by_patient[patient]
        i = bisect.bisect_left(times, t_us)  # the first discharged at or after t
        if i < len(times) and admits[i] is not None and admits[i] <= t_us:
            return True, labels[i]
        if i > 0 and times[i - 1] >= t_us - GRACE_US:
            return True, labels[i - 1]
        if i < len(times) and times[i] - t_us <= window_us:
            return True, labels[i]
        return False, None


def _us(t: dt.datetime) -> int:
    return int(t.timestamp() * 1_000_000)


def _is_alert(cards: list[str]) -> str | None:
    """The uuid of the first risk card (indicator warning) among a record's cards, or None."""
    for c in cards or []:
        uuid, _, indicator = str(c).partition("|")
        if indicator == "warning":
            return uuid
    return None


def read_state(state_url: str, bundle_id: str, since: dt.datetime | None, until: dt.datetime | None
               ) -> tuple[list[dict], dict[str, str], dict]:
    """(this model's cds-call records, card uuid -> latest feedback action, notes about what was read)."""
    from careloop.audit import AuditLog
    from careloop.state import StateStore

    log = AuditLog.open(state_url)
    try:
        records = log.records(since, until, kind="cds-call")
        changes = log.records(kind="admin-change")  # all of them: a version set before `since` still applies
    finally:
        log.close()
    thresholds = {0: "bundle"}  # threshold version -> the threshold it set ("bundle": the operating point)
    for c in changes:
        d = c.get("detail") or {}
        if c.get("model_hash") == bundle_id and d.get("setting") == "threshold" and str(
                d.get("threshold_version", "")).isdigit():
            thresholds[int(d["threshold_version"])] = d.get("new") or "?"
    mine = [r for r in records if r.get("model_hash") == bundle_id]
    store = StateStore(state_url)
    try:
        feedback = store.feedback()
    finally:
        store.close()
    latest: dict[str, tuple[str, str]] = {}
    for f in feedback:
        if f.get("model_hash") not in (None, bundle_id):
            continue
        prev = latest.get(f["card"])
        if prev is None or f["date"] >= prev[0]:
            latest[f["card"]] = (f["date"], f["action"])
    info = {"calls_read": len(records), "calls_of_this_model": len(mine),
            "calls_of_other_models": len(records) - len(mine), "feedback_items": len(feedback),
            "thresholds": thresholds}
    return mine, {k: v[1] for k, v in latest.items()}, info


def burden(records: list[dict], actions: dict[str, str], periods: list[Period], discharges: list[int],
           stays: Stays, cfg: BurdenConfig, thresholds: dict[int, str] | None = None) -> list[dict]:
    """Per period, the burden figures (see the module docstring)."""
    recs = sorted((r for r in records if r.get("recorded") is not None), key=lambda r: (r["recorded"], r["seq"]))
    window = int(cfg.repeat_window_days * 86_400_000_000)
    link_window = int(cfg.link_window_hours * 3_600_000_000)
    last_alert: dict[str, int] = {}
    rows = []
    for r in recs:
        t = _us(r["recorded"])
        uuid = _is_alert(r.get("cards") or [])
        note = (r.get("detail") or {}).get("note")
        version = str((r.get("detail") or {}).get("threshold_version") or "0")
        row = {"t": t, "alert": uuid is not None, "uuid": uuid, "patient": r.get("patient"), "note": note,
               "deferred": r.get("deferral_reason") is not None, "scored": r.get("score") is not None,
               "repeat": False, "linked": False, "label": None,
               "version": int(version) if version.isdigit() else 0}
        if uuid is not None:
            p = r.get("patient")
            if p is not None:
                prev = last_alert.get(p)
                row["repeat"] = prev is not None and t - prev <= window
                last_alert[p] = t
            row["linked"], row["label"] = stays.link(p, t, link_window, r.get("encounter"))
        rows.append(row)
    out = []
    for period, n_dis in zip(periods, discharges, strict=True):
        lo, hi = _us(period.start), _us(period.end)
        rs = [r for r in rows if lo <= r["t"] < hi]
        alerts = [r for r in rs if r["alert"]]
        n_alerts = len(alerts)
        denominator = n_dis if n_dis > 0 else sum(r["scored"] for r in rs)
        labelled = [r for r in alerts if r["label"] is not None]
        tp = sum(r["label"] for r in labelled)
        fb = [actions[r["uuid"]] for r in alerts if r["uuid"] in actions]
        overridden = sum(a == "overridden" for a in fb)
        repeats = sum(r["repeat"] for r in alerts)
        ppv = tp / len(labelled) if labelled else None
        ppv_ci = wilson(tp, len(labelled))
        out.append({
            "calls": len(rs), "scored": sum(r["scored"] for r in rs), "deferred": sum(r["deferred"] for r in rs),
            "alerts": n_alerts, "discharges": n_dis, "denominator": "discharges" if n_dis > 0 else "scored calls",
            "alerts_per_100": 100 * n_alerts / denominator if denominator else None,
            # a rate per discharge (a stay may have a card during it and one at its discharge): Poisson, not Wilson
            "alerts_per_100_ci": [100 * x for x in poisson_rate(n_alerts, denominator)] if denominator else None,
            "linked": sum(r["linked"] for r in alerts), "labelled": len(labelled), "true_positives": tp,
            "ppv": ppv, "ppv_ci": ppv_ci,
            "nne": 1 / ppv if ppv else None,
            "nne_ci": [1 / ppv_ci[1], 1 / ppv_ci[0]] if ppv and ppv_ci and ppv_ci[0] > 0 else None,
            "feedback": len(fb), "overridden": overridden,
            "override_rate": overridden / len(fb) if fb else None, "override_rate_ci": wilson(overridden, len(fb)),
            "repeats": repeats, "repeat_share": repeats / n_alerts if n_alerts else None,
            "repeat_share_ci": wilson(repeats, n_alerts),
            "suppressed_repeats": sum(r["note"] == "repeat suppressed" for r in rs),
            "over_budget": sum(r["note"] == "daily budget reached" for r in rs),
            "by_threshold": _by_threshold(rs, thresholds or {0: "bundle"}),
        })
    return out


def _by_threshold(rows: list[dict], thresholds: dict[int, str]) -> list[dict] | None:
    """The period's scored calls by the threshold version that decided them; None when only the bundle's
    original operating point did (no administrator's change)."""
    scored = [r for r in rows if r["scored"]]
    versions = sorted({r["version"] for r in scored})
    if versions in ([], [0]):
        return None
    out = []
    for v in versions:
        mine = [r for r in scored if r["version"] == v]
        alerts = [r for r in mine if r["alert"]]
        labelled = [r for r in alerts if r["label"] is not None]
        tp = sum(r["label"] for r in labelled)
        out.append({"version": v, "threshold": thresholds.get(v, "?"), "scored": len(mine), "alerts": len(alerts),
                    "alerts_per_100_scored": 100 * len(alerts) / len(mine),
                    "alerts_per_100_scored_ci": [100 * x for x in wilson(len(alerts), len(mine))],
                    "labelled": len(labelled), "true_positives": tp,
                    "ppv": tp / len(labelled) if labelled else None, "ppv_ci": wilson(tp, len(labelled))})
    return out
