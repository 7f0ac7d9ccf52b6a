"""`monitor`: score the stays period by period and compare them with what the model was trained and validated on.

Per period (week, month, quarter or year, in UTC):
- **input drift**: PSI and missingness of every model input against the training reference;
- **output drift**: PSI of the risk score, its mean, and the share of stays over the operating point;
- **performance as labels mature**: AUROC, calibration intercept and slope, observed/expected, PPV and sensitivity at
  the operating point, each with a patient-level bootstrap 95% interval (`careloop.evaluation.evaluate`), on the
  stays whose outcome window has closed and which were not used to develop the model;
- **the same per subgroup** (the bundle's group attributes), with the validation report's fairness check
  (`careloop.evaluation.fairness`): gaps to the period's overall figure, Bonferroni-corrected;
- **alert burden** from the service's audit log and feedback, when a state URL is given (`_burden.py`).

The reference is what the model was fitted on, computed by `careloop train` from the training rows in memory and
stored in the bundle (`monitor_reference.json`, see `careloop.monitor._reference`): the inputs of the training
split's stays from its last `reference_months` months (the distribution the model was most recently fitted on;
features that look back over the whole record, such as days since the last discharge or comorbidity indices, drift
for years after a record begins, and an older reference would report that as drift every period), and the risk
scores of the calibration split's stays over the same months. So the monitored store can be the training store
or another hospital's. Two cases rebuild it from the monitored store's training stays instead, with a note in the
report: a config asking for other bins, categories or months than the stored reference was made with, and a bundle
made before references were stored (whose training stays are then recognised by the task's split rule, right only
on the training store).

Which stays: by default the periods start with the first one after the last stay used to develop the model
(training or calibration split) when the store has data after it, else at the start of the store's data, and run
to the end of the store's data (`start`/`end` override both). Stays used to develop the model (listed in the bundle
by pseudonym) count in drift but never in the performance figures; on another hospital's store there are none.

Alert rules (all thresholds from `MonitorConfig`): a finding becomes an alert only when its size passes a
threshold **and** a test says it is unlikely to be noise at the report's family-wise level: alpha (0.05) divided by
the number of tests in the report (Bonferroni over every feature, period, metric and group), so that a report
on an unchanged hospital raises a false alarm with probability at most about alpha. Periods with too few stays
(`min_rows`) or labelled stays (`min_labelled`, `min_events`) are reported but not tested. See `RULES`.
"""

from __future__ import annotations

import datetime as dt
import math
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from careloop.errors import CareloopError
from careloop.monitor._config import MonitorConfig, load_config
from careloop.monitor._periods import ceil, check_period, floor, periods, utc
from careloop.monitor._reference import FILE as REFERENCE_FILE
from careloop.monitor._reference import (
    US,
    Reference,
    ReferenceFileError,
    build_reference,
    column_labels,
    pseudonyms,
    read_stored,
    reference_masks,
    us_of,
)
from careloop.monitor._reference import iso as _iso
from careloop.monitor._stats import (
    Family,
    homogeneity_test,
    missing_psi,
    occupied_bins,
    psi,
    psi_noise,
    se_from_ci,
    two_proportion_p,
    z_p,
)

SCHEMA = "careloop.monitor/1"
KINDS = ("input_drift", "output_drift", "performance", "calibration", "fairness", "burden")
SCORE = "risk"


class MonitorError(CareloopError):
    """Monitoring cannot run on these inputs (the message says why)."""


# ---------------------------------------------------------------------------------------------------------------------
# the reference (computed at training time: careloop.monitor._reference)


def baseline_of(bundle) -> dict:
    """The validated figures the monitor compares with: the test split of the bundle's report.json."""
    rep = bundle.read_json("report.json")
    ev = rep["scores"][rep["primary"]]
    m = ev["metrics"]
    op = ev.get("operating_point") or {}
    meta_op = bundle.metadata.get("operating_point") or {}
    return {"source": "validation report (test split)", "n": ev.get("n"), "prevalence": ev.get("prevalence"),
            "auroc": m.get("auroc"), "calibration_intercept": m.get("calibration_intercept"),
            "calibration_slope": m.get("calibration_slope"), "observed_expected": m.get("observed_expected"),
            "ppv": op.get("ppv"), "sensitivity": op.get("sensitivity"), "alerts_per_100": op.get("alerts_per_100"),
            "threshold": meta_op.get("threshold", op.get("threshold")), "policy": meta_op.get("policy"),
            "target": meta_op.get("target"),
            "fairness_flags": [[f["attribute"], f["group"], f["metric"]]
                               for f in (rep.get("fairness") or {}).get("flags", [])]}


# ---------------------------------------------------------------------------------------------------------------------
# candidates and alerts


