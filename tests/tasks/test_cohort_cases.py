"""Labels and exclusions of single stays, each built from a tiny FHIR NDJSON store, on DuckDB and on Spark."""

from __future__ import annotations

from collections import defaultdict
from pathlib import Path

import orjson
import pytest

from careloop.engines import DuckDBEngine, SparkEngine
from careloop.ingest.runner import ingest
from careloop.tasks.cohort import CohortResult, build_cohort
from careloop.tasks.spec import load_task

ACT = "http://terminology.hl7.org/CodeSystem/v3-ActCode"
# a patient with a stay at the end of the data, so that the stays under test are well inside it
LAST = [{"resourceType": "Patient", "id": "p9", "gender": "male", "birthDate": "1950-01-01"}]


def patient(pid: str, birth: str = "1950-01-01", **kw) -> dict:
    return {"resourceType": "Patient", "id": pid, "gender": "female", "birthDate": birth, **kw}


def enc(eid: str, start: str, end: str | None, pid: str, *, status: str = "finished", dispo: str | None = "home",
        nubc: str | None = None, cls: str = "IMP") -> dict:
    """An Encounter; its discharge disposition as an HL7 code (`dispo`) and/or a NUBC code (`nubc`), or none."""
    codings = [{"code": dispo}] if dispo else []
    if nubc:
        codings.append({"system": "https://www.nubc.org/CodeSystem/PatDischargeStatus", "code": nubc})
    r = {"resourceType": "Encounter", "id": eid, "status": status, "subject": {"reference": f"Patient/{pid}"},
         "class": {"system": ACT, "code": cls}, "period": {"start": start, **({"end": end} if end else {})}}
    if codings:
        r["hospitalization"] = {"dischargeDisposition": {"coding": codings}}
    return r


LAST.append(enc("z", "2023-06-01T10:00:00Z", "2023-06-02T10:00:00Z", "p9"))


def make_store(root: Path, resources: list[dict]) -> Path:
    """Ingest `resources` (one NDJSON file per resource type) into a store under `root`."""
    by_type: dict[str, list[dict]] = defaultdict(list)
    for r in resources:
        by_type[r["resourceType"]].append(r)
    src = root / "export"
    src.mkdir(parents=True)
    for rtype, rows in by_type.items():
        (src / f"{rtype}.ndjson").write_bytes(b"".join(orjson.dumps(r) + b"\n" for r in rows))
    report = ingest([src], root / "store", workers=1).to_json()
    assert not report.get("quarantined"), report
    return root / "store"


@pytest.fixture(scope="module")
def spark_session():
    import os

    from pyspark.sql import SparkSession

    os.environ.setdefault("SPARK_LOCAL_IP", "127.0.0.1")
    session = (SparkSession.builder.master("local[1]").appName("careloop-tests")
               .config("spark.sql.session.timeZone", "UTC").config("spark.ui.enabled", "false")
               .config("spark.driver.host", "127.0.0.1").config("spark.driver.bindAddress", "127.0.0.1")
               .config("spark.ui.showConsoleProgress", "false").config("spark.sql.shuffle.partitions", "1")
               .getOrCreate())
    yield session
    session.stop()


# Spark builds each case's tiny store's cohort in a few seconds, over three minutes for the module: its runs go with
# the slow ones (`make test-scale`, which CI runs too); DuckDB's stay in `make test`. On the synthetic hospital,
# tests/features/test_engines.py holds the two engines' cohorts equal in `make test`.
@pytest.fixture(params=["duckdb", pytest.param("spark", marks=pytest.mark.scale)])
def cohort(request, tmp_path: Path):
    """cohort(resources, task name) -> CohortResult, built by the engine of the test's parameter."""

    def build(resources: list[dict], task: str = "readmission-30d") -> CohortResult:
        store = make_store(tmp_path / f"s{len(list(tmp_path.iterdir()))}", resources + LAST)
        if request.param == "duckdb":
            eng = DuckDBEngine(store)
            try:
                return build_cohort(load_task(task), eng, dialect=eng.dialect)
            finally:
                eng.close()
        eng = SparkEngine(store, spark=request.getfixturevalue("spark_session"))  # one session, not closed here
        return build_cohort(load_task(task), eng, dialect=eng.dialect)

    return build


def labels(result: CohortResult) -> dict[str, bool | None]:
    return {r["encounter_id"]: r["label"] for r in result.table.to_pylist()}


def removed_by(result: CohortResult, step: str) -> int:
    return next(s["removed"] for s in result.steps if s["step"] == f"exclude: {step}")


# --- 1. encounters that have not happened ------------------------------------------------------------------------


def test_a_planned_admission_is_no_readmission(cohort):
    """A booking still `planned` in the export never happened: the stay before it is not readmitted."""
    got = labels(cohort([patient("p3"), enc("c1", "2023-01-01T10:00:00Z", "2023-01-05T10:00:00Z", "p3"),
                         enc("c2", "2023-01-25T08:00:00Z", None, "p3", status="planned")]))
    assert got["c1"] is False
    assert "c2" not in got  # nor is a booking a stay


