"""Build a task's cohort from the event store: index stays, exclusion steps with counts, labels, splits.

The task compiles to SQL over the store's tables (`encounters`, `patients`); the same SQL runs on DuckDB and,
through `careloop.engines`, on Spark. Splits are assigned afterwards in Python from a hash of
(seed, patient id), so both engines give identical splits and no patient is ever in two splits.
"""

from __future__ import annotations

import datetime as dt
import hashlib
from dataclasses import dataclass, field

import pyarrow as pa
import pyarrow.compute as pc

from careloop.tasks.spec import AgeUnder, Task

US_PER_DAY = 86_400_000_000
EPOCH = dt.datetime(1970, 1, 1, tzinfo=dt.UTC)
EPOCH_DAY = EPOCH.date()
# Encounter statuses of encounters that have not happened: a booking (`planned`) or one withdrawn. They are no
# readmission and say nothing about how far the data reaches (cancelled and entered-in-error are already dropped at
# ingest; listed here too so the rule does not depend on that). A missing or `unknown` status is kept.
NOT_HAPPENED = ("planned", "cancelled", "entered-in-error")


@dataclass
class CohortResult:
    """The cohort table and how it was reached: one step per inclusion or exclusion rule."""

    task: str
    table: pa.Table  # encounter_id, patient_id, subject_id, index_time, label, split, + context columns
    steps: list[dict] = field(default_factory=list)  # {"step", "removed", "remaining"}
    data_end: dt.datetime | None = None

    def summary(self) -> dict:
        labels = self.table.column("label")
        split = self.table.column("split").to_pylist()
        by_split = {}
        for name in ("train", "calibration", "test", "excluded"):
            mask = pa.array([s == name for s in split])
            lab = pc.filter(labels, mask)
            n = len(lab)
            known = n - lab.null_count
            pos = pc.sum(pc.cast(lab, pa.int64())).as_py() or 0
            by_split[name] = {"stays": n, "labelled": known, "censored": n - known, "positives": pos,
                              "prevalence": round(pos / known, 4) if known else None,
                              "patients": len(set(pc.filter(self.table.column("patient_id"), mask).to_pylist()))}
        lab = self.table.column("label")
        known = len(lab) - lab.null_count
        pos = pc.sum(pc.cast(lab, pa.int64())).as_py() or 0
        return {"task": self.task, "stays": self.table.num_rows, "labelled": known, "censored": len(lab) - known,
                "positives": pos, "prevalence": round(pos / known, 4) if known else None,
                "data_end": self.data_end.isoformat() if self.data_end else None,
                "steps": self.steps, "splits": by_split}


def age_in_years(birth_day: int, at_us: int) -> int:
    """Calendar age in whole years at `at_us` (UTC microseconds) of a patient born on `birth_day` (days since
    1970-01-01): the birthday counts from its first instant, 29 February from 1 March in other years. The Python
    twin of `Dialect.age_years`, for the bedside's age check."""
    born = EPOCH_DAY + dt.timedelta(days=birth_day)
    at = (EPOCH + dt.timedelta(microseconds=at_us)).date()
    return at.year - born.year - ((at.month, at.day) < (born.month, born.day))


def _ymd(date: str) -> str:
    """SQL: a date as the number YYYYMMDD; (YYYYMMDD at - YYYYMMDD born) // 10000 is the age in whole years."""
    return f"(year({date}) * 10000 + month({date}) * 100 + dayofmonth({date}))"


def div(a: str, b: str) -> str:
    """Floating-point division in every engine (Spark would otherwise make a decimal of a float literal)."""
    return f"CAST({a} AS DOUBLE) / CAST({b} AS DOUBLE)"