@dataclass
class Candidate:
    """A finding that may become an alert: its size passed (`effect`) or not, and its test's p-value."""

    period: int
    kind: str
    metric: str
    value: float | None
    threshold: float | None
    p_value: float
    effect: bool
    reason: Callable[[float, int], str]
    feature: str | None = None
    group: str | None = None
    severity: str = "act"
    n: int | None = None
    extra: dict = field(default_factory=dict)

    def alert(self, level: float, tests: int) -> dict:
        out: dict[str, Any] = {"kind": self.kind}
        if self.feature is not None:
            out["feature"] = self.feature
        if self.group is not None:
            out["group"] = self.group
        out.update({"metric": self.metric, "value": _clean(self.value), "threshold": self.threshold,
                    "severity": self.severity, "p_value": self.p_value, "p_threshold": level, "n": self.n,
                    "reason": self.reason(level, tests), **self.extra})
        return out


def _clean(v: Any) -> Any:
    if isinstance(v, float | np.floating):
        return float(v) if math.isfinite(v) else None
    return v


def _p(p: float) -> str:
    return f"{p:.1e}" if p < 0.001 else f"{p:.3f}"


def _test_text(p: float, level: float, tests: int, alpha: float) -> str:
    return f"p = {_p(p)}, below {_p(level)} (alpha {alpha:g} over the report's {tests:,} tests)"


# ---------------------------------------------------------------------------------------------------------------------
# the result


@dataclass
class MonitorResult:
    """What `monitor` found; `to_dict()` is monitor.json (schema careloop.monitor/1)."""

    model: dict
    store: str
    period: str
    config: MonitorConfig
    reference: Reference
    periods: list[dict]
    tests: dict
    rules: list[str]
    notes: list[str]
    timings: dict
    created: str
    data_end: str | None

    @property
    def alerts(self) -> list[dict]:
        """Every alert, each with the period it belongs to (`period_start`, `period_end`)."""
        return [{**a, "period_start": p["start"], "period_end": p["end"]} for p in self.periods for a in p["alerts"]]

    def summary(self) -> dict:
        by_kind: dict[str, int] = {}
        for a in self.alerts:
            by_kind[a["kind"]] = by_kind.get(a["kind"], 0) + 1
        first = next((p for p in self.periods if p["alerts"]), None)
        return {"bundle_id": self.model["bundle_id"], "periods": len(self.periods),
                "first": self.periods[0]["start"] if self.periods else None,
                "last": self.periods[-1]["end"] if self.periods else None,
                "stays": sum(p["stays"] for p in self.periods), "alerts": len(self.alerts), "by_kind": by_kind,
                "first_alert_period": first["start"] if first else None, "tests": self.tests["count"],
                "seconds": self.timings.get("total")}

    def to_dict(self) -> dict:
        return {"schema": SCHEMA, "created": self.created, "model": self.model, "store": self.store,
                "period": self.period, "data_end": self.data_end, "config": self.config.model_dump(mode="json"),
                "rules": self.rules, "tests": self.tests, "notes": self.notes, "summary": self.summary(),
                "reference": self.reference.to_dict(), "periods": self.periods, "timings_s": self.timings}


def rules(cfg: MonitorConfig) -> list[str]:
    """The alert rules in words, with this config's numbers (printed in monitor.json and the HTML report)."""
    b = cfg.burden
    return [
        f"Every alert needs a size beyond its threshold and a test with p below alpha / m, where alpha = {cfg.alpha:g} "
        "and m is the number of tests in this report (Bonferroni): on a hospital where nothing changed, the whole "
        f"report raises a false alarm with probability at most about {cfg.alpha:g}.",
        f"Input drift: PSI of a model input against the training reference >= {cfg.psi.watch:g} (watch) or "
        f">= {cfg.psi.act:g} (act), in a period of at least {cfg.min_rows} stays, and a chi-square test of "
        "homogeneity on the same bins (each sample counted by its patients, sparse bins merged); or missingness "
        f"changed by at least {cfg.missingness_delta:.0%} (absolute) with a PSI of missing against recorded of at "
        f"least {cfg.psi.watch:g} (so a change matters more where a value is usually recorded), by a two-proportion "
        "test.",
        f"Output drift: the same PSI rule for the predicted risk (bins at the reference's {cfg.bins}-quantiles).",
        f"Performance (stays whose outcome window has closed, not used in development; at least {cfg.min_labelled} "
        f"labelled stays with {cfg.min_events} of each outcome): AUROC at least {cfg.auroc_drop:g} below the "
        f"validated AUROC, or PPV at the operating point at least {cfg.ppv_drop:g} below the validated PPV, the "
        "drop tested against both bootstrap standard errors.",
        f"Calibration: intercept (calibration-in-the-large) beyond +/-{cfg.calibration_intercept:g}, its interval "
        "excluding 0 at the adjusted level; the slope is reported beside it.",
        f"Fairness: in a period, a group's gap to the overall figure beyond its tolerance "
        f"({', '.join(f'{k} {v:g}' for k, v in cfg.fairness.tolerances.items())}) by careloop.evaluation.fairness "
        f"(groups of at least {cfg.fairness.min_group_size} stays), in a group with at least "
        f"{cfg.fairness.min_events} readmissions, the gap's p-value below the report-wide level.",
        "Burden (with the service's state): alerts per 100 discharges above "
        + (f"{b.max_alerts_per_100:g}" if b.max_alerts_per_100 else f"{b.budget_factor:g}x the operating point's "
           "budget")
        + f", override rate above {b.max_override_rate:.0%}, repeat-alert share above {b.max_repeat_share:.0%}, or "
        f"the PPV of the cards shown {b.alert_ppv_drop:g} below the validated PPV, in a period with at least "
        f"{b.min_alerts} alerts (feedback items for the override rate), each by an exact binomial test.",
    ]