def test_an_admission_that_happened_still_counts(cohort):
    """The status rule removes bookings only: an in-progress (or status-less) readmission is a readmission."""
    got = labels(cohort([patient("p3"), enc("c1", "2023-01-01T10:00:00Z", "2023-01-05T10:00:00Z", "p3"),
                         enc("c2", "2023-01-25T08:00:00Z", None, "p3", status="in-progress"),
                         patient("p4"), enc("d1", "2023-02-01T10:00:00Z", "2023-02-05T10:00:00Z", "p4"),
                         enc("d2", "2023-02-25T08:00:00Z", "2023-02-27T08:00:00Z", "p4", status="unknown")]))
    assert got["c1"] is True and got["d1"] is True


def test_a_future_booking_does_not_move_the_end_of_the_data(cohort):
    """Stays discharged within 30 days of the real end of the data stay censored (not negative) when a booking
    for months later is in the export; the data end is the last encounter that happened."""
    result = cohort([patient("p4"), enc("d1", "2023-05-25T10:00:00Z", "2023-05-28T10:00:00Z", "p4"),
                     enc("fut", "2023-12-01T08:00:00Z", None, "p4", status="planned")])
    assert labels(result) == {"d1": None, "z": None}
    assert result.data_end.isoformat() == "2023-06-02T10:00:00+00:00"


def test_a_planned_admission_is_no_index_stay_for_an_admission_task(cohort):
    """The mortality task's index is an admission: a booking in the past that never happened is no stay."""
    result = cohort([patient("p3"), enc("c1", "2023-01-01T10:00:00Z", "2023-01-05T10:00:00Z", "p3"),
                     enc("c2", "2023-01-10T08:00:00Z", None, "p3", status="planned")], "inhospital-mortality-24h")
    assert set(labels(result)) == {"c1"}  # (z, a 24-hour stay, is gone at its index time)


def test_the_end_of_the_data_is_never_after_the_present(cohort):
    """A stay recorded as finished in the future (a mistyped year) cannot have been observed: the data end stays at
    the present, so the stays of the last 30 days are censored and the future one is out."""
    import datetime as dt

    result = cohort([patient("p4"), enc("d1", "2090-05-25T10:00:00Z", "2090-05-28T10:00:00Z", "p4")])
    assert result.data_end <= dt.datetime.now(dt.UTC)
    assert "d1" not in labels(result) and removed_by(result, "index time after the end of the data") == 1


# --- 3. age on the birthday ---------------------------------------------------------------------------------------

BIRTHDAYS = [  # (birth date, discharge, is the stay under 18?)
    ("2005-01-05", "2023-01-05T10:00:00Z", False),  # discharged on the 18th birthday: 18 (days / 365.25 = 17.9998)
    ("2005-01-05", "2023-01-04T23:59:59Z", True),  # the evening before it: 17
    ("2005-01-03", "2023-01-04T10:00:00Z", False),
    ("2004-02-29", "2022-02-28T10:00:00Z", True),  # born on 29 February: 18 from 1 March in other years
    ("2004-02-29", "2022-03-01T00:00:00Z", False),
]


def test_the_age_exclusion_counts_whole_years_from_the_birthday(cohort):
    res = []
    for i, (birth, end, _) in enumerate(BIRTHDAYS):
        res += [patient(f"p{i}", birth), enc(f"a{i}", "2022-01-01T10:00:00Z", end, f"p{i}")]
    result = cohort(res)
    kept = set(labels(result))
    assert {f"a{i}" for i, (*_, under) in enumerate(BIRTHDAYS) if not under} <= kept
    assert not {f"a{i}" for i, (*_, under) in enumerate(BIRTHDAYS) if under} & kept
    assert removed_by(result, "age under 18") == 2
    assert {r["encounter_id"]: r["age_at_index"] for r in result.table.to_pylist()}["a0"] == 18.0


@pytest.mark.parametrize(("birth", "end", "under"), BIRTHDAYS)
def test_the_bedside_age_check_agrees_with_the_cohort(birth: str, end: str, under: bool):
    """The service's under-age deferral uses the same calendar age as the cohort (the age feature, days / 365.25,
    is a model input and keeps its value)."""
    import datetime as dt
    from types import SimpleNamespace

    from careloop.features.spec import load_feature_set
    from careloop.serve.app import Service, under_age
    from careloop.serve.demo import prefetch_of
    from careloop.serve.features import bedside_features, collect

    pf = prefetch_of({"patient": [patient("p1", birth)],
                      "encounters": [enc("a1", "2022-01-01T10:00:00Z", end, "p1")]})
    feats = bedside_features(load_feature_set("readmission"), collect(pf, "p1"), "p1", "a1",
                             now=dt.datetime(2024, 1, 1, tzinfo=dt.UTC))
    service = SimpleNamespace(index_classes={"IMP"}, min_age=18.0, excluded=lambda **_: None)
    assert (Service.out_of_scope(service, feats) == under_age(18.0)) is under  # type: ignore[arg-type]
    if birth == "2005-01-05" and not under:
        assert feats.age_years == 18 and feats.age < 18  # the feature is unchanged