class Dialect:
    """The few SQL spellings that differ between engines."""

    name = "duckdb"

    def q(self, ident: str) -> str:
        return f'"{ident}"'

    def micros(self, col: str) -> str:
        return f"epoch_us({col})"

    def from_micros(self, expr: str) -> str:
        return f"make_timestamptz({expr})"

    def date_of_us(self, us: str) -> str:
        """The UTC calendar date of a time in microseconds (independent of the session's time zone)."""
        return f"(DATE '1970-01-01' + CAST({self.day_number(us)} AS INTEGER))"

    def age_years(self, birth: str, at_us: str) -> str:
        """Calendar age in whole years (the birthday reached, as `age_in_years`): 18 on the 18th birthday, where
        days / 365.25 gives 17.9998. A DOUBLE, as the column always was."""
        return f"CAST(floor({div(f'{_ymd(self.date_of_us(at_us))} - {_ymd(birth)}', '10000')}) AS DOUBLE)"

    def starts(self, col: str, prefix: str) -> str:
        return f"starts_with({col}, {sql_literal(prefix)})"

    def order_key(self, t: str, v: str) -> str:
        return f"struct_pack(t := {t}, v := {v})"

    def distinct_list(self, expr: str, cond: str) -> str:
        return f"list(DISTINCT {expr}) FILTER (WHERE {cond})"

    def day_number(self, us: str) -> str:
        return f"floor(({us}) / {US_PER_DAY})"


class SparkDialect(Dialect):
    name = "spark"

    def q(self, ident: str) -> str:
        return f"`{ident}`"

    def micros(self, col: str) -> str:
        return f"unix_micros({col})"

    def from_micros(self, expr: str) -> str:
        return f"timestamp_micros({expr})"

    def date_of_us(self, us: str) -> str:
        return f"date_add(DATE '1970-01-01', CAST({self.day_number(us)} AS INT))"

    def starts(self, col: str, prefix: str) -> str:
        return f"startswith({col}, {sql_literal(prefix)})"

    def order_key(self, t: str, v: str) -> str:
        return f"struct({t} AS t, {v} AS v)"

    def distinct_list(self, expr: str, cond: str) -> str:
        return f"collect_set(CASE WHEN {cond} THEN {expr} END)"


def sql_literal(value: str) -> str:
    """A SQL string literal (quotes doubled), the same in DuckDB and Spark."""
    return "'" + value.replace("'", "''") + "'"


def _in(values: tuple[str, ...]) -> str:
    return "(" + ", ".join(map(sql_literal, values)) + ")"


def happened(alias: str) -> str:
    """SQL: the encounter `alias` has happened (its status is not one of `NOT_HAPPENED`; a null status counts)."""
    return f"coalesce({alias}.status, '') NOT IN {_in(NOT_HAPPENED)}"


def data_end_sql(d: Dialect) -> str:
    """The last admission or discharge time (UTC microseconds) of the encounters that happened: a future booking
    does not move the end of the data (it would turn stays discharged shortly before the real end from censored
    into negatives)."""
    return (f"SELECT max(greatest(coalesce({d.micros('e.' + d.q('end'))}, 0), {d.micros('e.start')})) AS m "
            f"FROM encounters e WHERE {happened('e')}")