# ---------------------------------------------------------------------------------------------------------------------
# loading


def _specs(bundle):
    from careloop.features.spec import FeatureSet
    from careloop.tasks.spec import Task

    if "task.yaml" not in bundle.files or "features.yaml" not in bundle.files:
        raise MonitorError(f"{bundle.path.name}: this bundle was trained on a flat table; monitoring needs a bundle "
                           "trained on an event store (its task.yaml and features.yaml)")
    task = Task.from_text((bundle.path / "task.yaml").read_text(), "task.yaml (bundle)")
    fs = FeatureSet.from_text((bundle.path / "features.yaml").read_text(), "features.yaml (bundle)")
    return task, fs


def _group_columns(groups: dict[str, str], feat: pa.Table, cohort: pa.Table) -> dict[str, list]:
    from careloop.workflows._data import age_band

    out = {}
    for attr in groups:
        if attr == "site":
            out[attr] = cohort.column("site").to_pylist()
        elif attr == "age_band" and "age" in feat.column_names:
            out[attr] = age_band(feat.column("age")).to_pylist()
        elif attr in feat.column_names:
            out[attr] = pc.cast(feat.column(attr), pa.string()).to_pylist()
    return out


def mature_labels(labels: list, index_us: np.ndarray, horizon_us: int, end_us: int) -> list[bool | None]:
    """The labels with None for every stay whose outcome window had not closed by the end of the data (whatever the
    task's censoring rule: a stay discharged a week before the data ends is not yet known to be unreadmitted)."""
    open_ = (index_us + horizon_us > end_us).tolist()
    return [None if o else y for y, o in zip(labels, open_, strict=True)]


# ---------------------------------------------------------------------------------------------------------------------
# monitor()


