"""What the dashboard shows about patients: current stays scored by the served model, their reasons, the cards
shown and the feedback on them, and one stay's risk over time.

Scoring goes through the training feature code (`careloop.features.engine.extract`) on the event store, with the
service's own model, feature set, threshold band, out-of-distribution rule, learned deferral policy and kill
switch, so the dashboard never shows a risk the bedside service would not.

A stay's risk over time is one `extract` over several index times. `extract` keys its rows by encounter id, so the
stay is scored once per time under an alias of its encounter (a copy of the encounter row with the id
``<id>~<k>``) in an in-memory engine over the patient's own rows: the SQL reads events by subject and time and
other encounters by start time, so an alias changes nothing but the key (a test checks each point against a plain
`extract` at that time).
"""

from __future__ import annotations

import datetime as dt
import json
import math
from dataclasses import dataclass, field
from pathlib import Path

import pyarrow as pa
import pyarrow.compute as pc

from careloop.contracts import TIME
from careloop.serve.app import under_age
from careloop.tasks.cohort import DISPOSITION_EXCLUSIONS, age_in_years, happened, sql_literal

US = 1_000_000
HOUR_US = 3600 * US
MAX_POINTS = 30  # risk-over-stay points per stay
RECENT_DAYS = 7
RECENT_LIMIT = 25


@dataclass
class Assessment:
    risk: float | None
    status: str  # flagged, near threshold, below threshold, deferred, switched off
    reason: str | None = None  # why deferred


@dataclass
class StayRow:
    encounter_id: str
    patient_id: str
    subject_id: int
    admit: dt.datetime
    index_time: dt.datetime
    discharged: bool
    site: str | None
    sex: str | None
    age: float | None
    assessment: Assessment
    reasons: list = field(default_factory=list)  # careloop.explain.Reason
    card: dict | None = None  # latest card and its feedback

    @property
    def days(self) -> float:
        return (self.index_time - self.admit).total_seconds() / 86400


def _us(t: dt.datetime) -> int:
    return int(t.timestamp() * US) if t.tzinfo else int(t.replace(tzinfo=dt.UTC).timestamp() * US)


def _dt(us: int) -> dt.datetime:
    return dt.datetime.fromtimestamp(us / US, dt.UTC)


def engine_for(store_dir: Path):
    from careloop.engines import DuckDBEngine

    return DuckDBEngine(store_dir)


def data_end(engine) -> dt.datetime:
    """The store's 'now': the latest admission or discharge it holds (never later than the wall clock), of
    encounters that happened (a booking for next month is not the store's now, as in the cohort's data end)."""
    d = engine.dialect
    us = engine.arrow(f"SELECT max(greatest(coalesce({d.micros(d.q('end'))}, 0), {d.micros('start')})) AS m "
                      f"FROM encounters e WHERE {happened('e')}").column(0)[0].as_py()
    now = dt.datetime.now(dt.UTC)
    return min(_dt(us), now) if us else now


def _stays_sql(engine, where: str, order: str, limit: int | None) -> str:
    d = engine.dialect
    lim = f" LIMIT {int(limit)}" if limit else ""
    return f"""
SELECT e.encounter_id, e.patient_id, e.subject_id, {d.micros('e.start')} AS admit_us,
       {d.micros('e.' + d.q('end'))} AS end_us, e.site_name, p.sex, e.discharge_disposition AS disposition,
       e.discharge_disposition_nubc AS disposition_nubc, {d.micros('p.deceased_time')} AS death_us,
       {d.micros('CAST(p.birth_date AS TIMESTAMP)')} AS birth_us
FROM encounters e LEFT JOIN patients p ON p.subject_id = e.subject_id
WHERE e.class = 'IMP' AND e.start IS NOT NULL AND {happened('e')} AND {where}
ORDER BY {order}{lim}"""


def current_stays(engine, as_of: dt.datetime, *, recent_days: int = RECENT_DAYS, recent_limit: int = RECENT_LIMIT
                  ) -> tuple[pa.Table, pa.Table]:
    """(inpatients at `as_of`, discharges alive in the `recent_days` before it, newest first)."""
    d = engine.dialect
    now = _us(as_of)
    start, end = d.micros("e.start"), d.micros("e." + d.q("end"))
    current = engine.arrow(_stays_sql(engine, f"{start} <= {now} AND ({end} IS NULL OR {end} > {now})",
                                      "admit_us, e.encounter_id", None))
    since = now - recent_days * 24 * HOUR_US
    code, nubc, _ = DISPOSITION_EXCLUSIONS["died_in_stay"]  # alive: by the cohort's own codes (HL7 or NUBC)
    recent = engine.arrow(_stays_sql(
        engine, f"{end} IS NOT NULL AND {end} <= {now} AND {end} > {since} AND e.status = 'finished' "
                f"AND coalesce(e.discharge_disposition, '') <> {sql_literal(code)} "
                f"AND coalesce(e.discharge_disposition_nubc, '') NOT IN ({', '.join(map(sql_literal, nubc))})",
        "end_us DESC, e.encounter_id", recent_limit))
    return current, recent