def candidates_sql(task: Task, d: Dialect) -> str:
    """Every candidate index stay with the facts the exclusion rules and labels need (no filtering yet)."""
    ix = task.index
    offset_us = int(ix.offset / dt.timedelta(microseconds=1))
    if ix.event == "discharge":
        index_us = f"{d.micros('e.' + d.q('end'))} + {offset_us}"
        where = f"e.status = 'finished' AND e.{d.q('end')} IS NOT NULL"
    else:
        index_us = f"{d.micros('e.start')} + {offset_us}"
        where = f"e.start IS NOT NULL AND {happened('e')}"  # a booking is no admission
    lab = task.label
    if lab.kind == "next_admission":
        within = int(lab.within / dt.timedelta(microseconds=1))  # type: ignore[operator]
        prio = (f" AND coalesce(r.priority, '') NOT IN {_in(lab.exclude_priority)}" if lab.exclude_priority else "")
        event_sql = f"""EXISTS (SELECT 1 FROM encounters r WHERE r.subject_id = c.subject_id
                   AND r.class IN {_in(lab.encounter_class)}{prio} AND {happened('r')}
                   AND r.encounter_id <> c.encounter_id
                   AND {d.micros('r.start')} > c.index_us AND {d.micros('r.start')} <= c.index_us + {within})"""
        window_end = f"c.index_us + {within}"
    else:
        died = DISPOSITION_EXCLUSIONS["died_in_stay"]
        event_sql = (f"(c.disposition = '{died[0]}' OR c.disposition_nubc IN {_in(died[1])} OR (c.death_us IS NOT NULL "
                     "AND c.death_us >= c.index_us AND (c.discharge_us IS NULL OR c.death_us < c.discharge_us "
                     f"OR (c.death_us = c.discharge_us AND NOT ({alive_sql('c')} AND {_day_only('c.death_us')})))))")
        window_end = "coalesce(c.discharge_us, 9223372036854775807)"
    return f"""
    WITH c AS (
      SELECT e.encounter_id, e.patient_id, e.subject_id, e.site_name, e.site_id, e.priority, e.admit_source,
             e.discharge_disposition AS disposition, e.discharge_disposition_nubc AS disposition_nubc, e.status,
             {d.micros('e.start')} AS admit_us, {d.micros('e.' + d.q('end'))} AS discharge_us,
             {index_us} AS index_us,
             {d.micros('p.deceased_time')} AS death_us, p.birth_date
      FROM encounters e LEFT JOIN patients p ON p.subject_id = e.subject_id
      WHERE e.class IN {_in(ix.encounter_class)} AND {where}
    )
    SELECT c.*, {d.age_years('c.birth_date', 'c.index_us')} AS age_at_index,
           {event_sql} AS event_seen,
           {window_end} AS window_end_us
    FROM c"""


# NUBC UB-04 patient status codes (FL 17) of a transfer to another hospital for acute inpatient care, where the
# outcome after the stay belongs to that hospital's care: 02 a short-term general hospital; 05 a designated cancer
# center or children's hospital (before 2005 "another type of institution", which 70 now covers); 66 a critical
# access hospital; and their "with a planned acute care hospital inpatient readmission" variants (since October
# 2013): 82 (of 02), 85 (of 05), 94 (of 66). Left out as not (or not surely) acute care: 43 a federal health care
# facility (a VA or military hospital, or a VA nursing home) and its 88; 63 a long-term care hospital, 65 a
# psychiatric hospital, 62 rehabilitation, 70 another type of institution, and their 91, 93, 90, 95.
ACUTE_TRANSFER_NUBC = ("02", "05", "66", "82", "85", "94")

# The exclusions a discharge disposition decides, by its HL7 discharge-disposition code or its NUBC UB-04 patient
# status code (a feed may send either), with their step names: one definition for the cohort (below) and for the
# bedside (`excluded_at_index`), so the service never scores a stay the model's task leaves out.
DISPOSITION_EXCLUSIONS: dict[str, tuple[str, tuple[str, ...], str]] = {
    "died_in_stay": ("exp", ("20", "40", "41", "42"), "died in the stay"),  # or a death at or before the index
    "transfer_out": ("other-hcf", ACUTE_TRANSFER_NUBC, "transferred to another acute hospital"),
    "against_medical_advice": ("aadvice", ("07",), "left against medical advice"),
    "hospice": ("hosp", ("50", "51"), "discharged to hospice"),
}


def _day_only(death: str) -> str:
    """SQL twin of the test in `dead_at`: a death stored at the last microsecond of a day, as `map_patient` stores
    one known only to its day (or month, year); no recorded instant falls there in practice."""
    return f"(({death}) + 1) % {US_PER_DAY} = 0"


def alive_sql(alias: str) -> str:
    """SQL twin of `left_alive`."""
    code, nubc, _ = DISPOSITION_EXCLUSIONS["died_in_stay"]
    return (f"(coalesce({alias}.disposition, {sql_literal(code)}) <> {sql_literal(code)} "
            f"OR coalesce({alias}.disposition_nubc, {sql_literal(nubc[0])}) NOT IN {_in(nubc)})")


def left_alive(disposition: str | None, disposition_nubc: str | None) -> bool:
    """Does the discharge disposition say the patient left alive (any recorded code but the death codes)?"""
    code, nubc, _ = DISPOSITION_EXCLUSIONS["died_in_stay"]
    return (disposition is not None and disposition != code) or (disposition_nubc is not None
                                                                 and disposition_nubc not in nubc)