def monitor(bundle, store: str | Path, *, period: str = "month", start: Any = None, end: Any = None,
            config: MonitorConfig | dict | str | Path | None = None, state_url: str | None = None,
            reference: Reference | None = None, progress: Callable[[str], None] | None = None) -> MonitorResult:
    """Monitor `bundle` (a path or a verified `Bundle`) on the event store at `store`, period by period.

    `store` may be the store the model was trained on or another hospital's (a live store). `period`: week, month,
    quarter or year. `start`/`end` (dates, exclusive end): the periods to report; by default from the first period
    after the last stay used to develop the model when the store has data after it (otherwise from the start of
    the store's data) to the end of the store's data. `config`: thresholds (a MonitorConfig, a dict or a YAML file;
    defaults otherwise). `state_url`: the service's state database (audit log and feedback) for the alert-burden
    figures. `reference`: a Reference rebuilt before for this bundle and config, used when the bundle's stored
    reference does not fit the config (or the bundle has none). Returns a MonitorResult.
    """
    from careloop.engines import DuckDBEngine
    from careloop.evaluation import EvaluationError, evaluate, fairness
    from careloop.explain import display
    from careloop.features.engine import extract
    from careloop.registry import Bundle, verify
    from careloop.tasks.cohort import build_cohort

    t_start = time.perf_counter()
    timings: dict[str, float] = {}
    clock = [time.perf_counter()]

    def step(name: str) -> None:
        now = time.perf_counter()
        timings[name] = round(now - clock[0], 3)
        clock[0] = now
        if progress:
            progress(name)

    cfg = load_config(config)
    check_period(period)
    b = bundle if isinstance(bundle, Bundle) else verify(bundle)
    meta = b.metadata
    task, fs = _specs(b)
    features = list(meta.get("features") or [])
    missing_cols = [c for c in features if c not in fs.columns]
    if missing_cols:
        raise MonitorError(f"the bundle's features.yaml does not define its input {missing_cols[0]!r}")
    threshold = (meta.get("operating_point") or {}).get("threshold")
    model = b.model()
    labels = column_labels(meta.get("describe") or [], meta.get("units") or {})
    baseline = baseline_of(b)
    notes: list[str] = []
    if not Path(store).is_dir():
        raise MonitorError(f"--store: {store} is not an event store directory")
    start_t, end_t = utc(start, "--start"), utc(end, "--end")

    # the reference: stored in the bundle at training, unless the config asks for other bins or months
    try:
        stored = read_stored(b, baseline)
    except ReferenceFileError as e:
        raise MonitorError(str(e)) from None
    if stored is None:
        notes.append(f"This bundle was made before careloop stored the monitoring reference ({REFERENCE_FILE}) in "
                     "bundles: the reference was rebuilt from this store's training stays, recognised by the task's "
                     "split rule (right only on the store the model was trained on).")
    elif stored.reference.matches(cfg):
        reference = stored.reference
    else:
        notes.append(f"The config asks for a reference with bins {cfg.bins}, max_categories {cfg.max_categories}, "
                     f"reference_months {cfg.reference_months}; the bundle's was made with "
                     f"{stored.reference.settings()}: it was rebuilt from this store's training stays.")
    if reference is not None and not reference.compatible(b.bundle_id, cfg):
        reference = None
    if reference is not None and reference.source != "bundle":
        notes.append(f"The reference rebuilt by an earlier run ({reference.source or 'on the same bundle'}) was "
                     "reused.")

    eng = DuckDBEngine(store)
    try:
        cohort_res = build_cohort(task, eng, dialect=eng.dialect)
        cohort = cohort_res.table
        data_end = cohort_res.data_end
        step("cohort")
        if cohort.num_rows == 0:
            raise MonitorError(f"the store holds no index stays of task {task.name}")
        index_us = us_of(cohort.column("index_time"))
        split = np.asarray(cohort.column("split").to_pylist(), dtype=object)
        src = meta.get("source") or {}
        train_end = utc(src.get("data_end"), "bundle data_end") if src.get("data_end") else data_end
        train_end_us = int(train_end.timestamp() * US) if train_end else np.iinfo(np.int64).max
        horizon_us = int(task.label.within / dt.timedelta(microseconds=1)) if task.label.within else 0
        # the stays used to develop the model (left out of the performance figures): by their pseudonyms when the
        # bundle lists them (exact on any store), else by the split rule and what was labelled at training
        if stored is not None:
            tr, ca = stored.development["train"], stored.development["calibration"]
            split = np.asarray(["train" if i in tr else "calibration" if i in ca else "other"
                                for i in pseudonyms(cohort.column("encounter_id").to_pylist())], dtype=object)
            development = split != "other"
        else:
            known = (index_us <= train_end_us) & (index_us + horizon_us <= train_end_us)
            development = known & np.isin(split, ["train", "calibration"])
        ref_mask, score_mask, last_dev = reference_masks(index_us, split, development, cfg.reference_months)
        if reference is None and last_dev is None:
            raise MonitorError(
                "the store holds none of the bundle's training stays, so the reference cannot be rebuilt here"
                + (f" (monitor with the bundle's reference settings: {stored.reference.settings()}; or on the "
                   "store it was trained on)" if stored is not None else " (is this the store it was trained on?)"))
        if reference is not None and (reference.development_last_index or last_dev is None):
            last_dev = int(utc(reference.development_last_index or reference.last_index).timestamp() * US)

        # the periods
        first_after = ceil(dt.datetime.fromtimestamp(last_dev / US, dt.UTC) + dt.timedelta(microseconds=1), period)
        store_first = floor(dt.datetime.fromtimestamp(int(index_us.min()) / US, dt.UTC), period)
        if start_t is None:
            if data_end is not None and first_after < data_end:
                start_t = max(first_after, store_first)
            else:
                start_t = store_first
                notes.append(f"The store holds no stays after the last one used to develop the model "
                             f"({_iso(last_dev)[:10]}), so every period of the store is reported.")
        if end_t is None:
            end_t = ceil(data_end + dt.timedelta(microseconds=1), period) if data_end is not None else first_after
        if end_t <= start_t:
            raise MonitorError(f"--end ({end_t:%Y-%m-%d}) must come after --start ({start_t:%Y-%m-%d})")
        plist = periods(start_t, end_t, period, data_end + dt.timedelta(microseconds=1) if data_end else None)
        lo, hi = int(plist[0].start.timestamp() * US), int(plist[-1].end.timestamp() * US)
        mon_mask = (index_us >= lo) & (index_us < hi)
        n_dev = int((mon_mask & development).sum())
        if n_dev:
            notes.append(f"{n_dev:,} stays of the periods were used to develop the model (training or calibration "
                         "split): they count in input and output drift, which is then measured partly on training "
                         "data, and are left out of the performance figures.")
        rebuild = ref_mask | score_mask if reference is None else np.zeros(len(index_us), dtype=bool)
        need = mon_mask | rebuild
        sub = cohort.filter(pa.array(need))
        feat = extract(fs, sub, eng).table
    finally:
        eng.close()
    step("features")

    scores = model.predict_proba(feat) if feat.num_rows else np.zeros(0)
    step("scoring")
    s_index = us_of(sub.column("index_time"))
    s_patients = np.asarray(sub.column("patient_id").to_pylist(), dtype=object)
    s_dev = development[need]
    s_labels = sub.column("label").to_pylist()
    # an outcome counts once its window has closed by the end of the data (whatever the task's censoring rule)
    end_us = int(data_end.timestamp() * US) if data_end is not None else np.iinfo(np.int64).max
    s_known = np.array([y is not None for y in mature_labels(s_labels, s_index, horizon_us, end_us)], dtype=bool)
    groups = _group_columns(meta.get("groups") or {}, feat, sub)
    if reference is None:
        s_ref, s_score = ref_mask[need], score_mask[need]
        how = "by the pseudonyms the bundle lists" if stored is not None else "by the task's split rule"
        reference = build_reference(
            features, feat.filter(pa.array(s_ref)), s_patients[s_ref], s_index[s_ref], scores[s_score],
            s_patients[s_score], threshold=threshold, labels=labels, bins=cfg.bins,
            max_categories=cfg.max_categories, months=cfg.reference_months, development_last_us=last_dev,
            bundle_id=b.bundle_id, baseline=baseline,
            source=f"rebuilt from the training stays of store {store}, recognised {how}")
        step("reference")

    state = None
    if state_url:
        from careloop.monitor._burden import Stays, read_state

        since = plist[0].start - dt.timedelta(days=cfg.burden.repeat_window_days)
        records, actions, info = read_state(state_url, b.bundle_id, since, plist[-1].end)
        stays = Stays.build(cohort.column("patient_id").to_pylist(), index_us,
                            mature_labels(cohort.column("label").to_pylist(), index_us, horizon_us, end_us),
                            admit_us=us_of(cohort.column("admit_time")) if "admit_time" in cohort.column_names
                            else None, encounters=cohort.column("encounter_id").to_pylist())
        state = (records, actions, info, stays)
        if info["calls_of_other_models"]:
            notes.append(f"The audit log holds {info['calls_of_other_models']:,} calls of other models; only this "
                         "bundle's are counted.")

    tests = Family(cfg.alpha)
    cands: list[Candidate] = []
    out_periods: list[dict] = []
    discharges = [int(((index_us >= int(p.start.timestamp() * US)) & (index_us < int(p.end.timestamp() * US)))
                      .sum()) for p in plist]
    burden_rows = None
    if state is not None:
        from careloop.monitor._burden import burden

        burden_rows = burden(state[0], state[1], plist, discharges, state[3], cfg.burden, state[2]["thresholds"])

    val_flags = {tuple(f) for f in baseline.get("fairness_flags") or []}
    for k, per in enumerate(plist):
        p_lo, p_hi = int(per.start.timestamp() * US), int(per.end.timestamp() * US)
        mask = (s_index >= p_lo) & (s_index < p_hi)
        n = int(mask.sum())
        n_pat = len(np.unique(s_patients[mask])) if n else 0
        rec: dict[str, Any] = {"start": per.start.date().isoformat(), "end": per.end.date().isoformat(),
                               "label": per.label, "complete": per.complete, "stays": n, "patients": n_pat,
                               "tested": n >= cfg.min_rows}
        if per.whole is not None:  # --start/--end cut the calendar period: its figures cover only [start, end)
            rec.update({"partial": True, "period_start": per.whole[0].date().isoformat(),
                        "period_end": per.whole[1].date().isoformat()})
        pt = feat.filter(pa.array(mask)) if n else None

        # input drift
        drift = []
        for c in features:
            ref = reference.columns[c]
            counts = ref.binning.counts(pt.column(c)) if n else np.zeros(ref.binning.size, dtype=np.int64)
            value = psi(np.asarray(ref.counts), counts) if n else None
            miss = counts[-1] / n if n else None
            row = {"feature": c, "label": ref.label, "psi": value,
                   "psi_noise": psi_noise(occupied_bins(ref.counts), ref.patients, n_pat) if n else None,
                   "missing": miss, "missing_reference": ref.missing, "p_value": None, "missing_p": None,
                   "counts": [int(x) for x in counts]}
            if n >= cfg.min_rows:
                h = homogeneity_test(np.asarray(ref.counts), counts, ref.patients, n_pat)
                if h.df:  # a test that cannot reject (one bin) is not counted
                    row["p_value"] = h.p_value
                    tests.add("input_drift")
                    cands.append(_psi_candidate(k, "input_drift", c, ref.label, value, h.p_value, n,
                                                row["psi_noise"], cfg))
                if 0 < ref.counts[-1] + counts[-1] < ref.rows + n:  # missing in some stays, not all
                    mp = two_proportion_p(ref.counts[-1], ref.rows, counts[-1], n, ref.patients, n_pat)
                    row["missing_p"] = mp
                    tests.add("input_drift")
                    delta = miss - ref.missing
                    # on the PSI scale (missing vs recorded): 10 points matter when a value is usually recorded,
                    # less when it is usually missing
                    m_psi = missing_psi(ref.counts[-1], ref.rows, int(counts[-1]), n)
                    row["missing_psi"] = m_psi
                    cands.append(Candidate(
                        k, "input_drift", "missingness", delta, cfg.missingness_delta, mp,
                        abs(delta) >= cfg.missingness_delta and m_psi >= cfg.psi.watch,
                        _missing_reason(c, ref.label, miss, ref.missing, m_psi, mp, cfg), feature=c, n=n,
                        severity="act" if m_psi >= cfg.psi.act else "watch",
                        extra={"missing": miss, "missing_reference": ref.missing, "missing_psi": m_psi}))
            drift.append(row)
        rec["input_drift"] = sorted(drift, key=lambda r: -(r["psi"] or 0))

        # output drift
        sref = reference.score
        sc = scores[mask]
        counts = sref.binning.counts(sc) if n else np.zeros(sref.binning.size, dtype=np.int64)
        out = {"psi": psi(np.asarray(sref.counts), counts) if n else None,
               "psi_noise": psi_noise(occupied_bins(sref.counts), sref.patients, n_pat) if n else None,
               "mean_risk": float(sc.mean()) if n else None, "mean_risk_reference": reference.mean_risk,
               "flag_rate": float(np.mean(sc >= threshold)) if n and threshold is not None else None,
               "flag_rate_reference": reference.flag_rate, "p_value": None, "counts": [int(x) for x in counts]}
        if n >= cfg.min_rows:
            h = homogeneity_test(np.asarray(sref.counts), counts, sref.patients, n_pat)
            out["p_value"] = h.p_value
            tests.add("output_drift")
            cands.append(_psi_candidate(k, "output_drift", SCORE, "predicted risk", out["psi"], h.p_value, n,
                                        out["psi_noise"], cfg))
        rec["output_drift"] = out

        # performance as labels mature
        lab = mask & s_known & ~s_dev
        y = np.array([int(bool(s_labels[i])) for i in np.flatnonzero(lab)], dtype=np.int64)
        pos = int(y.sum())
        perf: dict[str, Any] = {"labelled": int(lab.sum()), "positives": pos,
                                "pending": int((mask & ~s_known).sum()),
                                "development_rows": int((mask & s_dev).sum()), "evaluated": False}
        enough = (len(y) >= cfg.min_labelled and pos >= cfg.min_events and len(y) - pos >= cfg.min_events)
        if not enough:
            perf["note"] = (f"{len(y)} labelled stays with {pos} readmissions: too few to judge (needs "
                            f"{cfg.min_labelled} labelled and {cfg.min_events} of each outcome)")
        else:
            p_lab, clusters = scores[lab], s_patients[lab].astype(str)
            try:
                ev = evaluate(y, p_lab, clusters=clusters, threshold=threshold, n_boot=cfg.n_boot, seed=cfg.seed,
                              thresholds=[threshold] if threshold is not None else None,
                              decision_thresholds=[0.1])
            except EvaluationError as e:
                perf["note"] = f"not evaluated: {e}"
            else:
                perf.update(_performance(ev))
                cands.extend(_performance_candidates(k, perf, baseline, cfg, tests))
                gvals = {a: [v[i] for i in np.flatnonzero(lab)] for a, v in groups.items()}
                if gvals:
                    glabels = {(a, v): display(a, v) for a, vals in gvals.items() for v in set(vals) if v is not None}
                    try:
                        fr = fairness(y, p_lab, gvals, threshold=threshold, clusters=clusters,
                                      min_group_size=cfg.fairness.min_group_size,
                                      tolerances=dict(cfg.fairness.tolerances), labels=glabels, n_boot=cfg.n_boot,
                                      seed=cfg.seed)
                    except EvaluationError as e:
                        rec["subgroups"] = {"note": f"not evaluated: {e}"}
                    else:
                        rec["subgroups"] = _subgroups(fr)
                        tests.add("fairness", fr.comparisons)
                        events = {(a, g.group): g.positives for a, r in fr.attributes.items() for g in r.groups}
                        for f in fr.flags:
                            if events.get((f.attribute, f.group), 0) >= cfg.fairness.min_events:
                                cands.append(_fairness_candidate(k, f, fr.comparisons, val_flags, cfg))
        rec["performance"] = perf
        rec.setdefault("subgroups", None)

        # burden
        if burden_rows is not None:
            br = burden_rows[k]
            rec["burden"] = br
            cands.extend(_burden_candidates(k, br, baseline, cfg, tests))
        else:
            rec["burden"] = None
        rec["alerts"] = []
        out_periods.append(rec)
    step("periods")

    level = tests.level
    for c in cands:
        if c.effect and c.p_value < level:
            out_periods[c.period]["alerts"].append(c.alert(level, tests.count))
    order = {k: i for i, k in enumerate(KINDS)}
    for p in out_periods:
        p["alerts"].sort(key=lambda a: (order.get(a["kind"], 99), a["severity"] != "act", -(abs(a["value"] or 0))))
    timings["total"] = round(time.perf_counter() - t_start, 3)
    model_info = {"bundle_id": b.bundle_id, "name": b.name, "path": str(b.path), "task": meta.get("task"),
                  "estimator": meta.get("estimator"), "threshold": threshold,
                  "operating_point": {k: (meta.get("operating_point") or {}).get(k)
                                      for k in ("policy", "target", "threshold", "rationale")},
                  "features": features, "groups": sorted(groups), "trained_data_end": _iso(train_end_us)
                  if train_end else None, "last_development_index": _iso(last_dev),
                  "last_training_index": reference.last_index}
    return MonitorResult(
        model=model_info, store=str(store), period=period, config=cfg, reference=reference, periods=out_periods,
        tests={"count": tests.count, "by_kind": tests.by_kind, "alpha": cfg.alpha, "level": level},
        rules=rules(cfg), notes=notes, timings=timings,
        created=dt.datetime.now(dt.UTC).isoformat(timespec="seconds"),
        data_end=data_end.isoformat(timespec="seconds") if data_end else None)