# --- 2. a death known to its day only -----------------------------------------------------------------------------

DEATHS = [  # (death, discharge, disposition, died in the stay?)
    ("2023-01-05", "2023-01-05T10:00:00Z", "home", False),  # discharged home at 10:00, died at home that day
    ("2023-01-05", "2023-01-05T10:00:00Z", None, False),  # the same without a disposition: not before the discharge
    ("2023-01-04", "2023-01-05T10:00:00Z", None, True),  # a day before the discharge
    ("2023-01-05T09:00:00Z", "2023-01-05T10:00:00Z", None, True),  # a time: as before
    ("2023-01-05T10:00:00Z", "2023-01-05T10:00:00Z", "home", True),  # ... at the discharge instant, whatever it says
    ("2023-01-05", "2023-01-05", "home", False),  # both known to the day: the disposition says alive
    ("2023-01-05", "2023-01-05", "exp", True),
    ("2023-01-05", "2023-01-05", None, True),  # ... nothing says alive: a death at the discharge instant
]


@pytest.mark.parametrize(("death", "end", "dispo", "died"), DEATHS)
def test_a_death_date_is_compared_at_its_own_precision(cohort, death: str, end: str, dispo: str | None, died: bool):
    """Readmission: excluded as died in the stay; mortality: labelled a death before discharge, exactly when the
    death is certainly not after the discharge (or the disposition says so)."""
    res = [patient("p1", deceasedDateTime=death), enc("a1", "2023-01-01T10:00:00Z", end, "p1", dispo=dispo)]
    readmission = cohort(res)
    assert removed_by(readmission, "died in the stay") == int(died)
    assert ("a1" in labels(readmission)) is not died
    assert labels(cohort(res, "inhospital-mortality-24h"))["a1"] is died


@pytest.mark.parametrize(("death", "end", "dispo", "died"), DEATHS)
def test_the_bedside_reads_a_death_date_as_the_cohort_does(death: str, end: str, dispo: str | None, died: bool):
    """The service's check of the same stay (its own mapping of the Patient, `excluded_at_index`) agrees."""
    import datetime as dt
    from types import SimpleNamespace

    from careloop.features.spec import load_feature_set
    from careloop.serve.app import Service
    from careloop.serve.demo import prefetch_of
    from careloop.serve.features import bedside_features, collect

    pf = prefetch_of({"patient": [patient("p1", deceasedDateTime=death)],
                      "encounters": [enc("a1", "2023-01-01T10:00:00Z", end, "p1", dispo=dispo)]})
    feats = bedside_features(load_feature_set("readmission"), collect(pf, "p1"), "p1", "a1",
                             now=dt.datetime(2024, 1, 1, tzinfo=dt.UTC))
    service = SimpleNamespace(index_classes={"IMP"}, min_age=18.0, task=load_task("readmission-30d"))
    service.excluded = lambda **kw: Service.excluded(service, **kw)  # type: ignore[arg-type]
    scope = Service.out_of_scope(service, feats)  # type: ignore[arg-type]
    assert (scope is not None and scope.startswith("died in the stay")) is died, scope


# --- 4. NUBC codes of an acute transfer --------------------------------------------------------------------------

TRANSFERS = [("02", True), ("05", True), ("66", True), ("82", True), ("85", True), ("94", True),
             ("01", False), ("43", False), ("62", False), ("63", False), ("65", False), ("70", False), ("81", False)]


def test_nubc_acute_transfers_are_excluded_as_transfers(cohort):
    """A feed sending only the NUBC patient status: the acute-hospital transfer codes (and their planned-
    readmission variants) remove the stay as a transfer; post-acute and other institutions do not."""
    res = []
    for i, (code, _) in enumerate(TRANSFERS):
        res += [patient(f"p{i}"), enc(f"a{i}", "2023-01-01T10:00:00Z", "2023-01-05T10:00:00Z", f"p{i}", dispo=None,
                                      nubc=code)]
    result = cohort(res)
    kept = set(labels(result))
    assert {code for i, (code, _) in enumerate(TRANSFERS) if f"a{i}" not in kept} == {c for c, t in TRANSFERS if t}
    assert removed_by(result, "transferred to another acute hospital") == sum(t for _, t in TRANSFERS)


@pytest.mark.parametrize(("code", "transfer"), TRANSFERS)
def test_the_bedside_names_the_same_transfers(code: str, transfer: bool):
    from careloop.tasks.cohort import excluded_at_index

    got = excluded_at_index(load_task("readmission-30d"), disposition=None, disposition_nubc=code, death_us=None,
                            index_us=0)
    assert (got == "transferred to another acute hospital") is transfer