def dead_at(death_us: int | None, index_us: int, alive: bool) -> bool:
    """A recorded death at or before the index time. A death known only to its day is stored at the day's end
    (`ingest.mapping.map_patient`), as is a discharge known only to its day; when the two meet at that instant the
    disposition decides (`alive`: `left_alive`): discharged home on the day of the death, both written as dates, is
    no death in the stay. A death recorded at the very instant of the index stays a death, whatever the disposition."""
    if death_us is None:
        return False
    return death_us < index_us or (death_us == index_us and not (alive and (death_us + 1) % US_PER_DAY == 0))


def excluded_at_index(task: Task, *, disposition: str | None, disposition_nubc: str | None, death_us: int | None,
                      index_us: int) -> str | None:
    """The first of the task's exclusions (other than age, checked apart) that removes one stay, as the cohort
    names it; None when the stay is in scope. Scalar twin of `exclusion_masks` for a stay scored at the bedside."""
    for rule in task.exclusions:
        if rule not in DISPOSITION_EXCLUSIONS:
            continue
        code, nubc, name = DISPOSITION_EXCLUSIONS[rule]
        if disposition == code or disposition_nubc in nubc:
            return name
        if rule == "died_in_stay" and dead_at(death_us, index_us, left_alive(disposition, disposition_nubc)):
            return name
    return None


def exclusion_masks(task: Task, t: pa.Table, data_end_us: int) -> list[tuple[str, pa.Array]]:
    """(step name, rows it removes) in the order the task lists them, after the index rule itself."""
    disp = t.column("disposition")
    nubc = t.column("disposition_nubc").cast(pa.string())
    death = t.column("death_us")
    index_us = t.column("index_us")
    discharge = t.column("discharge_us")
    steps: list[tuple[str, pa.Array]] = [("index time after the end of the data", pc.greater(index_us, data_end_us))]
    for rule in task.exclude:
        if isinstance(rule, AgeUnder):
            age = t.column("age_at_index")
            steps.append((f"age under {rule.age_under:g}", pc.fill_null(pc.less(age, rule.age_under), True)))
            continue
        if rule in DISPOSITION_EXCLUSIONS:
            code, codes, name = DISPOSITION_EXCLUSIONS[rule]
            hit = pc.or_(pc.fill_null(pc.equal(disp, code), False),
                         pc.fill_null(pc.is_in(nubc, value_set=pa.array(codes, pa.string())), False))
            if rule == "died_in_stay":
                dead = [dead_at(d, i, left_alive(a, b)) for d, i, a, b in zip(
                    death.to_pylist(), index_us.to_pylist(), disp.to_pylist(), nubc.to_pylist(), strict=True)]
                hit = pc.or_(hit, pa.array(dead, pa.bool_()))
            steps.append((name, hit))
        elif rule == "out_of_hospital_at_index":
            gone = pc.or_(pc.fill_null(pc.less_equal(discharge, index_us), False),
                          pc.fill_null(pc.less_equal(death, index_us), False))
            steps.append(("discharged or dead before the index time", gone))
    return steps


def split_of(seed: int, patient_id: str, fractions: dict[str, float]) -> str:
    """A patient's split from a hash of (seed, patient id): stable across engines, runs and data sizes."""
    h = hashlib.blake2b(f"{seed}:{patient_id}".encode(), digest_size=8).digest()
    u = int.from_bytes(h, "big") / 2**64
    acc = 0.0
    for name in ("train", "calibration", "test"):
        acc += fractions.get(name, 0.0)
        if u < acc:
            return name
    return "test"