# ---------------------------------------------------------------------------------------------------------------------
# the rules, one function per kind


def _psi_candidate(k: int, kind: str, column: str, label: str, value: float, p: float, n: int, noise: float,
                   cfg: MonitorConfig) -> Candidate:
    severity = "act" if value >= cfg.psi.act else "watch"
    what = "predicted risk" if kind == "output_drift" else f"{column} ({label})"

    def reason(level: float, tests: int) -> str:
        return (f"{what}: PSI {value:.2f} against the training reference over {n:,} stays (watch at "
                f">= {cfg.psi.watch:g}, act at >= {cfg.psi.act:g}; noise alone gives about {noise:.2f}); the "
                f"distributions differ: {_test_text(p, level, tests, cfg.alpha)}")

    return Candidate(k, kind, "psi", value, cfg.psi.act if severity == "act" else cfg.psi.watch, p,
                     value >= cfg.psi.watch, reason, feature=column, severity=severity, n=n)


def _missing_reason(column: str, label: str, now: float, ref: float, m_psi: float, p: float, cfg: MonitorConfig):
    def reason(level: float, tests: int) -> str:
        return (f"{column} ({label}): missing in {now:.0%} of stays against {ref:.0%} in the training reference "
                f"(PSI of missing against recorded {m_psi:.2f}; alert at a PSI of {cfg.psi.watch:g} with a change of "
                f"at least {cfg.missingness_delta:.0%}); {_test_text(p, level, tests, cfg.alpha)}")
    return reason


