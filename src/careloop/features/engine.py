"""Extract a feature set for a cohort: one compiled SQL query per engine, then the published scores.

Point-in-time by construction: every event must have `time <= index_time` (a static fact has no time), every
encounter used must start before the index admission, and the index stay's own discharge facts come from
events stamped at discharge, so a prediction made before discharge cannot see them. The comorbidity indices
and the LACE and HOSPITAL scores are computed after the query, by the same Python functions for both engines.
"""

from __future__ import annotations

import math
import tempfile
from dataclasses import dataclass, field
from pathlib import Path

import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq

from careloop.errors import CareloopError
from careloop.features.comorbidity import charlson_index, van_walraven_score
from careloop.features.scores import hospital_score, lace_score
from careloop.features.spec import Feature, FeatureSet, window_us
from careloop.tasks.cohort import US_PER_DAY, Dialect, div, sql_literal


@dataclass
class FeatureResult:
    feature_set: str
    table: pa.Table
    summary: dict = field(default_factory=dict)


def _window_cond(f: Feature, t: str) -> str:
    if f.window == "stay":
        return f"{t} >= c.admit_us"
    back = window_us(f.window)
    return "TRUE" if back is None else f"{t} > c.index_us - {back}"


def events_sql(fs: FeatureSet, d: Dialect) -> str:
    """Aggregates over events at or before each index time, one row per index stay."""
    t = "e.t_us"
    cols: list[str] = []
    for f in fs.features:
        win = _window_cond(f, t)
        if f.kind == "static":
            n = len(f.prefix)  # type: ignore[arg-type]
            cols.append(f"max(CASE WHEN {d.starts('e.code', f.prefix)} THEN substr(e.code, {n + 1}) END) AS {f.name}")
        elif f.kind == "latest_code":
            n = len(f.prefix)  # type: ignore[arg-type]
            cond = f"{d.starts('e.code', f.prefix)} AND {win}"
            cols.append(f"max_by(substr(e.code, {n + 1}), {d.order_key(t, 'e.code')}) FILTER (WHERE {cond}) "
                        f"AS {f.name}")
        elif f.kind == "latest_text":
            # the latest answer given: an event without text (a question asked, no answer recorded) is not one, in
            # every engine alike (DuckDB's max_by skips a null value, Spark's does not)
            cond = f"e.code = {sql_literal(f.code)} AND e.text_value IS NOT NULL AND {win}"  # type: ignore[arg-type]
            cols.append(f"max_by(e.text_value, {d.order_key(t, 'e.text_value')}) FILTER (WHERE {cond}) AS {f.name}")
        elif f.kind == "distinct_codes":
            cond = f"{d.starts('e.code', f.prefix)} AND {win}"
            cols.append(f"count(DISTINCT CASE WHEN {cond} THEN e.code END) AS {f.name}")
        elif f.kind == "event_count":
            cond = f"e.source_resource = {sql_literal(f.source)} AND {win}"  # type: ignore[arg-type]
            cols.append(f"count(CASE WHEN {cond} THEN 1 END) AS {f.name}")
        elif f.kind == "comorbidity":
            cols.append(f"{d.distinct_list('e.code', d.starts('e.code', 'ICD10CM/'))} AS {f.name}__codes")
        elif f.kind == "measurement":
            cond = f"e.code = {sql_literal(f.code)} AND e.numeric_value IS NOT NULL AND {win}"  # type: ignore[arg-type]
            key = d.order_key(t, "e.numeric_value")
            last = f"max_by(e.numeric_value, {key}) FILTER (WHERE {cond})"
            first = f"min_by(e.numeric_value, {key}) FILTER (WHERE {cond})"
            for agg in f.aggs:
                expr = {
                    "last": last, "first": first,
                    "min": f"min(e.numeric_value) FILTER (WHERE {cond})",
                    "max": f"max(e.numeric_value) FILTER (WHERE {cond})",
                    "mean": f"avg(e.numeric_value) FILTER (WHERE {cond})",
                    "count": f"count(CASE WHEN {cond} THEN 1 END)",
                    "trend": f"({last}) - ({first})",
                    # hours since the window's FIRST measurement (rows.py alike); max(index - t) would be computed on
                    # every row, static facts' sentinel time included, and overflow
                    "hours_since": div(f"max(c.index_us) - min({t}) FILTER (WHERE {cond})", "3600000000"),
                }[agg]
                cols.append(f"{expr} AS {f.name}_{agg}")
    wanted = _event_filter(fs, d)
    select = ",\n  ".join(["c.encounter_id", *cols])
    return f"""
SELECT {select}
FROM cohort_idx c
LEFT JOIN (SELECT subject_id, code, numeric_value, text_value, source_resource,
                  coalesce({d.micros('time')}, -9223372036854775807) AS t_us
           FROM events WHERE {wanted}) e
  ON e.subject_id = c.subject_id AND e.t_us <= c.index_us
GROUP BY c.encounter_id"""