def stay(engine, encounter_id: str) -> pa.Table:
    """One inpatient stay by encounter id (0 or 1 rows); the id is bound as a parameter, never spliced."""
    sql = _stays_sql(engine, "e.encounter_id = $eid", "admit_us", 1)
    return engine.con.sql(sql, params={"eid": encounter_id}).to_arrow_table()


def cohort_of(stays: pa.Table, index_us: list[int], ids: list[str] | None = None) -> pa.Table:
    """A cohort table `extract` reads: one index time per row."""
    n = stays.num_rows
    return pa.table({
        "encounter_id": pa.array(ids if ids is not None else stays.column("encounter_id").to_pylist(), pa.string()),
        "patient_id": stays.column("patient_id"),
        "subject_id": pc.cast(stays.column("subject_id"), pa.int64()),
        "index_time": pc.cast(pa.array(index_us, pa.int64()), TIME),
        "admit_time": pc.cast(pc.cast(stays.column("admit_us"), pa.int64()), TIME),
        "label": pa.nulls(n, pa.bool_()),
        "split": pa.array(["dashboard"] * n, pa.string()),
    })


def features(service, engine, cohort: pa.Table) -> pa.Table:
    from careloop.features.engine import extract

    if cohort.num_rows == 0:
        return cohort
    return extract(service.fs, cohort, engine).table


def assess(service, feats: pa.Table, stays: list[dict] | None = None, *, ended: bool | list[bool] = True,
           years: list[int | None] | None = None) -> tuple[list[Assessment], list[list]]:
    """Each row's risk and status as the bedside service would decide it, and its top three reasons. `stays`: each
    row's disposition, disposition_nubc, death_us and index_us, for the task's exclusions (as at the bedside).
    `ended`: whether each row's stay had ended at its index time (reasons then say "at discharge", else "latest")."""
    from careloop.explain import reasons

    n = feats.num_rows
    if n == 0:
        return [], []
    setting = service.store.policy(service.model_key)
    if not setting.enabled:
        return [Assessment(None, "switched off", "the model is switched off (kill switch)")] * n, [[] for _ in range(n)]
    threshold, band = service.thresholds(setting)  # an administrator's threshold, if one is in force
    risk = [float(r) for r in service.model.predict_proba(feats)]
    rows = feats.to_pylist()
    rs = reasons(service.model.contributions(feats), rows, service.infos, top=3, columns=service.model.columns,
                 ended=ended)
    # the minimum age is checked in whole years, as the cohort and the bedside check it (`years`), else on the age
    # feature
    ages = years if years is not None else feats.column("age").to_pylist() if "age" in feats.column_names \
        else [None] * n
    defers = [False] * n
    if service.policy is not None:
        import numpy as np

        defers = [bool(x) for x in service.policy.defers(np.asarray(risk))]
    out = []
    lo = band[0] if band else None
    for i in range(n):
        age = ages[i]
        if age is None or (isinstance(age, float) and math.isnan(age)) or age < service.min_age:
            out.append(Assessment(None, "deferred", under_age(service.min_age)))
            rs[i] = []
            continue
        gone = service.excluded(**stays[i]) if stays else None
        if gone:
            out.append(Assessment(None, "deferred", gone))
            rs[i] = []
            continue
        ood = service.out_of_distribution(rows[i], at_discharge=False)  # points during the stay
        if ood:
            out.append(Assessment(None, "deferred", f"inputs outside the training data ({ood})"))
            rs[i] = []
            continue
        if defers[i]:
            out.append(Assessment(risk[i], "deferred", "learned deferral policy: clinicians' own judgement has been "
                                                       "more accurate in this risk range"))
            continue
        if risk[i] >= threshold:
            status = "flagged"
        elif lo is not None and lo <= risk[i]:
            status = "near threshold"
        else:
            status = "below threshold"
        out.append(Assessment(risk[i], status))
    return out, rs