def _est(ev, name: str) -> dict:
    return ev.metrics[name].to_dict()


def _performance(ev) -> dict:
    op = ev.operating_point
    out = {"evaluated": True, "n": ev.n, "prevalence": ev.prevalence, "clusters": ev.clusters, "n_boot": ev.n_boot,
           "auroc": _est(ev, "auroc"), "calibration_intercept": _est(ev, "calibration_intercept"),
           "calibration_slope": _est(ev, "calibration_slope"), "observed_expected": _est(ev, "observed_expected"),
           "brier": _est(ev, "brier"), "mean_predicted": ev.metrics["mean_predicted"],
           "observed_rate": ev.metrics["observed_rate"]}
    if op is not None:
        out.update({"ppv": op.ppv.to_dict(), "sensitivity": op.sensitivity.to_dict(), "nne": op.nne.to_dict(),
                    "alerts_per_100": op.alerts_per_100, "flagged": op.flagged})
    return out


def _performance_candidates(k: int, perf: dict, base: dict, cfg: MonitorConfig, tests: Family) -> list[Candidate]:
    out = []
    n = perf["n"]
    for metric, drop_min in (("auroc", cfg.auroc_drop), ("ppv", cfg.ppv_drop)):
        now, then = perf.get(metric) or {}, base.get(metric) or {}
        if now.get("estimate") is None or then.get("estimate") is None:
            continue
        tests.add("performance")
        se_now, se_then = se_from_ci(now.get("ci")), se_from_ci(then.get("ci"))
        se = math.sqrt((se_now or 0) ** 2 + (se_then or 0) ** 2) if se_now else None
        drop = then["estimate"] - now["estimate"]
        p = z_p(drop, se, alternative="greater") if se else 1.0

        def reason(level: float, tests_n: int, metric=metric, now=now, then=then, drop=drop, p=p,
                   drop_min=drop_min) -> str:
            name = "AUROC" if metric == "auroc" else "PPV at the operating point"
            return (f"{name} {_fmt_est(now)} over {n:,} labelled stays against {_fmt_est(then)} at validation: "
                    f"{drop:.3f} lower (alert at a drop of {drop_min:g}); {_test_text(p, level, tests_n, cfg.alpha)}")

        out.append(Candidate(k, "performance", metric, now["estimate"], then["estimate"] - drop_min, p,
                             drop >= drop_min, reason, group="all", n=n, extra={"baseline": then["estimate"]}))
    now = perf.get("calibration_intercept") or {}
    if now.get("estimate") is not None:
        tests.add("calibration")
        se = se_from_ci(now.get("ci"))
        off = now["estimate"]
        p = z_p(off, se) if se else 1.0
        tol = cfg.calibration_intercept
        slope = perf.get("calibration_slope") or {}
        base_int = (base.get("calibration_intercept") or {}).get("estimate")

        def reason(level: float, tests_n: int) -> str:
            which = "the model under-predicts risk" if off > 0 else "the model over-predicts risk"
            return (f"calibration intercept {_fmt_est(now)} over {n:,} labelled stays ({which}; alert beyond "
                    f"+/-{tol:g}; slope {_fmt_est(slope)}"
                    + (f"; {base_int:.2f} at validation" if base_int is not None else "")
                    + f"); differs from 0: {_test_text(p, level, tests_n, cfg.alpha)}")

        out.append(Candidate(k, "calibration", "calibration_intercept", off, tol, p, abs(off) > tol, reason,
                             group="all", n=n))
    return out