def _reads_events(fs: FeatureSet) -> bool:
    """Does some feature read events (and so a column of `events_sql`)?"""
    return any(f.code or f.prefix or f.source or f.kind == "comorbidity" for f in fs.features)


def _event_filter(fs: FeatureSet, d: Dialect) -> str:
    """Only the events some feature reads: a pushdown that keeps the join small."""
    codes, prefixes, sources = set(), set(), set()
    for f in fs.features:
        if f.code:
            codes.add(f.code)
        if f.prefix:
            prefixes.add(f.prefix)
        if f.source:
            sources.add(f.source)
        if f.kind == "comorbidity":
            prefixes.add("ICD10CM/")
    parts = []
    if codes:
        parts.append("code IN (" + ", ".join(map(sql_literal, sorted(codes))) + ")")
    parts += [d.starts("code", p) for p in sorted(prefixes)]
    if sources:
        parts.append("source_resource IN (" + ", ".join(map(sql_literal, sorted(sources))) + ")")
    return "(" + " OR ".join(parts or ["FALSE"]) + ")"


def encounters_sql(fs: FeatureSet, d: Dialect) -> str:
    """Utilisation before the index admission, and what was known of the index stay at admission."""
    cols = []
    for f in fs.features:
        if f.kind == "encounter_count":
            back = window_us(f.window)
            classes = ", ".join(map(sql_literal, f.classes))
            cols.append(f"count(CASE WHEN r.class IN ({classes}) AND r.start_us >= c.admit_us - {back} "
                        f"AND coalesce(r.end_us, r.start_us) < c.admit_us THEN 1 END) AS {f.name}")
        elif f.kind == "days_since_discharge":
            classes = ", ".join(map(sql_literal, f.classes))
            last_end = f"max(CASE WHEN r.class IN ({classes}) AND r.end_us <= c.admit_us THEN r.end_us END)"
            gap = f"max(c.admit_us) - {last_end}"
            cols.append(f"{div(gap, str(US_PER_DAY))} AS {f.name}")
    select = ",\n  ".join(["c.encounter_id", *cols]) if cols else "c.encounter_id"
    return f"""
SELECT {select}
FROM cohort_idx c
LEFT JOIN (SELECT encounter_id, subject_id, class, {d.micros('start')} AS start_us,
                  {d.micros(d.q('end'))} AS end_us FROM encounters) r
  ON r.subject_id = c.subject_id AND r.start_us < c.admit_us AND r.encounter_id <> c.encounter_id
GROUP BY c.encounter_id"""


def diagnosis_sql(d: Dialect) -> str:
    """The code of the Condition each index stay names as its principal diagnosis (`Encounter.diagnosis`:
    `ingest.mapping.principal_diagnosis_ref`), as recorded by the index time (a code a coder adds after the
    discharge is not known at it): its ICD-10-CM code (the smallest, if several), else its smallest code.
    `features.rows.diagnosis_code` reads the same."""
    return f"""
SELECT c.encounter_id,
       coalesce(min(CASE WHEN v.code LIKE 'ICD10CM/%' THEN v.code END), min(v.code)) AS code
FROM cohort_idx c
JOIN encounters e ON e.encounter_id = c.encounter_id AND e.diagnosis_ref IS NOT NULL
JOIN events v ON v.subject_id = c.subject_id AND v.source_resource = 'Condition'
             AND e.diagnosis_ref = concat('Condition/', v.source_id) AND {d.micros('v.time')} <= c.index_us
GROUP BY c.encounter_id"""