def cards_by_patient(service, patients: list[str]) -> dict[str, list[dict]]:
    """Cards this model showed to each patient, oldest first, each with its latest feedback (action, reason)."""
    from sqlalchemy import select

    from careloop.state.store import card_table, feedback_table

    if not patients:
        return {}
    c, f = card_table.c, feedback_table.c
    out: dict[str, list[dict]] = {}
    with service.store.transaction(write=False) as conn:
        for i in range(0, len(patients), 500):
            chunk = patients[i:i + 500]
            rows = conn.execute(select(card_table).where(c.patient.in_(chunk), c.model_hash == service.model_key)
                                .order_by(c.at, c.id)).mappings().all()
            uuids = [r["uuid"] for r in rows]
            fb: dict[str, dict] = {}
            if uuids:
                for r in conn.execute(select(feedback_table).where(f.card.in_(uuids)).order_by(f.outcome_at, f.id)
                                      ).mappings():
                    fb[r["card"]] = {"action": r["outcome"], "at": r["outcome_at"],
                                     "override": r["override_display"] or r["override_code"] or None}
            for r in rows:
                out.setdefault(r["patient"], []).append({
                    "uuid": r["uuid"], "service": r["service"], "risk": r["risk"], "indicator": r["indicator"],
                    "at": r["at"], "feedback": fb.get(r["uuid"])})
    return out


def card_summary(cards: list[dict] | None) -> dict | None:
    """The latest card and what became of it: status shown, accepted or overridden."""
    if not cards:
        return None
    last = cards[-1]
    fb = last.get("feedback")
    return {**last, "status": fb["action"] if fb else "shown", "count": len(cards)}


def worklist(service, store_dir: Path) -> dict:
    """Current inpatients and recent discharges, each scored, ranked by risk (highest first)."""
    engine = engine_for(store_dir)
    try:
        as_of = data_end(engine)
        cur, rec = current_stays(engine, as_of)
        rows: dict[str, list[StayRow]] = {}
        for name, t, discharged in (("current", cur, False), ("recent", rec, True)):
            idx = t.column("end_us").to_pylist() if discharged else [_us(as_of)] * t.num_rows
            feats = features(service, engine, cohort_of(t, idx))
            rows[name] = _rows(service, t, feats, idx, discharged)
    finally:
        engine.close()
    cards = cards_by_patient(service, sorted({r.patient_id for rs in rows.values() for r in rs}))
    for rs in rows.values():
        for r in rs:
            r.card = card_summary(cards.get(r.patient_id))
        rs.sort(key=lambda r: (r.assessment.risk is None, -(r.assessment.risk or 0.0), r.encounter_id))
    return {"as_of": as_of, "current": rows["current"], "recent": rows["recent"]}


def _rows(service, t: pa.Table, feats: pa.Table, idx: list[int], discharged: bool) -> list[StayRow]:
    if t.num_rows == 0:
        return []
    rows = t.to_pylist()
    # a discharge's disposition is known once it happened; for a stay still open, the store's replay may hold it early
    scope = [{"disposition": r["disposition"], "disposition_nubc": r["disposition_nubc"], "death_us": r["death_us"],
              "index_us": idx[i]} for i, r in enumerate(rows)] if discharged else None
    assessed, rs = assess(service, feats, scope, ended=discharged, years=_years(rows, idx))
    ages = feats.column("age").to_pylist() if "age" in feats.column_names else [None] * t.num_rows
    out = []
    for i, r in enumerate(rows):
        out.append(StayRow(r["encounter_id"], r["patient_id"], r["subject_id"], _dt(r["admit_us"]), _dt(idx[i]),
                           discharged, r["site_name"], r["sex"], ages[i], assessed[i], rs[i]))
    return out


@dataclass
class Timeline:
    stay: dict
    as_of: dt.datetime
    times: list[dt.datetime]
    assessments: list[Assessment]
    features: pa.Table  # one row per time (aliased encounter ids)
    reasons: list
    data: list[dict]  # the latest point's model inputs: column, title, value, phrase, contribution
    cards: list[dict]


def index_times(admit_us: int, stop_us: int, *, step_h: int = 24, max_points: int = MAX_POINTS) -> list[int]:
    """Admission + 24 h, + 48 h, ... before `stop_us`, then `stop_us` itself (discharge, or now), at most
    `max_points` in all (evenly thinned, the last kept). A stay admitted at `stop_us` has the one point, as the
    worklist scores it.

    >>> index_times(0, 60 * 3600 * 10**6)
    [86400000000, 172800000000, 216000000000]
    >>> index_times(5, 5)
    [5]
    """
    step = step_h * HOUR_US
    ts = list(range(admit_us + step, stop_us, step))
    if len(ts) > max_points - 1:
        k = len(ts) / (max_points - 1)
        ts = [ts[int(i * k)] for i in range(max_points - 1)]
    return [*ts, stop_us]


