"""Cohorts against the generator's ground truth, computed independently from the sidecar and the FHIR."""

from __future__ import annotations

import datetime as dt
from collections import Counter
from pathlib import Path

import pyarrow.parquet as pq
import pytest

from careloop.engines import DuckDBEngine
from careloop.tasks.cohort import build_cohort
from careloop.tasks.spec import Task, load_task


@pytest.fixture(scope="module")
def engine(hospital_store):
    return DuckDBEngine(hospital_store[0])


@pytest.fixture(scope="module")
def readmission(engine):
    return build_cohort(load_task("readmission-30d"), engine)


@pytest.fixture(scope="module")
def truth(hospital: Path) -> list[dict]:
    return pq.read_table(hospital / "truth" / "stays.parquet").to_pylist()


def test_exclusion_steps_match_an_independent_count_from_the_truth(readmission, truth, resources):
    birth = {p["id"]: dt.date.fromisoformat(p["birthDate"]) for p in resources("Patient")}
    end = max(dt.datetime.fromisoformat(e["period"].get("end", e["period"]["start"]).replace("Z", "+00:00"))
              for e in resources("Encounter"))
    remaining = list(truth)
    expected = [("index", 0, len(remaining))]
    rules = [
        ("index time after the end of the data", lambda r: r["discharge_time"] > end),
        ("died in the stay", lambda r: r["died_in_hospital"]),
        ("transferred to another acute hospital", lambda r: r["disposition"] == "transfer"),
        ("left against medical advice", lambda r: r["disposition"] == "ama"),
        ("discharged to hospice", lambda r: r["disposition"] == "hospice"),
        ("age under 18", lambda r: _whole_years(birth[r["patient_id"]], r["discharge_time"].date()) < 18),
    ]
    for name, rule in rules:
        before = len(remaining)
        remaining = [r for r in remaining if not rule(r)]
        expected.append((name, before - len(remaining), len(remaining)))
    got = [(s["step"].removeprefix("exclude: "), s["removed"], s["remaining"]) for s in readmission.steps]
    assert [g[1:] for g in got] == [e[1:] for e in expected]
    assert [g[0] for g in got[1:]] == [e[0] for e in expected[1:]]
    assert {r["encounter_id"] for r in remaining} == set(readmission.table.column("encounter_id").to_pylist())


def _whole_years(born: dt.date, on: dt.date) -> int:
    return on.year - born.year - ((on.month, on.day) < (born.month, born.day))


def test_readmission_label_matches_the_generator_exactly(readmission, truth):
    rows = {r["encounter_id"]: r for r in readmission.table.to_pylist()}
    compared = positives = 0
    for t in truth:
        row = rows.get(t["encounter_id"])
        if row is None:
            continue
        if t["censored_30d"]:
            assert row["label"] is None  # the 30-day window runs past the data: censored, not negative
            continue
        assert row["label"] == t["readmitted_30d"], t["encounter_id"]
        compared += 1
        positives += row["label"]
    assert compared > 1000 and 0.08 < positives / compared < 0.22


def test_no_patient_is_in_two_splits(readmission):
    by_patient: dict[str, set] = {}
    for r in readmission.table.to_pylist():
        by_patient.setdefault(r["patient_id"], set()).add(r["split"])
    assert all(len(s) == 1 for s in by_patient.values())
    share = Counter(next(iter(s)) for s in by_patient.values())
    n = sum(share.values())
    assert abs(share["train"] / n - 0.6) < 0.08 and abs(share["test"] / n - 0.2) < 0.08  # 860 patients: 4 SE


def test_temporal_and_site_splits_keep_patients_apart(engine):
    base = load_task("readmission-30d").model_dump()
    for split in ({"by": "time", "test_from": dt.date(2023, 1, 1)}, {"by": "site", "test_site": "NCH"},
                  {"by": "site", "test_site": "Northfield Community Hospital"}):
        task = Task.model_validate({**base, "split": {**base["split"], **split}})
        table = build_cohort(task, engine).table.to_pylist()
        by_patient: dict[str, set] = {}
        for r in table:
            if r["split"] != "excluded":
                by_patient.setdefault(r["patient_id"], set()).add(r["split"])
        assert all(len(s) == 1 for s in by_patient.values())
        tests = [r for r in table if r["split"] == "test"]
        assert tests
        if split["by"] == "time":
            assert all(r["index_time"] >= dt.datetime(2023, 1, 1, tzinfo=dt.UTC) for r in tests)
            assert all(r["index_time"] < dt.datetime(2023, 1, 1, tzinfo=dt.UTC) for r in table
                       if r["split"] in ("train", "calibration"))
        elif split["test_site"] == "Northfield Community Hospital":
            assert {r["site"] for r in tests} == {"Northfield Community Hospital"}


def test_mortality_task_labels_deaths_before_discharge(engine, truth):
    cohort = build_cohort(load_task("inhospital-mortality-24h"), engine)
    rows = {r["encounter_id"]: r for r in cohort.table.to_pylist()}
    day = dt.timedelta(days=1)
    for t in truth:
        if t["encounter_id"] not in rows:
            # out of the cohort: gone before 24 h, or a child
            assert t["discharge_time"] <= t["admit_time"] + day or rows.get(t["encounter_id"]) is None
            continue
        row = rows[t["encounter_id"]]
        assert row["index_time"] == t["admit_time"] + day
        assert row["label"] == t["died_in_hospital"]
    assert sum(r["label"] is True for r in rows.values()) > 10


def test_the_bedside_check_agrees_with_the_cohort_on_every_candidate(engine):
    """`excluded_at_index` (one stay, as the service checks it) removes exactly the candidates the cohort's
    disposition and death steps remove, and names the same step."""
    from careloop.tasks.cohort import Dialect, candidates_sql, excluded_at_index, exclusion_masks

    task = load_task("readmission-30d")
    t = engine.arrow(candidates_sql(task, Dialect()))
    steps = dict(exclusion_masks(task, t, 2**62))
    names = ("died in the stay", "transferred to another acute hospital", "left against medical advice",
             "discharged to hospice")
    masks = {n: steps[n].to_pylist() for n in names}
    rows = t.select(["disposition", "disposition_nubc", "death_us", "index_us"]).to_pylist()
    hits = Counter()
    for i, r in enumerate(rows):
        got = excluded_at_index(task, disposition=r["disposition"], disposition_nubc=r["disposition_nubc"],
                                death_us=r["death_us"], index_us=r["index_us"])
        first = next((n for n in names if masks[n][i]), None)  # the task lists them in this order
        assert got == first, r
        hits[got] += 1
    assert all(hits[n] > 0 for n in names), hits  # every rule is exercised by the synthetic hospital
    # a feed sending only the NUBC code (or only the HL7 one) gets the same answer
    assert excluded_at_index(task, disposition=None, disposition_nubc="51", death_us=None, index_us=0) == names[3]
    assert excluded_at_index(task, disposition="hosp", disposition_nubc=None, death_us=None, index_us=0) == names[3]
    assert excluded_at_index(task, disposition=None, disposition_nubc="20", death_us=None, index_us=0) == names[0]
    assert excluded_at_index(task, disposition="home", disposition_nubc="01", death_us=None, index_us=0) is None