def index_sql(d: Dialect) -> str:
    """Facts of the index stay known at admission (and its discharge ward once it has ended), and the birth date."""
    return f"""
SELECT c.encounter_id, e.priority, e.admit_source,
       -- the discharge ward is known only once the stay has ended: never before the index time
       CASE WHEN {d.micros(d.q('end'))} <= c.index_us THEN coalesce(dk.name, dc.name) END AS location_name,
       -- the principal diagnosis is coded at discharge: likewise (Encounter.diagnosis's Condition, else reasonCode)
       CASE WHEN {d.micros(d.q('end'))} <= c.index_us THEN coalesce(dx.code, e.reason_code) END AS reason_code,
       {d.micros("CAST(p.birth_date AS TIMESTAMP)")} AS birth_us
FROM cohort_idx c
LEFT JOIN encounters e ON e.encounter_id = c.encounter_id
LEFT JOIN patients p ON p.subject_id = c.subject_id
LEFT JOIN ({diagnosis_sql(d)}) dx ON dx.encounter_id = c.encounter_id
LEFT JOIN (SELECT DISTINCT resource_id, name FROM directory WHERE resource_type = 'Location') dk
  ON e.location_ref = concat('Location/', dk.resource_id)
-- a ward named by a conditional reference (Location?identifier=system|value, as transaction Bundles write it):
-- resolved through the directory's identifiers (`rows.location_names` alike)
LEFT JOIN (SELECT concat('Location?identifier=', identifier_system, '|', identifier_value) AS cond_ref,
                  min(name) AS name
           FROM directory WHERE resource_type = 'Location' AND identifier_system IS NOT NULL
                            AND identifier_value IS NOT NULL
           GROUP BY concat('Location?identifier=', identifier_system, '|', identifier_value)) dc
  ON e.location_ref = dc.cond_ref"""


def extract(fs: FeatureSet, cohort: pa.Table, engine) -> FeatureResult:
    """The feature matrix of `cohort` (a table from `careloop cohort`) on `engine` (DuckDB or Spark)."""
    d: Dialect = engine.dialect
    index_us = pc.cast(pc.cast(cohort.column("index_time"), pa.timestamp("us", tz="UTC")), pa.int64())
    admit_us = pc.cast(pc.cast(cohort.column("admit_time"), pa.timestamp("us", tz="UTC")), pa.int64())
    idx = pa.table({"encounter_id": cohort.column("encounter_id"), "subject_id": cohort.column("subject_id"),
                    "index_us": index_us, "admit_us": admit_us})
    _register(engine, idx)
    ids = cohort.column("encounter_id").to_pylist()
    # a feature set in which no feature reads events needs no events query (Spark also fails to plan one that
    # filters events on FALSE: ASSIGNMENT_ARITY_MISMATCH)
    ev = _aligned(engine.arrow(events_sql(fs, d)), ids) if _reads_events(fs) else pa.table({"encounter_id": ids})
    en = _aligned(engine.arrow(encounters_sql(fs, d)), ids)
    ix = _aligned(engine.arrow(index_sql(d)), ids)
    cols: dict[str, pa.Array] = {}
    for f in fs.features:
        if f.kind == "age":
            cols[f.name] = _per(pc.subtract(index_us, ix.column("birth_us")), US_PER_DAY * 365.25)
        elif f.kind == "length_of_stay":
            cols[f.name] = _per(pc.subtract(index_us, admit_us), US_PER_DAY)
        elif f.kind == "emergent":
            prio = ix.column("priority")
            cols[f.name] = pc.if_else(pc.is_null(prio), pa.scalar(None, pa.bool_()),
                                      pc.is_in(prio, pa.array(["EM", "UR"])))
        elif f.kind == "admit_source":
            cols[f.name] = ix.column("admit_source")
        elif f.kind == "principal_diagnosis":
            cols[f.name] = ix.column("reason_code")
        elif f.kind == "comorbidity":
            score = charlson_index if f.index == "charlson" else van_walraven_score
            cols[f.name] = pa.array([score(c or []) for c in ev.column(f"{f.name}__codes").to_pylist()], pa.float64())
        elif f.kind == "encounter_count":
            cols[f.name] = pc.fill_null(en.column(f.name), 0)
        elif f.kind == "days_since_discharge":
            cols[f.name] = en.column(f.name)
        elif f.kind != "score":
            for c in f.columns:
                cols[c] = ev.column(c)
    for f in fs.features:
        if f.kind == "score":
            cols[f.name] = _scores(f.score, cols, ix, index_us, admit_us)  # type: ignore[arg-type]
    table = cohort.select(["encounter_id", "patient_id", "index_time", "label", "split"])
    for c in fs.columns:
        table = table.append_column(c, _numeric(cols[c]))
    return FeatureResult(fs.name, table, summarize(fs, table))