def _fmt_est(e: dict) -> str:
    if not e or e.get("estimate") is None:
        return "n/a"
    ci = e.get("ci")
    return f"{e['estimate']:.3f}" + (f" (95% CI {ci[0]:.3f} to {ci[1]:.3f})" if ci else "")


def _subgroups(fr) -> dict:
    out = {}
    for attr, res in fr.attributes.items():
        out[attr] = {
            "groups": [{"group": g.group, "label": g.label, "n": g.n, "positives": g.positives,
                        "metrics": {m: g.metrics[m].to_dict() for m in ("auroc", "calibration_intercept",
                                                                         "observed_expected", "ppv", "tpr",
                                                                         "flag_rate")},
                        "gaps": {m: g.gaps[m].to_dict() for m in ("auroc", "observed_expected")},
                        "flags": list(g.flags)} for g in res.groups],
            # named, as the validation report does: a group too small to assess is a gap in the monitoring
            "suppressed": [{"attribute": attr, **s.to_dict()} for s in res.suppressed]}
    return out


def _fairness_candidate(k: int, f, comparisons: int, known: set, cfg: MonitorConfig) -> Candidate:
    p_raw = (f.p_adjusted / comparisons) if f.p_adjusted is not None and comparisons else 1.0
    was = (f.attribute, f.group, f.metric) in known

    def reason(level: float, tests: int) -> str:
        return (f"{f.message} Gap {f.gap.estimate:+.3f} beyond the tolerance {f.tolerance:g}; "
                f"{_test_text(p_raw, level, tests, cfg.alpha)}"
                + (" (already flagged in the validation report)" if was else ""))

    return Candidate(k, "fairness", f.metric, f.gap.estimate, f.tolerance, p_raw, True, reason,
                     group=f"{f.attribute}={f.group}", extra={"attribute": f.attribute, "known_at_validation": was})