def patient_tables(engine, subject_id: int) -> dict[str, pa.Table]:
    """The patient's own rows of the store (and the directory), for an in-memory engine."""
    sid = int(subject_id)
    return {"events": engine.arrow(f"SELECT * FROM events WHERE subject_id = {sid}"),
            "encounters": engine.arrow(f"SELECT * FROM encounters_raw WHERE subject_id = {sid}"),
            "patients": engine.arrow(f"SELECT * FROM patients WHERE subject_id = {sid}"),
            "directory": engine.arrow("SELECT * FROM directory")}


def stay_features(service, engine, st: pa.Table, times: list[int]) -> pa.Table:
    """The stay's features at each index time (one row per time, in order), by aliases of the encounter."""
    from careloop.contracts import TABLES
    from careloop.engines import ArrowEngine

    eid = st.column("encounter_id")[0].as_py()
    tables = patient_tables(engine, st.column("subject_id")[0].as_py())
    enc = tables["encounters"]
    ids = enc.column("encounter_id").to_pylist()
    me = enc.take([ids.index(eid)])
    aliases = [f"{eid}~{k}" for k in range(len(times) - 1)] + [eid]
    copies = [me.set_column(me.schema.get_field_index("encounter_id"), "encounter_id", pa.array([a], pa.string()))
              for a in aliases[:-1]]
    tables["encounters"] = pa.concat_tables([enc, *copies]).cast(TABLES["encounters"].empty_table().schema) \
        if copies else enc
    rows = st.take([0] * len(times))
    arrow = ArrowEngine(tables)
    try:
        return features(service, arrow, cohort_of(rows, times, aliases))
    finally:
        arrow.close()


def _years(rows: list[dict], index_us: list[int]) -> list[int | None]:
    """Each stay's patient's calendar age in whole years at its index time (None without a birth date)."""
    return [None if r["birth_us"] is None else age_in_years(r["birth_us"] // (24 * HOUR_US), t)
            for r, t in zip(rows, index_us, strict=True)]


def timeline(service, store_dir: Path, encounter_id: str) -> Timeline | None:
    """Risk of one inpatient stay over time, its reasons and the data behind them; None if there is no such stay."""
    from careloop.explain import column_title, phrase

    engine = engine_for(store_dir)
    try:
        st = stay(engine, encounter_id)
        if st.num_rows == 0:
            return None
        as_of = data_end(engine)
        row = st.to_pylist()[0]
        end = row["end_us"]
        stop = end if end is not None and end <= _us(as_of) else _us(as_of)
        if stop < row["admit_us"]:  # admitted after the store's newest record: not a stay yet
            return None
        times = index_times(row["admit_us"], stop)  # the newest admission (stop == admit): one point, at admission
        feats = stay_features(service, engine, st, times)
    finally:
        engine.close()
    ended = [end is not None and t >= end for t in times]  # only a point at the recorded discharge
    assessed, rs = assess(service, feats, ended=ended, years=_years([row] * len(times), times))
    last = feats.slice(feats.num_rows - 1, 1)
    data = []
    by = {i.column: i for i in service.infos}
    contrib = service.model.contributions(last)[0] if service.store.enabled(service.model_key) else None
    values = last.to_pylist()[0]
    for j, col in enumerate(service.model.columns):
        info = by.get(col)
        v = values.get(col)
        data.append({"column": col, "title": column_title(info, ended=ended[-1]) if info else col,
                     "value": _plain(v), "phrase": phrase(info, v, ended=ended[-1]) if info else str(v),
                     "contribution": float(contrib[j]) if contrib is not None else None})
    data.sort(key=lambda d: -abs(d["contribution"] or 0.0))
    row["admit"], row["end"] = _dt(row["admit_us"]), _dt(end) if end is not None else None
    row["age"] = values.get("age")
    cards = cards_by_patient(service, [row["patient_id"]]).get(row["patient_id"], [])
    return Timeline(row, as_of, [_dt(t) for t in times], assessed, feats, rs[-1] if rs else [], data, cards)


def _plain(v: object) -> object:
    if isinstance(v, float):
        return None if math.isnan(v) else round(v, 4)
    if isinstance(v, list | dict):
        return json.dumps(v)
    return v


__all__ = ["Assessment", "StayRow", "Timeline", "assess", "cards_by_patient", "current_stays", "data_end",
           "index_times", "stay_features", "timeline", "worklist"]