def _aligned(t: pa.Table, ids: list[str]) -> pa.Table:
    """Rows of a per-stay query put in cohort order (each query returns exactly one row per index stay)."""
    pos = {eid: i for i, eid in enumerate(t.column("encounter_id").to_pylist())}
    if len(pos) != len(ids) or t.num_rows != len(ids):
        raise CareloopError(f"feature query returned {t.num_rows} rows for {len(ids)} index stays")
    return t.take(pa.array([pos[e] for e in ids], pa.int64()))


def _per(delta_us: pa.Array, unit_us: float) -> pa.Array:
    return pc.divide(pc.cast(delta_us, pa.float64()), unit_us)


def _scores(name: str, cols: dict[str, pa.Array], ix: pa.Table, index_us: pa.Array, admit_us: pa.Array
            ) -> pa.Array:
    """LACE or HOSPITAL per stay, from the features already computed (missing inputs count as normal)."""
    inputs = [c for c in SCORE_INPUTS[name] if c in cols]
    values = {c: cols[c].to_pylist() for c in inputs}
    out = [stay_score(name, {c: values[c][i] for c in inputs}, a, t, prio, loc)
           for i, (a, t, prio, loc) in enumerate(zip(admit_us.to_pylist(), index_us.to_pylist(),
                                                     ix.column("priority").to_pylist(),
                                                     ix.column("location_name").to_pylist(), strict=True))]
    return pa.array(out, pa.float64())


SCORE_INPUTS = {"lace": ("charlson_index", "ed_visits_180d"),
                "hospital": ("hemoglobin_last", "sodium_last", "procedures_in_stay", "admissions_365d")}


def stay_score(name: str, values: dict, admit_us: int, index_us: int, priority: str | None,
               location_name: str | None) -> float:
    """LACE or HOSPITAL of one stay from its other features (`values`, absent or None = normal): the one
    definition both the SQL engines (per column) and the bedside evaluator (per stay) use."""
    # LACE and HOSPITAL count length of stay in calendar days (discharge date minus admission date)
    days = math.floor(index_us / US_PER_DAY) - math.floor(admit_us / US_PER_DAY)
    emergent = priority in ("EM", "UR")
    if name == "lace":
        return float(lace_score(los_days=days, emergent=emergent, charlson=int(values.get("charlson_index") or 0),
                                ed_visits_6m=int(values.get("ed_visits_180d") or 0)))
    return float(hospital_score(hemoglobin_g_dl=values.get("hemoglobin_last"),
                                oncology="oncolog" in (location_name or "").lower(),
                                sodium_mmol_l=values.get("sodium_last"),
                                procedure=bool(values.get("procedures_in_stay")), urgent=emergent,
                                admissions_12m=int(values.get("admissions_365d") or 0), los_days=days))


def _numeric(arr: pa.Array | pa.ChunkedArray) -> pa.Array | pa.ChunkedArray:
    """Counts, sums and scores as float64, so both engines give the same types; text and booleans unchanged."""
    t = arr.type
    if pa.types.is_integer(t) or pa.types.is_floating(t) or pa.types.is_decimal(t) or pa.types.is_null(t):
        return pc.cast(arr, pa.float64())
    return arr


def _register(engine, idx: pa.Table) -> None:
    if engine.dialect.name == "duckdb":
        engine.con.register("cohort_idx", idx)
        return
    path = Path(tempfile.mkdtemp(prefix="careloop-cohort-")) / "cohort.parquet"
    pq.write_table(idx, path)
    engine.spark.read.parquet(str(path)).createOrReplaceTempView("cohort_idx")


def summarize(fs: FeatureSet, table: pa.Table) -> dict:
    """Missingness per feature and prevalence, for reports."""
    n = table.num_rows
    cols = []
    for row in fs.describe():
        col = table.column(row["column"])
        cols.append({**row, "missing": col.null_count, "missing_fraction": round(col.null_count / n, 4) if n else None})
    label = table.column("label")
    known = n - label.null_count
    pos = pc.sum(pc.cast(label, pa.int64())).as_py() or 0
    prevalence = round(pos / known, 4) if known else None
    return {"feature_set": fs.name, "rows": n, "labelled": known, "prevalence": prevalence,
            "columns": cols}