def _burden_candidates(k: int, br: dict, base: dict, cfg: MonitorConfig, tests: Family) -> list[Candidate]:
    from careloop.monitor._stats import binomial_p

    b = cfg.burden
    out = []
    limit = b.max_alerts_per_100
    if limit is None:
        if base.get("policy") == "budget" and base.get("target"):
            limit = 100 * float(base["target"]) * b.budget_factor
        elif base.get("alerts_per_100"):
            limit = float(base["alerts_per_100"]) * b.budget_factor
    denominator = br["discharges"] if br["discharges"] else br["scored"]
    if limit is not None and denominator and br["alerts"] >= b.min_alerts:
        tests.add("burden")
        rate = br["alerts_per_100"]
        p = binomial_p(br["alerts"], denominator, min(limit / 100, 1.0))

        def reason(level: float, tests_n: int, rate=rate, p=p, limit=limit) -> str:
            return (f"{br['alerts']:,} alerts for {denominator:,} {br['denominator']}: {rate:.1f} per 100 against a "
                    f"limit of {limit:.1f}; {_test_text(p, level, tests_n, cfg.alpha)}")

        out.append(Candidate(k, "burden", "alerts_per_100", rate, limit, p, rate > limit, reason, group="all",
                             n=denominator))
    for metric, num, den, lim in (("override_rate", br["overridden"], br["feedback"], b.max_override_rate),
                                  ("repeat_share", br["repeats"], br["alerts"], b.max_repeat_share)):
        if den < b.min_alerts:
            continue
        tests.add("burden")
        p = binomial_p(num, den, lim)
        value = num / den

        def reason(level: float, tests_n: int, metric=metric, num=num, den=den, lim=lim, p=p) -> str:
            what = "overridden (of the alerts with feedback)" if metric == "override_rate" else \
                "repeats within the repeat window"
            return (f"{num:,} of {den:,} alerts {what}: {num / den:.0%} against a limit of {lim:.0%}; "
                    f"{_test_text(p, level, tests_n, cfg.alpha)}")

        out.append(Candidate(k, "burden", metric, value, lim, p, value > lim, reason, group="all", n=den))
    ppv_base = (base.get("ppv") or {}).get("estimate")
    if ppv_base is not None and br["labelled"] >= b.min_alerts:
        tests.add("burden")
        floor_ = max(ppv_base - b.alert_ppv_drop, 1e-6)
        p = binomial_p(br["true_positives"], br["labelled"], floor_, alternative="less")
        value = br["ppv"]

        def reason(level: float, tests_n: int, p=p, value=value) -> str:
            return (f"PPV of the cards shown {value:.0%} ({br['true_positives']} of {br['labelled']} alerted "
                    f"stays readmitted) against {ppv_base:.0%} at validation (alert below {floor_:.0%}); "
                    f"{_test_text(p, level, tests_n, cfg.alpha)}")

        out.append(Candidate(k, "burden", "alert_ppv", value, floor_, p, value < floor_, reason, group="all",
                             n=br["labelled"]))
    return out
