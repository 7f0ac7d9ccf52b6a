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
            cond = f"e.code = {sql_literal(f.code)} AND {win}"  # type: ignore[arg-type]
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
                    "hours_since": div(f"max(c.index_us - {t}) FILTER (WHERE {cond})", "3600000000"),
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


def index_sql(d: Dialect) -> str:
    """Facts of the index stay known at admission (and its discharge ward once it has ended), and the birth date."""
    return f"""
SELECT c.encounter_id, e.priority, e.admit_source,
       -- the discharge ward is known only once the stay has ended: never before the index time
       CASE WHEN {d.micros(d.q('end'))} <= c.index_us THEN dk.name END AS location_name,
       {d.micros("CAST(p.birth_date AS TIMESTAMP)")} AS birth_us
FROM cohort_idx c
LEFT JOIN encounters e ON e.encounter_id = c.encounter_id
LEFT JOIN patients p ON p.subject_id = c.subject_id
LEFT JOIN (SELECT DISTINCT resource_id, name FROM directory WHERE resource_type = 'Location') dk
  ON e.location_ref = concat('Location/', dk.resource_id)"""


def extract(fs: FeatureSet, cohort: pa.Table, engine) -> FeatureResult:
    """The feature matrix of `cohort` (a table from `careloop cohort`) on `engine` (DuckDB or Spark)."""
    d: Dialect = engine.dialect
    idx = pa.table({
        "encounter_id": cohort.column("encounter_id"),
        "subject_id": cohort.column("subject_id"),
        "index_us": pc.cast(pc.cast(cohort.column("index_time"), pa.timestamp("us", tz="UTC")), pa.int64()),
        "admit_us": pc.cast(pc.cast(cohort.column("admit_time"), pa.timestamp("us", tz="UTC")), pa.int64()),
    })
    _register(engine, idx)
    ev = _by_id(engine.arrow(events_sql(fs, d)))
    en = _by_id(engine.arrow(encounters_sql(fs, d)))
    ix = _by_id(engine.arrow(index_sql(d)))
    ids = cohort.column("encounter_id").to_pylist()
    index_us = idx.column("index_us").to_pylist()
    admit_us = idx.column("admit_us").to_pylist()
    out: dict[str, list] = {c: [] for c in ("encounter_id", "patient_id", "index_time", "label", "split")}
    for c in ("encounter_id", "patient_id", "index_time", "label", "split"):
        out[c] = cohort.column(c).to_pylist()
    values: dict[str, list] = {c: [] for c in fs.columns}
    for i, eid in enumerate(ids):
        row_e, row_n, row_x = ev.get(eid, {}), en.get(eid, {}), ix.get(eid, {})
        computed: dict[str, object] = {}
        for f in fs.features:
            if f.kind == "age":
                b = row_x.get("birth_us")
                computed[f.name] = None if b is None else (index_us[i] - b) / (US_PER_DAY * 365.25)
            elif f.kind == "length_of_stay":
                computed[f.name] = (index_us[i] - admit_us[i]) / US_PER_DAY
            elif f.kind == "emergent":
                p = row_x.get("priority")
                computed[f.name] = None if p is None else p in ("EM", "UR")
            elif f.kind == "admit_source":
                computed[f.name] = row_x.get("admit_source")
            elif f.kind == "comorbidity":
                codes = row_e.get(f"{f.name}__codes") or []
                computed[f.name] = charlson_index(codes) if f.index == "charlson" else van_walraven_score(codes)
            elif f.kind in ("encounter_count", "days_since_discharge"):
                computed[f.name] = row_n.get(f.name, 0 if f.kind == "encounter_count" else None)
            elif f.kind == "score":
                continue
            else:
                for c in f.columns:
                    computed[c] = row_e.get(c)
        for f in fs.features:
            if f.kind == "score":
                computed[f.name] = _score(f.score, computed, row_x, index_us[i], admit_us[i])  # type: ignore[arg-type]
        for c in fs.columns:
            values[c].append(computed.get(c))
    table = pa.table(out)
    for c in fs.columns:
        table = table.append_column(c, _array(values[c]))
    return FeatureResult(fs.name, table, summarize(fs, table))


def _score(name: str, f: dict, row_x: dict, index_us: int, admit_us: int) -> int:
    # LACE and HOSPITAL count length of stay in calendar days (discharge date minus admission date)
    los_days = math.floor(index_us / US_PER_DAY) - math.floor(admit_us / US_PER_DAY)
    emergent = row_x.get("priority") in ("EM", "UR")
    if name == "lace":
        return lace_score(los_days=los_days, emergent=emergent, charlson=int(f.get("charlson_index") or 0),
                          ed_visits_6m=int(f.get("ed_visits_180d") or 0))
    return hospital_score(
        hemoglobin_g_dl=f.get("hemoglobin_last"), oncology="oncolog" in (row_x.get("location_name") or "").lower(),
        sodium_mmol_l=f.get("sodium_last"), procedure=bool(f.get("procedures_in_stay")), urgent=emergent,
        admissions_12m=int(f.get("admissions_365d") or 0), los_days=los_days)


def _array(values: list) -> pa.Array:
    arr = pa.array(values)
    if pa.types.is_integer(arr.type) or pa.types.is_floating(arr.type) or pa.types.is_decimal(arr.type):
        return pc.cast(arr, pa.float64())
    if pa.types.is_null(arr.type):
        return pa.array(values, pa.float64())
    return arr


def _by_id(t: pa.Table) -> dict[str, dict]:
    return {r["encounter_id"]: r for r in t.to_pylist()}


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