def assign_splits(task: Task, patient_ids: list[str], index_us: list[int], sites: list[str | None],
                  site_ids: list[str | None], held_ids: list[str] | None = None) -> list[str]:
    """Patient-level splits; optionally temporal (test from a date) or by site (a held-out site)."""
    sp = task.split
    train_frac = {k: v for k, v in sp.fractions.items() if k != "test"}
    total = sum(train_frac.values()) or 1.0
    dev = {k: v / total for k, v in train_frac.items()}  # train/calibration shares outside the test set
    if sp.by == "patient":
        return [split_of(sp.seed, p, sp.fractions) for p in patient_ids]
    if sp.by == "time":
        cut = int(dt.datetime.combine(sp.test_from, dt.time(), dt.UTC).timestamp() * 1_000_000)  # type: ignore[arg-type]
        before = {p for p, t in zip(patient_ids, index_us, strict=True) if t < cut}
        out = []
        for p, t in zip(patient_ids, index_us, strict=True):
            if t >= cut:
                out.append("excluded" if p in before else "test")  # a patient seen before the cut stays out of test
            else:
                out.append(split_of(sp.seed, p, dev))
        return out
    held = set(held_ids or ()) | {sp.test_site}
    at_site = {p for p, s, sid in zip(patient_ids, sites, site_ids, strict=True) if s in held or sid in held}
    out = []
    for p, s, sid in zip(patient_ids, sites, site_ids, strict=True):
        if s in held or sid in held:
            out.append("test")
        else:
            out.append("excluded" if p in at_site else split_of(sp.seed, p, dev))
    return out


def _now_us() -> int:
    return int(dt.datetime.now(dt.UTC).timestamp() * 1_000_000)


def build_cohort(task: Task, con, *, dialect: Dialect | None = None, data_end: dt.datetime | None = None
                 ) -> CohortResult:
    """Run the task on an engine connection exposing `sql(query) -> pyarrow.Table` (see careloop.engines)."""
    d = dialect or Dialect()
    t = con.arrow(candidates_sql(task, d))
    if data_end is None:
        end_us = min(con.arrow(data_end_sql(d)).column(0)[0].as_py() or 0, _now_us())  # never after the present
    else:
        end_us = int(data_end.timestamp() * 1_000_000)
    steps = [{"step": f"index: {task.index.event} of {', '.join(task.index.encounter_class)} encounters"
              + (f" + {task.index.offset}" if task.index.offset else ""), "removed": 0, "remaining": t.num_rows}]
    alive = pa.repeat(True, t.num_rows)
    for name, mask in exclusion_masks(task, t, end_us):
        removed = pc.and_(alive, mask)
        alive = pc.and_(alive, pc.invert(mask))
        remaining = pc.sum(pc.cast(alive, pa.int64())).as_py() or 0
        steps.append({"step": f"exclude: {name}", "removed": pc.sum(pc.cast(removed, pa.int64())).as_py() or 0,
                      "remaining": remaining})
    t = t.filter(alive)
    seen = t.column("event_seen")
    censored = pc.greater(t.column("window_end_us"), end_us) if task.censor_at_data_end else pa.repeat(False, len(t))
    label = pc.if_else(censored, pa.scalar(None, pa.bool_()), pc.fill_null(seen, False))
    pids = t.column("patient_id").to_pylist()
    held = None
    if task.split.by == "site":  # the held-out site by name, id, or any identifier of its Organization
        key = sql_literal(task.split.test_site)  # type: ignore[arg-type]
        held = con.arrow("SELECT DISTINCT resource_id FROM directory WHERE resource_type = 'Organization' AND "
                         f"(identifier_value = {key} OR name = {key} OR resource_id = {key})").column(0).to_pylist()
    splits = assign_splits(task, pids, t.column("index_us").to_pylist(), t.column("site_name").to_pylist(),
                           t.column("site_id").to_pylist(), held)
    index_time = pc.cast(t.column("index_us"), pa.timestamp("us", tz="UTC"))
    out = pa.table({
        "encounter_id": t.column("encounter_id"), "patient_id": t.column("patient_id"),
        "subject_id": t.column("subject_id"), "index_time": index_time, "label": label,
        "split": pa.array(splits, pa.string()),
        "admit_time": pc.cast(t.column("admit_us"), pa.timestamp("us", tz="UTC")),
        "site": t.column("site_name"), "age_at_index": t.column("age_at_index"),
    }).sort_by([("subject_id", "ascending"), ("index_time", "ascending"), ("encounter_id", "ascending")])
    result = CohortResult(task.name, out, steps, dt.datetime.fromtimestamp(end_us / 1e6, dt.UTC))
    return result
